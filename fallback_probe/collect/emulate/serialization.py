"""``torch.save`` / ``torch.load``: storages of mps tensors are saved tagged ``mps``, as a Mac
writes them, and load back onto the emulated device."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils import _pytree as pytree

from . import common
from .common import _current, _is_mps

if TYPE_CHECKING:
    from .emulation import Emulation


def _adopt(emu: Emulation, obj: Any) -> Any:
    """Put tensors that were on mps when saved (or meta, with meta backing) back on mps."""

    def convert(t: torch.Tensor) -> torch.Tensor:
        if type(t) is emu._cls:
            return t
        key = t.untyped_storage()._cdata
        if key not in emu._loaded_keys and not (emu._meta and t.is_meta):
            return t
        e = t.detach()
        if emu._meta and not e.is_meta:
            e = e.to("meta")
        w = emu._wrap(e)
        if isinstance(t, torch.nn.Parameter):
            return torch.nn.Parameter(w, t.requires_grad)
        return w.requires_grad_(t.requires_grad) if t.is_leaf else w

    def visit(x: Any) -> Any:
        if isinstance(x, torch.nn.Module):
            return x._apply(convert)
        if isinstance(x, torch.Tensor):
            return convert(x)
        return x

    return pytree.tree_map(visit, obj)


def _storage_key(storage: Any) -> int | None:
    untyped = getattr(storage, "_untyped_storage", storage)
    return getattr(untyped, "_cdata", None)


def _tag_storage(storage: Any) -> str | None:
    emu = common.ACTIVE
    if emu is not None and _storage_key(storage) in emu._saving_keys:
        return "mps"
    return None


def _restore_storage(storage: Any, location: str) -> Any:
    emu = common.ACTIVE
    if emu is None or not location.startswith("mps"):
        return None
    emu._loaded_keys.add(storage._cdata)
    return storage


_TAG_PRIORITY = 9.5  # before torch's own "cpu" tagger (10): the backing storage is on the CPU


def _wrap_save(orig: Callable[..., Any]) -> Callable[..., Any]:
    def save(*args: Any, **kwargs: Any) -> Any:
        emu = _current()
        emu._saving_keys.clear()
        try:
            return orig(*args, **kwargs)
        finally:
            emu._saving_keys.clear()

    return save


def _wrap_load(orig: Callable[..., Any]) -> Callable[..., Any]:
    def load(*args: Any, **kwargs: Any) -> Any:
        emu = _current()
        args_l = list(args)
        if emu._meta:
            # Read no weight data: meta-backed mps needs only shapes and dtypes.
            if len(args_l) > 1 and _is_mps(args_l[1]):
                args_l[1] = "meta"
            elif _is_mps(kwargs.get("map_location")):
                kwargs["map_location"] = "meta"
        emu._loaded_keys.clear()
        try:
            out = orig(*args_l, **kwargs)
            if emu._loaded_keys or emu._meta:
                out = _adopt(emu, out)
            return out
        finally:
            emu._loaded_keys.clear()

    return load
