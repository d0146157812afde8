"""``fallback-probe selftest`` on fpdev-as-V, and ``oplists build --from-dispatcher`` + ``--oplist``.

Everything runs the real CLI in child processes, on the real fpdev backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fallback_probe import cli, oplists
from tests.fpdev import ENV_VAR, REPO_ROOT, SOURCE
from tests.fpdev.conftest_plugin import fpdev_build  # noqa: F401
from tests.fpdev.release import RELEASE_VAR

pytest.importorskip("expecttest", reason="the selftest needs the test extra (expecttest)")

FPDEV_ARGS = [
    "--device-type", "fpdev", "--fallback-env", ENV_VAR, "--import", "tests.fpdev.autoload",
]  # fmt: skip


def fallback_probe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, RELEASE_VAR)}
    full.update(env, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "fallback_probe", *args],
        cwd=REPO_ROOT, env=full, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


@pytest.mark.usefixtures("fpdev_build")
def test_selftest_on_fpdev_prints_the_agreement() -> None:
    done = fallback_probe(
        ["selftest", *FPDEV_ARGS, "--ops", "add*", "--torch-version", "2.8.0", "--samples", "1"],
        {RELEASE_VAR: "2.8.0"},  # the variable is not set: selftest reruns itself with it
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"selftest: torch {_torch()}, predicted for 2.8.0, observed on fpdev: 8 OpInfos, 16 calls, "
        "16 agree, 0 disagree, 0 not compared (the call failed)"
    ]
    assert "[2.8.0] 8 OpInfos, 16 calls, 0 disagree: addcdiv" in done.stderr  # progress


@pytest.mark.usefixtures("fpdev_build")
def test_selftest_files_each_disagreement(tmp_path: Path) -> None:
    """A list that wrongly says sin has no kernel: every sin call disagrees, ready to file."""
    doc = json.loads((oplists._lists_dir() / "torch-2.8.0.json").read_text())
    doc["ops"]["aten::sin"] = {"status": "missing", "delegate": "aten::sin.out"}
    doc["ops"]["aten::sin.out"] = {"status": "missing"}
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    done = fallback_probe(
        ["selftest", *FPDEV_ARGS, "--ops", "sin", "--oplist", str(broken), "--samples", "1"],
        {RELEASE_VAR: "2.8.0"},
    )
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert "1 OpInfos, 2 calls, 1 agree, 1 disagree" in out  # backward of sin is cos: agrees
    assert "## Disagreement 1: OpInfo `sin`, sample 0 (forward)" in out
    assert "- predicted for torch 2.8.0: `aten::sin.out` fallback falls back" in out
    assert "- observed on fpdev: nothing" in out
    assert "- reproduce: `fallback-probe selftest --ops 'sin' --torch-version 2.8.0" in out


def test_selftest_without_a_device_is_one_line_exit_2() -> None:
    done = fallback_probe(["selftest", "--device-type", "nosuch", "--ops", "sin"], {})
    assert done.returncode == 2
    assert done.stderr.startswith("fallback-probe: error: no nosuch device here: ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_selftest_without_expecttest_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "expecttest", None)  # import expecttest -> ImportError
    assert cli.main(["selftest", "--ops", "sin"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "fallback-probe: error: the selftest needs expecttest to load torch's OpInfo "
        "database: pip install expecttest\n"
    )


def _explicit_block_line() -> int:
    lines = SOURCE.read_text().splitlines()
    marker = next(i for i, line in enumerate(lines) if line.startswith("// Explicit CPU fallbacks"))
    return marker + 2  # the TORCH_LIBRARY_IMPL line after the comment (1-based)


@pytest.mark.usefixtures("fpdev_build")
def test_from_dispatcher_list_then_predict_with_it(tmp_path: Path) -> None:
    listed = tmp_path / "fpdev.json"
    done = fallback_probe(
        ["oplists", "build", "--from-dispatcher", "--dispatch-key", "PrivateUse1",
         "--explicit-from", f"fpdev.cpp:{_explicit_block_line()}",
         "--import", "tests.fpdev.autoload", "-o", str(listed)],
        {},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ol = oplists.load_file(listed)
    status = {op: ol.get(op).status.value for op in ol.ops()}  # type: ignore[union-attr]
    assert status["aten::linalg_svd"] == "explicit_fallback"
    assert status["aten::add.Tensor"] == "native"
    assert status["aten::sin.out"] == "missing"
    assert ol.get("aten::sin").delegate == "aten::sin.out"  # type: ignore[union-attr]
    script = tmp_path / "model.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch
            x = torch.ones(3, device="mps")
            (x + 1).sin()
            """
        )
    )
    report = tmp_path / "report.json"
    done = fallback_probe(
        [str(script), "--mode", "predict", "--oplist", str(listed), "--format", "json",
         "-o", str(report)],
        {},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {r["op"]: r["verdict"] for r in json.loads(report.read_text())["ops"]}
    assert rows["aten::sin.out"] == "fallback"
    assert rows["aten::add.Tensor"] == "native"


def _torch() -> Any:
    import torch

    return torch.__version__
