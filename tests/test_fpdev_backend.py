"""The fpdev test backend really has MPS's fallback mechanics (mps-facts §1-3, §9, §10).

The fallback mode is fixed when the library loads, so every check runs in a fresh child
process with FPDEV_ENABLE_FALLBACK set (or not) beforehand. The C++ is compiled once per
session by the ``fpdev_build`` fixture; the children only load it.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import pytest

from fallback_probe.collect.evidence import (
    ErrorKind,
    classify_error,
    fallback_op_from_warning,
)
from tests.fpdev import (
    ENV_VAR,
    EXPLICIT_FALLBACK_OPS,
    NATIVE_OPS,
    SOURCE,
    run_in_subprocess,
)
from tests.fpdev.conftest_plugin import fpdev_build  # noqa: F401  (until tests/conftest.py wires it)

pytestmark = pytest.mark.usefixtures("fpdev_build")

MARK = "RESULT:"
PRELUDE = textwrap.dedent(
    """
    import json, os, re, warnings
    import torch
    from tests.fpdev import ENV_VAR, load_fpdev
    ext = load_fpdev()

    def emit(value):
        print("RESULT:" + json.dumps(value))

    def fallbacks(records):
        return [str(r.message) for r in records if "will fall back to run on the CPU" in str(r.message)]

    def profile(fn):
        with torch.profiler.profile() as prof:
            fn()
        def walk(e):
            return {"name": e.name, "children": [walk(c) for c in e.cpu_children]}
        return [walk(e) for e in prof.profiler.function_events if e.cpu_parent is None]

    def error(fn):
        try:
            fn()
        except Exception as exc:
            return {"type": type(exc).__name__, "message": str(exc)}
        return None
    """
)

WARNING_TEXT = (
    "The operator '{op}' is not currently supported on the fpdev backend and will fall back to "
    "run on the CPU. This may have performance implications."
)
ERROR_TEXT = (
    "The operator '{op}' is not currently implemented for the fpdev device. If you want this op "
    "to be considered for addition please comment on https://github.com/pytorch/pytorch/issues/"
    "141287 and mention use-case, that resulted in missing op as well as commit hash fpdev. As a "
    "temporary fix, you can set the environment variable `FPDEV_ENABLE_FALLBACK=1` to use the "
    "CPU as a fallback for this op. WARNING: this will be slower than running natively on fpdev."
)
TRIGGERED = re.compile(r" \(Triggered internally at .*fpdev\.cpp:\d+\.\)$")


def run(body: str, fallback: str | None) -> Any:
    """Run PRELUDE + body in a child with FPDEV_ENABLE_FALLBACK=fallback (None: unset)."""
    env = {} if fallback is None else {ENV_VAR: fallback}
    done = run_in_subprocess(PRELUDE + textwrap.dedent(body), env)
    assert done.returncode == 0, f"child failed:\n{done.stdout}\n{done.stderr}"
    results = [line[len(MARK) :] for line in done.stdout.splitlines() if line.startswith(MARK)]
    assert len(results) == 1, done.stdout
    return json.loads(results[0])


def names(messages: list[str]) -> list[str | None]:
    return [fallback_op_from_warning(m) for m in messages]


def descendants(event: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for child in event["children"]:
        found += [child, *descendants(child)]
    return found


def all_events(tree: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for top in tree for e in [top, *descendants(top)]]


def to_cpu_parents(tree: list[dict[str, Any]]) -> list[str]:
    """Names of the events with an aten::_to_cpu child: the ops that fell back."""
    return [
        e["name"]
        for e in all_events(tree)
        if any(c["name"] == "aten::_to_cpu" for c in e["children"])
    ]


def registered_in_source() -> tuple[list[str], list[str]]:
    """(native, explicit fallback) ops as fpdev.cpp registers them, in order."""
    blocks = re.findall(
        r"TORCH_LIBRARY_IMPL\(aten, PrivateUse1, m\) \{(.*?)\n\}", SOURCE.read_text(), re.S
    )
    native: list[str] = []
    explicit: list[str] = []
    for block in blocks:
        for op, kernel in re.findall(r'm\.impl\(\s*"([^"]+)",\s*(.*?)\);', block, re.S):
            (explicit if "<&cpu_fallback>" in kernel else native).append(f"aten::{op}")
    return native, explicit


def test_constants_match_the_cpp_registrations() -> None:
    native, explicit = registered_in_source()
    assert tuple(native) == NATIVE_OPS
    assert tuple(explicit) == EXPLICIT_FALLBACK_OPS
    assert not set(NATIVE_OPS) & set(EXPLICIT_FALLBACK_OPS)


def test_load_names_the_device_and_registers_exactly_the_listed_ops() -> None:
    result = run(
        """
        again = load_fpdev()
        x = torch.ones(2).to("fpdev")
        emit({
            "same_module": again is ext,
            "backend": torch._C._get_privateuse1_backend_name(),
            "device": str(x.device),
            "is_fpdev": x.is_fpdev,
            "module": torch.fpdev.is_available() and torch.fpdev.device_count(),
            "fallback_enabled": ext.fallback_enabled(),
            "env_at_load": ext.env_at_load(),
            "registered": sorted(
                op for op in torch._C._dispatch_get_registrations_for_dispatch_key("PrivateUse1")
                if op.startswith("aten::")
            ),
        })
        """,
        fallback=None,
    )
    assert result == {
        "same_module": True,
        "backend": "fpdev",
        "device": "fpdev:0",
        "is_fpdev": True,
        "module": 1,
        "fallback_enabled": False,
        "env_at_load": "",
        "registered": sorted(NATIVE_OPS + EXPLICIT_FALLBACK_OPS),
    }


def test_fallback_warns_once_per_process() -> None:
    result = run(
        """
        x = torch.ones(3, 3).to("fpdev")
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            total = [x.sum().cpu().item() for _ in range(2)]
            exps = [x.exp().cpu()[0, 0].item() for _ in range(2)]
        emit({"warnings": fallbacks(records), "categories": [r.category.__name__ for r in records],
              "total": total, "exps": exps})
        """,
        fallback="1",
    )
    assert result["total"] == [9.0, 9.0]
    assert result["exps"] == pytest.approx([2.7182817, 2.7182817])
    [message] = result["warnings"]  # the first fallback only; the later three are silent
    assert message.startswith(WARNING_TEXT.format(op="aten::sum.IntList_out"))
    assert TRIGGERED.search(message)
    assert result["categories"] == ["UserWarning"]
    assert fallback_op_from_warning(message) == "aten::sum.IntList_out"


def test_set_warn_always_warns_on_every_call() -> None:
    result = run(
        """
        torch.set_warn_always(True)
        x = torch.ones(3, 3).to("fpdev")
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            x.sum(); x.sum(); x.exp()
        emit(fallbacks(records))
        """,
        fallback="1",
    )
    assert names(result) == ["aten::sum.IntList_out", "aten::sum.IntList_out", "aten::exp.out"]


def test_profiler_shows_to_cpu_under_fallbacks_only() -> None:
    result = run(
        """
        x = torch.ones(3, 3).to("fpdev")
        calls = {
            "add": lambda: x + x,
            "mul": lambda: x * 2,
            "mm": lambda: x @ x,
            "addmm": lambda: torch.addmm(x, x, x),
            "relu": lambda: x.relu(),
            "linear": lambda: torch.nn.functional.linear(x, x, x[0]),
            "sum": lambda: x.sum(),
            "sum again": lambda: x.sum(),
            "exp": lambda: x.exp(),
            "linalg_svd": lambda: torch.linalg.svd(x),
        }
        emit({name: profile(fn) for name, fn in calls.items()})
        """,
        fallback="1",
    )
    expected = {
        "add": "aten::add",
        "mul": "aten::mul",
        "mm": "aten::mm",
        "addmm": "aten::addmm",
        "relu": "aten::relu",
        "linear": "aten::addmm",
    }
    for call, op in expected.items():
        events = [e["name"] for e in all_events(result[call])]
        assert op in events, (call, events)
        assert "aten::_to_cpu" not in events, (call, events)
    # Every call of a fallen-back op has the child, not only the one that warned.
    assert to_cpu_parents(result["sum"]) == ["aten::sum"]
    assert to_cpu_parents(result["sum again"]) == ["aten::sum"]
    assert to_cpu_parents(result["exp"]) == ["aten::exp"]
    assert to_cpu_parents(result["linalg_svd"]) == ["aten::linalg_svd"]


def test_explicit_composite_falls_back_whole_with_the_variable_unset() -> None:
    result = run(
        """
        torch.manual_seed(0)
        a = torch.randn(4, 3)
        cols = torch.randn(1, 4, 4)
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            U, S, Vh = torch.linalg.svd(a.to("fpdev"), full_matrices=False)
            tree = profile(lambda: torch.linalg.svd(a.to("fpdev"), full_matrices=False))
            torch.set_warn_always(True)
            folded = torch.nn.functional.fold(cols.to("fpdev"), (3, 3), (2, 2))
        emit({
            "fallback_enabled": ext.fallback_enabled(),
            "warnings": fallbacks(records),
            "devices": sorted({str(t.device) for t in (U, S, Vh, folded)}),
            "reconstructs": torch.allclose((U.cpu() * S.cpu()) @ Vh.cpu(), a, atol=1e-5),
            "same_S": torch.allclose(S.cpu(), torch.linalg.svdvals(a)),
            "same_fold": torch.equal(folded.cpu(), torch.nn.functional.fold(cols, (3, 3), (2, 2))),
            "tree": tree,
            "other_op": error(lambda: a.to("fpdev").exp()),
        })
        """,
        fallback=None,
    )
    assert result["fallback_enabled"] is False
    # Named as called, not as its decomposition (aten::_linalg_svd).
    assert names(result["warnings"]) == ["aten::linalg_svd", "aten::col2im"]
    assert result["warnings"][0].startswith(WARNING_TEXT.format(op="aten::linalg_svd"))
    assert result["devices"] == ["fpdev:0"]
    assert result["reconstructs"] and result["same_S"] and result["same_fold"]
    # The decomposition runs on the CPU, inside the fallen-back call.
    [svd] = [e for e in result["tree"] if e["name"] == "aten::linalg_svd"]
    children = [c["name"] for c in svd["children"]]
    assert children.index("aten::_to_cpu") < children.index("aten::_linalg_svd")
    # Only the explicit registrations fall back; everything else still raises.
    assert result["other_op"]["type"] == "NotImplementedError"


@pytest.mark.parametrize("value", [None, "0"], ids=["unset", "0"])
def test_error_fallback_raises_not_implemented(value: str | None) -> None:
    result = run(
        """
        x = torch.ones(3, 3).to("fpdev")
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            failure = error(lambda: x.exp())
        emit({"error": failure, "warnings": fallbacks(records)})
        """,
        fallback=value,
    )
    assert result["warnings"] == []
    assert result["error"]["type"] == "NotImplementedError"
    message = result["error"]["message"]
    assert message.startswith(ERROR_TEXT.format(op="aten::exp.out"))
    assert classify_error(NotImplementedError(message), "fpdev") == (
        ErrorKind.NOT_IMPLEMENTED,
        "aten::exp.out",
    )


@pytest.mark.parametrize(("at_load", "later"), [(None, "1"), ("1", "0")], ids=["off", "on"])
def test_setting_the_variable_after_load_changes_nothing(at_load: str | None, later: str) -> None:
    result = run(
        f"""
        os.environ[ENV_VAR] = {later!r}
        assert load_fpdev() is ext
        x = torch.ones(3, 3).to("fpdev")
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            failure = error(lambda: x.exp())
        emit({{"enabled": ext.fallback_enabled(), "error": failure, "warnings": fallbacks(records)}})
        """,
        fallback=at_load,
    )
    if at_load is None:
        assert result["enabled"] is False
        assert result["error"]["type"] == "NotImplementedError"
        assert result["warnings"] == []
    else:
        assert result["enabled"] is True
        assert result["error"] is None
        assert names(result["warnings"]) == ["aten::exp.out"]


def test_float64_and_complex128_are_type_errors() -> None:
    result = run(
        """
        emit({
            "to": error(lambda: torch.ones(2, dtype=torch.float64).to("fpdev")),
            "factory": error(lambda: torch.zeros(2, dtype=torch.float64, device="fpdev")),
            "cast": error(lambda: torch.ones(2).to("fpdev").double()),
            "complex128": error(lambda: torch.ones(2, dtype=torch.complex128).to("fpdev")),
            "float32": error(lambda: torch.ones(2).to("fpdev")),
        })
        """,
        fallback="1",  # the refusal stands with the CPU fallback on
    )
    float64 = (
        "Cannot convert a fpdev Tensor to float64 dtype as the fpdev framework doesn't support "
        "float64. Please use float32 instead."
    )
    for key in ("to", "factory", "cast"):
        assert result[key] == {"type": "TypeError", "message": float64}, key
    assert result["complex128"] == {
        "type": "TypeError",
        "message": "Trying to convert ComplexDouble to the fpdev backend but it does not have "
        "support for that dtype.",
    }
    assert result["float32"] is None
    assert classify_error(TypeError(float64), "fpdev") == (ErrorKind.DTYPE, None)


def test_mm_rejects_non_float_inputs_with_a_runtime_error() -> None:
    result = run(
        """
        i = torch.ones(2, 2, dtype=torch.int32).to("fpdev")
        f = torch.ones(2, 2).to("fpdev")
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            failure = error(lambda: torch.mm(i, i))
            product = torch.mm(f, f).cpu().tolist()
        emit({"error": failure, "product": product, "warnings": fallbacks(records)})
        """,
        fallback="1",
    )
    message = "fpdev device does not support mm for non-float inputs"
    assert result["error"] == {"type": "RuntimeError", "message": message}
    assert result["product"] == [[2.0, 2.0], [2.0, 2.0]]
    assert result["warnings"] == []  # a kernel check, not a fallback
    assert classify_error(RuntimeError(message), "fpdev") == (ErrorKind.KERNEL_CHECK, None)


def test_mlp_with_adam_trains_on_fpdev_like_on_cpu() -> None:
    result = run(
        """
        torch.set_warn_always(True)
        x, target = torch.randn(8, 4), torch.randn(8, 2)
        runs = {}
        for device in ("cpu", "fpdev"):
            torch.manual_seed(0)
            model = torch.nn.Sequential(
                torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
            ).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
            losses, forward_trees = [], []
            with warnings.catch_warnings(record=True) as records:
                warnings.simplefilter("always")
                for _ in range(3):
                    optimizer.zero_grad()
                    out = None
                    def forward():
                        global out
                        out = model(x.to(device))
                    forward_trees.append(profile(forward))
                    loss = torch.nn.functional.mse_loss(out, target.to(device))
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
            runs[device] = {
                "params": [p.detach().cpu() for p in model.parameters()],
                "devices": sorted({str(p.device) for p in model.parameters()}),
                "grad_devices": sorted({str(p.grad.device) for p in model.parameters()}),
                "losses": losses,
                "forward_trees": forward_trees,
                "fallbacks": sorted(set(fallbacks(records))),
            }
        cpu, dev = runs["cpu"], runs["fpdev"]
        emit({
            "params_close": all(torch.allclose(a, b, rtol=1e-5, atol=1e-6)
                                for a, b in zip(cpu["params"], dev["params"])),
            "losses": [cpu["losses"], dev["losses"]],
            "devices": dev["devices"] + dev["grad_devices"],
            "forward_trees": dev["forward_trees"],
            "fallbacks": dev["fallbacks"],
        })
        """,
        fallback="1",
    )
    assert result["devices"] == ["fpdev:0", "fpdev:0"]
    for tree in result["forward_trees"]:  # the forward pass is all native kernels
        assert to_cpu_parents(tree) == []
        assert {"aten::addmm", "aten::relu"} <= {e["name"] for e in all_events(tree)}
    assert result["fallbacks"], "backward and Adam use ops fpdev does not implement"
    fallen = set(names(result["fallbacks"]))
    assert not fallen & {"aten::addmm", "aten::relu", "aten::mm", "aten::add.Tensor"}
    assert result["losses"][0] == pytest.approx(result["losses"][1], rel=1e-5)
    assert result["params_close"]
