"""What a Mac refuses is listed as unsupported and the run goes on (docs/emulation.md).

Scripts are run the way users run them (the CLI, a fresh process) and compared with the same
script run without the probe: the report lists every refusal with the message a Mac prints,
and the script's printed numbers do not change.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import _disable_current_modes

from fallback_probe.api import Probe
from fallback_probe.collect.emulate import (
    FLOAT64_MESSAGE,
    MIXED_DEVICE_MESSAGE,
    NUMPY_MESSAGE,
    emulated_mps,
)
from fallback_probe.collect.emulate.refusals import BFLOAT16_MESSAGE, COMPLEX64_MESSAGE
from fallback_probe.records import Verdict
from fallback_probe.report import OpRow

SCRIPTS = Path(__file__).parent / "fixtures" / "emulate"
ROOT = Path(__file__).parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def _line(script: str, marker: str) -> int:
    lines = (SCRIPTS / script).read_text().splitlines()
    return next(n for n, text in enumerate(lines, 1) if marker in text)


@functools.cache
def _plain(script: str) -> subprocess.CompletedProcess[str]:
    return _run(str(SCRIPTS / script))


@functools.cache
def _probe(script: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The CLI's run of ``script`` (once per session: each costs two interpreter starts)."""
    out = Path(tempfile.mkdtemp(prefix="fp-refusals-")) / "r.json"
    r = _run(
        "-m", "fallback_probe", str(SCRIPTS / script), "--torch-version", "2.13.0",
        "--format", "json", "-o", str(out), *extra,
    )  # fmt: skip
    return r, json.loads(out.read_text()) if out.exists() else {}


def _refused(report: dict, message: str) -> list[dict]:
    return [
        row
        for row in report["ops"]
        if row["verdict"] == "unsupported" and message in (row.get("error") or "")
    ]


@pytest.mark.parametrize("script", ["linear_double.py", "numpy_float64.py"])
def test_float64_scripts_finish_listing_each_refusal_with_the_plain_numbers(script: str) -> None:
    plain = _plain(script)
    assert plain.returncode == 0, plain.stderr
    r, report = _probe(script)
    assert r.returncode == 0, r.stderr
    assert r.stdout == plain.stdout  # the emulation changed no result
    assert report["complete"] is True
    moved = [
        row
        for row in _refused(report, FLOAT64_MESSAGE)
        if row["op"] == "aten::_to_copy"
        and any(s.endswith(f"{script}:{_line(script, 'float64 onto')}") for s in row["sources"])
    ]
    assert moved, report["ops"]
    assert moved[0]["dtypes"] == ["float64"] and moved[0]["modules"] == ["(top level)"]
    assert moved[0]["error"] == f"TypeError: {FLOAT64_MESSAGE}"
    if script == "linear_double.py":  # once: each CLI run costs two interpreter starts
        again, _ = _probe(script, "--fail-on", "unsupported")
        assert again.returncode == 1 and again.stdout == plain.stdout


def test_the_forward_of_a_float64_model_is_listed_in_its_module() -> None:
    r, report = _probe("linear_double.py")
    addmm = [row for row in _refused(report, FLOAT64_MESSAGE) if row["op"] == "aten::addmm"]
    assert addmm and addmm[0]["modules"] == ["Linear"], report["ops"]
    assert addmm[0]["sources"][0].endswith(
        f"linear_double.py:{_line('linear_double.py', 'out = model(x)')}"
    )


def test_numpy_and_mixed_devices_are_listed_each_with_its_own_message() -> None:
    r, report = _probe("numpy_float64.py")
    assert r.returncode == 0, r.stderr
    [numpy] = _refused(report, NUMPY_MESSAGE)
    assert numpy["op"] == "aten::_to_copy"
    assert numpy["sources"][0].endswith(f":{_line('numpy_float64.py', 'numpy of a device')}")
    [mixed] = _refused(report, MIXED_DEVICE_MESSAGE)
    assert mixed["op"] == "aten::add.Tensor" and mixed["error"].startswith("RuntimeError: ")
    assert mixed["sources"][0].endswith(f":{_line('numpy_float64.py', 'a CPU tensor mixed')}")
    # Every refusal of the run sits on an op: none is left over as a note.
    assert not [n for n in report["limits"] if "would refuse" in n]


