"""Meta backing (``--device meta``): shapes without data, so a 7B model traces in seconds.

Large CPU-default allocations made while building an ``nn.Module`` go to meta, and
data-dependent results are re-run on zeros (listed as placeholders) instead of failing.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._device as _torch_device
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

# Meta backing: CPU-default factory calls inside nn.Module.__init__ asking for at least this
# many elements go to meta. Smaller ones (norm weights, biases, mel filter banks, lookup
# tables) keep real data, so a small module built for CPU-side preprocessing still works.
META_INIT_MIN_NUMEL = 1 << 16
# A data-dependent op on meta is re-run on zeros only if its meta inputs are at most this big.
_PLACEHOLDER_MAX_BYTES = 1 << 28


def _has_plain_data(args: Any, kwargs: Any) -> bool:
    return any(
        t.device.type != "meta" and t.dim() != 0
        for t in pytree.tree_leaves((args, kwargs))
        if isinstance(t, torch.Tensor)
    )


def _tree_to_meta(x: Any) -> Any:
    return pytree.tree_map_only(
        torch.Tensor, lambda t: t if t.is_meta or t.dim() == 0 else t.to("meta"), x
    )


def _meta_nbytes(args: Any, kwargs: Any) -> int:
    return sum(
        t.numel() * t.element_size()
        for t in pytree.tree_leaves((args, kwargs))
        if isinstance(t, torch.Tensor) and t.is_meta
    )


def _materialize(x: Any) -> Any:
    """Meta tensors -> CPU zeros, for re-running an op whose result depends on the data."""
    return pytree.tree_map_only(
        torch.Tensor, lambda t: torch.zeros_like(t, device="cpu") if t.is_meta else t, x
    )


def _requested_numel(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    size = kwargs.get("size")
    if size is None:
        size = next((a for a in args if isinstance(a, (tuple, list, torch.Size))), None)
    if size is None:
        size = [a for a in args if type(a) is int]
    try:
        return math.prod(int(s) for s in size)
    except (TypeError, ValueError):
        return 0


def _in_module_init(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__init__" and isinstance(
            frame.f_locals.get("self"), torch.nn.Module
        ):
            return True
        frame = frame.f_back
    return False


class _MetaInitMode(TorchFunctionMode):
    """Large CPU-default allocations made while building an nn.Module go to meta.

    Without this, ``Model().to(device)`` of a 7B model fills CPU memory with weights in
    ``Model()`` before the move to (meta-backed) mps can drop them. Data the script creates
    outside module construction (datasets, inputs) keeps its real values.
    """

    def __init__(self) -> None:
        super().__init__()
        self._ctors = _device_constructors() - {
            torch.tensor,
            torch.as_tensor,
            torch.asarray,
            torch.scalar_tensor,
        }

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if kwargs is None:
            kwargs = {}
        if func in self._ctors and kwargs.get("device") is None:
            current = _torch_device.CURRENT_DEVICE
            if (
                (current is None or current.type == "cpu")
                and _requested_numel(args, kwargs) >= META_INIT_MIN_NUMEL
                and _in_module_init(sys._getframe(1))
            ):
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


@functools.cache
def _device_constructors() -> frozenset[Any]:
    return frozenset(_torch_device._device_constructors())
