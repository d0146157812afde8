"""fpdev as release V (FPDEV_RELEASE): V's MPS kernels on PrivateUse1, checked in child processes.

Each check runs in a fresh process, because the registrations are made once, when the library
loads. The C++ is compiled once per session by the ``fpdev_build`` fixture.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from tests.fpdev import ENV_VAR, run_in_subprocess
from tests.fpdev.conftest_plugin import fpdev_build  # noqa: F401
from tests.fpdev.release import DEVICE_ROUTES, RELEASE_VAR, plan

pytestmark = pytest.mark.usefixtures("fpdev_build")

PRELUDE = textwrap.dedent(
    """
    import json, warnings
    import torch
    import tests.fpdev as F
    F.load_fpdev()
    torch.set_warn_always(True)

    def emit(value):
        print("RESULT:" + json.dumps(value))

    def seen(fn):
        '''(fallback warnings, names of profiler events with an aten::_to_cpu child, error)'''
        with warnings.catch_warnings(record=True) as log:
            warnings.simplefilter("always")
            error = None
            with torch.profiler.profile() as prof:
                try:
                    fn()
                except Exception as exc:
                    error = type(exc).__name__ + ": " + str(exc).splitlines()[0]
        fell = sorted({e.cpu_parent.name for e in prof.events()
                       if e.name == "aten::_to_cpu" and e.cpu_parent is not None})
        warned = sorted({str(w.message).split("'")[1] for w in log
                         if "fall back to run on the CPU" in str(w.message)})
        return {"warned": warned, "to_cpu": fell, "error": error}

    x = torch.randn(4, 5).to("fpdev")
    """
)


def run(body: str, release: str, fallback: str | None = "1") -> Any:
    env = {RELEASE_VAR: release}
    if fallback is not None:
        env[ENV_VAR] = fallback
    done = run_in_subprocess(PRELUDE + textwrap.dedent(body), env)
    assert done.returncode == 0, f"child failed:\n{done.stdout}\n{done.stderr}"
    lines = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT:")]
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


def test_registrations_are_the_plan_of_the_release() -> None:
    result = run(
        """
        emit({
            "release": F.load_fpdev().release_at_load(),
            "registered": sorted(
                op for op in torch._C._dispatch_get_registrations_for_dispatch_key("PrivateUse1")
                if op.startswith("aten::")
            ),
        })
        """,
        "2.8.0",
    )
    expected = plan("2.8.0")
    names = {f"aten::{name}" for name, _ in expected.kernels} | {
        f"aten::{name}" for name in expected.python
    }
    assert result["release"] == "2.8.0"
    assert set(result["registered"]) == names
    assert "aten::linalg_svd" in names and "aten::sin" in names  # explicit, native in 2.8
    assert "aten::kthvalue.values" not in names  # no MPS kernel in 2.8


def test_native_runs_unseen_missing_falls_back_seen() -> None:
    result = run(
        """
        emit({
            "sin": seen(lambda: x.sin()),
            "unfold": seen(lambda: x.unfold(1, 2, 1).add_(1)),
            "kthvalue": seen(lambda: torch.kthvalue(x, 2, 1)),
            "svd": seen(lambda: torch.linalg.svd(x)),
            "right": bool(torch.allclose(x.sin().cpu(), x.cpu().sin())),
            # A CPU scalar first: an MPS kernel still returns a device tensor.
            "scalar_first": str(torch.mul(torch.tensor(2.0), x).device),
            "to_cpu_device": str(x.to("cpu").device),
        })
        """,
        "2.8.0",
    )
    assert result["sin"] == {"warned": [], "to_cpu": [], "error": None}
    # A native view op: an fpdev view of the same storage, so add_ through it runs natively.
    assert result["unfold"] == {"warned": [], "to_cpu": [], "error": None}
    assert result["kthvalue"]["warned"] == ["aten::kthvalue.values"]
    assert result["kthvalue"]["to_cpu"] == ["aten::kthvalue"]
    assert result["svd"]["warned"] == ["aten::linalg_svd"]
    assert result["right"]
    assert result["scalar_first"] == "fpdev:0"
    assert result["to_cpu_device"] == "cpu"


def test_explicit_fallback_without_the_variable_and_error_kernel() -> None:
    result = run(
        """
        w = torch.randn(3, 5, 2, 2).to("fpdev")
        emit({
            "svd": seen(lambda: torch.linalg.svd(x)),
            "missing": seen(lambda: torch.kthvalue(x, 2, 1)),
            "slow_conv": seen(lambda: torch.ops.aten._slow_conv2d_forward(
                torch.randn(1, 5, 4, 4), w, [2, 2], None, [1, 1], [0, 0])),
        })
        """,
        "2.8.0",
        fallback=None,
    )
    assert result["svd"]["warned"] == ["aten::linalg_svd"]  # registered to the CPU fallback
    assert result["missing"]["error"].startswith("NotImplementedError: The operator ")
    assert "slow_conv2d_forward_mps: input(device='cpu') and weight" in result["slow_conv"]["error"]


def test_release_differences_reach_the_dispatcher() -> None:
    """sgn.out is an explicit fallback in 2.0 only; the functional sgn reaches it through the
    generated wrapper (it has no kernel of its own), as on MPS."""
    code = """
        emit({"sgn": seen(lambda: torch.sgn(x)), "sin": seen(lambda: x.sin())})
        """
    old, new = run(code, "2.0.1"), run(code, "2.15.0")
    assert old["sgn"]["warned"] == ["aten::sgn.out"]
    assert new["sgn"] == {"warned": [], "to_cpu": [], "error": None}
    assert old["sin"]["warned"] == new["sin"]["warned"] == []


def test_device_routes_and_python_kernels() -> None:
    result = run(
        """
        inp = torch.randn(1, 2, 5, 5, requires_grad=True)
        wt = torch.randn(3, 2, 3, 3, requires_grad=True)
        d_inp = inp.detach().to("fpdev").requires_grad_()
        d_wt = wt.detach().to("fpdev").requires_grad_()
        def conv():
            out = torch.nn.functional.conv2d(d_inp, d_wt)
            out.sum().backward()
            emit_value["same"] = bool(torch.allclose(
                out.detach().cpu(), torch.nn.functional.conv2d(inp, wt).detach(), atol=1e-5))
        emit_value = {}
        emit_value["conv"] = seen(conv)
        emit_value["group_norm"] = seen(
            lambda: torch.nn.functional.group_norm(torch.randn(2, 4, 3).to("fpdev"), 2))
        emit_value["python"] = sorted(F.release_plan.python)
        emit(emit_value)
        """,
        "2.8.0",
    )
    assert result["conv"] == {"warned": [], "to_cpu": [], "error": None}
    assert result["same"]
    assert result["python"] == ["native_group_norm", "native_group_norm_backward"]
    assert result["group_norm"]["error"] is None
    assert set(DEVICE_ROUTES) <= {f"aten::{n}" for n, kind in plan("2.8.0").kernels}
