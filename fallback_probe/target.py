"""What to run: an unchanged script as ``__main__``, or a function in a file."""

from __future__ import annotations

import os
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fallback_probe.errors import ProbeError


@dataclass(frozen=True)
class Target:
    path: Path
    function: str | None = None
    args: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str, args: tuple[str, ...] = ()) -> Target:
        """``script.py`` or ``file.py:fn``; checked before anything runs (exit 2)."""
        path_text, function = spec, None
        head, sep, tail = spec.rpartition(":")
        if sep and tail.isidentifier() and head:
            path_text, function = head, tail
        path = Path(path_text)
        if not path.is_file():
            raise ProbeError(f"no such file: {path_text}")
        try:
            source = path.read_bytes()
            compile(source, str(path), "exec")
        except SyntaxError as exc:
            raise ProbeError(f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg}") from None
        except (OSError, ValueError) as exc:
            raise ProbeError(f"cannot read {path_text}: {exc}") from None
        return cls(path.resolve(), function, tuple(args))


class BadTarget(ProbeError):
    """The file ran but does not provide what was asked (a missing function)."""


def run_script(target: Target) -> None:
    """Exactly as ``python script.py args…``: argv, ``__file__``, its folder on sys.path."""
    old_argv, old_path = sys.argv[:], sys.path[:]
    sys.argv = [str(target.path), *target.args]
    sys.path.insert(0, str(target.path.parent))
    try:
        runpy.run_path(str(target.path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = old_argv, old_path


def load_function(target: Target) -> Any:
    old_path = sys.path[:]
    sys.path.insert(0, str(target.path.parent))
    try:
        namespace = runpy.run_path(str(target.path), run_name=target.path.stem)
    finally:
        sys.path[:] = old_path
    fn = namespace.get(target.function or "")
    if not callable(fn):
        raise BadTarget(f"{os.fspath(target.path)} has no function {target.function!r}")
    return fn


def run_function(fn: Any, device: str, train: bool) -> None:
    """Call ``fn()``. It may return nothing, or ``(model, inputs)``: then the probe moves both
    to ``device`` and runs forward — with ``train``, backward and one SGD step too."""
    import torch

    result = fn()
    if result is None:
        return
    if not (
        isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)
    ):
        raise BadTarget(
            "the function must return None or (model, inputs): a torch.nn.Module and a "
            f"tensor or tuple of tensors, not {type(result).__name__}"
        )
    model, inputs = result
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    model = model.to(device)
    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
    if not train:
        with torch.no_grad():
            model(*inputs)
        return
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    out = model(*inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    loss = sum(
        o.float().sum() for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point()
    )
    loss.backward()  # type: ignore[union-attr]
    optimizer.step()
