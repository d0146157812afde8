"""fpdev as release V: the kernels of V's MPS backend, registered on PrivateUse1 at runtime.

With ``FPDEV_RELEASE`` set (a listed release, ``2.8.0``, or an operator-list file) when the
library loads, :func:`tests.fpdev.load_fpdev` registers, from V's operator list:

- every op ``native`` in V: one generic C++ kernel running the CPU computation on the host
  memory, no warning, no ``aten::_to_cpu`` (view ops: a view of the same storage);
- every ``explicit_fallback`` of V: the boxed CPU fallback (warning and ``_to_cpu``), whatever
  ``FPDEV_ENABLE_FALLBACK`` says;
- V's error kernels (``_slow_conv2d_forward``): raise like MPS's;
- V's kernels that torch registers from Python for MPS (``native_from`` in
  explicit_fallbacks.json): the same Python functions, registered for PrivateUse1;
- the device routes of :data:`DEVICE_ROUTES`.

Everything else reaches the boxed fallback, with MPS's warning. Nothing here decides what a
composite, a structured delegate or a generated wrapper does: the dispatcher does.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RELEASE_VAR = "FPDEV_RELEASE"

# Where torch's own code sends an MPS tensor and a PrivateUse1 tensor to different ops: the
# one table of routes fpdev-as-V maps by hand (docs/accuracy.md, "Device routes").
#   fpdev op (what torch reaches on PrivateUse1) -> MPS ops it stands for (what MPS reaches)
DEVICE_ROUTES: dict[str, tuple[str, ...]] = {
    # aten/src/ATen/native/Convolution.cpp select_conv_backend: ConvBackend::Overrideable
    # for PrivateUse1, ConvBackend::Mps / MpsTranspose for MPS.
    "aten::convolution_overrideable": (
        "aten::_mps_convolution",
        "aten::_mps_convolution_transpose",
    ),
    "aten::convolution_backward_overrideable": (
        "aten::mps_convolution_backward",
        "aten::mps_convolution_transpose_backward",
    ),
}

# fpdev's hand-written kernels of what any device needs (fpdev.cpp register_basic).
DEVICE_BASICS = frozenset(
    {"empty.memory_format", "empty_strided", "_copy_from", "_copy_from_and_resize", "resize_",
     "as_strided", "_reshape_alias", "view", "_local_scalar_dense"}
)  # fmt: skip

# Ops with an MPS kernel and no CPU one that torch still reaches on PrivateUse1: fpdev runs a
# hand-written host kernel for them (the generic kernel redispatches to the CPU, which has none).
MPS_ONLY_KERNELS: tuple[str, ...] = ("aten::linear_backward", "aten::max_pool2d_backward")

# Routes torch takes on MPS that fpdev-as-V does not reproduce (PrivateUse1 takes the generic
# composite path instead); a disagreement they cause is listed in docs/accuracy.md.
UNMAPPED_ROUTES: dict[str, str] = {
    "aten::_lstm_mps": "aten/src/ATen/native/RNN.cpp: lstm() calls _lstm_mps for an MPS input; "
    "PrivateUse1 runs the generic lstm cell composite",
    "aten::linalg_pinv.atol_rtol_tensor": "aten/src/ATen/native/LinearAlgebra.cpp: get_atol_rtol "
    "makes float32 tolerances for kMPS, float64 for other devices (fpdev refuses float64, as MPS "
    "would)",
    "aten::_scaled_dot_product_attention_math_for_mps": "aten/src/ATen/native/transformers/"
    "attention.cpp: scaled_dot_product_attention picks math_for_mps on MPS; PrivateUse1 has no "
    "_fused_sdp_choice kernel and takes _scaled_dot_product_attention_math",
}

# MPS kernels torch registers from Python at ``import torch`` (explicit_fallbacks.json
# ``native_from``): op -> "module:function" of the installed torch.
PYTHON_KERNELS: dict[str, str] = {
    "native_group_norm": "torch._refs:native_group_norm",
    "native_group_norm_backward": "torch._decomp.decompositions:native_group_norm_backward",
    "var_mean.correction": "torch._refs:var_mean",
    "linalg_lu_solve.out": "torch._refs.linalg:linalg_lu_solve_out_mps",
}

_TABLE = (
    Path(__file__).resolve().parents[2] / "fallback_probe" / "oplists" / "explicit_fallbacks.json"
)
_python_libraries: list[Any] = []  # kept alive: dropping a Library deregisters its kernels


@dataclass
class ReleasePlan:
    """What fpdev registers for one release, and what it could not."""

    release: str
    kernels: list[tuple[str, str]] = field(default_factory=list)  # (name, kind) for C++
    python: dict[str, Callable[..., Any]] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)  # in V's list, not in the installed torch
    # native in V, but the installed torch has no CPU kernel (nor composite) to run for them:
    # reaching one on fpdev raises (docs/accuracy.md counts those calls as not compared)
    no_cpu_kernel: list[str] = field(default_factory=list)


def release_from_env() -> str | None:
    value = os.environ.get(RELEASE_VAR, "").strip()
    return value or None


def load_oplist(spec: str) -> Any:
    """A listed release (``2.8.0``, ``2.8``) or a path to an operator-list file."""
    from fallback_probe import oplists

    if spec.endswith(".json") or os.sep in spec:
        return oplists.load_file(spec)
    return oplists.load(spec)


def plan(spec: str) -> ReleasePlan:
    """The registrations of fpdev-as-V, from V's operator list and the installed dispatcher."""
    import torch

    from fallback_probe.records import OpStatus

    oplist = load_oplist(spec)
    out = ReleasePlan(oplist.torch_version)
    table = _table(oplist.torch_version)
    python_native = _python_native(table)
    outside_yaml = {
        "aten::" + n
        for k in ("explicit_fallback", "native", "error_kernel")
        for n in table.get(k, ())
    }
    installed = set(torch._C._dispatch_get_all_op_names())
    for entry in oplist.entries():
        name = entry.op.split("::", 1)[1]
        if entry.op in outside_yaml:
            kind = (
                "explicit"
                if name in table.get("explicit_fallback", ())
                else "error"
                if name in table.get("error_kernel", ())
                else "python"
                if name in python_native
                else "native"
            )
        elif entry.delegate in outside_yaml:
            # Its status came from a registration outside the yaml made on the delegate alone:
            # no kernel of its own; the generated wrapper reaches the delegate's.
            continue
        elif entry.status is OpStatus.NATIVE and not entry.error_kernel:
            kind = "native"
        else:
            continue
        if entry.op not in installed:
            out.absent.append(entry.op)
        elif kind == "native" and entry.op in MPS_ONLY_KERNELS:
            out.kernels.append((name, "route"))
        elif kind == "python":
            out.python[name] = python_native[name]
        else:
            out.kernels.append((name, "view" if kind == "native" and _is_view(entry.op) else kind))
            if kind == "native" and name not in DEVICE_BASICS and not _cpu_runs(entry.op):
                out.no_cpu_kernel.append(entry.op)
    for op, stands_for in DEVICE_ROUTES.items():
        if any(_native(oplist, mps_op) for mps_op in stands_for):
            out.kernels.append((op.split("::", 1)[1], "route"))
    return out


