"""The gate on test suites as people write them (issue 13), through pytester subprocesses.

The device is chosen at import time, in conftest.py or in a parametrize list; models are built
in module- and session-scoped fixtures and in ``setUpClass``. Each pattern must be judged (the
emulated ``mps`` device exists for the whole session) and charged to the right owner, with and
without pytest-xdist. Judged for torch 2.13.0: ``aten::linalg_svd`` and ``aten::mode`` fall
back there, ``relu`` and ``linear`` are native.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fallback_probe.attribution import OUTSIDE_TESTS
from fallback_probe.baseline import FORMAT_1_NOTE, Baseline, compare, merge_payloads

pytest_plugins = ["pytester"]

RELEASE = ("--fallback-torch-version", "2.13.0")
SVD = {"aten::linalg_svd": "fallback"}
MODE = {"aten::mode": "fallback"}
XDIST = [pytest.param((), id="one-process"), pytest.param(("-n", "2"), id="xdist")]

# -- issue 13, "Accepted when", verbatim: the device chosen at import time -------------------------------------------
DEV_SUITE = """
import torch
DEV = "mps" if torch.backends.mps.is_available() else "cpu"

def test_svd():
    torch.linalg.svd(torch.randn(6, 4, device=DEV), full_matrices=False)

def test_values():
    torch.tensor([1.0, 2.0, 2.0], device=DEV).sum()
"""
DEV_MODE = (
    "    torch.tensor([1.0, 2.0, 2.0], device=DEV).sum()",
    "    torch.mode(torch.tensor([1.0, 2.0, 2.0], device=DEV))",
)

# ... and the same with the model built in a module-scoped fixture.
FIXTURE_SUITE = """
import pytest
import torch

@pytest.fixture(scope="module")
def model():
    dev = "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.nn.Linear(4, 6).to(dev)

def test_svd(model):
    torch.linalg.svd(model(torch.randn(3, 4, device=model.weight.device)), full_matrices=False)

def test_values(model):
    torch.tensor([1.0, 2.0, 2.0], device=model.weight.device).sum()
"""
FIXTURE_MODE = (
    "    torch.tensor([1.0, 2.0, 2.0], device=model.weight.device).sum()",
    "    torch.mode(torch.tensor([1.0, 2.0, 2.0], device=model.weight.device))",
)


def line_of(path: Path, needle: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if needle in t)


def baseline_of(path: Path) -> dict:
    return json.loads(path.joinpath("fallback-baseline.json").read_text())


@pytest.mark.parametrize(
    ("suite", "edit", "xdist"),
    [
        pytest.param(DEV_SUITE, DEV_MODE, (), id="DEV"),
        pytest.param(FIXTURE_SUITE, FIXTURE_MODE, (), id="fixture"),
        # Each xdist worker sets the module fixture up: still judged, once. (The module-level
        # constant under xdist is in test_every_pattern_is_judged_and_charged_once.)
        pytest.param(FIXTURE_SUITE, FIXTURE_MODE, ("-n", "2"), id="fixture-xdist"),
    ],
)
def test_accepted_when(
    pytester: pytest.Pytester, suite: str, edit: tuple[str, str], xdist: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_dev=suite)
    gate = ("--fallback-probe", *RELEASE, *xdist)

    update = pytester.runpytest_subprocess(*gate, "--fallback-update")
    assert update.ret == pytest.ExitCode.OK
    update.stdout.fnmatch_lines(["  test_dev.py::test_svd: aten::linalg_svd fallback"])
    recorded = baseline_of(pytester.path)
    assert recorded["target"] == {"torch": "2.13.0", "macos": "15", "mode": "predicted"}
    assert recorded["tests"] == {"test_dev.py::test_svd": SVD, "test_dev.py::test_values": {}}
    assert recorded["shared"] == {}  # building the model on mps is native: nothing to list

    unchanged = pytester.runpytest_subprocess(*gate)
    assert unchanged.ret == pytest.ExitCode.OK
    unchanged.stdout.fnmatch_lines(["fallback-probe: no new fallbacks (1 known, 0 allowed)."])

    path = pytester.path / "test_dev.py"
    path.write_text(path.read_text().replace(*edit))
    line = line_of(path, "torch.mode(")
    grown = pytester.runpytest_subprocess(*gate)
    grown.assert_outcomes(passed=2)
    assert grown.ret == pytest.ExitCode.TESTS_FAILED
    grown.stdout.fnmatch_lines(
        [
            "New fallbacks or unsupported ops (1):",
            f"  test_dev.py::test_values: aten::mode fallback in (top level) at test_dev.py:{line}",
            "fallback-probe FAILED the session: 1 new problem op.*",
        ]
    )

    baseline = pytester.path / "fallback-baseline.json"
    baseline.write_text('{"fallback_probe_baseline": 2, "tests": {\n<<<<<<< HEAD\n')
    corrupt = pytester.runpytest_subprocess(*gate)
    assert corrupt.ret == pytest.ExitCode.USAGE_ERROR
    corrupt.stderr.fnmatch_lines([f"*fallback-probe: {baseline} is not a usable baseline: *"])
    assert "Traceback" not in corrupt.stdout.str() + corrupt.stderr.str()


# -- every pattern at once, each charged to its owner ------------------------------------------------------------------
CONFTEST = """
import pytest
import torch

