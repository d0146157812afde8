"""How parameters move: ``nn.Module._apply``'s shallow-copy check and ``p.data = ...``."""

from __future__ import annotations

import torch

from . import common
from .common import _current, _NoSubclassTF


def _compatible_shallow_copy_type(a: torch.Tensor, b: torch.Tensor) -> bool:
    # A wrapper and a plain tensor share a C++ device with cpu backing, but ``a.data = b``
    # between them would hand the wrapper's empty storage around: nn.Module._apply must make
    # a new parameter (or swap) instead.
    if (type(a) is _current()._cls) != (type(b) is _current()._cls):
        return False
    return torch._C._has_compatible_shallow_copy_type(a, b)


_ORIG_DATA = torch._C.TensorBase.data


def _get_data(self: torch.Tensor) -> torch.Tensor:
    return _ORIG_DATA.__get__(self)


def _set_data(self: torch.Tensor, value: torch.Tensor) -> None:
    """``t.data = value`` across the device boundary, as on a Mac: ``t`` moves with it.

    C++ ``set_data`` finds a wrapper and a plain CPU tensor compatible and would copy the
    wrapper's empty storage into a plain tensor, so this runs first (a patched property).
    """
    emu = common.ACTIVE
    mine = emu is not None and type(self) is emu._cls
    theirs = emu is not None and type(value) is emu._cls
    if mine == theirs:
        with _NoSubclassTF():
            _ORIG_DATA.__set__(self, value)
        if mine:
            self._elem = value._elem
    elif theirs:  # a CPU tensor (often a Parameter) becomes the mps tensor, same object
        assert emu is not None
        moved = emu._wrap(value._elem)
        if isinstance(self, torch.nn.Parameter):
            moved = torch.nn.Parameter(moved, self.requires_grad)
        else:
            moved.requires_grad_(self.requires_grad)
        torch.utils.swap_tensors(self, moved)
    else:
        raise NotImplementedError(
            "fallback-probe's emulated mps device cannot move a tensor to the CPU through "
            "`.data =`; assign the CPU tensor to the variable or attribute instead"
        )
