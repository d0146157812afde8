"""Call an op again from a dispatch mode when torch handed it a wrapped number.

C++ composites pass Python scalars to ops whose schema wants a Tensor by wrapping them
(``wrapped_scalar_tensor``: ``bitwise_left_shift.Tensor_Scalar`` calls ``.Tensor`` so). A
``TorchDispatchMode`` receives such an argument as a plain ``int``/``float``, and calling the
op with it fails in argument parsing, before anything ran. Only then are the numbers in
Tensor-typed slots made 0-dim tensors (which promote like the wrapped numbers they were) and
the op called once more: the common path pays nothing.
"""

from __future__ import annotations

from typing import Any

import torch

_NUMBERS = (bool, int, float, complex)


def call_op(func: Any, args: tuple, kwargs: dict) -> Any:
    try:
        return func(*args, **kwargs)
    except RuntimeError:
        fixed = _numbers_as_tensors(func, args, kwargs)
        if fixed is None:  # not an argument-parsing failure of ours
            raise
    return func(*fixed[0], **fixed[1])


def _numbers_as_tensors(func: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    schema = getattr(func, "_schema", None)
    if schema is None:
        return None
    new_args, new_kwargs, changed = list(args), dict(kwargs), False
    for i, param in enumerate(schema.arguments):
        if not isinstance(param.type, torch.TensorType):
            continue
        if param.kwarg_only or i >= len(args):
            value, where = new_kwargs.get(param.name), param.name
        else:
            value, where = new_args[i], i
        if type(value) not in _NUMBERS:
            continue
        tensor = torch.tensor(value)
        if isinstance(where, int):
            new_args[where] = tensor
        else:
            new_kwargs[where] = tensor
        changed = True
    return (tuple(new_args), new_kwargs) if changed else None