# Imported before the session's first hook returns: the device must exist already.
CONF_DEV = "mps" if torch.backends.mps.is_available() else "cpu"

@pytest.fixture
def device():  # function-scoped: its ops are the requesting test's
    torch.linalg.svd(torch.randn(4, 3, device=CONF_DEV))
    return CONF_DEV

@pytest.fixture(scope="session")
def encoder():  # session-scoped: charged to itself, once per session
    model = torch.nn.Linear(4, 4).to("mps")
    torch.mode(torch.tensor([1.0, 2.0, 2.0], device="mps"))
    yield model
    torch.linalg.svd(torch.randn(4, 3, device="mps"))  # its teardown is its own too
"""

PATTERNS = """
import unittest

import pytest
import torch

DEV = "mps" if torch.backends.mps.is_available() else "cpu"
DEVICES = ["cpu", "mps"] if torch.backends.mps.is_available() else ["cpu"]
TABLE = torch.mode(torch.tensor([3.0, 1.0, 3.0], device=DEV)).values  # at import


@pytest.fixture(scope="module")
def model():
    m = torch.nn.Linear(4, 4).to(DEV)
    torch.linalg.svd(m.weight.detach())
    return m


def test_constant():
    torch.mode(torch.tensor([1.0, 2.0, 2.0], device=DEV))


def test_conftest_fixture(device):
    torch.randn(3, device=device).relu()


@pytest.mark.parametrize("dev", DEVICES)
def test_parametrized(dev):
    torch.mode(torch.randn(5, device=dev))


def test_module_model(model):
    model(torch.randn(2, 4, device=DEV)).relu()


def test_module_model_again(model):
    model(torch.randn(2, 4, device=DEV))


def test_session_model(encoder):
    encoder(torch.randn(2, 4, device=DEV))


class TestPlain:
    @pytest.fixture(scope="class")
    def weights(self):
        w = torch.randn(4, 3, device=DEV)
        torch.linalg.svd(w)
        return w

    def test_uses(self, weights):
        weights.relu()


@pytest.fixture(scope="module", params=["small", 8])
def sized(request):
    x = torch.randn(request.param if request.param != "small" else 2, device=DEV)
    if request.param == "small":
        torch.mode(x)
    return x


def test_sized(sized):
    sized.relu()


class TestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.x = torch.randn(6, device=DEV)
        torch.mode(cls.x)

    def setUp(self):
        self.s = torch.linalg.svd(torch.randn(4, 3, device=DEV)).S

    def test_a(self):
        self.x.relu()

    def test_b(self):
        self.s.relu()
