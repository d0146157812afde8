"""pytest plugin: fail CI when a test gains an MPS fallback its baseline does not know.

Opt-in (``--fallback-probe`` or ``fallback_probe = true`` in the ini file): when off, only the
options, markers and an inert fixture are registered and torch is never imported. When on,
each test's call phase runs inside a ``Probe`` (live on a usable MPS, predicted elsewhere),
each test's problem ops travel to the controller in the call report's ``user_properties``
(so pytest-xdist works unchanged), and the controller compares them with the baseline file.
See docs/pytest-plugin.md.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fallback_probe.atomic import write_text
from fallback_probe.baseline import (
    RANK,
    Baseline,
    Finding,
    Outcome,
    compare,
    count_text,
    describe_target,
    observed_problems,
)
from fallback_probe.errors import ProbeError
from fallback_probe.options import PROBE_OPTIONS, add_options
from fallback_probe.records import Verdict

if TYPE_CHECKING:  # torch-heavy modules are imported only once a probed test runs
    from fallback_probe.api import Probe
    from fallback_probe.report import Report

DEFAULT_BASELINE = "fallback-baseline.json"
FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"
PROPERTY = "fallback_probe"  # the user_properties key that carries a test's results
_MAX_WHERE = 3  # modules / source lines kept per op
_MAX_LINES = 20  # findings of one kind printed in the terminal; the markdown report has all


# -- options -----------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fallback-probe", "MPS fallback gate (fallback-probe)")
    group.addoption(
        "--fallback-probe",
        action="store_true",
        default=False,
        dest="fallback_probe",
        help="probe every test for MPS fallbacks and compare with the baseline",
    )
    add_options(group.addoption, prefix="fallback-")  # the CLI's --mode, --torch-version, ...
    group.addoption(
        "--fallback-baseline",
        dest="fallback_baseline",
        metavar="PATH",
        default=None,
        help=f"baseline file (default: ini fallback_baseline, else {DEFAULT_BASELINE} at the rootdir)",
    )
    group.addoption(
        "--fallback-update",
        action="store_true",
        default=False,
        dest="fallback_update",
        help="rewrite the baseline from this run instead of failing on new problems",
    )
    group.addoption(
        "--fallback-report",
        dest="fallback_report",
        metavar="PATH.md",
        default=None,
        help="write the session's markdown report here",
    )
    parser.addini("fallback_probe", "probe every test (like --fallback-probe)", type="bool")
    parser.addini(
        "fallback_baseline", "baseline file, relative to the rootdir", default=DEFAULT_BASELINE
    )


def _option(config: pytest.Config, name: str, default: Any, early: bool) -> Any:
    """In early hooks ``config.option`` still holds defaults: read the pre-parsed args."""
    return getattr(config.known_args_namespace if early else config.option, name, default)


def _active(config: pytest.Config, early: bool = False) -> bool:
    flag = _option(config, "fallback_probe", False, early)
    return bool(flag or config.getini("fallback_probe"))


def _env_note(config: pytest.Config, early: bool = False) -> str | None:
    """Set the fallback variable while it still matters; say so when it is too late.

    The backend reads it once, when torch loads (mps-facts §1): set later, an op without an
    MPS kernel raises instead of falling back, and live mode would report it unsupported.
    """
    if _option(config, "fallback_mode", "auto", early) == "predict" or FALLBACK_ENV in os.environ:
        return None
    late = "torch" in sys.modules
    os.environ[FALLBACK_ENV] = "1"  # still reaches child processes and the live recorder
    config.stash[_ENV_SET] = True
    if not late:
        return None
    return (
        f"torch was imported before the fallback-probe plugin could set {FALLBACK_ENV}=1 "
        "(by another plugin or an early conftest): on a Mac, ops without an MPS kernel raise "
        f"and are reported unsupported, not fallback. Run pytest with {FALLBACK_ENV}=1 set."
    )


_ENV_NOTE = pytest.StashKey["str | None"]()
_ENV_SET = pytest.StashKey[bool]()
_GATE = pytest.StashKey["Gate"]()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Earliest point with options parsed: before conftest.py files can import torch.
    if _active(early_config, early=True):
        early_config.stash[_ENV_NOTE] = _env_note(early_config, early=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        'fallback_probe(allow=["aten::op", ...]): ops this test may run as MPS fallbacks or '
        "unsupported ops (an overload-less name covers its overloads; globs allowed)",
    )
    config.addinivalue_line("markers", "no_fallback_probe: do not probe this test")
    if not _active(config):
        if config.getoption("fallback_update", False):
            raise pytest.UsageError("--fallback-update needs --fallback-probe")
        return
    if _ENV_NOTE not in config.stash:  # plugin loaded late (-p or pytest_plugins)
        config.stash[_ENV_NOTE] = _env_note(config)
    gate = Gate(config)
    config.stash[_GATE] = gate
    config.pluginmanager.register(gate, "fallback_probe_gate")


def pytest_unconfigure(config: pytest.Config) -> None:
    # In-process runs (pytester.runpytest, pytest.main) must not leak the variable.
    if config.stash.get(_ENV_SET, False):
        os.environ.pop(FALLBACK_ENV, None)


def _allow_list(item: pytest.Item) -> tuple[str, ...]:
    out: list[str] = []
    for mark in item.iter_markers("fallback_probe"):
        unknown = set(mark.kwargs) - {"allow"}
        if unknown:
            pytest.fail(
                f"@pytest.mark.fallback_probe takes allow=[...], not {sorted(unknown)}",
                pytrace=False,
            )
        allow = mark.kwargs.get("allow", ())
        out.extend([allow] if isinstance(allow, str) else allow)
        out.extend(a for a in mark.args if isinstance(a, str))
    return tuple(dict.fromkeys(out))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


# -- one test ----------------------------------------------------------------------------
class ProbedTest:
    """The ``fallback_probe`` fixture: what the probe saw of this test's call phase.

    Inside the test body ``report`` and ``problems`` are judged from the ops so far; after
    the call phase they are the final verdicts the gate compares.
    """

    def __init__(self, nodeid: str, allow: tuple[str, ...], gate: Gate) -> None:
        self.nodeid = nodeid
        self.allow = allow
        self.error: str | None = None
        self._gate = gate
        self._probe: Probe | None = None
        self._final: Report | None = None

    @property
    def report(self) -> Report:
        if self._final is not None:
            return self._final
        if self._probe is None:
            raise RuntimeError(f"{self.nodeid} is not being probed: {self.error or 'not yet'}")
        return self._snapshot()

    @property
    def problems(self) -> dict[str, Verdict]:
        """op -> verdict for fallbacks and unsupported ops, allowed ones included."""
        from fallback_probe.report import problem_ops

        return problem_ops(self.report)

    def _snapshot(self) -> Report:  # the fixture asked while the test still runs
        import platform

        from fallback_probe.collect import Collection, this_host
        from fallback_probe.records import Mode
        from fallback_probe.verdicts import make_report

        mode, reason = self._gate.decided()
        col = Collection(Mode(mode), reason, "mps", this_host())
        assert self._probe is not None
        col.trace = self._probe.trace_so_far()
        col.complete = False
        col.error = "the test is still running"
        if mode == Mode.LIVE.value:
            col.macos = platform.mac_ver()[0] or None
        return make_report(col, self._gate.torch_version, self._gate.macos)

    def open(self) -> None:
        from fallback_probe.api import Probe

        mode, _ = self._gate.decided()
        probe = Probe(
            mode="live" if mode == "live" else "predict",
            torch_version=self._gate.torch_version,
            macos=self._gate.macos,
            device=self._gate.device,  # type: ignore[arg-type]
        )
        probe.__enter__()
        self._probe = probe

    def close(self, exc: BaseException | None) -> None:
        """Never raises: a probe failure is recorded and reported, the test's own is kept."""
        probe = self._probe
        if probe is None:
            return
        try:
            probe.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
            self._final = probe.report
        except Exception as err:
            self.error = f"the probe failed after the test ran: {_one_line(err)}"
        finally:  # items live for the whole session: keep the report, drop the trace
            self._probe = None

    def payload(self) -> dict[str, Any]:
        """Plain JSON for ``user_properties``: what the controller needs, nothing more."""
        out: dict[str, Any] = {"allow": list(self.allow)}
        if self.error:
            out["error"] = self.error
        rep = self._final
        if rep is None:
            return out
        out["target"] = {"torch": rep.target.torch, "macos": rep.target.macos}
        out["target"]["mode"] = rep.mode.value
        out["reason"] = self._gate.decided()[1]
        out["complete"] = rep.complete
        out["cpu_only"] = not rep.ops and bool(rep.cpu_work)  # ran torch, judged nothing
        problems: dict[str, dict[str, Any]] = {}
        for row in rep.rows(Verdict.UNSUPPORTED, Verdict.FALLBACK):
            entry = problems.setdefault(
                row.op, {"verdict": row.verdict.value, "modules": [], "sources": []}
            )
            if RANK[row.verdict.value] < RANK[entry["verdict"]]:
                entry["verdict"] = row.verdict.value
            for key, values in (("modules", row.modules), ("sources", row.sources)):
                for v in values:
                    if v not in entry[key] and len(entry[key]) < _MAX_WHERE:
                        entry[key].append(v)
        out["problems"] = problems
        if rep.mode.value == "live":
            note = self._gate.config.stash.get(_ENV_NOTE, None)
            notes = [note] if note else []
            notes += [n for n in rep.limits if FALLBACK_ENV in n]
            out["notes"] = notes
        return out


