"""Learn what a composite's body calls without running it on the emulated device.

On a Mac a ``CompositeExplicitAutograd(NonFunctional)`` kernel runs on MPS tensors and each op
it calls meets its own MPS kernel or the fallback (mps-facts §5, §11). Under emulation the
body cannot run on the wrapper tensors (it would make its helper tensors on the backing
device), so the recorder runs the real op through the emulation and the body a second time on
*meta* copies of the arguments: same shapes, strides and dtypes, no data, no effect on the
script's tensors or random numbers. The ops it reaches are recorded as the call's children.

A body on meta depends only on metadata and non-tensor arguments, so what it calls is cached
per signature: a training loop runs each body once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

from fallback_probe.collect.scalars import call_op

_META = torch.device("meta")
# A leaf op with no meta kernel runs on zeros of its shapes, on the CPU, up to this many
# input bytes (the emulation's own limit for placeholders); beyond it the body is not traced.
MAX_MATERIALIZED_BYTES = 1 << 28
_HASHABLE = (
    int, float, bool, str, complex, type(None), torch.dtype, torch.device, torch.memory_format,
    torch.layout,
)  # fmt: skip


class BodyNotTraced(Exception):
    """The body raised on meta copies of the arguments: what it calls stays unknown."""


def backing(t: torch.Tensor) -> torch.Tensor:
    """The data behind an emulated tensor (the wrapper's ``_elem``), else ``t``."""
    return getattr(t, "_elem", t)


def meta_like(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor with ``t``'s sizes, strides, storage offset and dtype."""
    e = backing(t)
    size, stride, offset = e.size(), e.stride(), e.storage_offset()
    if offset == 0:
        return torch.empty_strided(size, stride, dtype=e.dtype, device=_META)
    span = 1 + sum((s - 1) * st for s, st in zip(size, stride, strict=True) if s > 0)
    base = torch.empty(offset + span, dtype=e.dtype, device=_META)
    return base.as_strided(size, stride, offset)


def to_meta(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's arguments for the body's run: tensors as meta copies, ``device`` as meta."""

    def convert(x: Any) -> Any:
        return meta_like(x) if isinstance(x, torch.Tensor) else x

    margs = tuple(pytree.tree_map(convert, list(args)))
    mkwargs = pytree.tree_map(convert, kwargs)
    if "device" in mkwargs and mkwargs["device"] is not None:
        mkwargs["device"] = _META
    return margs, mkwargs


def signature(func: Any, args: tuple, kwargs: dict) -> tuple | None:
    """A key for everything a body on meta can depend on; ``None`` when something is not
    hashable (the body is then traced every time)."""
    try:
        key = (func, _sig(args), tuple((k, _sig(v)) for k, v in kwargs.items()))
        hash(key)
    except _Unhashable:
        return None
    return key


class _Unhashable(Exception):
    pass


def _sig(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        e = backing(x)
        return (e.dtype, tuple(e.size()), e.stride(), e.storage_offset())
    if type(x) is list or type(x) is tuple:
        return (type(x), tuple(_sig(v) for v in x))
    if isinstance(x, _HASHABLE):
        return (type(x), x)
    raise _Unhashable


def run_leaf(func: Any, args: tuple, kwargs: dict) -> Any:
    """Run one op of a body on meta; without a meta kernel, on zeros on the CPU (random number
    state kept), results brought back to meta."""
    try:
        return call_op(func, args, kwargs)
    except (NotImplementedError, RuntimeError) as err:
        first = err
    tensors = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    if sum(t.numel() * t.element_size() for t in tensors) > MAX_MATERIALIZED_BYTES:
        raise BodyNotTraced(f"{func.name()} has no meta kernel: {first}") from first
    real: dict[int, torch.Tensor] = {}

    def materialize(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            z = torch.zeros(x.size(), dtype=x.dtype)
            real[id(z)] = x
            return z
        if isinstance(x, torch.device) and x.type == "meta":
            return torch.device("cpu")
        return x

    cargs = pytree.tree_map(materialize, list(args))
    ckwargs = pytree.tree_map(materialize, kwargs)
    rng = torch.get_rng_state()
    try:
        out = func(*cargs, **ckwargs)
    except Exception as err:
        raise BodyNotTraced(f"{func.name()} failed on meta and on zeros: {err}") from err
    finally:
        torch.set_rng_state(rng)

    def back(o: Any) -> Any:
        if not isinstance(o, torch.Tensor):
            return o
        meta = real.get(id(o))
        if meta is not None:  # an out= or in-place argument: the body's own meta tensor
            if meta.size() != o.size():
                meta.resize_(o.size())
            return meta
        return meta_like(o)

    return pytree.tree_map(back, out)
