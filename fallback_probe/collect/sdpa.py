"""What MPS runs for the CPU's flash attention: torch's portable math, traced on meta.

On the CPU ``scaled_dot_product_attention`` reaches ``_scaled_dot_product_flash_attention_for_cpu``
(and its backward); on MPS it takes the math backend (attention.cpp, ``SDPBackend::math``):
``_scaled_dot_product_attention_math_for_mps`` where the release has it and only without grad,
with dropout 0 and contiguous, non-nested q/k/v; else the portable
``_scaled_dot_product_attention_math``, whose backward is autograd through its decomposed ops.
So the recorder files the portable math's forward body, or the backward ops of it, as the
call's children (classify/rules.py judges the call by them where the math is composite).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

FORWARD = "aten::_scaled_dot_product_flash_attention_for_cpu"
BACKWARD = "aten::_scaled_dot_product_flash_attention_for_cpu_backward"
_MATH = torch.ops.aten._scaled_dot_product_attention_math.default


def math_for_mps_eligible(args: tuple, kwargs: dict) -> bool:
    """attention.cpp's condition for ``_math_for_mps`` (the release must also list it)."""
    q, k, v = args[:3]
    dropout = args[3] if len(args) > 3 else kwargs.get("dropout_p", 0.0)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    plain = all(t.is_contiguous() and not t.is_nested for t in (q, k, v))
    return not grad and dropout == 0.0 and plain


def _math_args(name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict, Any]:
    """The math op's arguments for a flash call (meta copies); for the backward, also the
    gradient of the output."""
    if name == FORWARD:
        q, k, v, *rest = args
        grad_out = None
    else:
        grad_out, q, k, v, _out, _lse, *rest = args
    dropout = rest[0] if rest else kwargs.get("dropout_p", 0.0)
    causal = rest[1] if len(rest) > 1 else kwargs.get("is_causal", False)
    margs = (q, k, v, kwargs.get("attn_mask"), dropout, causal)
    # Grouped-query attention (fewer key/value heads): the CPU's flash kernel takes it as is,
    # sdpa passes ``enable_gqa`` to the math, which repeats the key/value heads.
    gqa = q.dim() >= 3 and k.dim() >= 3 and q.size(-3) != k.size(-3)
    return margs, {"scale": kwargs.get("scale"), "enable_gqa": gqa}, grad_out


def body(name: str, args: tuple, kwargs: dict) -> Callable[[AbstractContextManager], None]:
    """A run of the math on meta ``args``: ``record`` wraps what MPS would run."""
    margs, mkwargs, grad_out = _math_args(name, args, kwargs)

    def forward(record: AbstractContextManager) -> None:
        with record:
            _MATH(*margs, **mkwargs)

    def backward(record: AbstractContextManager) -> None:
        # The dispatcher excludes autograd below it on this thread: a fresh thread has it.
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.enable_grad():
                    q, k, v = (t.detach().requires_grad_() for t in margs[:3])
                    out = _MATH(q, k, v, *margs[3:], **mkwargs)[0]
                    with record:
                        torch.autograd.grad(out, (q, k, v), grad_out)
            except BaseException as err:  # re-raised on the caller's thread
                failure.append(err)

        worker = threading.Thread(target=run, name="fallback-probe-sdpa-backward")
        worker.start()
        worker.join()
        if failure:
            raise failure[0]

    return forward if name == FORWARD else backward
