"""The live path, for real, on the fpdev C++ backend (MPS's fallback mechanics; no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fpdev import ENV_VAR, REPO_ROOT, run_in_subprocess

LIVE = ["--mode", "live", "--device-type", "fpdev", "--fallback-env", ENV_VAR]
SCRIPT = Path(__file__).parent / "fixtures" / "live" / "mlp_on_fpdev.py"


@pytest.fixture(scope="module")
def live_report(fpdev_build: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("live") / "r.json"
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["PYTHONPATH"] = str(REPO_ROOT)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fallback_probe",
            str(SCRIPT),
            *LIVE,
            "--format",
            "json",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    assert "Observed for torch" in r.stderr
    return json.loads(out.read_text())


def _rows(report: dict) -> dict[tuple[str, str], dict]:
    return {(o["op"], o["verdict"]): o for o in report["ops"]}


def test_live_report_is_marked_observed(live_report: dict) -> None:
    assert live_report["mode"] == "live"
    assert live_report["mode_reason"] == "live mode was asked for"
    assert live_report["target"]["device"] == "fpdev"
    assert live_report["complete"] is True


def test_every_fallback_call_is_counted_not_only_the_first_warning(live_report: dict) -> None:
    sub = _rows(live_report)[("aten::sub.out", "fallback")]
    assert sub["calls"] == 3
    assert sub["bytes_to_cpu"] == 3 * 32 * 8 * 4
    line = (
        SCRIPT.read_text()
        .splitlines()
        .index(
            "    y = x - 2  # sub has no fpdev kernel: falls back as aten::sub.out, on every call"
        )
        + 1
    )
    assert sub["sources"] == [f"{SCRIPT.relative_to(REPO_ROOT)}:{line}"]
    assert sub["called_as"] == ["aten::sub.Tensor"]
    assert sub["seconds"] is not None and sub["seconds"] > 0


def test_backward_and_optimizer_fallbacks_name_their_module(live_report: dict) -> None:
    rows = _rows(live_report)
    assert ("aten::threshold_backward.grad_input", "fallback") in rows
    assert ("aten::addcdiv.out", "fallback") in rows  # Adam's step
    natives = {op for op, v in rows if v == "native"}
    assert {"aten::addmm", "aten::relu"} <= natives
    assert "body.1" in rows[("aten::relu", "native")]["modules"]
    # Backward ops name the module whose forward made them, whichever thread runs them.
    backward = rows[("aten::threshold_backward.grad_input", "fallback")]["modules"]
    assert backward == ["body.1 (backward)"]


def test_explicit_registration_on_a_composite_is_reported_at_that_op(live_report: dict) -> None:
    rows = _rows(live_report)
    assert ("aten::linalg_svd", "fallback") in rows
    assert not [op for op, _ in rows if op.startswith("aten::_linalg_svd")]


def test_live_bytes_back_count_tuple_results_and_tensors_written_into(live_report: dict) -> None:
    svd = _rows(live_report)[("aten::linalg_svd", "fallback")]
    assert svd["bytes_to_cpu"] == 4 * 4 * 4  # A [4×4] float32
    assert svd["bytes_from_cpu"] == 4 * (16 + 4 + 16)  # U [4×4], S [4], Vh [4×4]
    # Adam's _foreach_addcdiv_ returns nothing: what comes back is the parameters it wrote.
    addcdiv = _rows(live_report)[("aten::addcdiv.out", "fallback")]
    assert addcdiv["called_as"] == ["aten::_foreach_addcdiv_.ScalarList"]
    assert addcdiv["bytes_from_cpu"] == 4 * (8 * 16 + 16 + 16 * 4 + 4)


def test_unsupported_op_is_recorded_and_the_run_continues(live_report: dict) -> None:
    mm = _rows(live_report)[("aten::mm", "unsupported")]
    assert "does not support mm for non-float inputs" in mm["error"]
    assert mm["calls"] == 1


def test_fallback_off_lists_every_blocker_in_one_run(fpdev_build: Path) -> None:
    code = """
import json, torch
from tests.fpdev import load_fpdev
load_fpdev()
from fallback_probe import probe
with probe(mode="live", device_type="fpdev", fallback_env="FPDEV_ENABLE_FALLBACK") as p:
    x = torch.ones(4).to("fpdev")
    (x - 1).abs()          # two ops with no kernel: both raise with the variable unset
print(json.dumps(p.report.to_dict()))
"""
    r = run_in_subprocess(code)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.splitlines()[-1])
    rows = _rows(report)
    assert rows[("aten::sub.Tensor", "unsupported")]["error"].startswith(
        "NotImplementedError: The operator 'aten::sub.out'"
    )
    assert ("aten::abs", "unsupported") in rows
    assert any("was not set to 1" in lim for lim in report["limits"])


def test_variable_set_after_load_is_detected(fpdev_build: Path) -> None:
    code = """
import json, os, torch
from tests.fpdev import load_fpdev
load_fpdev()
os.environ["FPDEV_ENABLE_FALLBACK"] = "1"   # too late: the backend read it at load
from fallback_probe import probe
with probe(mode="live", device_type="fpdev", fallback_env="FPDEV_ENABLE_FALLBACK") as p:
    torch.ones(4).to("fpdev") - 1
print(json.dumps(p.report.to_dict()))
"""
    r = run_in_subprocess(code)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.splitlines()[-1])
    assert ("aten::sub.Tensor", "unsupported") in _rows(report)
    assert any("set after the backend loaded" in lim for lim in report["limits"])


def test_live_verdicts_equal_predicted_verdicts_for_the_same_op_set(fpdev_build: Path) -> None:
    """The backend's registrations written as an operator list predict what live observes."""
    code = """
import json, torch
from torch import nn
from tests.fpdev import EXPLICIT_FALLBACK_OPS, load_fpdev
load_fpdev()
from fallback_probe import oplists, probe
from fallback_probe.report import problem_ops

def work(device):
    # Built before the probe: initialisation runs on the CPU in the live run, as users write it.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(device)
    # foreach=False: Adam picks another code path per device type, which is emulation's job
    # (docs/emulation.md), not the comparison's.
    opt = torch.optim.Adam(model.parameters(), foreach=False)
    x = torch.randn(8, 8).to(device)
    w = torch.randn(1, 12, 12).to(device)
    s = torch.randn(3, 3).to(device)
    return lambda: step(model, opt, x, w, s)

def step(model, opt, x, w, s):
    loss = (model(x - 1) ** 2).mean()
    loss.backward()
    opt.step()
    torch.linalg.svd(s)
    nn.functional.fold(w, (4, 5), 2)

run = work("fpdev")
with probe(mode="live", device_type="fpdev", fallback_env="FPDEV_ENABLE_FALLBACK") as live:
    run()
ol = oplists.from_dispatcher("PrivateUse1", EXPLICIT_FALLBACK_OPS, label="fpdev")
run = work("cpu")
with probe(mode="predict", emulate=False, oplist=ol) as pred:
    run()
print(json.dumps({"live": {k: v.value for k, v in problem_ops(live.report).items()},
                  "pred": {k: v.value for k, v in problem_ops(pred.report).items()},
                  "live_native": [r.op for r in live.report.ops if r.verdict.value == "native"]}))
"""
    r = run_in_subprocess(code, env={ENV_VAR: "1"})
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.splitlines()[-1])
    assert d["live"], "the model must exercise fallbacks"
    assert d["pred"] == d["live"]
    assert not set(d["live_native"]) & set(d["pred"])
