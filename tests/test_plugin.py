"""The pytest plugin, end to end through pytester subprocesses (each one imports torch afresh).

Models run on the emulated ``mps`` device in predict mode, judged for torch 2.15.0:
``torch.mode`` has no MPS kernel in any release (fallback), ``relu`` is native.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import pytest

from fallback_probe.baseline import Baseline, compare, is_allowed
from fallback_probe.plugin import FALLBACK_ENV, _env_note

pytest_plugins = ["pytester"]

RELEASE = ("--fallback-torch-version", "2.15.0")
TARGET = {"torch": "2.15.0", "macos": "15", "mode": "predicted"}

MODEL = """
import torch

def test_native():
    torch.randn(8, device="mps").relu()

def test_mode():
    torch.mode(torch.randn(8, device="mps"))
"""


def line_of(path: Path, needle: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if needle in t)


def table_row(*cells: str) -> str:
    """A regex for one markdown table row, whatever the column padding."""
    return r"^\|\s*" + r"\s*\|\s*".join(re.escape(c) for c in cells) + r"\s*\|"


def write_baseline(path: Path, tests: dict[str, dict[str, str]], **target: str) -> str:
    text = Baseline({**TARGET, **target}, tests).dumps()
    path.joinpath("fallback-baseline.json").write_text(text)
    return text


def read_baseline(path: Path) -> dict:
    return json.loads(path.joinpath("fallback-baseline.json").read_text())


def test_inactive_unless_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys
        import pytest

        @pytest.mark.fallback_probe(allow=["aten::mode"])
        def test_untouched():
            assert "torch" not in sys.modules

        def test_fixture_skips(fallback_probe):
            raise AssertionError("not reached")
        """
    )
    result = pytester.runpytest_subprocess("--strict-markers", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*fallback-probe is off: run pytest with --fallback-probe*"])
    result.stdout.no_fnmatch_line("*== fallback-probe ==*")
    assert not pytester.path.joinpath("fallback-baseline.json").exists()
    result = pytester.runpytest_subprocess("--fallback-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fallback-update needs --fallback-probe*"])


def test_first_run_then_update_then_clean_pass(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_model=MODEL)
    first = pytester.runpytest_subprocess("--fallback-probe", *RELEASE)
    first.assert_outcomes(passed=2)  # the tests pass; the gate fails the session
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    first.stdout.fnmatch_lines(
        [
            "*== fallback-probe ==*",
            "predicted for torch 2.15.0 on macOS 15 (auto: no MPS on *",
            "NOTE: No baseline at *fallback-baseline.json: every probed test is new.",
            "Tests not in the baseline (2):",
            "  test_model.py::test_mode: aten::mode fallback",
            "  test_model.py::test_native: no problem ops",
            "fallback-probe FAILED the session: 2 tests not in the baseline. If that is intended,"
            " accept it: pytest --fallback-probe --fallback-update --fallback-torch-version 2.15.0",
        ]
    )
    assert not pytester.path.joinpath("fallback-baseline.json").exists()  # only on request

    update = pytester.runpytest_subprocess("--fallback-probe", "--fallback-update", *RELEASE)
    assert update.ret == pytest.ExitCode.OK
    update.stdout.fnmatch_lines(
        ["fallback-probe wrote the baseline fallback-baseline.json (2 tests)."]
    )
    text = pytester.path.joinpath("fallback-baseline.json").read_text()
    assert text == (
        "{\n"
        '  "fallback_probe_baseline": 2,\n'
        '  "shared": {},\n'
        '  "target": {\n'
        '    "macos": "15",\n'
        '    "mode": "predicted",\n'
        '    "torch": "2.15.0"\n'
        "  },\n"
        '  "tests": {\n'
        '    "test_model.py::test_mode": {\n'
        '      "aten::mode": "fallback"\n'
        "    },\n"
        '    "test_model.py::test_native": {}\n'
        "  }\n"
        "}\n"
    )

    pytester.makeini("[pytest]\nfallback_probe = true\n")  # the ini opt-in, no flag
    clean = pytester.runpytest_subprocess(*RELEASE)
    assert clean.ret == pytest.ExitCode.OK
    clean.stdout.fnmatch_lines(["fallback-probe: no new fallbacks (1 known, 0 allowed)."])
    assert pytester.path.joinpath("fallback-baseline.json").read_text() == text


