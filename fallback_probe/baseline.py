"""The baseline file and the comparison the pytest gate makes against it.

Pure data and rules, no pytest hooks: test node id -> op -> verdict, stable and diff-friendly,
plus the same for shared setup (module imports, fixtures wider than a function, setUpClass),
whose ops belong to no single test.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fallback_probe.errors import ProbeError
from fallback_probe.records import Verdict

# 2 added "shared"; format 1 (test bodies only) is still read, and rewritten as 2 on update.
BASELINE_FORMAT = 2
READ_FORMATS = (1, 2)
MAX_WHERE = 3  # modules / source lines kept per op
RANK = {Verdict.UNSUPPORTED.value: 0, Verdict.FALLBACK.value: 1}  # lower is worse
FORMAT_1_NOTE = (
    "The baseline {path} is in format 1, written when only test bodies were probed: problems "
    "in fixtures, setUp/setUpClass and module imports are judged now and are new to it. "
    "Review them; --fallback-update accepts them and rewrites the file in format 2."
)


@dataclass
class Baseline:
    """test node id -> op -> verdict (fallback/unsupported only), the same for shared setup,
    and what the verdicts were judged for."""

    target: dict[str, str | None]
    tests: dict[str, dict[str, str]]
    shared: dict[str, dict[str, str]] = field(default_factory=dict)
    format: int = BASELINE_FORMAT  # the format the file was read in

    def dumps(self) -> str:
        """Sorted keys, 2-space indent, trailing newline: stable and diff-friendly."""
        data = {"fallback_probe_baseline": BASELINE_FORMAT, "target": self.target}
        data["tests"] = self.tests
        data["shared"] = self.shared
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
        version = data.get("fallback_probe_baseline") if isinstance(data, dict) else None
        if version not in READ_FORMATS:
            if isinstance(version, int) and version > BASELINE_FORMAT:
                raise ValueError(
                    f"it is in format {version}, newer than this fallback-probe reads "
                    f"({', '.join(map(str, READ_FORMATS))}): upgrade fallback-probe"
                )
            raise ValueError(f'"fallback_probe_baseline": {BASELINE_FORMAT} is missing')
        target = data.get("target")
        if not isinstance(target, dict) or not all(
            isinstance(v, (str, type(None))) for v in target.values()
        ):
            raise ValueError('"target" must map torch/macos/mode to strings')
        tests = _entries(data.get("tests"), "tests", "test ids")
        shared = _entries(data.get("shared", {}) if version > 1 else {}, "shared", "labels")
        return cls(dict(target), tests, shared, version)

    def updated(
        self,
        target: dict[str, str | None],
        results: Mapping[str, Mapping[str, Any]],
        shared: Mapping[str, Mapping[str, Any]],
        file_exists: Callable[[str], bool],
    ) -> Baseline:
        """The baseline after ``--fallback-update`` (``file_exists`` takes a rootdir path)."""
        tests = _updated(self.tests, results, file_exists, keep_clean=True)
        # Shared setup is listed only with problems: every module import would be noise.
        return Baseline(target, tests, _updated(self.shared, shared, file_exists, False))


def _entries(value: Any, name: str, keys: str) -> dict[str, dict[str, str]]:
    if not isinstance(value, dict):
        raise ValueError(f'"{name}" must map {keys} to {{op: verdict}}')
    for key, ops in value.items():
        if not isinstance(ops, dict) or any(v not in RANK for v in ops.values()):
            raise ValueError(f"the entry of {key!r} must map ops to one of {sorted(RANK)}")
    return {k: dict(v) for k, v in value.items()}


def key_file(key: str) -> str:
    """The file a test id or shared-setup label lives in ('' when none: always kept)."""
    if key.startswith(("(", "<")):  # outside tests; a fixture of an installed plugin
        return ""
    return key.split("::")[0].split(" (")[0]


def _updated(
    old: Mapping[str, Mapping[str, str]],
    results: Mapping[str, Mapping[str, Any]],
    file_exists: Callable[[str], bool],
    keep_clean: bool,
) -> dict[str, dict[str, str]]:
    entries = {k: dict(v) for k, v in old.items()}
    for key in [k for k in entries if k not in results]:
        if key_file(key) and not file_exists(key_file(key)):  # its file is gone
            del entries[key]
    for key, data in results.items():
        if "problems" not in data:  # the probe failed: keep what was known
            continue
        seen = observed_problems(data)
        if not data.get("complete", True) and key in entries:  # stopped early: merge
            for op, v in entries[key].items():
                if op not in seen or RANK[v] < RANK[seen[op]]:
                    seen[op] = v
        if seen or keep_clean:
            entries[key] = seen
        else:
            entries.pop(key, None)
    return entries


def merge_payloads(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> dict[str, Any]:
    """One result of shared setup seen twice (its setup and teardown, or two xdist workers)."""
    if a is None:
        return dict(b)
    out = {**b, **a}
    if "error" in a or "error" in b:
        out["error"] = a.get("error") or b.get("error")
    if "problems" in a and "problems" in b:
        out["complete"] = a.get("complete", True) and b.get("complete", True)
        out["cpu_only"] = a.get("cpu_only", False) and b.get("cpu_only", False)
        problems = {op: dict(info) for op, info in a["problems"].items()}
        for op, info in b["problems"].items():
            if op not in problems:
                problems[op] = dict(info)
                continue
            entry = problems[op]
            if RANK[info["verdict"]] < RANK[entry["verdict"]]:
                entry["verdict"] = info["verdict"]
            for key in ("modules", "sources"):
                both = [*entry.get(key, ()), *info.get(key, ())]
                entry[key] = list(dict.fromkeys(both))[:MAX_WHERE]
        out["problems"] = problems
    return out


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
    rerun: dict[str, str | None] = field(default_factory=dict)  # shared label -> pytest arg

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
    results: Mapping[str, Mapping[str, Any]],
    baseline: Baseline | None,
    path: Path,
    shared: Mapping[str, Mapping[str, Any]] | None = None,
) -> Outcome:
    """New problems fail; gone or milder ones are improvements; unknown tests are new.

    ``shared`` holds shared setup (label -> result): absent from the baseline it simply has no
    known problems, since it is listed only when it has some.
    """
    shared = shared or {}
    everything = [*results.values(), *shared.values()]
    targets = [d["target"] for d in everything if "target" in d]
    reasons = [d["reason"] for d in everything if "reason" in d]
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
    if baseline is not None and baseline.format == 1:
        out.notes.append(FORMAT_1_NOTE.format(path=path))
    for data in everything:
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
            f"judged ({names}): they never placed a tensor on mps."
        )
    for nodeid in sorted(results):
        known = None if baseline is None else baseline.tests.get(nodeid)
        if _judge(out, nodeid, results[nodeid], known, is_test=True):
            out.probed += 1
    for label in sorted(shared):
        out.rerun[label] = shared[label].get("rerun")
        known = {} if baseline is None else baseline.shared.get(label, {})
        _judge(out, label, shared[label], known, is_test=False)
    return out


def _judge(
    out: Outcome,
    key: str,
    data: Mapping[str, Any],
    known: Mapping[str, str] | None,
    is_test: bool,
) -> bool:
    """Compare one test's (or shared setup's) result with its entry; False if not judged."""
    if "error" in data:
        out.errors[key] = data["error"]
    if "problems" not in data:
        return False
    problems = data["problems"]
    seen = observed_problems(data)
    out.allowed += len(problems) - len(seen)
    for op in sorted(problems):
        was = None if known is None else known.get(op)
        f = _finding(key, op, was, problems[op])
        if op not in seen:
            status = "allowed"
        elif known is None:
            status = "new test"
            out.new_tests.setdefault(key, []).append(f)
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
        if is_test:
            out.new_tests.setdefault(key, [])
        return True
    if data.get("complete", True):  # ops after an early stop were never reached
        out.improved += [
            _finding(key, op, was, {}) for op, was in sorted(known.items()) if op not in seen
        ]
    return True


def _finding(nodeid: str, op: str, was: str | None, info: Mapping[str, Any]) -> Finding:
    modules, sources = tuple(info.get("modules", ())), tuple(info.get("sources", ()))
    return Finding(nodeid, op, info.get("verdict"), was, modules, sources)


def count_text(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
