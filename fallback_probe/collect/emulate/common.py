"""What every part of the emulation shares: the device it shows, the active emulation, and
how a patch is undone."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from .emulation import Emulation

Backing = Literal["cpu", "meta"]

MPS_DEVICE = torch.device("mps", 0)
_CPU = torch.device("cpu")

# The emulation of the running emulated_mps() block (None outside): patched torch entry points
# and the MPS dispatch-key kernels are process-wide, so they look it up when called.
ACTIVE: Emulation | None = None

_make_wrapper = torch.Tensor._make_wrapper_subclass
_NoSubclassTF = torch._C.DisableTorchFunctionSubclass
_Tensor = torch.Tensor


def _current() -> Emulation:
    if ACTIVE is None:
        raise RuntimeError("the emulated mps device is not active (emulated_mps() has ended)")
    return ACTIVE


def _is_mps(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "mps"
    return isinstance(device, str) and device.startswith("mps")


def _patch(stack: contextlib.ExitStack, owner: Any, name: str, value: Any) -> None:
    """Set ``owner.name``; on exit restore it exactly (deleting it if it was inherited)."""
    own = vars(owner)
    had = name in own
    old = own.get(name)
    setattr(owner, name, value)
    if had:
        stack.callback(setattr, owner, name, old)
    else:
        stack.callback(delattr, owner, name)