def test_gate_new_improved_allowed_opted_out(pytester: pytest.Pytester) -> None:
    source = """
        import pytest
        import torch

        class Pool(torch.nn.Module):
            def forward(self, x):
                return torch.mode(x).values

        def test_grows():
            Pool()(torch.randn(8, device="mps"))

        def test_shrinks():
            torch.randn(8, device="mps").relu()

        @pytest.mark.fallback_probe(allow=["aten::mode"])
        def test_allowed(fallback_probe):
            torch.mode(torch.randn(8, device="mps"))
            assert fallback_probe.problems == {"aten::mode": "fallback"}

        @pytest.fixture
        def warmed():
            torch.mode(torch.randn(8, device="mps"))

        @pytest.mark.fallback_probe(allow=["aten::mode"])
        def test_setup_judged(warmed, fallback_probe):
            torch.randn(8, device="mps").relu()
            assert fallback_probe.problems == {}  # the fixture reports on the body alone

        @pytest.mark.no_fallback_probe
        def test_opted_out():
            assert torch.backends.mps.is_available()  # the session's device, but not probed
            torch.mode(torch.randn(8, device="mps"))

        def test_cpu_only():
            torch.randn(8).relu()

        def test_broken():
            torch.mode(torch.randn(8, device="mps"))
            raise ValueError("model bug")

        def test_skips():  # skipped at run time: not compared, whatever it ran
            torch.mode(torch.randn(8, device="mps"))
            pytest.skip("not today")

        @pytest.fixture
        def unready():
            torch.mode(torch.randn(8, device="mps"))
            pytest.skip("no data")

        def test_skips_in_setup(unready):
            pass
        """
    pytester.makepyfile(test_g=source)
    mode_line = line_of(pytester.path / "test_g.py", "torch.mode(x)")
    known = {"aten::mode": "fallback", "aten::sort": "fallback"}
    tests = {f"test_g.py::test_{n}": {} for n in ("grows", "allowed", "cpu_only", "setup_judged")}
    tests |= {
        "test_g.py::test_shrinks": {"aten::mode": "fallback"},
        "test_g.py::test_broken": known,
    }
    before = write_baseline(pytester.path, tests, torch="2.14.1")

    result = pytester.runpytest_subprocess(
        "--fallback-probe", *RELEASE, "--fallback-report", "out/report.md"
    )
    result.assert_outcomes(passed=6, failed=1, skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*ValueError: model bug",  # the test's own failure, as usual
            "*== fallback-probe ==*",
            "NOTE: The baseline holds verdicts predicted for torch 2.14.1 on macOS 15; this run's "
            "are predicted for torch 2.15.0 on macOS 15. Compared anyway*",
            "NOTE: 1 test ran torch ops only on the CPU, so nothing was judged "
            "(test_g.py::test_cpu_only): they never placed a tensor on mps.",
            "New fallbacks or unsupported ops (1):",
            f"  test_g.py::test_grows: aten::mode fallback in Pool at test_g.py:{mode_line}",
            "Improvements (1):",
            "  test_g.py::test_shrinks: aten::mode fallback -> gone",
            "Tighten the baseline: pytest --fallback-probe --fallback-update "
            "--fallback-torch-version 2.15.0 test_g.py::test_shrinks",
            "fallback-probe FAILED the session: 1 new problem op.*",
        ]
    )
    # test_broken stopped early: its unreached aten::sort is no improvement.
    result.stdout.no_fnmatch_line("*aten::sort*")
    result.stdout.no_fnmatch_line("*test_opted_out*")
    result.stdout.no_fnmatch_line("*test_skips*")
    assert pytester.path.joinpath("fallback-baseline.json").read_text() == before
    report = pytester.path.joinpath("out", "report.md").read_text()
    assert "**Gate FAILED**" in report
    grows = ("`test_g.py::test_grows`", "`aten::mode`", "fallback", "", "Pool")
    assert re.search(table_row(*grows, f"`test_g.py:{mode_line}`"), report, re.M)
    allowed = ("`test_g.py::test_allowed`", "`aten::mode`", "fallback", "allowed")
    assert re.search(table_row(*allowed), report, re.M)
    # The gate judged the setup of test_setup_judged (its fixture's aten::mode), its fixture not.
    setup = ("`test_g.py::test_setup_judged`", "`aten::mode`", "fallback", "allowed")
    assert re.search(table_row(*setup), report, re.M)


def test_xdist_merges_workers_and_writes_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one=MODEL, test_two=MODEL)
    ids = [f"test_{f}.py::test_{t}" for f in ("one", "two") for t in ("mode", "native")]
    write_baseline(pytester.path, dict.fromkeys(ids, {}))
    line = line_of(pytester.path / "test_one.py", "torch.mode(")
    # One run only (each xdist worker pays torch's first-probe import cost): updating, so the
    # findings of both workers are listed as accepted and the controller writes once.
    result = pytester.runpytest_subprocess(
        "-n", "2", "--fallback-probe", "--fallback-update", *RELEASE, "--fallback-report", "r.md"
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*2 workers [[]4 items[]]*",
            "New fallbacks or unsupported ops (2):",  # found by both workers, accepted
            f"  test_one.py::test_mode: aten::mode fallback in (top level) at test_one.py:{line}",
            f"  test_two.py::test_mode: aten::mode fallback in (top level) at test_two.py:{line}",
            "fallback-probe wrote the baseline fallback-baseline.json (4 tests).",
            "fallback-probe: updating, 2 new problem ops, 0 new tests accepted.",
        ]
    )
    assert result.stdout.str().count("wrote the baseline") == 1  # the controller only
    mode = {"aten::mode": "fallback"}
    assert read_baseline(pytester.path)["tests"] == {
        "test_one.py::test_mode": mode,
        "test_one.py::test_native": {},
        "test_two.py::test_mode": mode,
        "test_two.py::test_native": {},
    }
    assert not list(pytester.path.glob(".*.tmp"))  # no stray temp file
    assert "## New fallbacks or unsupported ops (2)" in pytester.path.joinpath("r.md").read_text()