def test_stop_at_refusal_stops_where_a_mac_raises() -> None:
    r, report = _probe("linear_double.py", "--stop-at-refusal")
    assert r.returncode == 3 and report["complete"] is False
    assert r.stdout == ""
    assert f"TypeError: {FLOAT64_MESSAGE}" in r.stderr
    line = _line("linear_double.py", "float64 onto")
    assert f'linear_double.py", line {line}' in r.stderr
    assert any(f"linear_double.py:{line}" in note for note in report["limits"])


def _frames(stderr: str) -> list[str]:
    return re.findall(r'^  File "(.*?)", line (\d+)', stderr, flags=re.M)


def test_a_script_failing_in_its_own_code_shows_its_own_traceback(tmp_path: Path) -> None:
    script = "fails_in_own_code.py"
    plain = _plain(script)
    r, report = _probe(script)
    assert r.returncode == 3 and report["complete"] is False
    assert "fallback_probe" not in r.stderr and "runpy" not in r.stderr
    assert _frames(r.stderr) == _frames(plain.stderr)
    last = plain.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: shape '[7, 7]' is invalid") and last in r.stderr


# -- in process: which op carries which refusal ----------------------------------------------------


def _unsupported(p: Probe, message: str) -> list[OpRow]:
    return [r for r in p.report.rows(Verdict.UNSUPPORTED) if r.error and message in r.error]


def test_mixed_devices_run_on_with_the_values_of_the_cpu_run() -> None:
    a, b = torch.arange(6.0).reshape(2, 3), torch.ones(2, 3)
    with Probe(mode="predict", torch_version="2.13.0") as p:
        x = a.to("mps")
        y = x + b  # mixed add
        assert y.device.type == "mps" and y.cpu().tolist() == (a + b).tolist()
    [row] = _unsupported(p, MIXED_DEVICE_MESSAGE)
    assert row.op == "aten::add.Tensor" and row.calls == 1
    assert row.sources[0].endswith(f"test_refusals.py:{_this_line('# mixed add')}")
    assert p.report.complete


def test_numpy_of_a_device_tensor_gives_the_values_and_is_listed() -> None:
    with Probe(mode="predict", torch_version="2.13.0") as p:
        x = torch.arange(4.0, device="mps")
        values = x.numpy()  # numpy here
    assert values.tolist() == [0.0, 1.0, 2.0, 3.0]
    [row] = _unsupported(p, NUMPY_MESSAGE)
    assert row.op == "aten::_to_copy" and row.dtypes == ("float32",)
    assert row.sources[0].endswith(f":{_this_line('# numpy here')}")


@pytest.mark.parametrize(("macos", "refused"), [("13.6", True), ("14", False), (None, False)])
def test_bfloat16_and_complex64_are_refused_below_macos_14(
    macos: str | None, refused: bool
) -> None:
    with emulated_mps(macos=macos) as emu:
        torch.ones(2, device="mps", dtype=torch.bfloat16)  # bf16 here
        torch.ones(2, dtype=torch.complex64).to("mps")  # complex64 here
        torch.ones(2, device="mps", dtype=torch.float16)
    expected = [
        ("dtype", f"RuntimeError: {BFLOAT16_MESSAGE}", _this_line("# bf16 here")),
        ("dtype", f"RuntimeError: {COMPLEX64_MESSAGE}", _this_line("# complex64 here")),
    ]
    got = [(r.kind, r.error, int(r.where.rsplit(":", 1)[1])) for r in emu.refusals]
    assert got == (expected if refused else [])


