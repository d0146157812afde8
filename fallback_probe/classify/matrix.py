"""One trace judged in every release: which release removes which fallback."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fallback_probe.classify.rules import Judgement
from fallback_probe.records import Verdict
from fallback_probe.report import Matrix

_WORST = {Verdict.UNSUPPORTED: 0, Verdict.FALLBACK: 1, Verdict.NATIVE: 2}


def build_matrix(
    per_release: Mapping[str, Sequence[Judgement]], releases: Sequence[str], reference: str
) -> Matrix:
    """``releases`` oldest first; ``reference`` is the release the report's table is for."""
    seen: dict[str, dict[str, Verdict]] = {}
    for release in releases:
        for j in per_release[release]:
            if j.verdict is None:
                continue
            cell = seen.setdefault(j.op, {})
            old = cell.get(release)
            if old is None or _WORST[j.verdict] < _WORST[old]:
                cell[release] = j.verdict
    problems = {
        r: {
            op
            for op, cell in seen.items()
            if cell.get(r) in (Verdict.FALLBACK, Verdict.UNSUPPORTED)
        }
        for r in releases
    }
    shown = sorted(
        op for op, cell in seen.items() if any(v is not Verdict.NATIVE for v in cell.values())
    )
    ops = {op: {r: seen[op][r].value if r in seen[op] else "-" for r in releases} for op in shown}
    native_from = None
    for r in reversed(releases):
        if problems[r]:
            break
        native_from = r
    return Matrix(tuple(releases), ops, native_from, _upgrade_text(problems, releases, reference))


def _upgrade_text(
    problems: Mapping[str, set[str]], releases: Sequence[str], reference: str
) -> str | None:
    base = problems.get(reference, set())
    if not base or reference not in releases:
        return None
    best: tuple[int, str] | None = None
    for r in releases[releases.index(reference) + 1 :]:
        removed = len(base - problems[r])
        if removed and (best is None or removed > best[0]):
            best = (removed, r)
    if best is None:
        return (
            f"no listed release newer than {reference} removes any of its {len(base)} problem ops"
        )
    return f"upgrade to {best[1]} removes {best[0]} of {len(base)} problem ops"