@pytest.mark.parametrize(
    "text",
    ['{"tests": {\n<<<<<<< HEAD\n', '{"fallback_probe_baseline": 1, "target": {}, "tests": []}'],
)
def test_corrupt_baseline_is_a_usage_error(pytester: pytest.Pytester, text: str) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    path = pytester.path.joinpath("fallback-baseline.json")
    path.write_text(text)
    result = pytester.runpytest_subprocess("--fallback-probe", "--fallback-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*fallback-probe: {path} is not a usable baseline: *"])
    assert path.read_text() == text  # never overwritten


def test_probe_failure_is_reported_plainly(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import os

        # Set by the plugin before conftest files load, so before they can import torch.
        assert os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"

        from fallback_probe.api import Probe

        def broken(self):
            raise RuntimeError("no emulation today")

        Probe.__enter__ = broken
        """
    )
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--fallback-probe", "--fallback-update")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # even when updating
    # The session's first probe opened before conftest.py broke Probe: every later owner
    # (the test module's import, the test) is named with the error.
    why = "the probe could not start: RuntimeError: no emulation today"
    result.stdout.fnmatch_lines(
        [
            "Probe errors (3):",
            f"  test_x.py::test_x: {why}",
            f"  (outside tests: conftest.py files, plugins, collection): {why}",
            f"  test_x.py (import): {why}",
        ]
    )
    result = pytester.runpytest_subprocess("--fallback-probe", "--fallback-torch-version", "1.0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fallback-torch-version: *1.0*"])


# -- in-process: the fallback variable and the comparison rules --------------------------------------------------------
def result(problems: dict[str, str], complete: bool = True, allow: tuple = ()) -> dict:
    ops = {op: {"verdict": v, "modules": [], "sources": []} for op, v in problems.items()}
    return {"target": TARGET, "complete": complete, "problems": ops, "allow": list(allow)}


def test_compare_rules() -> None:
    base = Baseline(
        dict(TARGET), {"t::a": {"aten::x": "fallback"}, "t::b": {"aten::y": "unsupported"}}
    )
    out = compare(
        {
            "t::a": result({"aten::x": "unsupported"}),  # worse: new
            "t::b": result({"aten::y": "fallback", "aten::z.out": "fallback"}, allow=["aten::z"]),
            "t::c": result({}),
        },
        base,
        Path("b.json"),
    )
    assert [(f.nodeid, f.op, f.was) for f in out.new] == [("t::a", "aten::x", "fallback")]
    assert [(f.nodeid, f.op, f.verdict) for f in out.improved] == [("t::b", "aten::y", "fallback")]
    assert list(out.new_tests) == ["t::c"] and out.allowed == 1
    assert out.failed(updating=False) and not out.failed(updating=True)
    assert not out.notes
    cpu = compare({"t::a": {**result({}), "cpu_only": True}}, base, Path("b.json"))
    assert cpu.notes == [
        "1 test ran torch ops only on the CPU, so nothing was judged (t::a): they never placed "
        "a tensor on mps."
    ]


class FakeConfig:
    option = known_args_namespace = argparse.Namespace(fallback_mode="auto")

    def __init__(self) -> None:
        self.stash = pytest.Stash()


def test_fallback_variable_set_early_or_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FALLBACK_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert _env_note(FakeConfig()) is None  # type: ignore[arg-type]
    assert os.environ[FALLBACK_ENV] == "1"
    monkeypatch.delenv(FALLBACK_ENV)
    monkeypatch.setitem(sys.modules, "torch", sys)  # torch came first: too late to matter
    note = _env_note(FakeConfig())  # type: ignore[arg-type]
    assert note is not None and "torch was imported before" in note


def test_allow_patterns() -> None:
    assert is_allowed("aten::mode", ["aten::mode"])
    assert is_allowed("aten::mode.values", ["aten::mode"])
    assert is_allowed("aten::upsample_bicubic2d.out", ["aten::upsample_*"])
    assert not is_allowed("aten::mode_x", ["aten::mode"])
