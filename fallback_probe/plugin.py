"""pytest plugin: fail CI when a test gains an MPS fallback its baseline does not know.

Opt-in (``--fallback-probe`` or ``fallback_probe = true`` in the ini file): when off, only the
options, markers and an inert fixture are registered and torch is never imported. When on,
the process decides live or predict before ``conftest.py`` files load; in predict mode the
emulated ``mps`` device exists from then until the session ends, so import-time device
choices, collection and fixtures of every scope see a Mac. Every op is charged to a test or
to shared setup (``attribution``); a test's problem ops travel to the controller in its
teardown report's ``user_properties`` and shared setup's in the xdist worker output, and the
controller compares them with the baseline file. See docs/pytest-plugin.md.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Generator, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fallback_probe.atomic import write_text
from fallback_probe.attribution import FALLBACK_ENV, OUTSIDE_TESTS, Owner, Recording, fixture_label
from fallback_probe.baseline import (
    BASELINE_FORMAT,
    Baseline,
    Finding,
    Outcome,
    compare,
    count_text,
    describe_target,
    merge_payloads,
)
from fallback_probe.errors import ProbeError
from fallback_probe.options import PROBE_OPTIONS, add_options
from fallback_probe.records import Verdict

if TYPE_CHECKING:  # torch-heavy modules are imported only once a probed test runs
    from fallback_probe.api import Probe
    from fallback_probe.report import Report

DEFAULT_BASELINE = "fallback-baseline.json"
PROPERTY = "fallback_probe"  # the user_properties (and xdist worker output) key of results
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
    parser.addini(
        "fallback_device_type",
        "live mode only: the device to observe instead of mps (an out-of-tree backend "
        "with a boxed CPU fallback, like the CLI's --device-type)",
        default="mps",
    )
    parser.addini(
        "fallback_env",
        "live mode with fallback_device_type: that backend's fallback variable",
        default="",
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
_RECORDING = pytest.StashKey["Recording | None"]()
_OUTSIDE = pytest.StashKey[Owner]()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Earliest point with options parsed: before conftest.py files can import torch, and
    # before they or test modules choose a device (``torch.backends.mps.is_available()``).
    if _active(early_config, early=True):
        early_config.stash[_ENV_NOTE] = _env_note(early_config, early=True)
        _start_recording(early_config, early=True)


@pytest.hookimpl(tryfirst=True)
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
    _start_recording(config)
    gate = Gate(config)
    config.stash[_GATE] = gate
    config.pluginmanager.register(gate, "fallback_probe_gate")


def pytest_unconfigure(config: pytest.Config) -> None:
    # In-process runs (pytester.runpytest, pytest.main) must not leak the variable.
    if config.stash.get(_ENV_SET, False):
        os.environ.pop(FALLBACK_ENV, None)


def _check_release(version: str | None) -> None:
    if version == "all":
        raise pytest.UsageError("--fallback-torch-version all: a gate compares one release")
    if version is not None:
        from fallback_probe import oplists

        try:
            oplists.resolve_release(version)
        except ProbeError as exc:
            raise pytest.UsageError(f"--fallback-torch-version: {exc}") from None


def _runs_tests(config: pytest.Config, early: bool) -> bool:
    """An xdist controller only distributes: its workers run (and emulate) the tests."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # set before a worker parses its arguments
        return True
    ns = config.known_args_namespace if early else config.option
    return not (getattr(ns, "numprocesses", None) or getattr(ns, "tx", None))


