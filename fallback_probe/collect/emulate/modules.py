"""How parameters move: ``nn.Module._apply``'s shallow-copy check and ``p.data = ...``."""

from __future__ import annotations

import torch

from . import common
from .common import _current, _NoSubclassTF


def _compatible_shallow_copy_type(a: torch.Tensor, b: torch.Tensor) -> bool:
    """What ``nn.Module._apply`` asks before ``param.data = moved``.

    On a Mac dense mps and cpu tensors are compatible, so ``model.to()`` / ``model.cpu()``
    keep the parameter objects (and the ties between modules sharing one). Across the
    emulated device the answer is the same, and ``p.data = ...`` (patched, ``_set_data``)
    swaps the object's contents instead of copying the wrapper's empty storage. Two wrappers
    (a tied weight met a second time, a parameter already on mps) are torch's own question.
    """
    cls = _current()._cls
    mine, theirs = type(a) is cls, type(b) is cls
    with _NoSubclassTF():  # torch's own check, without coming back here
        if mine == theirs:
            return torch._has_compatible_shallow_copy_type(a, b)
        wrapper, plain = (a, b) if mine else (b, a)
        # Parameters only: a .grad held by its parameter cannot be swapped in place, so
        # _apply gives the parameter a new gradient tensor instead (as it does for sparse).
        return (
            isinstance(wrapper, torch.nn.Parameter)
            and type(plain) in _PLAIN
            and plain.layout == torch.strided
        )


_PLAIN = (torch.Tensor, torch.nn.Parameter)
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
        _swap_keeping_grad(self, moved)
    else:  # the mps tensor moves off the device (model.cpu()), same object
        try:
            _swap_keeping_grad(self, value.detach())
        except RuntimeError as err:  # referenced from C++ (a .grad held by its parameter)
            raise NotImplementedError(
                "fallback-probe's emulated mps device cannot move this tensor to the CPU "
                "through `.data =`; assign the CPU tensor to the variable or attribute instead"
            ) from err


def _swap_keeping_grad(t: torch.Tensor, moved: torch.Tensor) -> None:
    """``t`` takes ``moved``'s place, as ``set_data`` would: same object, same ``.grad``."""
    if isinstance(t, torch.nn.Parameter):
        moved = torch.nn.Parameter(moved, t.requires_grad)
    else:
        moved.requires_grad_(t.requires_grad)
    grad = t.grad
    t.grad = None  # a held .grad would block the swap
    torch.utils.swap_tensors(t, moved)
    if grad is not None:
        t.grad = grad
