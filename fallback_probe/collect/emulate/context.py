""":func:`emulated_mps`: install every piece of the emulation, and undo all of it on exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.utils._device as _torch_device
from torch._C import _len_torch_function_stack
from torch.overrides import TorchFunctionMode, _pop_mode, _push_mode

from . import common
from .common import Backing, _patch
from .device_api import _patch_device_api
from .emulation import Emulation
from .factories import _factory_kernels, _make_from_data, _patched_new_tensor, _patched_to
from .meta import _MetaInitMode
from .modules import _get_data, _set_data
from .serialization import _TAG_PRIORITY, _restore_storage, _tag_storage, _wrap_load, _wrap_save


def _pop_own_mode(mode: TorchFunctionMode) -> None:
    """Remove ``mode`` from the torch-function mode stack wherever it sits."""
    above = []
    while _len_torch_function_stack() > 0:
        top = _pop_mode()
        if top is mode:
            break
        above.append(top)
    for m in reversed(above):
        _push_mode(m)


def _restore_default_device(previous: Any, previous_current: torch.device | None) -> None:
    current = getattr(torch._GLOBAL_DEVICE_CONTEXT, "device_context", None)
    if current is not previous:
        torch.set_default_device(previous.device if previous is not None else None)
    _torch_device.CURRENT_DEVICE = previous_current


@contextlib.contextmanager
def emulated_mps(
    backing: Backing = "cpu", *, stop_at_refusal: bool = False, macos: str | None = None
) -> Iterator[Emulation]:
    """Run the body as if on a Mac with an ``mps`` device backed by ``backing`` memory.

    What a Mac refuses (float64, mixed devices, ``.numpy()``; bfloat16 and complex64 below
    ``macos`` 14) is listed in ``refusals`` and the body goes on, unless ``stop_at_refusal``:
    then the first one raises, as on a Mac. Everything it changes is undone on exit, also when
    the body raises, so the probe can run many times in one process. Not re-entrant and not
    thread-safe (the patches are global).
    """
    if backing not in ("cpu", "meta"):
        raise ValueError(f"backing must be 'cpu' or 'meta', not {backing!r}")
    if common.ACTIVE is not None:
        raise RuntimeError("emulated_mps() is already active; it cannot be nested")
    emu = Emulation(backing, stop_at_refusal=stop_at_refusal, macos=macos)
    import torch.utils.checkpoint as checkpoint

    with contextlib.ExitStack() as stack:
        # Cached sets that must hold torch's own functions, not our stand-ins.
        _torch_device._device_constructors()
        torch.overrides.get_ignored_functions()

        previous_ctx = getattr(torch._GLOBAL_DEVICE_CONTEXT, "device_context", None)
        stack.callback(_restore_default_device, previous_ctx, _torch_device.CURRENT_DEVICE)
        stack.callback(
            setattr,
            checkpoint.DefaultDeviceType,
            "_default_device_type",
            checkpoint.DefaultDeviceType._default_device_type,
        )

        lib = torch.library.Library("aten", "IMPL", "MPS")
        stack.callback(lib._destroy)
        for name, kernel in _factory_kernels():
            lib.impl(name, kernel)

        elem = (_TAG_PRIORITY, _tag_storage, _restore_storage)
        torch.serialization._package_registry.append(elem)
        torch.serialization._package_registry.sort(key=lambda entry: entry[0])
        stack.callback(torch.serialization._package_registry.remove, elem)

        _patch(stack, torch.Tensor, "to", _patched_to)
        _patch(stack, torch.Tensor, "new_tensor", _patched_new_tensor)
        _patch(stack, torch.Tensor, "data", property(_get_data, _set_data))
        _patch(stack, torch, "tensor", _make_from_data(torch.tensor, True))
        _patch(
            stack, torch, "as_tensor", _make_from_data(torch.as_tensor, False, ("dtype", "device"))
        )
        _patch(stack, torch, "asarray", _make_from_data(torch.asarray, False))
        save, load = _wrap_save(torch.save), _wrap_load(torch.load)
        for owner in (torch, torch.serialization):
            _patch(stack, owner, "save", save)
            _patch(stack, owner, "load", load)
        _patch_device_api(stack, emu, macos)

        if emu._meta:
            mode = _MetaInitMode()
            _push_mode(mode)
            stack.callback(_pop_own_mode, mode)

        common.ACTIVE = emu
        stack.callback(setattr, common, "ACTIVE", None)
        yield emu
