"""Which calls mix devices, and which ATen ops a Mac lets take a CPU tensor beside an mps one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils import _pytree as pytree

from .common import _NoSubclassTF, _Tensor

if TYPE_CHECKING:
    from .tensor import _MPSTensorBase


def _seq_mixes(cls: type, seq: Any) -> bool:
    """A non-scalar tensor that is not on mps (0-dim CPU tensors pass as scalars)."""
    for x in seq:
        if isinstance(x, _Tensor):
            if type(x) is not cls and x.dim():
                return True
        elif (type(x) is list or type(x) is tuple) and _seq_mixes(cls, x):
            return True
    return False


def _kwargs_mix(cls: type, kwargs: dict[str, Any]) -> bool:
    return _seq_mixes(cls, kwargs.values())


def _call_off_device(
    cls: type[_MPSTensorBase],
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """``zeros_like(x_mps, device="cpu")`` and the like: run on the backing, result stays put."""
    emu = cls._emu

    def call(materialize: bool) -> Any:
        def unwrap(x: Any) -> Any:
            if type(x) is not cls:
                return x
            return torch.zeros_like(x._elem, device="cpu") if materialize else x._elem

        with _NoSubclassTF():
            return func(*pytree.tree_map(unwrap, args), **pytree.tree_map(unwrap, kwargs))

    if not emu._meta:
        return call(False)
    try:
        return call(False)
    except (NotImplementedError, RuntimeError) as err:
        if "meta" not in str(err).lower():
            raise
    emu._placeholder(getattr(func, "__name__", str(func)))
    return call(True)


def _retry_on_device(
    cls: type[_MPSTensorBase],
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    message: str,
) -> Any:
    """A C++ check refused a call mixing devices: list it, then run it as the script would
    once fixed, with its CPU tensors moved to mps (the moves are recorded before the refusal,
    so the error lands on the call's own first op)."""
    emu = cls._emu
    if emu.stop_at_refusal:
        try:
            emu._refuse(RuntimeError, message, "mixed devices")
        except RuntimeError as exc:
            raise exc from None

    def onto_device(t: torch.Tensor) -> torch.Tensor:
        if type(t) is cls or not t.dim():
            return t
        return emu._to(t, (), {"device": "mps"})

    args, kwargs = pytree.tree_map_only(_Tensor, onto_device, (args, kwargs))
    emu._refuse(RuntimeError, message, "mixed devices")
    with _NoSubclassTF():
        return func(*args, **kwargs)


# ATen ops that accept a CPU tensor next to a device tensor: copies across devices, and
# advanced indexing (indices may stay on the CPU); lengths of packed sequences and CTC live
# on the CPU by contract.
_aten = torch.ops.aten
_MIXED_OPS = {
    _aten.copy_,
    _aten._copy_from,
    _aten._copy_from_and_resize,
    _aten._to_copy,
    _aten.index,
    _aten._unsafe_index,
    _aten.index_put_,
    _aten.index_put,
    _aten._index_put_impl_,
    _aten._unsafe_index_put,
    _aten.set_,
    _aten._pack_padded_sequence,
    _aten._pad_packed_sequence,
    _aten.ctc_loss,
    _aten._ctc_loss,
}