"""

EXPECTED_TESTS = {
    "test_patterns.py::test_constant": MODE,
    "test_patterns.py::test_conftest_fixture": SVD,
    "test_patterns.py::test_parametrized[cpu]": {},
    "test_patterns.py::test_parametrized[mps]": MODE,
    "test_patterns.py::test_module_model": {},
    "test_patterns.py::test_module_model_again": {},
    "test_patterns.py::test_session_model": {},
    "test_patterns.py::TestCase::test_a": SVD,
    "test_patterns.py::TestCase::test_b": SVD,
    "test_patterns.py::TestPlain::test_uses": {},
    "test_patterns.py::test_sized[small]": {},
    "test_patterns.py::test_sized[8]": {},
}
EXPECTED_SHARED = {
    "test_patterns.py (import)": MODE,
    "test_patterns.py::model (module fixture)": SVD,
    "conftest.py::encoder (session fixture)": {**MODE, **SVD},
    "test_patterns.py::TestCase (setUpClass)": MODE,
    "test_patterns.py::TestPlain::weights (class fixture)": SVD,
    "test_patterns.py::sized[small] (module fixture)": MODE,  # one label per parameter
}


@pytest.mark.parametrize("xdist", XDIST)
def test_every_pattern_is_judged_and_charged_once(
    pytester: pytest.Pytester, xdist: tuple[str, ...]
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_patterns=PATTERNS)
    gate = ("--fallback-probe", *RELEASE, *xdist)

    update = pytester.runpytest_subprocess(*gate, "--fallback-update")
    update.assert_outcomes(passed=12)
    assert update.ret == pytest.ExitCode.OK
    recorded = baseline_of(pytester.path)
    assert recorded["tests"] == EXPECTED_TESTS
    assert recorded["shared"] == EXPECTED_SHARED
    update.stdout.fnmatch_lines(["fallback-probe wrote the baseline * (12 tests, 6 shared setup)."])
    # A test that asked for the mps device's CPU twin is told apart, not silently passed.
    update.stdout.fnmatch_lines(
        [
            "NOTE: 1 test ran torch ops only on the CPU, so nothing was judged "
            "(test_patterns.py::test_parametrized[cpu]): they never placed a tensor on mps."
        ]
    )

    # A new fallback inside the module-scoped fixture fails the gate naming the fixture,
    # once, and no test that used it.
    path = pytester.path / "test_patterns.py"
    grown = "    torch.linalg.svd(m.weight.detach())\n    torch.mode(m.weight[0])\n"
    path.write_text(path.read_text().replace("    torch.linalg.svd(m.weight.detach())\n", grown))
    line = line_of(path, "torch.mode(m.weight[0])")
    gate_run = pytester.runpytest_subprocess(*gate)
    gate_run.assert_outcomes(passed=12)
    assert gate_run.ret == pytest.ExitCode.TESTS_FAILED
    where = f"aten::mode fallback in (top level) at test_patterns.py:{line}"
    gate_run.stdout.fnmatch_lines(
        [
            "New fallbacks or unsupported ops (1):",
            f"  test_patterns.py::model (module fixture): {where}",
            "fallback-probe FAILED the session: 1 new problem op.*",
        ]
    )
    assert gate_run.stdout.str().count(where) == 1


def test_format_1_baseline_is_read_then_converted(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_dev=DEV_SUITE)
    path = pytester.path / "fallback-baseline.json"
    old = {
        "fallback_probe_baseline": 1,
        "target": {"torch": "2.13.0", "macos": "15", "mode": "predicted"},
        "tests": {"test_dev.py::test_svd": SVD, "test_dev.py::test_values": {}},
    }
    path.write_text(json.dumps(old))
    gate = pytester.runpytest_subprocess("--fallback-probe", *RELEASE)
    assert gate.ret == pytest.ExitCode.OK  # same verdicts: the old file still gates
    gate.stdout.fnmatch_lines([f"NOTE: {FORMAT_1_NOTE.format(path=path)}"])
    update = pytester.runpytest_subprocess("--fallback-probe", "--fallback-update", *RELEASE)
    update.stdout.fnmatch_lines(
        [
            "fallback-probe wrote the baseline fallback-baseline.json (2 tests); "
            "converted it from format 1 to 2."
        ]
    )
    assert baseline_of(pytester.path) == {**old, "fallback_probe_baseline": 2, "shared": {}}


# -- in-process: the shared-setup rules ---------------------------------------------------------------------------------
def result(problems: dict[str, str], complete: bool = True, **extra: object) -> dict:
    ops = {
        op: {"verdict": v, "modules": [], "sources": [f"x.py:{i}"]}
        for i, (op, v) in enumerate(problems.items())
    }
    return {
        "target": {"torch": "2.13.0"},
        "complete": complete,
        "problems": ops,
        "allow": [],
        **extra,
    }


def test_shared_setup_absent_from_baseline_has_no_known_problems() -> None:
    base = Baseline({"torch": "2.13.0"}, {"t::a": {}}, {"m.py::f (module fixture)": SVD})
    out = compare(
        {"t::a": result({})},
        base,
        Path("b.json"),
        {
            "m.py::f (module fixture)": result({}, rerun="m.py"),  # its svd is gone
            "m.py (import)": result(MODE, rerun="m.py"),  # not listed: new problem, no new test
            "n.py (import)": result({}, rerun="n.py"),  # not listed, clean: nothing to say
        },
    )
    assert [(f.nodeid, f.op) for f in out.new] == [("m.py (import)", "aten::mode")]
    assert [(f.nodeid, f.op) for f in out.improved] == [
        ("m.py::f (module fixture)", "aten::linalg_svd")
    ]
    assert not out.new_tests and out.probed == 1  # shared setup is not counted as a test
    assert out.failed(updating=False)
    updated = base.updated(
        {"torch": "2.13.0"},
        {"t::a": result({})},
        {
            "m.py::f (module fixture)": result({}),
            "m.py (import)": result(MODE),
            "n.py (import)": result({}),
        },
        lambda f: True,
    )
    assert updated.shared == {"m.py (import)": MODE}  # listed only with problems
    assert updated.tests == {"t::a": {}}


def test_shared_setup_not_run_is_kept_unless_its_file_is_gone() -> None:
    """A subset run (``-k``, one file) must not forget the shared setup it did not reach."""
    kept = {
        OUTSIDE_TESTS: MODE,
        "<some_plugin>::db (session fixture)": SVD,
        "tests/test_a.py::model (module fixture)": SVD,
    }
    base = Baseline({}, {}, {**kept, "tests/gone.py (import)": MODE})
    updated = base.updated({}, {}, {}, lambda f: f == "tests/test_a.py")
    assert updated.shared == kept


def test_shared_setup_seen_twice_is_merged_once() -> None:
    """Its setup and teardown, or two xdist workers each setting up a module fixture."""
    a = result({"aten::mode": "fallback"})
    b = result({"aten::mode": "unsupported", "aten::linalg_svd": "fallback"}, complete=False)
    merged = merge_payloads(a, b)
    assert {op: i["verdict"] for op, i in merged["problems"].items()} == {
        "aten::mode": "unsupported",  # the worse verdict wins
        "aten::linalg_svd": "fallback",
    }
    assert merged["problems"]["aten::mode"]["sources"] == ["x.py:0"]
    assert merged["complete"] is False
    assert merge_payloads(None, a) == a
    assert merge_payloads(a, {"allow": [], "error": "boom"})["error"] == "boom"


def test_probe_records_on_an_active_emulation() -> None:
    """The plugin's per-phase probes share the session's emulation (emulations do not nest);
    each reports only the refusals made while it was open (listed, not raised)."""
    import torch

    from fallback_probe.api import Probe
    from fallback_probe.collect.emulate import emulated_mps
    from fallback_probe.report import problem_ops

    def refusals(p: Probe) -> list[str]:
        return [n for n in p.report.limits if "A Mac would refuse" in n]

    with emulated_mps() as emu:
        with Probe(mode="predict", torch_version="2.13.0", emulation=emu) as first:
            x = torch.randn(4, device="mps")
            x.double()  # a Mac refuses float64: listed on the op, the test goes on
        with Probe(mode="predict", torch_version="2.13.0", emulation=emu) as second:
            torch.mode(x)  # made under the first probe, still on the device
        assert torch.backends.mps.is_available()  # the probes left the emulation running
    assert not torch.backends.mps.is_available()
    assert refusals(first) == [] and refusals(second) == []  # on an op, not a note
    assert problem_ops(second.report) == {"aten::mode": "fallback"}
    assert problem_ops(first.report) == {"aten::_to_copy": "unsupported"}
    [row] = [r for r in first.report.ops if r.error]
    assert "float64" in row.error and row.op == "aten::_to_copy"


# -- live mode: the same attribution, observed on a real dispatcher (fpdev, no Mac here) -----------------------------
LIVE_CONFTEST = """
import pytest
import torch

