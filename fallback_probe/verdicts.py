"""Turn a ``Collection`` into a ``Report``: pick the releases, judge, fold, state the limits."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from fallback_probe import oplists
from fallback_probe.classify.live import judge_live
from fallback_probe.classify.matrix import build_matrix
from fallback_probe.classify.rules import Judgement, judge, judge_all
from fallback_probe.collect import Collection
from fallback_probe.errors import ProbeError
from fallback_probe.limits import PREDICT_LIMITS
from fallback_probe.oplists import OpList
from fallback_probe.records import Mode
from fallback_probe.report import Matrix, Report, Target, build_rows

DEFAULT_MACOS = "15"


def target_releases(torch_version: str | None, installed: str) -> tuple[str, list[str], list[str]]:
    """(reference release, releases to judge, notes) for ``--torch-version``."""
    notes: list[str] = []
    if torch_version is None:
        reference = oplists.nearest_release(installed)
        try:
            oplists.resolve_release(installed)
        except ProbeError:
            notes.append(
                f"Torch {installed} has no operator list; judged against the nearest listed "
                f"release, {reference}."
            )
        return reference, [reference], notes
    if torch_version == "all":
        reference = oplists.nearest_release(installed)
        return reference, list(oplists.releases()), notes
    reference = oplists.resolve_release(torch_version)
    return reference, [reference], notes


def _report(
    col: Collection,
    target: Target,
    judgements: Sequence[Judgement],
    limits: Sequence[str],
    matrix: Matrix | None = None,
) -> Report:
    rows, not_judged = build_rows(judgements)
    return Report(
        mode=col.mode,
        mode_reason=col.mode_reason,
        target=target,
        host=col.host,
        complete=col.complete,
        error=col.error,
        ops=rows,
        not_judged=not_judged,
        cpu_work=col.cpu_work,
        limits=tuple(limits),
        matrix=matrix,
    )


def _lists(
    releases: Sequence[str], on_release: Callable[[str, int, int], None] | None
) -> Iterator[OpList]:
    """The lists one by one: ``judge_all`` judges each as it comes, so progress is true."""
    for n, release in enumerate(releases, 1):
        if on_release is not None:
            on_release(release, n, len(releases))
        yield oplists.load(release)


def make_report(
    col: Collection,
    torch_version: str | None = None,
    macos: str | None = None,
    oplist: OpList | None = None,
    on_release: Callable[[str, int, int], None] | None = None,
) -> Report:
    """``oplist`` replaces the release lists: predict for another backend's registrations.
    ``on_release(release, n, total)`` is told as each release is judged (progress)."""
    if col.mode is Mode.LIVE:
        target = Target(col.host.torch, col.macos or "unknown", col.device_type)
        return _report(col, target, judge_live(col.trace), col.limits)
    macos = macos or DEFAULT_MACOS
    if oplist is not None:
        target = Target(oplist.torch_version, macos, col.device_type)
        return _report(
            col, target, judge(col.trace, oplist, macos), [*PREDICT_LIMITS[1:], *col.limits]
        )
    reference, releases, notes = target_releases(torch_version, col.host.torch)
    limits = [*PREDICT_LIMITS, *notes, *col.limits]
    traced_minor = ".".join(col.host.torch.split("+")[0].split(".")[:2])
    if not reference.startswith(traced_minor + ".") or len(releases) > 1:
        limits.append(
            f"Traced with torch {col.host.torch}: where another release decomposes ops "
            "differently above the backend, its trace could differ."
        )
    per_release = judge_all(col.trace, _lists(releases, on_release), macos)
    matrix = None
    if len(releases) > 1:
        parents = {c.index: c.parent for c in col.trace}
        matrix = build_matrix(per_release, releases, reference, parents)
    judged = per_release.get(reference)
    if judged is None:
        judged = judge(col.trace, oplists.load(reference), macos)
    if any(j.verdict is not None and j.op.startswith("torchvision::") for j in judged):
        paired = oplists.load(reference).release_of("torchvision::")
        each = " (each release of the matrix with its own)" if matrix else ""
        limits.append(f"torchvision:: ops were judged against {paired}{each}.")
    return _report(col, Target(reference, macos, col.device_type), judged, limits, matrix)
