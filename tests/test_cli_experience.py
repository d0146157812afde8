"""A first run as a new user sees it (issue 14): clean stdout, honest timeouts, settings
checked, help everywhere, nothing judged said out loud, progress, one naming scheme."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fallback_probe.cli import main
from fallback_probe.progress import Progress
from fallback_probe.records import Mode, Verdict
from fallback_probe.render import Format, render
from fallback_probe.report import Report
from tests.test_cli import ROOT, SCRIPTS, run_cli, run_json

EXAMPLE = "docs/examples/simple_cnn.py"


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


# -- 1. stdout holds only the report ---------------------------------------------------------
def test_redirected_stdout_is_the_report_alone_and_the_script_prints_on_stderr() -> None:
    r = run_cli(EXAMPLE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# fallback-probe report\n")
    assert "device=" not in r.stdout
    assert re.search(r"^device=mps loss=\d", r.stderr, re.M)  # still visible, on stderr


def test_with_o_the_script_keeps_its_stdout(tmp_path: Path) -> None:
    r = run_cli(EXAMPLE, "-o", str(tmp_path / "r.md"))
    assert r.returncode == 0, r.stderr
    assert re.match(r"device=mps loss=\d", r.stdout)
    assert (tmp_path / "r.md").read_text().startswith("# fallback-probe report\n")


# -- 2. --timeout times the script ---------------------------------------------------------
def test_timeout_counts_from_the_script_and_its_stop_is_silent(tmp_path: Path) -> None:
    # Torch's import alone takes longer than 1 s here: counted from the child's start, the
    # run would end before tracing, with no report.
    r, d = run_json(
        tmp_path / "r.json", str(SCRIPTS / "sleeps_noisily.py"), "--no-emulate", "--timeout", "1"
    )
    assert r.returncode == 3, r.stderr
    assert d["complete"] is False and "--timeout 1 s" in d["error"]
    assert any(o["op"] == "aten::mode" for o in d["ops"])
    assert "the script's own line" in r.stdout
    assert "noise" not in r.stdout + r.stderr  # what ran while it was stopped stays out
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_timeout_must_be_above_zero(value: str, capsys) -> None:
    assert main([EXAMPLE, "--timeout", value]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("fallback-probe: error: argument --timeout:")
    assert "above 0" in line


# -- 3. a bad GITHUB_STEP_SUMMARY never changes the outcome ---------------------------------
@pytest.mark.parametrize("where", ["missing/summary.md", "."])
def test_bad_step_summary_is_one_warning_and_the_runs_own_exit_code(
    tmp_path: Path, where: str
) -> None:
    r = run_cli(
        str(SCRIPTS / "one_fallback.py"),
        "--no-emulate",
        "--fail-on",
        "fallback",
        env={"GITHUB_STEP_SUMMARY": str(tmp_path / where)},
    )
    assert r.returncode == 1, r.stderr  # --fail-on's code, not an error's
    assert "Traceback" not in r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "GITHUB_STEP_SUMMARY" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("fallback-probe: warning:")
    assert r.stdout.startswith("# fallback-probe report")


# -- 4. settings are validated ---------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "14.x", "11", "", "14.4.1.2"])
def test_bad_macos_is_one_line_with_the_accepted_form(value: str, capsys) -> None:
    assert main([EXAMPLE, "--macos", value]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "argument --macos" in line and "MAJOR[.MINOR[.PATCH]]" in line


@pytest.mark.parametrize("value", ["13", "14.4", "15.0.1"])
def test_good_macos_versions_pass(value: str) -> None:
    from fallback_probe.options import macos_version

    assert macos_version(value) == value


# -- 5. help works everywhere ----------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["oplists", "--help"],
        ["oplists", "build", "--help"],
        ["oplists", "verify", "--help"],
        ["ops", "--help"],
        ["render", "--help"],
        ["diff", "--help"],
    ],
)
def test_every_command_prints_help(argv: list[str]) -> None:
    r = run_cli(*argv)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: fallback-probe")
    assert r.stderr == ""


def test_oplists_without_a_command_is_one_line(capsys) -> None:
    assert main(["oplists"]) == 2
    assert "fallback-probe oplists --help" in _one_line(capsys.readouterr().err)


# -- 6. nothing judged, 7. --fail-on says why, issue 15.3 not judged in the headline -------
def test_nothing_judged_is_said_and_distinguishable(tmp_path: Path) -> None:
    r, d = run_json(
        tmp_path / "r.json",
        str(SCRIPTS / "cpu_only.py"),
        "--fail-on",
        "fallback",
        "--fail-on",
        "unsupported",
    )
    assert r.returncode == 0, r.stderr
    assert "fallback-probe: warning: no op reached the mps device" in r.stderr
    assert d["outcome"] == "nothing_judged"
    assert d["summary"] == {"native": 0, "fallback": 0, "unsupported": 0, "not_judged": 0}


def test_fail_on_says_why_in_one_line() -> None:
    r = run_cli(str(SCRIPTS / "one_fallback.py"), "--no-emulate", "--fail-on", "fallback")
    assert r.returncode == 1
    why = [ln for ln in r.stderr.splitlines() if "--fail-on" in ln]
    assert why == ["fallback-probe: exit 1: --fail-on fallback matched 1 ops: aten::mode"]


def test_unjudged_ops_are_counted_in_the_headline_json_and_stderr(tmp_path: Path) -> None:
    r, d = run_json(tmp_path / "r.json", str(SCRIPTS / "other_library_op.py"))
    assert r.returncode == 0, r.stderr
    assert d["summary"]["not_judged"] == 1 and d["outcome"] == "partly_judged"
    assert re.search(r"0 fallback, 0 unsupported, \d+ native, 1 not judged", r.stderr)
    assert "1 ops reached mps but were not judged: probe_other::twice" in r.stderr
    md = render(Report.from_dict(d), Format.MARKDOWN)
    assert "1 not judged**" in md


# -- 8. progress -----------------------------------------------------------------------------
def test_progress_is_off_when_stderr_is_not_a_terminal() -> None:
    r = run_cli(EXAMPLE, "--torch-version", "all")
    assert r.returncode == 0, r.stderr
    assert "fallback-probe: running" not in r.stderr and "judging" not in r.stderr


def test_progress_forced_shows_the_run_and_every_release_judged() -> None:
    r = run_cli(EXAMPLE, "--torch-version", "all", "--progress")
    assert r.returncode == 0, r.stderr
    assert "fallback-probe: running simple_cnn.py:" in r.stderr
    assert "judging against torch 2.0.1 (1/16 releases)" in r.stderr
    assert "judging against torch 2.15.0 (16/16 releases)" in r.stderr
    assert "\x1b[K" not in r.stderr  # plain lines when not a terminal
    assert r.stdout.startswith("# fallback-probe report")


def _stderr_on_a_terminal(*args: str) -> str:
    import pty

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fallback_probe", *args],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=ROOT,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the other end closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    return b"".join(chunks).decode()


def test_progress_redraws_one_line_on_a_terminal_and_can_be_turned_off() -> None:
    on = _stderr_on_a_terminal(str(SCRIPTS / "sleeps_noisily.py"), "--timeout", "3")
    assert "\r\x1b[Kfallback-probe: running sleeps_noisily.py:" in on
    assert re.search(r"running sleeps_noisily.py: [\d,]+ ops recorded, \d+s", on)
    # The script's line clears the status line first instead of running on after it.
    assert "\r\x1b[Kthe script's own line" in on
    assert "running" not in on.split("waiting...", 1)[1]
    off = _stderr_on_a_terminal(
        str(SCRIPTS / "sleeps_noisily.py"), "--timeout", "1", "--no-progress"
    )
    assert "fallback-probe: running" not in off and "\x1b[K" not in off


def test_progress_helper_for_other_callers() -> None:
    quiet = io.StringIO()  # not a terminal: off unless forced
    Progress(stream=quiet).update("3 tests probed")
    assert quiet.getvalue() == ""
    forced = io.StringIO()
    p = Progress(True, forced)
    p.update("3 tests probed")
    p.update("4 tests probed")  # throttled
    p.update("5 tests probed", force=True)
    assert forced.getvalue() == "fallback-probe: 3 tests probed\nfallback-probe: 5 tests probed\n"


# -- 9. one naming scheme, 10. bytes of every output -----------------------------------------
def test_called_as_sits_next_to_the_op_in_every_table_and_the_json(tmp_path: Path) -> None:
    r, d = run_json(tmp_path / "r.json", str(SCRIPTS / "outputs.py"), "--torch-version", "all")
    assert r.returncode == 0, r.stderr
    m = d["matrix"]
    assert m["called_as"]["aten::lerp.Scalar_out"] == ["aten::lerp_.Scalar"]
    assert m["ops"]["aten::lerp.Scalar_out"]["2.0.1"] == "fallback"
    md = render(Report.from_dict(d), Format.MARKDOWN)
    row = re.compile(r"^\| `aten::lerp.Scalar_out` +\| `aten::lerp_.Scalar` +\| fallback", re.M)
    assert row.search(md)  # the matrix row
    assert "*called as* is the op the script called" in md


def test_bytes_count_tuple_results_and_arguments_written_into(tmp_path: Path) -> None:
    r, d = run_json(tmp_path / "r.json", str(SCRIPTS / "outputs.py"), "--torch-version", "2.0.1")
    assert r.returncode == 0, r.stderr
    rows = {o["op"]: o for o in d["ops"] if o["verdict"] == "fallback"}
    # U [8×8], S [6], Vh [6×6] in float32
    assert rows["aten::linalg_svd"]["bytes_from_cpu"] == 4 * (64 + 6 + 36)
    assert rows["aten::_foreach_add_.Scalar"]["bytes_from_cpu"] == 2 * 3 * 4  # returns ()
    e, f = run_json(
        tmp_path / "cpu.json",
        str(SCRIPTS / "outputs.py"),
        "--torch-version",
        "2.0.1",
        "--no-emulate",
    )
    helper = next(o for o in f["ops"] if o["op"] == "aten::_cummax_helper")
    assert helper["bytes_from_cpu"] == 8 * 6 * (4 + 8)  # values float32, indices int64


# -- 11. diff says where ---------------------------------------------------------------------
def test_diff_shows_module_and_source_without_a_double_blank(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run_json(a, f"{SCRIPTS / 'functions.py'}:build")[0].returncode == 0
    assert run_json(b, str(SCRIPTS / "one_fallback.py"), "--no-emulate")[0].returncode == 0
    r = run_cli("diff", str(a), str(b))
    assert r.returncode == 1
    assert "\n\n\n" not in r.stdout
    row = next(ln for ln in r.stdout.splitlines() if "`aten::mode`" in ln)
    assert "one_fallback.py:5" in row and "(top level)" in row


# -- 12. what the report could not see --------------------------------------------------------
def _limits_part(md: str) -> tuple[str, str]:
    part = md.split("## What this report could not see", 1)[1].split("Native ops", 1)[0]
    shown, _, folded = part.partition("<details>")
    return shown, folded


def test_standing_limits_fold_and_the_one_for_this_run_stays(tmp_path: Path) -> None:
    from fallback_probe.limits import NEEDS_FALLBACK_ENV, PREDICTED, RUNTIME_CHECKS

    _, clean = run_json(tmp_path / "a.json", EXAMPLE, "--torch-version", "2.15.0")
    shown, folded = _limits_part(render(Report.from_dict(clean), Format.MARKDOWN))
    assert RUNTIME_CHECKS in shown  # all native: what a prediction misses can change that
    assert PREDICTED in folded and NEEDS_FALLBACK_ENV in folded
    assert PREDICTED not in shown and NEEDS_FALLBACK_ENV not in shown
    assert "docs/verdicts.md" in folded
    _, found = run_json(tmp_path / "b.json", str(SCRIPTS / "one_fallback.py"), "--no-emulate")
    shown, folded = _limits_part(render(Report.from_dict(found), Format.MARKDOWN))
    assert NEEDS_FALLBACK_ENV in shown and RUNTIME_CHECKS in folded
    assert "Emulation off" in shown  # this run's own note
    assert found["limits"].count(NEEDS_FALLBACK_ENV) == 1  # the JSON keeps them all


# -- schema: old reports still render ---------------------------------------------------------
def test_a_schema_1_report_still_renders(tmp_path: Path) -> None:
    old = {
        "schema_version": 1,
        "mode": "predicted",
        "mode_reason": "auto",
        "target": {"torch": "2.15.0", "macos": "15", "device": "mps"},
        "host": {"torch": "2.13.0+cpu", "python": "3.11.7", "platform": "linux x86_64"},
        "complete": True,
        "error": None,
        "summary": {"native": 1, "fallback": 0, "unsupported": 0},
        "ops": [{"op": "aten::relu", "verdict": "native", "calls": 1, "reason": "MPS kernel"}],
        "not_judged": [
            {"op": "torchvision::nms", "calls": 2, "reason": "registered by another library"},
            {"op": "aten::mul.Tensor", "calls": 1, "reason": "ran on the CPU by the script"},
        ],
        "cpu_work": {},
        "limits": [],
        "matrix": {"releases": ["2.15.0"], "ops": {}, "native_from": "2.15.0", "upgrade": None},
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    r = run_cli("render", str(path))
    assert r.returncode == 0, r.stderr
    assert "1 native, 1 not judged" in r.stdout
    again = run_cli("render", str(path), "--format", "json")
    d = json.loads(again.stdout)
    assert d["schema_version"] == 2 and d["outcome"] == "partly_judged"
    report = Report.from_dict(d)
    assert report.mode is Mode.PREDICTED and report.ops[0].verdict is Verdict.NATIVE


# -- 13. README set-up ------------------------------------------------------------------------
def test_readme_linux_setup_names_the_cpu_wheel_index_and_the_ci_version() -> None:
    readme = (ROOT / "README.md").read_text()
    linux = readme.split("## Set up", 1)[1].split("macOS", 1)[0]
    ci_torch = re.search(r"pip install (torch==[\d.]+)", (ROOT / ".ci/run").read_text())
    assert ci_torch is not None
    command = next(ln for ln in linux.splitlines() if "pip install" in ln)
    assert f"pip install {ci_torch.group(1)} --index-url https://download.pytorch.org/whl/cpu" in (
        command
    )
    assert "pip install -e '.[test]'" in command
