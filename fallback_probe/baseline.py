"""The baseline file and the comparison the pytest gate makes against it.

Pure data and rules, no pytest hooks: test node id -> op -> verdict, stable and diff-friendly.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fallback_probe.errors import ProbeError
from fallback_probe.records import Verdict

BASELINE_FORMAT = 1
RANK = {Verdict.UNSUPPORTED.value: 0, Verdict.FALLBACK.value: 1}  # lower is worse


@dataclass
class Baseline:
    """test node id -> op -> verdict (fallback/unsupported only), and what it was judged for."""

    target: dict[str, str | None]
    tests: dict[str, dict[str, str]]

    def dumps(self) -> str:
        """Sorted keys, 2-space indent, trailing newline: stable and diff-friendly."""
        data = {"fallback_probe_baseline": BASELINE_FORMAT, "target": self.target}
        data["tests"] = self.tests
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def load(cls, path: Path) -> Baseline | None:
        """``None`` if absent; a ``UsageError`` naming the file if it is not a baseline."""
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls._from_data(data)
        except (OSError, ValueError) as exc:
            raise ProbeError(
                f"{path} is not a usable baseline: {exc}. It was left as is: "
                "fix it (e.g. resolve a merge conflict) or delete it and run with "
                "--fallback-probe --fallback-update to record a new one."
            ) from None

    @classmethod
    def _from_data(cls, data: Any) -> Baseline:
        if not isinstance(data, dict) or data.get("fallback_probe_baseline") != BASELINE_FORMAT:
            raise ValueError(f'"fallback_probe_baseline": {BASELINE_FORMAT} is missing')
        target, tests = data.get("target"), data.get("tests")
        if not isinstance(target, dict) or not all(
            isinstance(v, (str, type(None))) for v in target.values()
        ):
            raise ValueError('"target" must map torch/macos/mode to strings')
        if not isinstance(tests, dict):
            raise ValueError('"tests" must map test ids to {op: verdict}')
        for nodeid, ops in tests.items():
            if not isinstance(ops, dict) or any(v not in RANK for v in ops.values()):
                raise ValueError(f"the entry of {nodeid!r} must map ops to one of {sorted(RANK)}")
        return cls(dict(target), {k: dict(v) for k, v in tests.items()})


def describe_target(target: Mapping[str, str | None]) -> str:
    how = "observed" if target.get("mode") == "live" else "predicted"
    return f"{how} for torch {target.get('torch')} on macOS {target.get('macos')}"


def is_allowed(op: str, patterns: Iterable[str]) -> bool:
    return any(op == p or op.startswith(p + ".") or fnmatch.fnmatchcase(op, p) for p in patterns)


@dataclass(frozen=True)
class Finding:
    nodeid: str
    op: str
    verdict: str | None  # now (None: gone)
    was: str | None  # in the baseline (None: absent)
    modules: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def where(self) -> str:
        parts = []
        if self.modules:
            parts.append("in " + ", ".join(self.modules))
        if self.sources:
            parts.append("at " + ", ".join(self.sources))
        return " ".join(parts)


@dataclass
class Outcome:
    """The comparison of one session's results with the baseline."""

    target: dict[str, str | None] | None
    reason: str = ""  # why live or predicted
    seen: list[tuple[Finding, str]] = field(default_factory=list)  # every problem op, status
    new: list[Finding] = field(default_factory=list)  # new or worse, in known tests
    new_tests: dict[str, list[Finding]] = field(default_factory=dict)
    improved: list[Finding] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    probed: int = 0
    known: int = 0  # baselined problems still present
    allowed: int = 0  # problems covered by allow markers

    def failed(self, updating: bool) -> bool:
        """Updating accepts new problems; a test the probe could not judge fails regardless."""
        return bool(self.errors or (not updating and (self.new or self.new_tests)))


def observed_problems(data: Mapping[str, Any]) -> dict[str, str]:
    allow = data.get("allow", ())
    return {
        op: info["verdict"]
        for op, info in data.get("problems", {}).items()
        if not is_allowed(op, allow)
    }


def compare(
    results: Mapping[str, Mapping[str, Any]], baseline: Baseline | None, path: Path
) -> Outcome:
    """New problems fail; gone or milder ones are improvements; unknown tests are new."""
    targets = [d["target"] for d in results.values() if "target" in d]
    reasons = [d["reason"] for d in results.values() if "reason" in d]
    out = Outcome(target=targets[0] if targets else None, reason=reasons[0] if reasons else "")
    if any(t != out.target for t in targets):
        out.notes.append("Tests were judged for different targets; the first one is recorded.")
    if baseline is None:
        out.notes.append(f"No baseline at {path}: every probed test is new.")
    elif out.target is not None and baseline.target != out.target:
        out.notes.append(
            f"The baseline holds verdicts {describe_target(baseline.target)}; this run's are "
            f"{describe_target(out.target)}. Compared anyway: a difference may come from that "
            "change, not from the code under test."
        )
    for data in results.values():
        for note in data.get("notes", ()):
            if note not in out.notes:
                out.notes.append(note)
    cpu_only = sorted(n for n, d in results.items() if d.get("cpu_only"))
    if cpu_only:
        names = ", ".join(cpu_only[:3]) + (
            f" +{len(cpu_only) - 3} more" if len(cpu_only) > 3 else ""
        )
        out.notes.append(
            f"{count_text(len(cpu_only), 'test')} ran torch ops only on the CPU, so nothing was "
            f"judged ({names}): create models and tensors on mps inside the test function."
        )
    for nodeid in sorted(results):
        data = results[nodeid]
        if "error" in data:
            out.errors[nodeid] = data["error"]
        if "problems" not in data:
            continue
        out.probed += 1
        problems = data["problems"]
        seen = observed_problems(data)
        out.allowed += len(problems) - len(seen)

        known = None if baseline is None else baseline.tests.get(nodeid)
        for op in sorted(problems):
            was = None if known is None else known.get(op)
            f = _finding(nodeid, op, was, problems[op])
            if op not in seen:
                status = "allowed"
            elif known is None:
                status = "new test"
                out.new_tests.setdefault(nodeid, []).append(f)
            elif was is None or RANK[seen[op]] < RANK[was]:
                status = "NEW" if was is None else "WORSE"
                out.new.append(f)
            else:
                status = "in baseline"
                out.known += 1
                if RANK[seen[op]] > RANK[was]:
                    status = "milder"
                    out.improved.append(f)
            out.seen.append((f, status))
        if known is None:
            out.new_tests.setdefault(nodeid, [])
            continue
        if data.get("complete", True):  # ops after an early stop were never reached
            out.improved += [
                _finding(nodeid, op, was, {}) for op, was in sorted(known.items()) if op not in seen
            ]
    return out


def _finding(nodeid: str, op: str, was: str | None, info: Mapping[str, Any]) -> Finding:
    modules, sources = tuple(info.get("modules", ())), tuple(info.get("sources", ()))
    return Finding(nodeid, op, info.get("verdict"), was, modules, sources)


def count_text(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
