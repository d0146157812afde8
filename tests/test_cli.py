"""The command line: targets, exit codes, output files, and reports that survive failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fallback_probe.cli import main

SCRIPTS = Path(__file__).parent / "fixtures" / "scripts"
ROOT = Path(__file__).parent.parent


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "fallback_probe", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
    )


def run_json(
    out: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the CLI with a JSON report written to ``out``; the report, or {} if none."""
    r = run_cli(*args, "--format", "json", "-o", str(out), env=env)
    return r, json.loads(out.read_text()) if out.exists() else {}


def test_seed_example_predicted_with_summary_on_stderr(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    out = tmp_path / "r.json"
    r, d = run_json(
        out,
        "docs/examples/simple_cnn.py",
        "--torch-version",
        "2.15.0",
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert r.returncode == 0, r.stderr
    assert "Predicted for torch 2.15.0 on macOS 15 (mps)" in r.stderr
    assert d["mode"] == "predicted" and d["complete"] is True
    assert d["target"] == {"torch": "2.15.0", "macos": "15", "device": "mps"}
    assert "# fallback-probe report" in summary.read_text()
    # re-rendered from the saved file, without running anything
    assert main(["render", str(out), "--format", "json", "-o", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text()) == d


def test_script_runs_as_main_with_argv_and_its_folder_on_the_path(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = run_cli(
        str(SCRIPTS / "argv_and_file.py"),
        "--format",
        "json",
        "-o",
        str(out),  # before "--": what follows belongs to the script
        "--torch-version",
        "2.15.0",
        "--no-emulate",
        "--fail-on",
        "fallback",
        "--",
        "--steps",
        "2",
    )
    assert r.returncode == 1, r.stderr  # --fail-on found aten::mode
    row = next(o for o in json.loads(out.read_text())["ops"] if o["op"] == "aten::mode")
    assert row["verdict"] == "fallback" and row["calls"] == 2


def test_failing_model_exits_3_and_keeps_the_report(tmp_path: Path) -> None:
    r, d = run_json(tmp_path / "r.json", str(SCRIPTS / "fails_midway.py"), "--no-emulate")
    assert r.returncode == 3
    assert "RuntimeError: the user's own bug" in r.stderr
    assert "fallback_probe/" not in r.stderr  # the traceback is the user's, not ours
    assert d["complete"] is False
    assert d["error"] == "RuntimeError: the user's own bug"
    assert any(o["op"] == "aten::mode" for o in d["ops"])


def test_timeout_exits_3_with_what_ran(tmp_path: Path) -> None:
    r, d = run_json(
        tmp_path / "r.json", str(SCRIPTS / "sleeps.py"), "--no-emulate", "--timeout", "8"
    )
    assert r.returncode == 3
    assert d["complete"] is False and "--timeout 8 s" in d["error"]
    assert any(o["op"] == "aten::mode" for o in d["ops"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no/such/model.py"], "no such file: no/such/model.py"),
        ([str(SCRIPTS / "broken_syntax.py")], "broken_syntax.py:2: syntax error"),
        (["docs/examples/simple_cnn.py", "--torch-version", "1.13"], "unknown torch release"),
        (["docs/examples/simple_cnn.py", "--mode", "sideways"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_function_targets(tmp_path: Path) -> None:
    r, d = run_json(
        tmp_path / "r.json",
        f"{SCRIPTS / 'functions.py'}:build",
        "--train",
        "--torch-version",
        "2.15.0",
    )
    assert r.returncode == 0, r.stderr
    ops = {o["op"]: o for o in d["ops"]}
    assert ops["aten::addmm"]["verdict"] == "native"
    assert any("(backward)" in m for o in ops.values() for m in o["modules"])
    missing = run_cli(f"{SCRIPTS / 'functions.py'}:nope")
    assert missing.returncode == 2 and "has no function 'nope'" in missing.stderr
    wrong = run_cli(f"{SCRIPTS / 'functions.py'}:wrong")
    assert wrong.returncode == 2 and "must return None or (model, inputs)" in wrong.stderr


def test_diff_exits_1_on_new_fallbacks(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run_json(a, f"{SCRIPTS / 'functions.py'}:build")[0].returncode == 0
    assert run_json(b, f"{SCRIPTS / 'functions.py'}:nothing", "--no-emulate")[0].returncode == 0
    assert main(["diff", str(a), str(b)]) == 1
    assert main(["diff", str(b), str(b)]) == 0


def test_device_meta_traces_a_large_model_without_its_weights(tmp_path: Path) -> None:
    import resource

    r, d = run_json(
        tmp_path / "r.json",
        str(SCRIPTS / "big_on_meta.py"),
        "--device",
        "meta",
        "--torch-version",
        "2.15.0",
    )
    assert r.returncode == 0, r.stderr
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert peak_mb < 2048, f"a child used {peak_mb:.0f} MB: weights were allocated"
    ops = {o["op"]: o for o in d["ops"]}
    assert ops["aten::addmm"]["calls"] == 4 and ops["aten::addmm"]["verdict"] == "native"
    assert any("placeholder" in lim for lim in d["limits"])  # float(y.sum()) had no data