_PROBED = pytest.StashKey[ProbedTest]()


@pytest.fixture
def fallback_probe(request: pytest.FixtureRequest) -> ProbedTest:
    """This test's verdicts, for direct assertions (needs ``--fallback-probe``)."""
    gate = request.config.stash.get(_GATE, None)
    if gate is None:
        pytest.skip("fallback-probe is off: run pytest with --fallback-probe")
    if request.node.get_closest_marker("no_fallback_probe") is not None:
        pytest.fail(
            "uses the fallback_probe fixture but is marked no_fallback_probe", pytrace=False
        )
    return gate.probed_test(request.node)


class Gate:
    """Session state and the hooks that run only while the plugin is active."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.is_worker = hasattr(config, "workerinput")
        self.update: bool = config.getoption("fallback_update")
        self.mode: str = config.getoption("fallback_mode")
        self.torch_version: str | None = config.getoption("fallback_torch_version")
        self.macos: str | None = config.getoption("fallback_macos")
        self.device: str = config.getoption("fallback_device")
        self.baseline_path = self._baseline_path()
        report = config.getoption("fallback_report")
        self.report_path = Path(config.invocation_params.dir, report) if report else None
        self.results: dict[str, dict[str, Any]] = {}
        self.opted_out: set[str] = set()
        self.outcome: Outcome | None = None
        self.written: str | None = None  # what happened to the baseline file
        self._decided: tuple[str, str] | None = None
        if self.torch_version not in (None, "all"):
            from fallback_probe import oplists

            try:
                oplists.resolve_release(self.torch_version)
            except ProbeError as exc:
                raise pytest.UsageError(f"--fallback-torch-version: {exc}") from None
        elif self.torch_version == "all":
            raise pytest.UsageError("--fallback-torch-version all: a gate compares one release")
        try:
            self.baseline = None if self.is_worker else Baseline.load(self.baseline_path)
        except ProbeError as exc:
            raise pytest.UsageError(f"fallback-probe: {exc}") from None

    def _baseline_path(self) -> Path:
        given = self.config.getoption("fallback_baseline")
        if given:
            return Path(self.config.invocation_params.dir, given)
        return Path(self.config.rootpath, self.config.getini("fallback_baseline"))

    def decided(self) -> tuple[str, str]:
        """Live or predict, decided once per process (auto runs an MPS smoke test)."""
        if self._decided is None:
            from fallback_probe.collect.mode import decide

            mode, reason = decide(self.mode)
            self._decided = (mode.value, reason)
        return self._decided

    def probed_test(self, item: pytest.Item) -> ProbedTest:
        probed = item.stash.get(_PROBED, None)
        if probed is None:
            probed = item.stash[_PROBED] = ProbedTest(item.nodeid, _allow_list(item), self)
        return probed

    # -- running (workers, or the only process) -----------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        if item.get_closest_marker("no_fallback_probe") is not None:
            item.user_properties.append((PROPERTY, json.dumps({"opted_out": True})))
            return (yield)
        probed = self.probed_test(item)
        try:
            probed.open()
        except Exception as exc:
            probed.error = f"the probe could not start: {_one_line(exc)}"
        try:
            result = yield
        except BaseException as exc:
            probed.close(exc)
            raise
        else:
            probed.close(None)
        finally:
            payload = json.dumps(probed.payload(), sort_keys=True)
            item.user_properties.append((PROPERTY, payload))
        return result

    # -- collecting and comparing (the controller, or the only process) -----------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker or report.when != "call" or report.skipped:
            return  # a test that skipped (or xfailed) at run time is treated as not run
        for name, value in report.user_properties:
            if name == PROPERTY:
                data = json.loads(value)
                if data.get("opted_out"):
                    self.opted_out.add(report.nodeid)
                else:
                    self.results[report.nodeid] = data

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker or self.config.option.collectonly:
            return
        outcome = self.outcome = compare(self.results, self.baseline, self.baseline_path)
        interrupted = session.exitstatus in (
            pytest.ExitCode.INTERRUPTED,
            pytest.ExitCode.INTERNAL_ERROR,
            pytest.ExitCode.USAGE_ERROR,
        )
        if self.update:
            if interrupted:
                self.written = "baseline not written: the session was interrupted"
            else:
                self._write_baseline(outcome)
        if self.report_path is not None:
            write_text(self.report_path, render_markdown(outcome, self))
        if outcome.failed(self.update) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _write_baseline(self, outcome: Outcome) -> None:
        old = self.baseline
        if outcome.target is None and old is None:
            self.written = "baseline not written: no test was probed"
            return
        tests = {} if old is None else {k: dict(v) for k, v in old.tests.items()}
        for nodeid in self.opted_out:
            tests.pop(nodeid, None)
        root = self.config.rootpath
        for nodeid in [n for n in tests if n not in self.results]:
            if not (root / nodeid.split("::")[0]).exists():  # its file is gone
                del tests[nodeid]
        for nodeid, data in self.results.items():
            if "problems" not in data:  # the probe failed: keep what was known
                continue
            seen = observed_problems(data)
            if not data.get("complete", True) and nodeid in tests:  # stopped early: merge
                for op, v in tests[nodeid].items():
                    if op not in seen or RANK[v] < RANK[seen[op]]:
                        seen[op] = v
            tests[nodeid] = seen
        target = outcome.target or (old.target if old else {})
        text = Baseline(dict(target), tests).dumps()
        path = self.baseline_path
        if path.exists() and path.read_text(encoding="utf-8") == text:
            self.written = f"baseline {_show(path, self.config)} is up to date ({len(tests)} tests)"
            return
        write_text(path, text)
        self.written = f"wrote the baseline {_show(path, self.config)} ({len(tests)} tests)"

    def tighten_command(self, nodeids: Iterable[str]) -> str:
        """The exact command that rewrites the baseline entries of ``nodeids``."""
        args = ["pytest", "--fallback-probe", "--fallback-update"]
        if self.config.getoption("fallback_baseline"):
            args += ["--fallback-baseline", _show(self.baseline_path, self.config)]
        for opt in PROBE_OPTIONS:
            value = self.config.getoption(f"fallback_{opt.dest}")
            if value is not None and value != opt.default:
                args += [f"--fallback-{opt.name}", str(value)]
        args += sorted(set(nodeids))
        cmd = shlex.join(args)
        if Path(self.config.invocation_params.dir) != self.config.rootpath:
            cmd = (
                f"cd {shlex.quote(str(self.config.rootpath))} && {cmd}"  # ids are rootdir-relative
            )
        return cmd

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.is_worker or self.outcome is None:
            return
        tr, out = terminalreporter, self.outcome
        tr.write_sep("=", "fallback-probe")
        for text, markup in summary_lines(out, self):
            tr.write_line(text, **markup)


def _show(path: Path, config: pytest.Config) -> str:
    for base in (Path(config.invocation_params.dir), config.rootpath):
        try:
            return str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)


# -- rendering ---------------------------------------------------------------------------
def _finding_text(f: Finding) -> str:
    change = f.verdict if f.was is None else f"{f.was} -> {f.verdict or 'gone'}"
    where = f.where()
    return f"{f.nodeid}: {f.op} {change}" + (f" {where}" if where else "")


def summary_lines(out: Outcome, gate: Gate) -> list[tuple[str, dict[str, bool]]]:
    """The terminal section, as (line, markup) pairs: failures first, then news."""
    plain: dict[str, bool] = {}
    lines: list[tuple[str, dict[str, bool]]] = []
    base = _show(gate.baseline_path, gate.config)
    what = describe_target(out.target) if out.target else "nothing probed"
    why = f" ({out.reason})" if out.reason else ""
    lines.append((f"{what}{why}; {out.probed} tests probed; baseline {base}", plain))
    lines += [(f"NOTE: {n}", {"yellow": True}) for n in out.notes]

    def block(title: str, items: list[str], markup: dict[str, bool]) -> None:
        if not items:
            return
        lines.append((f"{title} ({len(items)}):", markup))
        lines.extend((f"  {t}", markup) for t in items[:_MAX_LINES])
        if len(items) > _MAX_LINES:
            more = f"  ... {len(items) - _MAX_LINES} more"
            lines.append(
                (more + (" (see --fallback-report)" if not gate.report_path else ""), markup)
            )

    red, green = {"red": True}, {"green": True}
    block("Probe errors", [f"{k}: {v}" for k, v in out.errors.items()], red)
    accepted = plain if gate.update else red
    block("New fallbacks or unsupported ops", [_finding_text(f) for f in out.new], accepted)
    new_tests = [
        f"{nodeid}: " + (", ".join(f"{f.op} {f.verdict}" for f in fs) or "no problem ops")
        for nodeid, fs in out.new_tests.items()
    ]
    block("Tests not in the baseline", new_tests, accepted)
    block("Improvements", [_finding_text(f) for f in out.improved], green)
    if out.improved and not gate.update:
        cmd = gate.tighten_command(f.nodeid for f in out.improved)
        lines.append((f"Tighten the baseline: {cmd}", green))
    if gate.written:
        lines.append((f"fallback-probe {gate.written}.", plain))
    if gate.report_path is not None:
        lines.append((f"Report: {_show(gate.report_path, gate.config)}", plain))
    if out.failed(gate.update):
        why = []
        if out.new and not gate.update:
            why.append(count_text(len(out.new), "new problem op"))
        if out.new_tests and not gate.update:
            why.append(count_text(len(out.new_tests), "test") + " not in the baseline")
        if out.errors:
            why.append(count_text(len(out.errors), "probe error"))
        hint = ""
        if (out.new or out.new_tests) and not gate.update:
            hint = f" If that is intended, accept it: {gate.tighten_command(())}"
        lines.append((f"fallback-probe FAILED the session: {', '.join(why)}.{hint}", red))
    elif gate.update:
        news = (
            count_text(len(out.new), "new problem op")
            + ", "
            + count_text(len(out.new_tests), "new test")
        )
        lines.append((f"fallback-probe: updating, {news} accepted.", green))
    else:
        tail = f" ({out.known} known, {out.allowed} allowed)" if out.known or out.allowed else ""
        lines.append((f"fallback-probe: no new fallbacks{tail}.", green))
    return lines


def render_markdown(out: Outcome, gate: Gate) -> str:
    """The session report for $GITHUB_STEP_SUMMARY or a PR comment."""
    from fallback_probe.render.cells import cell, cell_list, fenced, table

    def findings_table(findings: list[Finding]) -> str:
        rows = [
            [
                cell(f.nodeid, code=True),
                cell(f.op, code=True),
                f.verdict or "gone",
                f.was or "",
                cell(", ".join(f.modules)),
                cell_list(f.sources),
            ]
            for f in findings
        ]
        return table(rows, ["test", "op", "now", "baseline", "module", "source"])

    status = "FAILED" if out.failed(gate.update) else "passed"
    what = describe_target(out.target) if out.target else "nothing probed"
    md = [
        "# fallback-probe: pytest session",
        "",
        f"**Gate {status}**: {what}{f' ({out.reason})' if out.reason else ''}; "
        f"{out.probed} tests probed; "
        f"baseline {cell(_show(gate.baseline_path, gate.config), code=True, in_table=False)}.",
        "",
    ]
    md += [f"> {cell(n)}" for n in out.notes]
    if out.errors:
        md += ["", "## Probe errors", ""]
        md += [f"- {cell(k, code=True, in_table=False)}: {cell(v)}" for k, v in out.errors.items()]
    sections = [
        ("New fallbacks or unsupported ops", out.new),
        ("Tests not in the baseline", [f for fs in out.new_tests.values() for f in fs]),
        ("Improvements", out.improved),
    ]
    for title, findings in sections:
        md += ["", f"## {title} ({len(findings)})", ""]
        md.append(findings_table(findings) if findings else "None.")
    if out.new_tests:
        md += ["", "New tests: " + cell_list(list(out.new_tests), in_table=False)]
    md += ["", f"## Every fallback and unsupported op of this run ({len(out.seen)})", ""]
    if out.seen:
        rows = [
            [cell(f.nodeid, code=True), cell(f.op, code=True), f.verdict, status]
            + [cell(", ".join(f.modules)), cell_list(f.sources)]
            for f, status in out.seen
        ]
        md.append(table(rows, ["test", "op", "verdict", "status", "module", "source"]))
    else:
        md.append("None.")
    if out.improved and not gate.update:
        cmd = gate.tighten_command(f.nodeid for f in out.improved)
        md += ["", "Tighten the baseline:", "", fenced(cmd, "sh")]
    if gate.written:
        md += ["", f"fallback-probe {gate.written}."]
    return "\n".join(md) + "\n"
