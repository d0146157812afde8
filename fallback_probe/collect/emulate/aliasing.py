"""In-place and ``out=`` ops return the very tensor they were given, not a fresh wrapper."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .common import _NoSubclassTF

if TYPE_CHECKING:
    from .emulation import Emulation
    from .tensor import _MPSTensorBase


_MISSING = object()
_SELF = object()
_PLANS: dict[Any, Any] = {}
_RESIZING = {"resize_", "resize_as_", "set_", "_resize_output_"}


def _alias_plan(func: Any) -> Any:
    """None (fresh results), _SELF (returns its first argument), or per return the mutated
    argument it aliases (index, name, kwarg-only) and whether the op may resize it."""
    schema = func._schema
    specs: list[tuple[int, str, bool] | None] = []
    mutable = False
    # In-place view ops (unsqueeze_, transpose_, as_strided_, ... inside stft and others)
    # change the backing's sizes and strides like a resize does.
    may_resize = schema.name.split("::")[-1] in _RESIZING or torch.Tag.inplace_view in func.tags
    for ret in schema.returns:
        info = ret.alias_info
        spec = None
        if info is not None and info.is_write:
            for i, arg in enumerate(schema.arguments):
                ainfo = arg.alias_info
                if ainfo is not None and ainfo.is_write and ainfo.before_set == info.before_set:
                    spec = (i, arg.name, arg.kwarg_only)
                    may_resize = may_resize or arg.kwarg_only
                    break
        mutable = mutable or spec is not None
        specs.append(spec)
    if not mutable:
        return None
    if len(specs) == 1 and specs[0] is not None and specs[0][:3:2] == (0, False) and not may_resize:
        return _SELF  # the common in-place method: add_, mul_, copy_, ...
    return tuple(specs), may_resize


def _apply_plan(
    emu: Emulation,
    cls: type[_MPSTensorBase],
    plan: tuple[tuple[tuple[int, str, bool] | None, ...], bool],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    out: Any,
    wrap: bool,
) -> Any:
    specs, may_resize = plan
    outs = out if len(specs) > 1 else (out,)
    result = []
    for spec, o in zip(specs, outs, strict=False):
        if spec is None:
            result.append(emu._wrap_out(o) if wrap else o)
            continue
        i, name, kwarg_only = spec
        orig = args[i] if not kwarg_only and i < len(args) else kwargs.get(name)
        if may_resize and type(orig) is cls:
            _sync_metadata(orig)
        result.append(orig)
    return tuple(result) if len(specs) > 1 else result[0]


def _sync_metadata(w: torch.Tensor) -> None:
    """An out=/resize_ op resized the backing: give the wrapper the same sizes and strides.

    The wrapper's own storage has no data (its allocation is never touched), so growing it
    costs no memory; it only has to be large enough for ``as_strided_``.
    """
    e = w._elem
    with torch._C._DisableTorchDispatch(), _NoSubclassTF():
        if w.shape == e.shape and w.stride() == e.stride():
            return
        elems = -(-e.untyped_storage().nbytes() // e.element_size())
        w.resize_(max(elems, e.storage_offset() + 1))  # runs on the wrapper itself
        w.as_strided_(e.shape, e.stride(), e.storage_offset())