def _start_recording(config: pytest.Config, early: bool = False) -> None:
    """Live or predict, decided once per process; in predict mode the emulated ``mps``
    device is entered here and stays until the session ends (ended by ``config`` cleanup)."""
    if _RECORDING in config.stash:
        return
    if not _runs_tests(config, early):
        config.stash[_RECORDING] = None
        return
    torch_version = _option(config, "fallback_torch_version", None, early)
    _check_release(torch_version)
    from fallback_probe.collect.mode import decide
    from fallback_probe.records import Mode

    device_type = config.getini("fallback_device_type") or "mps"
    mode, reason = decide(_option(config, "fallback_mode", "auto", early), device_type)
    device = _option(config, "fallback_device", "cpu", early)
    emulation = None
    if mode is Mode.PREDICTED and device_type != "mps":
        raise pytest.UsageError(
            f"fallback_device_type = {device_type}: only mps is emulated, so another device "
            f"is observed live: run with --fallback-mode live ({reason})"
        )
    if mode is Mode.PREDICTED:
        from fallback_probe.collect.emulate import emulated_mps

        stack = ExitStack()
        emulation = stack.enter_context(emulated_mps(device))
        config.add_cleanup(stack.close)
    macos = _option(config, "fallback_macos", None, early)
    rec = Recording(mode.value, torch_version, macos, device, emulation)
    rec.reason = reason
    rec.device_type = device_type
    from fallback_probe.api import fallback_env_for

    rec.fallback_env = config.getini("fallback_env") or fallback_env_for(device_type)
    config.add_cleanup(rec.finish)  # before the emulation ends (cleanups run last-in first)
    config.stash[_RECORDING] = rec
    # Until collection ends, ops outside a test module's import (conftest.py files, hooks)
    # are charged to this owner; their source lines say where they ran.
    outside = config.stash[_OUTSIDE] = Owner(OUTSIDE_TESTS)
    rec.push(outside)


def _allow_list(node: pytest.Item | pytest.Collector) -> tuple[str, ...]:
    out: list[str] = []
    for mark in node.iter_markers("fallback_probe"):
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


