"""One trace judged in every release: which release removes which fallback."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fallback_probe.classify.rules import Judgement
from fallback_probe.records import Verdict
from fallback_probe.report import Matrix

_WORST = {Verdict.UNSUPPORTED: 0, Verdict.FALLBACK: 1, Verdict.NATIVE: 2}


def build_matrix(
    per_release: Mapping[str, Sequence[Judgement]],
    releases: Sequence[str],
    reference: str,
    parents: Mapping[int, int | None] | None = None,
) -> Matrix:
    """``releases`` oldest first; ``reference`` is the release the report's table is for;
    ``parents`` (call index -> composite call index) lets a composite judged in one release
    be compared with its parts judged in another."""
    parents = parents or {}
    # The same call can reach the backend under another name in another release (a delegate
    # that gained a kernel): a row follows the calls, not the name.
    by_call: dict[str, dict[int, Verdict]] = {}
    calls_of: dict[str, set[int]] = {}
    called_as: dict[str, dict[str, None]] = {}  # op -> what the script called, when other
    for release in releases:
        cells = by_call[release] = {}
        for j in per_release[release]:
            if j.verdict is None:
                continue
            i: int | None = j.call.index
            while i is not None:
                if i not in cells or _WORST[j.verdict] < _WORST[cells[i]]:
                    cells[i] = j.verdict
                i = parents.get(i)
            if j.verdict is not Verdict.NATIVE:
                calls_of.setdefault(j.op, set()).add(j.call.index)
                if j.call.op != j.op:
                    called_as.setdefault(j.op, {})[j.call.op] = None
    ops: dict[str, dict[str, str]] = {}
    for op in sorted(calls_of):
        row = {}
        for r in releases:
            vs = [by_call[r][i] for i in calls_of[op] if i in by_call[r]]
            row[r] = min(vs, key=_WORST.__getitem__).value if vs else "-"
        ops[op] = row
    problems = {
        r: {op for op, row in ops.items() if row[r] in ("fallback", "unsupported")}
        for r in releases
    }
    native_from = None
    for r in reversed(releases):
        if problems[r]:
            break
        native_from = r
    upgrade = _upgrade_text(problems, releases, reference)
    names = {op: tuple(sorted(called_as[op])) for op in ops if op in called_as}
    return Matrix(tuple(releases), ops, native_from, upgrade, names)


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