from tests.fpdev import load_fpdev

load_fpdev()  # a real PrivateUse1 backend with MPS's CPU fallback


@pytest.fixture(scope="module")
def model():  # its fallback is its own, observed once
    m = torch.nn.Linear(4, 3).to("fpdev")
    torch.linalg.svd(m.weight.detach())
    return m


@pytest.fixture
def batch():  # function-scoped: the requesting test's
    x = torch.ones(6, 4, device="fpdev")  # fill_ is native on fpdev, normal_ is not
    torch.mode(x[:, 0])
    return x
"""

LIVE_TESTS = """
import torch


def test_forward(model, batch):
    model(batch).relu()


def test_again(model):
    model(torch.ones(2, 4, device="fpdev")).relu()
"""


def test_live_mode_charges_fixtures_the_same_way(
    pytester: pytest.Pytester, fpdev_build: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fpdev import ENV_VAR, REPO_ROOT

    monkeypatch.setenv(ENV_VAR, "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeini(f"[pytest]\nfallback_device_type = fpdev\nfallback_env = {ENV_VAR}\n")
    pytester.makeconftest(LIVE_CONFTEST)
    pytester.makepyfile(test_live=LIVE_TESTS)
    result = pytester.runpytest_subprocess(
        "--fallback-probe", "--fallback-mode", "live", "--fallback-update"
    )
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["observed for torch * (live mode was asked for); 2 tests probed*"])
    recorded = baseline_of(pytester.path)
    assert recorded["target"]["mode"] == "live"
    assert recorded["tests"] == {
        "test_live.py::test_forward": {"aten::mode": "fallback"},
        "test_live.py::test_again": {},
    }
    assert recorded["shared"] == {"test_live.py::model (module fixture)": SVD}