def configure(extension: Any, spec: str) -> ReleasePlan:
    """Register fpdev-as-V in this process (once, before any op runs on fpdev)."""
    import torch

    p = plan(spec)
    extension.configure(p.kernels)
    if p.python:
        lib = torch.library.Library("aten", "IMPL", "PrivateUse1")  # noqa: TOR901
        for name, fn in p.python.items():
            lib.impl(name, fn)
        _python_libraries.append(lib)
    return p


def _native(oplist: Any, op: str) -> bool:
    from fallback_probe.records import OpStatus

    entry = oplist.get(op)
    return entry is not None and entry.status is OpStatus.NATIVE and not entry.error_kernel


def _table(release: str) -> dict[str, Any]:
    """V's registrations outside the yaml (explicit_fallbacks.json), by major.minor."""
    major, minor = release.split(".")[:2]
    doc = json.loads(_TABLE.read_text(encoding="utf-8"))
    return doc["releases"].get(f"{major}.{minor}", {})


def _python_native(table: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    """V's Python-registered MPS kernels, as functions of the installed torch."""
    if not any(".py:" in source for source in table.get("native_from", ())):
        return {}
    found = {}
    for name in table.get("native", ()):
        target = PYTHON_KERNELS.get(name)
        if target is not None:
            module, attr = target.split(":")
            found[name] = getattr(importlib.import_module(module), attr)
    return found


def _cpu_runs(op: str) -> bool:
    import torch

    has = torch._C._dispatch_has_kernel_for_dispatch_key
    keys = ("CPU", "CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional")
    return any(has(op, key) for key in (*keys, "CompositeImplicitAutograd"))


def _is_view(op: str) -> bool:
    """An op whose result aliases an argument without writing it (a view op)."""
    import torch

    base, _, overload = op.split("::", 1)[1].partition(".")
    packet = getattr(torch.ops.aten, base, None)
    if packet is None:
        return False
    schema = getattr(packet, overload or "default")._schema
    if len(schema.returns) != 1 or str(schema.returns[0].type) != "Tensor":
        return False  # several views (split, unbind): the generic kernel returns copies
    alias = schema.returns[0].alias_info
    return alias is not None and not alias.is_write
