"""``torch.autocast("mps")`` casts as a Mac casts.

Autocast works at the ``AutocastMPS`` dispatch key, which only MPS tensors carry; the emulated
tensors are CPU tensors to C++, so that key never fires. Instead, while an mps autocast region
is active, the device's ``__torch_function__`` applies MPS's cast policy (torch 2.13,
``aten/src/ATen/autocast_mode.cpp``, ``AutocastMPS``) to each call by the name of the op:
eligible arguments (floating tensors on the emulated device) are cast with ``.to()`` before
the call, which autograd records as a Mac's autocast does. What differs from a Mac:

- the policy is applied per torch call, so ops a C++ composite calls inside itself are not
  cast (except ``cross_entropy``, which on a Mac reaches ``log_softmax``/``nll_loss`` in fp32
  and is run in fp32 here);
- casts of weights are not cached within a region: the trace shows one ``aten::_to_copy`` per
  use where a Mac makes one per weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# Op names (as torch functions and Tensor methods are named) by MPS's autocast policy.
LOWER_PRECISION = frozenset(
    {
        "_convolution", "conv1d", "conv2d", "conv_tbc", "conv_transpose1d",
        "conv_transpose2d", "convolution", "prelu", "addmm", "addmv", "addr", "matmul",
        "__matmul__", "__rmatmul__", "einsum", "mm", "mv", "linear", "addbmm", "baddbmm",
        "bmm", "chain_matmul", "multi_dot", "linalg_multi_dot", "lstm_cell",
        "scaled_dot_product_attention",
    }
)  # fmt: skip
FP32 = frozenset(
    {
        "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
        "reciprocal", "rsqrt", "sinh", "tan", "pow", "__pow__", "__rpow__", "softplus",
        "layer_norm", "native_layer_norm", "group_norm", "frobenius_norm", "nuclear_norm",
        "batch_norm", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss",
        "nll_loss", "nll_loss2d", "hinge_embedding_loss", "kl_div", "l1_loss",
        "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss",
        "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
        "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist",
        "renorm", "logsumexp", "cross_entropy",
    }
)  # fmt: skip
FP32_SET_OPT_DTYPE = frozenset(
    {
        "prod", "softmax", "log_softmax", "cumprod", "cumsum", "vector_norm",
        "linalg_vector_norm", "matrix_norm", "linalg_matrix_norm", "sum",
    }
)  # fmt: skip
PROMOTE = frozenset(
    {
        "addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "grid_sampler",
        "grid_sample", "index_put", "tensordot", "scatter_add",
    }
)  # fmt: skip


def autocast_call(
    cls: type,
    dtype: torch.dtype,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args``/``kwargs`` of ``func`` after MPS's autocast policy for ``dtype``."""
    name = getattr(func, "__name__", "")
    if name in LOWER_PRECISION:
        to: Any = dtype
    elif name in FP32:
        to = torch.float32
    elif name in FP32_SET_OPT_DTYPE:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if _eligible(cls, first) and kwargs.get("dtype") is None:
            kwargs = {**kwargs, "dtype": torch.float32}
        return args, kwargs
    elif name in PROMOTE:
        floats = [t.dtype for t in _tensors(args, kwargs) if _eligible(cls, t)]
        if len(set(floats)) < 2:
            return args, kwargs
        to = floats[0]
        for d in floats[1:]:
            to = torch.promote_types(to, d)
    else:
        return args, kwargs

    def cast(x: Any) -> Any:
        if _eligible(cls, x) and x.dtype != to:
            return x.to(to)
        if type(x) is list or type(x) is tuple:
            return type(x)(cast(y) for y in x)
        return x

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _eligible(cls: type, t: Any) -> bool:
    """An autocast-eligible tensor on a Mac: on mps, floating, not float64."""
    return type(t) is cls and t.is_floating_point() and t.dtype != torch.float64


def _tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    out = []
    for v in (*args, *kwargs.values()):
        out.extend(v if type(v) is list or type(v) is tuple else (v,))
    return out


_AUTOCAST = torch.amp.autocast_mode.autocast
_ORIG_ENTER = _AUTOCAST.__enter__
_ORIG_EXIT = _AUTOCAST.__exit__


def _track(emu: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``autocast.__enter__``/``__exit__`` that keep ``emu._autocast`` = the mps autocast
    dtype in force (None outside an mps region), read back from torch's own state."""

    def refresh() -> None:
        on = torch.is_autocast_enabled("mps")
        emu._autocast = torch.get_autocast_dtype("mps") if on else None

    def enter(self: Any) -> Any:
        out = _ORIG_ENTER(self)
        refresh()
        return out

    def exit_(self: Any, *exc: Any) -> Any:
        try:
            return _ORIG_EXIT(self, *exc)
        finally:
            refresh()

    return enter, exit_
