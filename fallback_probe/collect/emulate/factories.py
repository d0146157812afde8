"""``device="mps"`` in every constructor: MPS dispatch-key kernels for the factory ops, and
the entry points whose C++ path refuses ``mps`` before any dispatch (``Tensor.to``,
``new_tensor``, ``torch.tensor`` / ``as_tensor`` / ``asarray``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._device as _torch_device

from . import common
from .common import MPS_DEVICE, _current, _is_mps

_ORIG_TO = torch._C.TensorBase.to
_ORIG_NEW_TENSOR = torch._C.TensorBase.new_tensor


def _mentions_mps(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    for a in args:
        if _is_mps(a) or type(a) is cls:
            return True
    return any(_is_mps(v) or type(v) is cls for v in kwargs.values())


def _patched_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    emu = common.ACTIVE
    if emu is None or (type(self) is not emu._cls and not _mentions_mps(emu._cls, args, kwargs)):
        return _ORIG_TO(self, *args, **kwargs)
    return emu._to(self, args, kwargs)


def _target_is_mps(kwargs: dict[str, Any]) -> bool:
    device = kwargs.get("device")
    if device is None:
        device = _torch_device.CURRENT_DEVICE
    return device is not None and _is_mps(device)


def _make_from_data(
    orig: Callable[..., Any], copy_tensors: bool, positional: tuple[str, ...] = ()
) -> Callable[..., torch.Tensor]:
    """``torch.tensor``-like constructors: build on the backing, then put on mps.

    ``positional`` names the arguments after ``data`` that may come positionally
    (``torch.as_tensor(data, dtype, device)``).
    """

    def create(data: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        emu = common.ACTIVE
        if args and len(args) <= len(positional):
            kwargs.update(zip(positional, args, strict=False))
            args = ()
        if emu is None or args or not _target_is_mps(kwargs):
            return orig(data, *args, **kwargs)
        requires_grad = bool(kwargs.pop("requires_grad", False))
        kwargs.pop("pin_memory", None)
        if isinstance(data, torch.Tensor):
            dtype = kwargs.get("dtype")
            src = data.detach() if copy_tensors else data
            out = emu._to(src, (), {"device": MPS_DEVICE, "dtype": dtype, "copy": copy_tensors})
        else:
            kwargs["device"] = emu._backing_device
            out = emu._wrap(orig(data, **kwargs))
        if requires_grad:
            out.requires_grad_(True)
        return out

    return create


def _patched_new_tensor(self: torch.Tensor, data: Any, **kwargs: Any) -> torch.Tensor:
    emu = common.ACTIVE
    device = kwargs.get("device")
    if device is None:
        device = self.device
    if emu is None or not _is_mps(device):
        return _ORIG_NEW_TENSOR(self, data, **kwargs)
    kwargs.setdefault("dtype", self.dtype)
    kwargs["device"] = MPS_DEVICE
    return torch.tensor(data, **kwargs)


def _factory_kernel(op: Any) -> Callable[..., torch.Tensor]:
    """A Python kernel for the MPS dispatch key: build on the backing device, wrap."""
    positional = next(i for i, a in enumerate(op._schema.arguments) if a.name == "device")

    def kernel(*args: Any, **kwargs: Any) -> torch.Tensor:
        emu = _current()
        if "device" in kwargs or positional >= len(args):
            kwargs["device"] = emu._backing_device
        else:
            args = args[:positional] + (emu._backing_device,) + args[positional + 1 :]
        kwargs.pop("pin_memory", None)
        out = emu._wrap(op(*args, **kwargs))  # a refused dtype is listed here
        # Only calls the recorder does not see come here: no op record to mark it on.
        emu._pending.clear()
        return out

    return kernel


@functools.cache
def _factory_kernels() -> tuple[tuple[str, Callable[..., torch.Tensor]], ...]:
    """(name, kernel) of every factory op, built once per process: a kernel finds the active
    emulation when it runs, and reading an op's schema for each probe cost ~0.4 ms."""
    return tuple((op.name()[len("aten::") :], _factory_kernel(op)) for op in _factory_ops())


_NOT_FACTORIES = ("sparse", "quantized", "cudnn", "_make_dep_token", "from_file", "mkldnn")


@functools.cache
def _factory_ops() -> tuple[Any, ...]:
    """ATen ops that create a tensor from a device argument alone (zeros, arange, ...)."""
    ops = []
    for schema in torch._C._jit_get_all_schemas():
        if not schema.name.startswith("aten::"):
            continue
        args = schema.arguments
        if not any(a.name == "device" for a in args) or any(a.alias_info for a in args):
            continue
        if any("Tensor" in str(a.type) for a in args) or len(schema.returns) != 1:
            continue
        if str(schema.returns[0].type) != "Tensor":
            continue
        name = schema.name[len("aten::") :]
        if any(bad in name for bad in _NOT_FACTORIES):
            continue
        try:
            op = getattr(getattr(torch.ops.aten, name), schema.overload_name or "default")
            if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "MPS"):
                continue  # a build with MPS: its own kernel stays
        except (AttributeError, RuntimeError):
            continue  # a TorchScript-only schema, not a dispatcher op
        ops.append(op)
    return tuple(ops)
