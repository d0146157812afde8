"""The report: the one contract between collection and every renderer, gate and baseline.

It round-trips through JSON (``schema_version`` 2, docs/report-schema.md), so a saved report
can be re-rendered, diffed or gated without running the model again; version 1 still loads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from fallback_probe.classify.rules import Judgement
from fallback_probe.errors import ProbeError
from fallback_probe.records import Mode, Verdict

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
_MAX_SHAPES = 3
_VERDICT_RANK = {Verdict.UNSUPPORTED: 0, Verdict.FALLBACK: 1, Verdict.NATIVE: 2}


@dataclass(frozen=True)
class Target:
    """What the verdicts are about: a torch release and macOS version, on a device type."""

    torch: str
    macos: str
    device: str = "mps"


@dataclass(frozen=True)
class Host:
    """Where the probe ran (not what it judged)."""

    torch: str
    python: str
    platform: str


@dataclass(frozen=True)
class OpRow:
    op: str
    verdict: Verdict
    calls: int
    modules: tuple[str, ...]
    sources: tuple[str, ...]
    dtypes: tuple[str, ...]
    shapes: tuple[str, ...]
    bytes_to_cpu: int
    bytes_from_cpu: int
    reason: str
    called_as: tuple[str, ...] = ()  # the ops the script called when the backend saw another
    seconds: float | None = None
    error: str | None = None

    @property
    def cost(self) -> int:
        return self.bytes_to_cpu + self.bytes_from_cpu


@dataclass(frozen=True)
class NotJudged:
    """An op the probe saw but could not give a verdict for, and why (nothing is dropped)."""

    op: str
    calls: int
    reason: str
    on_device: bool = True  # False: a step the script ran on the CPU inside a device op


class Outcome(str, Enum):
    """What a run found, in one word a tool can switch on (``outcome`` in the JSON)."""

    PROBLEMS = "problems"  # some op falls back or is unsupported
    NOTHING_JUDGED = "nothing_judged"  # no op reached the device, or none could be judged
    PARTLY_JUDGED = "partly_judged"  # no problem among the judged, but some were not judged
    ALL_NATIVE = "all_native"


@dataclass(frozen=True)
class Matrix:
    """Verdicts of one trace in every listed release (``--torch-version all``)."""

    releases: tuple[str, ...]
    ops: Mapping[str, Mapping[str, str]]  # op -> release -> verdict ("-" not reached)
    native_from: str | None  # oldest release from which every later one runs all natively
    upgrade: str | None  # e.g. "upgrade to 2.8.0 removes 2 of 3 fallbacks"
    called_as: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # op -> script's ops


@dataclass(frozen=True)
class Report:
    mode: Mode
    mode_reason: str
    target: Target
    host: Host
    complete: bool
    ops: tuple[OpRow, ...]
    error: str | None = None
    not_judged: tuple[NotJudged, ...] = ()
    cpu_work: Mapping[str, int] = field(default_factory=dict)
    limits: tuple[str, ...] = ()
    matrix: Matrix | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def summary(self) -> dict[str, int]:
        """Distinct ops per verdict, and ops that reached the device without one: a headline
        of "0 fallback" over ops it never judged would be a wrong answer."""
        out = {v.value: 0 for v in Verdict}
        seen: set[tuple[str, Verdict]] = set()
        for row in self.ops:
            if (row.op, row.verdict) not in seen:
                seen.add((row.op, row.verdict))
                out[row.verdict.value] += 1
        out["not_judged"] = len({n.op for n in self.not_judged if n.on_device})
        return out

    @property
    def outcome(self) -> Outcome:
        s = self.summary
        if s[Verdict.FALLBACK.value] or s[Verdict.UNSUPPORTED.value]:
            return Outcome.PROBLEMS
        if not s[Verdict.NATIVE.value]:
            return Outcome.NOTHING_JUDGED
        return Outcome.PARTLY_JUDGED if s["not_judged"] else Outcome.ALL_NATIVE

    def rows(self, *verdicts: Verdict) -> list[OpRow]:
        return [r for r in self.ops if r.verdict in verdicts]

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": self.schema_version,
            "mode": self.mode.value,
            "mode_reason": self.mode_reason,
            "target": asdict(self.target),
            "host": asdict(self.host),
            "complete": self.complete,
            "error": self.error,
            "outcome": self.outcome.value,
            "summary": self.summary,
            "ops": [_row_to_dict(r) for r in self.ops],
            "not_judged": [asdict(n) for n in self.not_judged],
            "cpu_work": dict(sorted(self.cpu_work.items())),
            "limits": list(self.limits),
        }
        if self.matrix is not None:
            m = self.matrix
            d["matrix"] = {
                "releases": list(m.releases),
                "ops": {op: dict(v) for op, v in m.ops.items()},
                "native_from": m.native_from,
                "upgrade": m.upgrade,
                "called_as": {op: list(v) for op, v in m.called_as.items()},
            }
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        """Reads every version in ``READABLE_VERSIONS``; the result is a current report."""
        version = d.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"schema_version {version!r} is not one of {READABLE_VERSIONS}")
        matrix = None
        if d.get("matrix") is not None:
            m = d["matrix"]
            called_as = {op: tuple(v) for op, v in m.get("called_as", {}).items()}
            matrix = Matrix(
                tuple(m["releases"]), m["ops"], m["native_from"], m["upgrade"], called_as
            )
        return cls(
            mode=Mode(d["mode"]),
            mode_reason=d["mode_reason"],
            target=Target(**d["target"]),
            host=Host(**d["host"]),
            complete=bool(d["complete"]),
            error=d.get("error"),
            ops=tuple(_row_from_dict(r) for r in d["ops"]),
            not_judged=tuple(_not_judged_from_dict(n) for n in d.get("not_judged", ())),
            cpu_work=dict(d.get("cpu_work", {})),
            limits=tuple(d.get("limits", ())),
            matrix=matrix,
        )

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read a saved report; any problem is a one-line ``ProbeError`` naming the file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ProbeError(f"cannot read report {path}: {exc.strerror or exc}") from None
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProbeError(f"{path} is not a fallback-probe report: {exc}") from None


def _row_to_dict(r: OpRow) -> dict[str, Any]:
    d = asdict(r)
    d["verdict"] = r.verdict.value
    for k in ("modules", "sources", "dtypes", "shapes", "called_as"):
        d[k] = list(d[k])
    return d


# Schema 1 had no ``on_device``: the one not-judged reason that means "stayed on the CPU".
_V1_CPU_REASON = "ran on the CPU by the script"


def _not_judged_from_dict(d: Mapping[str, Any]) -> NotJudged:
    on_device = d.get("on_device", d.get("reason") != _V1_CPU_REASON)
    return NotJudged(d["op"], int(d["calls"]), d["reason"], bool(on_device))


def _row_from_dict(d: Mapping[str, Any]) -> OpRow:
    return OpRow(
        op=d["op"],
        verdict=Verdict(d["verdict"]),
        calls=int(d["calls"]),
        modules=tuple(d.get("modules", ())),
        sources=tuple(d.get("sources", ())),
        dtypes=tuple(d.get("dtypes", ())),
        shapes=tuple(d.get("shapes", ())),
        bytes_to_cpu=int(d.get("bytes_to_cpu", 0)),
        bytes_from_cpu=int(d.get("bytes_from_cpu", 0)),
        reason=d.get("reason", ""),
        called_as=tuple(d.get("called_as", ())),
        seconds=d.get("seconds"),
        error=d.get("error"),
    )


# -- building rows from judgements ---------------------------------------------------------
class _Acc:
    __slots__ = (
        "calls",
        "modules",
        "sources",
        "dtypes",
        "shapes",
        "to_cpu",
        "from_cpu",
        "seconds",
        "error",
        "reason",
        "called_as",
    )

    def __init__(self, reason: str) -> None:
        self.calls = 0
        self.modules: dict[str, None] = {}
        self.sources: dict[str, None] = {}
        self.dtypes: dict[str, None] = {}
        self.shapes: dict[str, None] = {}
        self.to_cpu = 0
        self.from_cpu = 0
        self.seconds: float | None = None
        self.error: str | None = None
        self.reason = reason
        self.called_as: dict[str, None] = {}


def _shape_text(shapes: Iterable[tuple[int, ...]]) -> str:
    return ", ".join("[" + "×".join(str(s) for s in shape) + "]" for shape in shapes)


def build_rows(judgements: Sequence[Judgement]) -> tuple[tuple[OpRow, ...], tuple[NotJudged, ...]]:
    """Fold per-call judgements into one row per (op, verdict), costliest problems first."""
    # One row per distinct error too: two refusals of one op (float64, .numpy()) are two
    # blockers, each with the message a Mac prints.
    accs: dict[tuple[str, Verdict, str | None], _Acc] = {}
    skipped: dict[tuple[str, str, bool], int] = {}
    shape_texts: dict[tuple[tuple[int, ...], ...], str] = {}  # the same shapes recur
    for j in judgements:
        if j.verdict is None:
            key = (j.op, j.reason, j.call.touches_device)
            skipped[key] = skipped.get(key, 0) + 1
            continue
        c = j.call
        key = (j.op, j.verdict, c.error)
        acc = accs.get(key)
        if acc is None:
            acc = accs[key] = _Acc(j.reason)
        acc.calls += 1
        if c.module or not acc.modules:
            where = (c.module or "(top level)") + (" (backward)" if c.backward else "")
            acc.modules[where] = None
        if c.source:
            acc.sources[c.source] = None
        for t in (*c.inputs, *c.outputs):
            if t.on_device:
                acc.dtypes[t.dtype] = None
        if c.inputs:
            shapes = tuple(t.shape for t in c.inputs)
            text = shape_texts.get(shapes)
            if text is None:
                text = shape_texts[shapes] = _shape_text(shapes)
            acc.shapes[text] = None
        if c.op != j.op:
            acc.called_as[c.op] = None
        if j.verdict is Verdict.FALLBACK:
            acc.to_cpu += round(j.share * sum(t.nbytes for t in c.inputs if t.on_device))
            acc.from_cpu += round(j.share * sum(t.nbytes for t in c.outputs if t.on_device))
        if c.seconds is not None:
            acc.seconds = (acc.seconds or 0.0) + j.share * c.seconds
        if c.error and acc.error is None:
            acc.error = c.error
    rows = []
    for (op, verdict, _), a in accs.items():
        shapes = list(a.shapes)
        if len(shapes) > _MAX_SHAPES:
            shapes = [*shapes[:_MAX_SHAPES], f"+{len(shapes) - _MAX_SHAPES} more"]
        rows.append(
            OpRow(
                op=op,
                verdict=verdict,
                calls=a.calls,
                modules=tuple(a.modules),
                sources=tuple(a.sources),
                dtypes=tuple(a.dtypes),
                shapes=tuple(shapes),
                bytes_to_cpu=a.to_cpu,
                bytes_from_cpu=a.from_cpu,
                reason=a.reason,
                called_as=tuple(a.called_as),
                seconds=a.seconds,
                error=a.error,
            )
        )
    rows.sort(
        key=lambda r: (_VERDICT_RANK[r.verdict], -r.cost, -(r.seconds or 0.0), -r.calls, r.op)
    )
    not_judged = tuple(NotJudged(op, n, why, dev) for (op, why, dev), n in sorted(skipped.items()))
    return tuple(rows), not_judged


def problem_ops(report: Report) -> dict[str, Verdict]:
    """op -> worst verdict among fallbacks and unsupported ops (what gates compare)."""
    out: dict[str, Verdict] = {}
    for r in report.rows(Verdict.UNSUPPORTED, Verdict.FALLBACK):
        if r.op not in out or _VERDICT_RANK[r.verdict] < _VERDICT_RANK[out[r.op]]:
            out[r.op] = r.verdict
    return out
