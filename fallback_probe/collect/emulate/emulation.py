"""One emulation's state and its moves across the device boundary.

:class:`Emulation` is what :func:`emulated_mps` yields: which tensors are on the emulated
device, the refusals and placeholders it recorded, and how a tensor goes to and from ``mps``
(each move one ``aten::_to_copy``, as a Mac's dispatcher sees it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .common import _CPU, MPS_DEVICE, Backing, _current, _make_wrapper, _NoSubclassTF
from .meta import (
    _PLACEHOLDER_MAX_BYTES,
    _has_plain_data,
    _materialize,
    _meta_nbytes,
    _tree_to_meta,
)
from .refusals import Refusal, _user_location, refused_dtypes
from .tensor import _MPSTensorBase

_MAX_PENDING = 4  # refusals one op can make: mixed devices, then a refused dtype


class Emulation:
    """State of one :func:`emulated_mps` run: what it made up and what a Mac would refuse."""

    backing: Backing
    placeholders: list[tuple[str, str]]
    refusals: list[Refusal]

    def __init__(
        self, backing: Backing, *, stop_at_refusal: bool = False, macos: str | None = None
    ) -> None:
        self.backing = backing
        self.stop_at_refusal = stop_at_refusal
        self.placeholders = []
        self.refusals = []
        self._meta = backing == "meta"
        self._backing_device = torch.device(backing)
        self._refused_dtypes = refused_dtypes(macos)
        self._pending: list[Refusal] = []  # refused by the op being dispatched, first first
        self._refusal_seen: dict[tuple[str, str], Refusal] = {}
        self._force_plain = 0  # >0 while a deliberate move off the device is dispatched
        self._mixed_calls = 0  # >0 while a torch call that mixes devices is running
        self._placeholder_seen: set[tuple[str, str]] = set()
        self._saving_keys: set[int] = set()
        self._loaded_keys: set[int] = set()
        self._memory_fraction = 0.0
        self._autocast: torch.dtype | None = None  # dtype of the torch.autocast("mps") in force
        self._cls: type[_MPSTensorBase] = type(
            "MPSTensor",
            (_MPSTensorBase,),
            {
                "_emu": self,
                "__module__": __name__,
                "__tensor_unflatten__": staticmethod(
                    lambda inner, ctx, size, stride: self._wrap(inner["_elem"])
                ),
            },
        )

    def is_emulated(self, t: object) -> bool:
        """True for a tensor this emulation placed on ``mps`` (the op touches the device)."""
        return type(t) is self._cls

    @property
    def dispatch(self) -> Callable[..., Any]:
        """The device's ``__torch_dispatch__``, for a dispatch mode to call directly."""
        return self._cls.__torch_dispatch__

    # -- recording ------------------------------------------------------------------------

    @property
    def rejections(self) -> list[tuple[str, str]]:
        """(message, "file:line") of each refusal, as earlier versions listed them."""
        return [(r.message, r.where) for r in self.refusals]

    def take_refusal(self) -> str | None:
        """The error a Mac prints for the op just dispatched, if it refuses it (once).

        The recorder calls this after each op it hands to :attr:`dispatch` and files the error
        on that op's record, which the classifier then judges unsupported. A Mac raises the
        first refusal of an op; any later one of the same op follows from it.
        """
        pending = self._pending
        if not pending:
            return None
        self._pending = []
        for refusal in pending:  # later ones follow from the first (float64 out of a mixed add)
            refusal.on_op = True
        return pending[0].error

    def discard_pending(self) -> None:
        """Forget refusals no recorder took (made outside a probe of a shared emulation)."""
        self._pending.clear()

    def _refuse(self, exc_type: type[Exception], message: str, kind: str) -> None:
        """A Mac raises here. Stop like a Mac if asked to; otherwise list it and go on."""
        where = _user_location()
        error = f"{exc_type.__name__}: {message}"
        refusal = self._refusal_seen.get((error, where))
        if refusal is None:
            refusal = self._refusal_seen[(error, where)] = Refusal(kind, error, where)
            self.refusals.append(refusal)
        if self.stop_at_refusal:
            exc = exc_type(message)
            if where:
                exc.add_note(f"(fallback-probe emulated MPS: raised at {where})")
            raise exc
        if len(self._pending) < _MAX_PENDING:  # bounded when no recorder takes them
            self._pending.append(refusal)

    def _placeholder(self, op: str) -> None:
        entry = (op, _user_location())
        if entry not in self._placeholder_seen:
            self._placeholder_seen.add(entry)
            self.placeholders.append(entry)

    def _check_dtype(self, dtype: torch.dtype) -> None:
        refused = self._refused_dtypes.get(dtype)
        if refused is not None:
            self._refuse(*refused, "dtype")

    # -- wrapping ---------------------------------------------------------------------------

    def _wrap(self, e: torch.Tensor) -> torch.Tensor:
        """Make ``e`` (a backing tensor) an mps tensor; the one place a dtype is refused."""
        if e.dtype in self._refused_dtypes:
            self._check_dtype(e.dtype)
        if e.requires_grad:
            e = e.detach()
        w = _make_wrapper(
            self._cls,
            e.size(),
            e.stride(),
            e.storage_offset(),
            dtype=e.dtype,
            device=e.device,
            requires_grad=False,
        )
        w._elem = e
        return w

    def _wrap_out(self, out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return self._wrap(out)
        if type(out) is tuple or type(out) is list:
            return type(out)(self._wrap_out(o) for o in out)
        return out

    # -- running ops on the backing ---------------------------------------------------------

    def _run_meta(self, func: Any, args: list[Any], kwargs: dict[str, Any], wrap: bool) -> Any:
        """Run ``func`` on meta; make up data-dependent results instead of failing."""
        try:
            return func(*args, **kwargs)
        except (NotImplementedError, RuntimeError) as err:
            first = err
        if _has_plain_data(args, kwargs):
            # A CPU helper tensor made by a C++ composite (or an allowed mix): it is on the
            # device as far as the script is concerned.
            args, kwargs = _tree_to_meta(args), _tree_to_meta(kwargs)
            try:
                return func(*args, **kwargs)
            except (NotImplementedError, RuntimeError) as err:
                first = err
        if "meta" not in str(first).lower() or _meta_nbytes(args, kwargs) > _PLACEHOLDER_MAX_BYTES:
            raise first
        out = func(*_materialize(args), **_materialize(kwargs))
        self._placeholder(func.name())
        return _tree_to_meta(out) if wrap else out

    def _to_plain(
        self,
        w: torch.Tensor,
        device: torch.device,
        dtype: torch.dtype | None,
        memory_format: torch.memory_format | None,
    ) -> torch.Tensor:
        """mps -> another device, as ``aten::_to_copy`` (the recorder sees the sync)."""
        if w.requires_grad and torch.is_grad_enabled():
            return _FromMPS.apply(w, device, dtype, memory_format)
        return self._raw_to_plain(w, device, dtype, memory_format)

    def _raw_to_plain(
        self,
        w: torch.Tensor,
        device: torch.device,
        dtype: torch.dtype | None,
        memory_format: torch.memory_format | None,
    ) -> torch.Tensor:
        self._force_plain += 1
        try:
            with _NoSubclassTF():  # straight to dispatch, where the recorder sees the sync
                return torch.ops.aten._to_copy.default(
                    w, dtype=dtype, device=device, memory_format=memory_format
                )
        finally:
            self._force_plain -= 1

    def _to_mps(
        self,
        t: torch.Tensor,
        dtype: torch.dtype | None,
        memory_format: torch.memory_format | None,
    ) -> torch.Tensor:
        """Plain tensor -> mps, as ``aten::_to_copy`` (keeping the graph when it needs grad)."""
        if t.requires_grad and torch.is_grad_enabled():
            return _ToMPS.apply(t, dtype, memory_format)
        return self._raw_to_mps(t, dtype, memory_format)

    def _raw_to_mps(
        self,
        t: torch.Tensor,
        dtype: torch.dtype | None,
        memory_format: torch.memory_format | None,
    ) -> torch.Tensor:
        # One aten::_to_copy, the op a Mac's dispatcher sees for a transfer (its body makes the
        # destination through the factory kernels and copies into it); wrapping its result
        # refuses the dtypes MPS has not.
        with torch.no_grad():
            return torch.ops.aten._to_copy.default(
                t,
                dtype=dtype,
                device=MPS_DEVICE,
                memory_format=memory_format or torch.preserve_format,
            )

    def _to(self, t: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """``Tensor.to`` when the source or the target is mps."""
        device, dtype, copy_, memory_format = _parse_to(args, kwargs)
        if type(t) is self._cls:
            if device is None or device.type == "mps":
                e = t._elem
                keep = memory_format in (None, torch.preserve_format)
                if (dtype is None or dtype == e.dtype) and not copy_ and keep:
                    return t
                with _NoSubclassTF():
                    return torch.ops.aten._to_copy.default(
                        t, dtype=dtype, memory_format=memory_format
                    )
            return self._to_plain(t, device, dtype, memory_format)
        return self._to_mps(t, dtype, memory_format)


class _ToMPS(torch.autograd.Function):
    """cpu -> mps that keeps the graph (a plain copy into a wrapper would cut it)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, dtype: Any, memory_format: Any) -> torch.Tensor:
        ctx.src_dtype = t.dtype
        return _current()._raw_to_mps(t, dtype, memory_format)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, None, None]:
        emu = _current()
        if emu.is_emulated(grad):
            grad = emu._raw_to_plain(grad, _CPU, ctx.src_dtype, None)
        return grad, None, None


class _FromMPS(torch.autograd.Function):
    """mps -> cpu that keeps the graph; the gradient goes back to mps."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, device: Any, dtype: Any, memory_format: Any) -> Any:
        ctx.src_dtype = w.dtype
        return _current()._raw_to_plain(w, device, dtype, memory_format)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, None, None, None]:
        emu = _current()
        if not emu.is_emulated(grad):
            grad = emu._raw_to_mps(grad, ctx.src_dtype, None)
        return grad, None, None, None


def _parse_to(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.device | None, torch.dtype | None, bool, torch.memory_format | None]:
    """``Tensor.to``'s overloads -> (device, dtype, copy, memory_format)."""
    device: Any = None
    dtype: torch.dtype | None = None
    values: dict[str, Any] = {}
    if args:
        first, rest = args[0], args[1:]
        if isinstance(first, torch.Tensor):
            device, dtype = first.device, first.dtype
            names: tuple[str, ...] = ("non_blocking", "copy")
        elif isinstance(first, torch.dtype):
            dtype = first
            names = ("non_blocking", "copy")
        else:
            device = first
            names = ("dtype", "non_blocking", "copy")
        if len(rest) > len(names):
            raise TypeError("to() received too many positional arguments")
        values.update(zip(names, rest, strict=False))
    values.update(kwargs)
    other = values.pop("other", None)
    if isinstance(other, torch.Tensor):
        device, dtype = other.device, other.dtype
    device = values.pop("device", device)
    dtype = values.pop("dtype", dtype)
    values.pop("non_blocking", None)
    copy_ = bool(values.pop("copy", False))
    memory_format = values.pop("memory_format", None)
    if values:
        raise TypeError(f"to() got unexpected arguments {sorted(values)}")
    if device is not None and not isinstance(device, torch.device):
        device = torch.device(device)
    return device, dtype, copy_, memory_format