def test_macos_13_bfloat16_is_an_unsupported_verdict_with_the_mac_message() -> None:
    with Probe(mode="predict", torch_version="2.6.0", macos="13") as p:
        w = torch.ones(2, device="mps", dtype=torch.bfloat16)
        (w * 2).sum()
    rows = _unsupported(p, BFLOAT16_MESSAGE)
    assert {r.op for r in rows} >= {"aten::ones", "aten::mul.Tensor"}, p.report.ops


def test_a_refusal_only_marks_the_op_it_happened_in() -> None:
    with Probe(mode="predict", torch_version="2.13.0") as p:
        with _disable_current_modes():  # not recorded: served by the MPS factory kernels
            hidden = torch.zeros(2, dtype=torch.float64, device="mps")  # unrecorded float64
        x = torch.ones(2, device="mps")
        x + 1
    assert hidden.dtype == torch.float64 and hidden.device.type == "mps"
    assert not [r for r in p.report.ops if r.error]  # nothing recorded carries its error
    notes = [n for n in p.report.limits if "would refuse" in n]
    assert len(notes) == 1 and f":{_this_line('# unrecorded float64')}" in notes[0]


def test_stop_at_refusal_raises_the_first_refusal_as_a_mac_does() -> None:
    stopping = Probe(mode="predict", torch_version="2.13.0", stop_at_refusal=True)
    with pytest.raises(RuntimeError, match="same device") as info, stopping:
        torch.ones(2, 3, device="mps") + torch.ones(2, 3)
    assert str(info.value) == MIXED_DEVICE_MESSAGE
    assert not any("fallback_probe" in f.filename for f in _tb_frames(info.value))


def test_the_probe_frames_are_kept_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALLBACK_PROBE_FULL_TRACEBACK", "1")
    with pytest.raises(RuntimeError) as info, Probe(mode="predict", torch_version="2.13.0"):
        torch.ones(3, device="mps").view(2, 2)
    assert any("fallback_probe" in f.filename for f in _tb_frames(info.value))


def _tb_frames(exc: BaseException) -> list:
    import traceback

    return list(traceback.extract_tb(exc.__traceback__))


def _this_line(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(n for n, text in enumerate(lines, 1) if marker in text and "_this_line" not in text)


# -- in-place view ops keep the wrapper's shape (stft, squeeze_, ...) ----------------------------


@pytest.mark.parametrize("backing", ["cpu", "meta"])
def test_in_place_view_ops_change_the_device_tensor_as_on_the_cpu(backing: str) -> None:
    x = torch.randn(4000)
    window = torch.hann_window(64)
    ref = torch.stft(x, 64, window=window, return_complex=True)
    with emulated_mps(backing) as emu:
        spec = torch.stft(x.to("mps"), 64, window=window.to("mps"), return_complex=True)
        t = torch.ones(2, 3, device="mps")
        t.unsqueeze_(0)
        u = torch.arange(6.0, device="mps").reshape(2, 3)
        u.t_()
        assert emu.is_emulated(spec)
        assert (spec.shape, t.shape, u.shape, u.stride()) == (ref.shape, (1, 2, 3), (3, 2), (1, 3))
        if backing == "cpu":
            assert torch.equal(spec.cpu(), ref)
            assert u.contiguous().cpu().tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]


def test_a_refusal_made_between_probes_of_a_shared_emulation_marks_no_op() -> None:
    with emulated_mps() as emu:  # as the pytest plugin keeps one for a whole session
        for _ in range(50):  # refusals with no recorder to take them
            torch.ones(2, device="mps").numpy()
        with Probe(mode="predict", torch_version="2.13.0", emulation=emu) as p:
            torch.ones(2, device="mps") + 1
        with Probe(mode="predict", torch_version="2.13.0", emulation=emu) as q:
            torch.ones(2, device="mps").numpy()  # numpy in the probe
    assert not [r for r in p.report.ops if r.error]
    [row] = _unsupported(q, NUMPY_MESSAGE)
    assert row.sources[0].endswith(f":{_this_line('# numpy in the probe')}")
