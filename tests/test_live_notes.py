"""The live path's notes, for real on fpdev: a kernel's own CPU path, attached to its call, and
fallback warnings the probe could not tie to any traced call.

fpdev's ``nonzero`` kernel warns and runs on the CPU itself, as MPS's does before macOS 13.0
(/work/shared/mps-messages.md); an op run on a thread the probe does not trace falls back with
a warning but no traced call.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from fallback_probe.collect.live import KERNEL_CPU_PATH, LiveRecorder, live_recording
from fallback_probe.records import OpCall, TensorMeta
from tests.fpdev import ENV_VAR, run_in_subprocess

KERNEL_WARNING = (
    "fpdev: nonzero op is supported natively starting from macOS 13.0. Falling back on CPU. "
    "This may have performance implications."
)

SCRIPT = """
import json, threading, torch
from torch import nn
from tests.fpdev import load_fpdev
load_fpdev()
from fallback_probe import probe

class Mask(nn.Module):
    def forward(self, x):
        return x.nonzero()  # MASK LINE

with probe(mode="live", device_type="fpdev", fallback_env="FPDEV_ENABLE_FALLBACK") as p:
    x = torch.ones(4, 3).to("fpdev")
    y = x + 1
    Mask()(y)
    z = y * 2
    torch.nonzero(z)  # TOP LINE
    worker = threading.Thread(target=lambda: x - 1)  # not traced: the mode is per thread
    worker.start()
    worker.join()
print(json.dumps({
    "report": p.report.to_dict(),
    "trace": [[c.op, list(c.notes), c.module, c.source] for c in p.collection.trace],
}))
"""


def _line(marker: str) -> int:
    return next(i for i, t in enumerate(SCRIPT.splitlines(), 1) if marker in t)


@pytest.fixture(scope="module")
def run(fpdev_build: Path) -> dict:
    r = run_in_subprocess(SCRIPT, env={ENV_VAR: "1"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_kernel_cpu_path_is_a_note_on_the_call_that_warned(run: dict) -> None:
    noted = [(op, module, source) for op, notes, module, source in run["trace"] if notes]
    assert noted == [
        ("aten::nonzero", "Mask", f"<string>:{_line('MASK LINE')}"),
        ("aten::nonzero", "", f"<string>:{_line('TOP LINE')}"),
    ]
    for op, notes, *_ in run["trace"]:
        if op == "aten::nonzero":
            assert notes == [KERNEL_CPU_PATH + KERNEL_WARNING]


def test_kernel_cpu_path_is_judged_native_and_said_where(run: dict) -> None:
    report = run["report"]
    verdicts = {(o["op"], o["verdict"]) for o in report["ops"]}
    assert ("aten::nonzero", "native") in verdicts
    assert not [v for op, v in verdicts if op == "aten::nonzero" and v != "native"]
    (note,) = [n for n in report["limits"] if "aten::nonzero" in n]
    assert note.startswith(
        f"aten::nonzero (2 calls, first in Mask, <string>:{_line('MASK LINE')}): its kernel ran "
        "it on the CPU itself"
    )
    assert KERNEL_WARNING in note


def test_fallback_on_an_untraced_thread_is_said_not_dropped(run: dict) -> None:
    report = run["report"]
    assert not [o for o in report["ops"] if o["op"].startswith("aten::sub")]
    (note,) = [n for n in report["limits"] if "aten::sub.out" in n]
    assert note.startswith("Fallback warnings the probe could not tie to a traced call")


# -- which call a warning belongs to, when the name alone cannot say ---------------------
def _rec(log: list[str], calls: list[tuple[str, int]]) -> LiveRecorder:
    """A recorder that saw ``calls`` (op, log length when each started) and then ``log``."""
    rec = LiveRecorder("fpdev", ENV_VAR)
    rec.log = [warnings.WarningMessage(UserWarning(m), UserWarning, "x.py", 1) for m in log]
    t = TensorMeta("float32", (4,), 16, True)
    out = []
    for mark, (op, log_at) in enumerate(calls, 1):
        rec._log_at[mark] = log_at
        out.append(OpCall(mark, op, None, "", False, "x.py:1", (t,), (t,), notes=(f"mark={mark}",)))
    rec.calls = out
    rec.apply_profile(None)
    return rec


def _noted(rec: LiveRecorder) -> list[int]:
    return [c.index for c in rec.calls if any(n.startswith(KERNEL_CPU_PATH) for n in c.notes)]


def test_of_two_calls_before_one_warning_the_later_warned() -> None:
    # Warnings arrive when the user's call returns: call 1 did not warn, or its warning would
    # have been logged before call 2 started.
    rec = _rec([KERNEL_WARNING], [("aten::nonzero", 0), ("aten::nonzero", 0), ("aten::add", 1)])
    assert _noted(rec) == [2]


def test_a_warning_naming_an_op_the_probe_did_not_see_goes_to_the_last_call() -> None:
    # e.g. a kernel that runs nonzero inside: the mode saw only the outer op.
    rec = _rec([KERNEL_WARNING], [("aten::add", 0), ("aten::masked_select", 0)])
    assert _noted(rec) == [2]
    assert rec.unattached_kernel_paths == []


def test_a_warning_before_any_call_is_kept_apart() -> None:
    rec = _rec([KERNEL_WARNING], [("aten::nonzero", 1)])
    assert _noted(rec) == []
    assert rec.unattached_kernel_paths == ["aten::nonzero"]


def test_a_warning_belongs_to_the_calls_before_it_arrived_not_after() -> None:
    """The real recorder, on CPU tensors: a warning arrives when the user's call returns."""
    with live_recording(LiveRecorder("cpu", ENV_VAR), profile=False) as rec:
        torch.ones(3).nonzero()
        warnings.warn(KERNEL_WARNING, stacklevel=1)  # as torch delivers it, after that call
        torch.ones(3).nonzero()  # no warning: its kernel stayed on the device
    nonzero = [c for c in rec.trace() if c.op == "aten::nonzero"]
    assert [bool(c.notes) for c in nonzero] == [True, False]