# -- one test ----------------------------------------------------------------------------
class ProbedTest(Owner):
    """The ``fallback_probe`` fixture: what the probe saw of this test's call phase.

    Inside the test body ``report`` and ``problems`` are judged from the call phase's ops so
    far; after it, from the whole call phase. The gate judges more: the test's setup and
    teardown too (function-scoped fixtures, ``setUp``), folded into the same owner.
    """

    def __init__(self, nodeid: str, allow: tuple[str, ...], gate: Gate, record: bool) -> None:
        super().__init__(nodeid, allow, rerun=nodeid, record=record)
        self.nodeid = nodeid
        self._gate = gate
        self._final: Report | None = None

    @property
    def report(self) -> Report:
        if self._final is not None:
            return self._final
        probe = self._gate.recording.probe if self._gate.recording else None
        if probe is None or self._gate.recording.stack[-1] is not self:  # type: ignore[union-attr]
            raise RuntimeError(f"{self.nodeid} is not being probed: {self.error or 'not yet'}")
        return self._snapshot(probe)

    @property
    def problems(self) -> dict[str, Verdict]:
        """op -> verdict for fallbacks and unsupported ops, allowed ones included."""
        from fallback_probe.report import problem_ops

        return problem_ops(self.report)

    def _snapshot(self, probe: Probe) -> Report:  # the fixture asked while the test still runs
        import platform

        from fallback_probe.collect import Collection, this_host
        from fallback_probe.records import Mode
        from fallback_probe.verdicts import make_report

        rec = self._gate.recording
        assert rec is not None
        col = Collection(Mode(rec.mode), rec.reason, rec.device_type, this_host())
        col.trace = probe.trace_so_far()
        col.complete = False
        col.error = "the test is still running"
        if rec.mode == Mode.LIVE.value:
            col.macos = platform.mac_ver()[0] or None
        return make_report(col, rec.torch_version, rec.macos)


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
        self.recording: Recording | None = config.stash.get(_RECORDING, None)
        self.update: bool = config.getoption("fallback_update")
        self.torch_version: str | None = config.getoption("fallback_torch_version")
        self.baseline_path = self._baseline_path()
        report = config.getoption("fallback_report")
        self.report_path = Path(config.invocation_params.dir, report) if report else None
        self.results: dict[str, dict[str, Any]] = {}  # test node id -> payload
        self.shared: dict[str, dict[str, Any]] = {}  # shared-setup label -> payload
        self.skipped: set[str] = set()
        self.opted_out: set[str] = set()
        self.outcome: Outcome | None = None
        self.written: str | None = None  # what happened to the baseline file
        _check_release(self.torch_version)
        try:
            self.baseline = None if self.is_worker else Baseline.load(self.baseline_path)
        except ProbeError as exc:
            raise pytest.UsageError(f"fallback-probe: {exc}") from None

    def _baseline_path(self) -> Path:
        given = self.config.getoption("fallback_baseline")
        if given:
            return Path(self.config.invocation_params.dir, given)
        return Path(self.config.rootpath, self.config.getini("fallback_baseline"))

    def probed_test(self, item: pytest.Item) -> ProbedTest:
        probed = item.stash.get(_PROBED, None)
        if probed is None:
            record = item.get_closest_marker("no_fallback_probe") is None
            probed = ProbedTest(item.nodeid, _allow_list(item), self, record)
            item.stash[_PROBED] = probed
        return probed

    def _payload(self, owner: Owner) -> dict[str, Any]:
        reason = self.recording.reason if self.recording else ""
        return owner.payload(reason, self.config.stash.get(_ENV_NOTE, None))

    def _keep_shared(self, owner: Owner) -> None:
        self.shared[owner.key] = merge_payloads(self.shared.get(owner.key), self._payload(owner))

    # -- running (workers, or the only process) -----------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(
        self, collector: pytest.Collector
    ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        """A test module's import (device constants, module-level models, parametrize lists)
        is charged to the module, once: a test may not even be selected."""
        rec = self.recording
        if rec is None or not isinstance(collector, pytest.Module):
            return (yield)
        owner = Owner(f"{collector.nodeid} (import)", rerun=collector.nodeid)
        rec.push(owner)
        try:
            report = yield
        finally:
            rec.pop(owner)
        if collector.get_closest_marker("no_fallback_probe") is None:
            owner.allow = _allow_list(collector)
            self._keep_shared(owner)
        return report

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        outside = self.config.stash.get(_OUTSIDE, None)
        if self.recording is not None and outside is not None and outside in self.recording.stack:
            self.recording.pop(outside)
            self._keep_shared(outside)

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        """A fixture wider than a function (and ``setUpClass``) is charged for its own setup
        and teardown; a function-scoped one stays with the test that requested it."""
        rec = self.recording
        if rec is None or fixturedef.scope == "function":
            return (yield)
        label, rerun = fixture_label(fixturedef, request, self.config.rootpath)
        node = request.node
        allow, record = _allow_list(node), node.get_closest_marker("no_fallback_probe") is None
        torn: list[Owner] = []

        def start_teardown() -> None:
            torn.append(Owner(label, allow, rerun, record))
            rec.push(torn[0])

        def end_teardown() -> None:
            if torn:
                rec.pop(torn[0])
                self._keep_shared(torn[0])

        # Finalizers run last-in first: end_teardown after the fixture's own teardown,
        # start_teardown (added once it is set up) before it.
        fixturedef.addfinalizer(end_teardown)
        owner = Owner(label, allow, rerun, record)
        rec.push(owner)
        try:
            result = yield
        except BaseException as exc:
            rec.pop(owner, exc)
            self._keep_shared(owner)
            raise
        rec.pop(owner)
        self._keep_shared(owner)
        fixturedef.addfinalizer(start_teardown)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        if self.recording is None:
            return (yield)
        self.recording.push(self.probed_test(item))
        try:
            return (yield)
        except BaseException as exc:
            self.recording.cut(exc)  # setup stopped early: judged on the ops it reached
            raise

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        rec, probed = self.recording, self.probed_test(item)
        if rec is None:
            return (yield)
        # The fixture reports on the call phase alone, so it gets its own probe; other tests
        # keep one probe from setup to teardown (each costs about 0.3 ms to open and judge).
        own = "fallback_probe" in getattr(item, "fixturenames", ())
        if own:
            rec.cut()
        try:
            result = yield
        except BaseException as exc:
            probed.complete = False  # stopped early: judged on the ops it reached
            if own:
                probed._final = rec.cut(exc)
            raise
        if own:
            probed._final = rec.cut()
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        rec, probed = self.recording, self.probed_test(item)
        try:
            return (yield)
        except BaseException as exc:
            if rec is not None:
                rec.pop(probed, exc)
            raise
        finally:
            if rec is not None and probed in rec.stack:
                rec.pop(probed)
            if probed.record:
                payload = json.dumps(self._payload(probed), sort_keys=True)
            else:
                payload = json.dumps({"opted_out": True})
            item.user_properties.append((PROPERTY, payload))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        data = getattr(node, "workeroutput", {}).get(PROPERTY)
        for key, payload in json.loads(data or "{}").items():
            self.shared[key] = merge_payloads(self.shared.get(key), payload)

    # -- collecting and comparing (the controller, or the only process) -----------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker:
            return
        if report.skipped and report.when in ("setup", "call"):
            self.skipped.add(report.nodeid)  # skipped or xfailed at run time: not run
        if report.when != "teardown" or report.nodeid in self.skipped:
            return
        for name, value in report.user_properties:
            if name == PROPERTY:
                data = json.loads(value)
                if data.get("opted_out"):
                    self.opted_out.add(report.nodeid)
                else:
                    self.results[report.nodeid] = data

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Charge what is still open (an interrupted run). A worker hands its shared setup to
        # the controller in its xdist output; the controller merges all (pytest_testnodedown).
        if self.recording is not None:
            for owner in self.recording.finish():
                if not isinstance(owner, ProbedTest):
                    self._keep_shared(owner)
        if self.is_worker:
            self.config.workeroutput[PROPERTY] = json.dumps(self.shared)  # type: ignore[attr-defined]
            return
        if self.config.option.collectonly:
            return
        outcome = self.outcome = compare(
            self.results, self.baseline, self.baseline_path, self.shared
        )
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
        if old is None and outcome.probed == 0:  # shared setup alone is no baseline
            self.written = "baseline not written: no test was probed"
            return
        base = old or Baseline({}, {})
        for nodeid in self.opted_out:
            base.tests.pop(nodeid, None)
        root = self.config.rootpath
        target = outcome.target or base.target
        new = base.updated(dict(target), self.results, self.shared, lambda f: (root / f).exists())
        text = new.dumps()
        path, shown = self.baseline_path, _show(self.baseline_path, self.config)
        what = count_text(len(new.tests), "test") + (
            f", {len(new.shared)} shared setup" if new.shared else ""
        )
        if path.exists() and path.read_text(encoding="utf-8") == text:
            self.written = f"baseline {shown} is up to date ({what})"
            return
        write_text(path, text)
        self.written = f"wrote the baseline {shown} ({what})"
        if old is not None and old.format != BASELINE_FORMAT:
            self.written += f"; converted it from format {old.format} to {BASELINE_FORMAT}"

    def rerun_args(self, keys: Iterable[str]) -> list[str] | None:
        """pytest arguments that run ``keys`` (tests or shared setup); ``None``: everything."""
        out = self.outcome
        args = []
        for key in keys:
            if out is not None and key in out.rerun:
                if out.rerun[key] is None:
                    return None
                args.append(out.rerun[key])
            else:
                args.append(key)
        return sorted(set(args))  # type: ignore[arg-type]

    def tighten_command(self, keys: Iterable[str]) -> str:
        """The exact command that rewrites the baseline entries of ``keys``."""
        args = ["pytest", "--fallback-probe", "--fallback-update"]
        if self.config.getoption("fallback_baseline"):
            args += ["--fallback-baseline", _show(self.baseline_path, self.config)]
        for opt in PROBE_OPTIONS:
            value = self.config.getoption(f"fallback_{opt.dest}")
            if value is not None and value != opt.default:
                args += [f"--fallback-{opt.name}", str(value)]
        args += self.rerun_args(keys) or []
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
