"""An emulated ``mps`` device, so predict mode sees a script the way a Mac would run it.

An unchanged script decides where each tensor lives (``torch.backends.mps.is_available()``,
``.to(device)``); run as-is on Linux it takes its CPU path, and every CPU-side op would be
judged as if it ran on MPS. Inside :func:`emulated_mps` the script finds an ``mps`` device:
tensors placed there are wrapper tensors whose data lives on a *backing* device (``cpu``, or
``meta`` for ``--device meta``) but whose Python ``device`` is ``mps:0``. Only ops that touch
such a tensor are the ones a Mac would run on the GPU; :meth:`Emulation.is_emulated` tells the
recorder which those are. See docs/emulation.md for what is covered and what is not.

How it is built (why each piece exists):

- ``_MPSTensorBase`` is a ``_make_wrapper_subclass`` tensor. Its C++ device is the backing
  device (a C++ ``mps`` device aborts the process, mps-facts §8); ``__torch_dispatch__`` runs
  each ATen op on the backing tensors and re-wraps the results, so autograd, optimizers and
  views keep working on the wrappers. ``__torch_function__`` spots the API calls that mix
  devices, where user intent is visible (C++ composites create plain helper tensors that must
  *not* trip the check); the ATen ops such a call reaches then decide, since copies and
  indexing accept CPU tensors on a Mac too.
- Python kernels for the ``MPS`` dispatch key of factory ops (``empty``, ``zeros``,
  ``arange``, ...) make ``device="mps"``, ``torch.set_default_device("mps")`` and
  ``with torch.device("mps"):`` work everywhere, even inside torch's own Python code.
- Targeted patches, all restored on exit: ``Tensor.to`` / ``new_tensor``, ``torch.tensor`` /
  ``as_tensor`` / ``asarray`` (their C++ paths reject ``mps`` before any dispatch),
  ``Tensor.data`` (C++ ``set_data`` would mix a wrapper and a plain tensor),
  ``torch.backends.mps``, ``torch.mps``, ``torch.accelerator``, ``torch.save`` / ``load``
  (so a saved module comes back on ``mps``) and ``torch.compile`` (runs eagerly).
- With ``backing="meta"``, a ``TorchFunctionMode`` sends large CPU-default allocations made
  inside ``nn.Module.__init__`` to meta, so ``Model().to(device)`` of a 7B model never
  allocates its weights; data-dependent results are made up and listed in ``placeholders``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import math
import os
import sys
import sysconfig
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.utils._device as _torch_device
from torch._C import _len_torch_function_stack
from torch.overrides import TorchFunctionMode, _pop_mode, _push_mode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import _disable_current_modes

__all__ = ["Emulation", "emulated_mps"]

Backing = Literal["cpu", "meta"]

MPS_DEVICE = torch.device("mps", 0)
_CPU = torch.device("cpu")

# Wording of the errors a Mac raises (torch 2.13: aten/src/ATen/native/TensorIterator.cpp,
# aten/src/ATen/mps/EmptyTensor.cpp, OperationUtils.mm, torch/csrc/utils/tensor_numpy.cpp).
MIXED_DEVICE_MESSAGE = (
    "Expected all tensors to be on the same device, but found at least two devices, mps:0 and cpu!"
)
FLOAT64_MESSAGE = (
    "Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support "
    "float64. Please use float32 instead."
)
COMPLEX128_MESSAGE = (
    "Trying to convert ComplexDouble to the MPS backend but it does not have support for "
    "that dtype."
)
NUMPY_MESSAGE = (
    "can't convert mps:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
    "to host memory first."
)
_UNSUPPORTED_DTYPES = {torch.float64: FLOAT64_MESSAGE, torch.complex128: COMPLEX128_MESSAGE}

# Meta backing: CPU-default factory calls inside nn.Module.__init__ asking for at least this
# many elements go to meta. Smaller ones (norm weights, biases, mel filter banks, lookup
# tables) keep real data, so a small module built for CPU-side preprocessing still works.
META_INIT_MIN_NUMEL = 1 << 16
# A data-dependent op on meta is re-run on zeros only if its meta inputs are at most this big.
_PLACEHOLDER_MAX_BYTES = 1 << 28

_ACTIVE: Emulation | None = None

_make_wrapper = torch.Tensor._make_wrapper_subclass
_NoSubclassTF = torch._C.DisableTorchFunctionSubclass
_ORIG_TO = torch._C.TensorBase.to
_ORIG_NEW_TENSOR = torch._C.TensorBase.new_tensor
_OpOverload = torch._ops.OpOverload
_Tensor = torch.Tensor


class Emulation:
    """State of one :func:`emulated_mps` run: what it made up and what it rejected."""

    backing: Backing
    placeholders: list[tuple[str, str]]
    rejections: list[tuple[str, str]]

    def __init__(self, backing: Backing) -> None:
        self.backing = backing
        self.placeholders = []
        self.rejections = []
        self._meta = backing == "meta"
        self._backing_device = torch.device(backing)
        self._force_plain = 0  # >0 while a deliberate move off the device is dispatched
        self._mixed_calls = 0  # >0 while a torch call that mixes devices is running
        self._placeholder_seen: set[tuple[str, str]] = set()
        self._saving_keys: set[int] = set()
        self._loaded_keys: set[int] = set()
        self._memory_fraction = 0.0
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

    def _reject(self, exc: Exception) -> Exception:
        """Record an error a Mac would raise, with the user's file:line, and return it."""
        where = _user_location()
        self.rejections.append((str(exc), where))
        if where:
            exc.add_note(f"(fallback-probe emulated MPS: raised at {where})")
        return exc

    def _placeholder(self, op: str) -> None:
        entry = (op, _user_location())
        if entry not in self._placeholder_seen:
            self._placeholder_seen.add(entry)
            self.placeholders.append(entry)

    def _check_dtype(self, dtype: torch.dtype) -> None:
        message = _UNSUPPORTED_DTYPES.get(dtype)
        if message is not None:
            raise self._reject(TypeError(message))

    # -- wrapping ---------------------------------------------------------------------------

    def _wrap(self, e: torch.Tensor) -> torch.Tensor:
        """Make ``e`` (a backing tensor) an mps tensor; the one place float64 is refused."""
        if e.dtype in _UNSUPPORTED_DTYPES:
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
        # destination through the factory kernels and copies into it).
        self._check_dtype(t.dtype if dtype is None else dtype)
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

    # -- torch.save / torch.load ------------------------------------------------------------

    def _adopt(self, obj: Any) -> Any:
        """Put tensors that were on mps when saved (or meta, with meta backing) back on mps."""

        def convert(t: torch.Tensor) -> torch.Tensor:
            if type(t) is self._cls:
                return t
            key = t.untyped_storage()._cdata
            if key not in self._loaded_keys and not (self._meta and t.is_meta):
                return t
            e = t.detach()
            if self._meta and not e.is_meta:
                e = e.to("meta")
            w = self._wrap(e)
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

    # -- torch.mps --------------------------------------------------------------------------

    def _live_bytes(self) -> int:
        """Bytes held by live mps tensors (what the MPS allocator would hold), on demand."""
        seen: set[int] = set()
        total = 0
        for obj in gc.get_objects():
            if type(obj) is self._cls:
                storage = obj._elem.untyped_storage()
                if storage._cdata not in seen:
                    seen.add(storage._cdata)
                    total += storage.nbytes()
        return total


class _MPSTensorBase(torch.Tensor):
    """A tensor on the emulated mps device; each emulation subclasses it (see is_emulated)."""

    _emu: Emulation
    _elem: torch.Tensor

    # -- what the script sees ---------------------------------------------------------------

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return MPS_DEVICE

    @property
    def is_mps(self) -> bool:  # type: ignore[override]
        return True

    @property
    def is_cpu(self) -> bool:  # type: ignore[override]
        return False

    @property
    def is_meta(self) -> bool:  # type: ignore[override]
        return False

    def get_device(self) -> int:  # type: ignore[override]
        return 0

    def data_ptr(self) -> int:  # type: ignore[override]
        """The backing's address (0 on meta): good for identity checks, not for Metal."""
        return self._elem.data_ptr()

    def untyped_storage(self) -> torch.UntypedStorage:  # type: ignore[override]
        return self._elem.untyped_storage()

    def cpu(self, memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:  # type: ignore[override]
        return self._emu._to_plain(self, _CPU, None, memory_format)

    def numpy(self, *, force: bool = False) -> Any:  # type: ignore[override]
        if force:
            return self.detach().cpu().numpy()
        raise self._emu._reject(TypeError(NUMPY_MESSAGE))

    def tolist(self) -> Any:  # type: ignore[override]
        return self._emu._raw_to_plain(self.detach(), _CPU, None, None).tolist()

    def __format__(self, format_spec: str) -> str:
        if self.dim() == 0:
            return self.detach().item().__format__(format_spec)
        return object.__format__(self, format_spec)

    def __repr__(self, *, tensor_contents: str | None = None) -> str:  # type: ignore[override]
        emu = self._emu
        ts = torch._tensor_str
        with _disable_current_modes(), torch.no_grad():
            e = self._elem
            suffixes = [f"device='{MPS_DEVICE}'"]
            default = torch.get_default_dtype()
            if emu._meta:
                emu._placeholder("Tensor.__repr__")
                contents = "..."
                suffixes.append(f"size={tuple(e.shape)}")
                if e.dtype != default:
                    suffixes.append(f"dtype={e.dtype}")
            elif e.numel() == 0:
                contents = "[]"
                if e.dim() != 1:
                    suffixes.append(f"size={tuple(e.shape)}")
                if e.dtype != default:
                    suffixes.append(f"dtype={e.dtype}")
            else:
                contents = tensor_contents or ts._tensor_str(e, len("tensor("))
                if not ts.PRINT_OPTS.edgeitems:
                    suffixes.append(f"size={tuple(e.shape)}")
                cdefault = torch.cdouble if default == torch.double else torch.cfloat
                if e.dtype not in (default, cdefault, torch.int64, torch.bool):
                    suffixes.append(f"dtype={e.dtype}")
            grad_fn = self.grad_fn
            if grad_fn is not None:
                name = type(grad_fn).__name__
                if name == "CppFunction":
                    name = grad_fn.name().rsplit("::", 1)[-1]
                suffixes.append(f"grad_fn=<{name}>")
            elif self.requires_grad:
                suffixes.append("requires_grad=True")
            text = ts._add_suffixes("tensor(" + contents, suffixes, len("tensor("), False)
        if getattr(self, "_is_param", False):
            return "Parameter containing:\n" + text
        return text

    def __deepcopy__(self, memo: dict[int, Any]) -> torch.Tensor:
        if not self.is_leaf:
            raise RuntimeError(
                "Only Tensors created explicitly by the user (graph leaves) support the "
                "deepcopy protocol at the moment."
            )
        if id(self) in memo:
            return memo[id(self)]
        with torch.no_grad():
            new = self.clone()
        new.requires_grad_(self.requires_grad)
        if self.grad is not None:
            new.grad = copy.deepcopy(self.grad, memo)
        extra = {k: v for k, v in self.__dict__.items() if k != "_elem"}
        if extra:
            new.__dict__.update(copy.deepcopy(extra, memo))
        memo[id(self)] = new
        return new

    def __reduce_ex__(self, proto: Any) -> Any:
        # Pickle as the backing tensor; torch.save tags its storage "mps" (see _tag_storage)
        # so torch.load brings it back onto the emulated device, as on a Mac.
        emu = self._emu
        e = self._elem.detach()
        if not e.is_meta:
            emu._saving_keys.add(e.untyped_storage()._cdata)
        if getattr(self, "_is_param", False):
            return (torch._utils._rebuild_parameter, (e, self.requires_grad, OrderedDict()))
        if self.requires_grad:
            e.requires_grad_(True)
        return e.__reduce_ex__(proto)

    # Traceable-wrapper protocol: nn.Module._apply then swaps parameters in place, so an
    # optimizer built before model.to("mps") keeps the same parameter objects, as on a Mac.
    def __tensor_flatten__(self) -> tuple[list[str], None]:
        return ["_elem"], None

    # -- device rules ------------------------------------------------------------------------

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        special = _TF_SPECIAL.get(func)
        if special is not None:
            return special(*args, **(kwargs or {}))
        if kwargs:
            device = kwargs.get("device")
            if device is not None and not _is_mps(device) and type(func) is not _OpOverload:
                return _call_off_device(cls, func, args, kwargs)
        # Inline fast path: most calls have only mps tensors and scalars.
        for a in args:
            if isinstance(a, _Tensor):
                if type(a) is not cls and a.dim():
                    break
            elif (type(a) is list or type(a) is tuple) and _seq_mixes(cls, a):
                break
        else:
            if not kwargs or not _kwargs_mix(cls, kwargs):
                with _NoSubclassTF():
                    return func(*args, **(kwargs or {}))
        # The call mixes devices. Whether a Mac refuses it depends on the ATen ops it reaches
        # (copies and indexing accept CPU tensors; shape-only uses never reach an op), so the
        # dispatch below decides while this flag is up.
        emu = cls._emu
        emu._mixed_calls += 1
        try:
            with _NoSubclassTF():
                return func(*args, **(kwargs or {}))
        except RuntimeError as err:
            # A C++ device check of a composite (stft, ...) saw the meta backing: say mps.
            if emu._meta and "meta" in str(err):
                raise emu._reject(RuntimeError(str(err).replace("meta", str(MPS_DEVICE)))) from None
            raise
        finally:
            emu._mixed_calls -= 1

    # -- running ops ------------------------------------------------------------------------

    @classmethod
    def __torch_dispatch__(
        cls,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        emu = cls._emu
        uargs = []
        for a in args:
            ta = type(a)
            if ta is cls:
                uargs.append(a._elem)
            elif ta is list or ta is tuple:
                uargs.append([x._elem if type(x) is cls else x for x in a])
            else:
                uargs.append(a)
        wrap = True
        if kwargs:
            ukwargs = {}
            for k, v in kwargs.items():
                tv = type(v)
                if tv is cls:
                    v = v._elem
                elif tv is list or tv is tuple:
                    v = [x._elem if type(x) is cls else x for x in v]
                ukwargs[k] = v
            device = ukwargs.get("device")
            if device is not None:
                if device.type == "mps":
                    ukwargs["device"] = emu._backing_device
                elif device.type == emu._backing_device.type:
                    # C++ code passes the wrapper's own (backing) device for "same device";
                    # only a deliberate .cpu()/.to("cpu") leaves the emulated device.
                    wrap = not emu._force_plain
                else:
                    wrap = False
        else:
            ukwargs = {}
        if (
            emu._mixed_calls
            and func.overloadpacket not in _MIXED_OPS
            and (_seq_mixes(cls, args) or (kwargs and _kwargs_mix(cls, kwargs)))
        ):
            raise emu._reject(RuntimeError(MIXED_DEVICE_MESSAGE))
        if emu._meta:
            out = emu._run_meta(func, uargs, ukwargs, wrap)
        else:
            out = func._op(*uargs, **ukwargs)
        plan = _PLANS.get(func, _MISSING)
        if plan is _MISSING:
            plan = _PLANS[func] = _alias_plan(func)
        if plan is _SELF:
            return args[0]
        if plan is not None:
            return _apply_plan(emu, cls, plan, args, kwargs or {}, out, wrap)
        if not wrap:
            return out
        if type(out) is _Tensor:
            # Emulation._wrap, inlined: this runs for nearly every op.
            if out.dtype in _UNSUPPORTED_DTYPES or out.requires_grad:
                return emu._wrap(out)
            w = _make_wrapper(
                cls, out.size(), out.stride(), out.storage_offset(), dtype=out.dtype,
                device=out.device,
            )  # fmt: skip
            w._elem = out
            return w
        return emu._wrap_out(out)


# -- alias plans: in-place and out= ops return the very tensor they were given ---------------

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
    may_resize = schema.name.split("::")[-1] in _RESIZING
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


# -- helpers for the device rules -------------------------------------------------------------


def _is_mps(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "mps"
    return isinstance(device, str) and device.startswith("mps")


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


def _type_as(self: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return self.to(device=other.device, dtype=other.dtype)


def _delegate(name: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(type(self), name)(self, *args, **kwargs)

    return call


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


def _compatible_shallow_copy_type(a: torch.Tensor, b: torch.Tensor) -> bool:
    # A wrapper and a plain tensor share a C++ device with cpu backing, but ``a.data = b``
    # between them would hand the wrapper's empty storage around: nn.Module._apply must make
    # a new parameter (or swap) instead.
    if (type(a) is _current()._cls) != (type(b) is _current()._cls):
        return False
    return torch._C._has_compatible_shallow_copy_type(a, b)


_ORIG_DATA = torch._C.TensorBase.data


def _get_data(self: torch.Tensor) -> torch.Tensor:
    return _ORIG_DATA.__get__(self)


def _set_data(self: torch.Tensor, value: torch.Tensor) -> None:
    """``t.data = value`` across the device boundary, as on a Mac: ``t`` moves with it.

    C++ ``set_data`` finds a wrapper and a plain CPU tensor compatible and would copy the
    wrapper's empty storage into a plain tensor, so this runs first (a patched property).
    """
    emu = _ACTIVE
    mine = emu is not None and type(self) is emu._cls
    theirs = emu is not None and type(value) is emu._cls
    if mine == theirs:
        with _NoSubclassTF():
            _ORIG_DATA.__set__(self, value)
        if mine:
            self._elem = value._elem
    elif theirs:  # a CPU tensor (often a Parameter) becomes the mps tensor, same object
        assert emu is not None
        moved = emu._wrap(value._elem)
        if isinstance(self, torch.nn.Parameter):
            moved = torch.nn.Parameter(moved, self.requires_grad)
        else:
            moved.requires_grad_(self.requires_grad)
        torch.utils.swap_tensors(self, moved)
    else:
        raise NotImplementedError(
            "fallback-probe's emulated mps device cannot move a tensor to the CPU through "
            "`.data =`; assign the CPU tensor to the variable or attribute instead"
        )


_TF_SPECIAL: dict[Any, Callable[..., Any]] = {
    torch.Tensor.type_as: _type_as,
    torch._has_compatible_shallow_copy_type: _compatible_shallow_copy_type,
}
for _name in ("cpu", "numpy", "tolist", "data_ptr", "untyped_storage", "get_device"):
    _TF_SPECIAL[getattr(torch.Tensor, _name)] = _delegate(_name)


# -- autograd across the device boundary --------------------------------------------------------


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


def _current() -> Emulation:
    if _ACTIVE is None:
        raise RuntimeError("the emulated mps device is not active (emulated_mps() has ended)")
    return _ACTIVE


# -- meta backing helpers -------------------------------------------------------------------------


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


# -- the patched entry points ------------------------------------------------------------------------


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


def _mentions_mps(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    for a in args:
        if _is_mps(a) or type(a) is cls:
            return True
    return any(_is_mps(v) or type(v) is cls for v in kwargs.values())


def _patched_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    emu = _ACTIVE
    if emu is None or (type(self) is not emu._cls and not _mentions_mps(emu._cls, args, kwargs)):
        return _ORIG_TO(self, *args, **kwargs)
    return emu._to(self, args, kwargs)


def _target_is_mps(kwargs: dict[str, Any]) -> bool:
    device = kwargs.get("device")
    if device is None:
        device = _torch_device.CURRENT_DEVICE
    return device is not None and _is_mps(device)


def _make_from_data(
    orig: Callable[..., Any], copy_tensors: bool, positional: tuple[str, ...] = ()
) -> Callable[..., torch.Tensor]:
    """``torch.tensor``-like constructors: build on the backing, then put on mps.

    ``positional`` names the arguments after ``data`` that may come positionally
    (``torch.as_tensor(data, dtype, device)``).
    """

    def create(data: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        emu = _ACTIVE
        if args and len(args) <= len(positional):
            kwargs.update(zip(positional, args, strict=False))
            args = ()
        if emu is None or args or not _target_is_mps(kwargs):
            return orig(data, *args, **kwargs)
        requires_grad = bool(kwargs.pop("requires_grad", False))
        kwargs.pop("pin_memory", None)
        if isinstance(data, torch.Tensor):
            dtype = kwargs.get("dtype")
            src = data.detach() if copy_tensors else data
            out = emu._to(src, (), {"device": MPS_DEVICE, "dtype": dtype, "copy": copy_tensors})
        else:
            kwargs["device"] = emu._backing_device
            out = emu._wrap(orig(data, **kwargs))
        if requires_grad:
            out.requires_grad_(True)
        return out

    return create


def _patched_new_tensor(self: torch.Tensor, data: Any, **kwargs: Any) -> torch.Tensor:
    emu = _ACTIVE
    device = kwargs.get("device")
    if device is None:
        device = self.device
    if emu is None or not _is_mps(device):
        return _ORIG_NEW_TENSOR(self, data, **kwargs)
    kwargs.setdefault("dtype", self.dtype)
    kwargs["device"] = MPS_DEVICE
    return torch.tensor(data, **kwargs)


def _factory_kernel(op: Any) -> Callable[..., torch.Tensor]:
    """A Python kernel for the MPS dispatch key: build on the backing device, wrap."""
    positional = next(i for i, a in enumerate(op._schema.arguments) if a.name == "device")

    def kernel(*args: Any, **kwargs: Any) -> torch.Tensor:
        emu = _current()
        dtype = kwargs.get("dtype")
        if dtype is not None:
            emu._check_dtype(dtype)
        if "device" in kwargs or positional >= len(args):
            kwargs["device"] = emu._backing_device
        else:
            args = args[:positional] + (emu._backing_device,) + args[positional + 1 :]
        kwargs.pop("pin_memory", None)
        return emu._wrap(op(*args, **kwargs))

    return kernel


@functools.cache
def _factory_kernels() -> tuple[tuple[str, Callable[..., torch.Tensor]], ...]:
    """(name, kernel) of every factory op, built once per process: a kernel finds the active
    emulation when it runs, and reading an op's schema for each probe cost ~0.4 ms."""
    return tuple((op.name()[len("aten::") :], _factory_kernel(op)) for op in _factory_ops())


_NOT_FACTORIES = ("sparse", "quantized", "cudnn", "_make_dep_token", "from_file", "mkldnn")


@functools.cache
def _factory_ops() -> tuple[Any, ...]:
    """ATen ops that create a tensor from a device argument alone (zeros, arange, ...)."""
    ops = []
    for schema in torch._C._jit_get_all_schemas():
        if not schema.name.startswith("aten::"):
            continue
        args = schema.arguments
        if not any(a.name == "device" for a in args) or any(a.alias_info for a in args):
            continue
        if any("Tensor" in str(a.type) for a in args) or len(schema.returns) != 1:
            continue
        if str(schema.returns[0].type) != "Tensor":
            continue
        name = schema.name[len("aten::") :]
        if any(bad in name for bad in _NOT_FACTORIES):
            continue
        try:
            op = getattr(getattr(torch.ops.aten, name), schema.overload_name or "default")
            if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "MPS"):
                continue  # a build with MPS: its own kernel stays
        except (AttributeError, RuntimeError):
            continue  # a TorchScript-only schema, not a dispatcher op
        ops.append(op)
    return tuple(ops)


# -- torch.save / torch.load tags -------------------------------------------------------------------


def _storage_key(storage: Any) -> int | None:
    untyped = getattr(storage, "_untyped_storage", storage)
    return getattr(untyped, "_cdata", None)


def _tag_storage(storage: Any) -> str | None:
    emu = _ACTIVE
    if emu is not None and _storage_key(storage) in emu._saving_keys:
        return "mps"
    return None


def _restore_storage(storage: Any, location: str) -> Any:
    emu = _ACTIVE
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
                out = emu._adopt(out)
            return out
        finally:
            emu._loaded_keys.clear()

    return load


def _eager_compile(model: Any = None, **kwargs: Any) -> Any:
    """torch.compile stand-in: emulated tensors are traced op by op, so run eagerly."""
    warnings.warn(
        "fallback-probe: torch.compile is not emulated on the mps device; running eagerly",
        stacklevel=2,
    )
    if model is None:
        return lambda m: m
    return model


# -- torch.mps and friends ----------------------------------------------------------------------------


class _Event:
    """torch.mps.Event stand-in: the emulated device is synchronous."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.enable_timing = enable_timing

    def record(self) -> None:
        return None

    def wait(self) -> None:
        return None

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None

    def elapsed_time(self, end_event: _Event) -> float:
        return 0.0


def _metal_unavailable(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(
        "Metal shaders need a real Apple GPU; the emulated mps device of fallback-probe "
        "cannot compile or run them"
    )


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _mps_module_patches(emu: Emulation) -> dict[str, Any]:
    def set_per_process_memory_fraction(fraction: float) -> None:
        if not isinstance(fraction, float):
            raise TypeError("Invalid type for fraction argument, must be `float`")
        if fraction < 0 or fraction > 2:
            raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~2")
        emu._memory_fraction = fraction

    def manual_seed(seed: int) -> None:
        # Random ops on emulated tensors draw from the CPU generator of their backing.
        torch.default_generator.manual_seed(int(seed))

    return {
        "device_count": lambda: 1,
        "synchronize": lambda: None,
        "empty_cache": lambda: None,
        "manual_seed": manual_seed,
        "seed": lambda: torch.default_generator.seed() and None,
        "get_rng_state": lambda device="mps": torch.get_rng_state(),
        "set_rng_state": lambda new_state, device="mps": torch.set_rng_state(new_state),
        "set_per_process_memory_fraction": set_per_process_memory_fraction,
        "current_allocated_memory": emu._live_bytes,
        "driver_allocated_memory": emu._live_bytes,
        "recommended_max_memory": lambda: _physical_memory() * 3 // 4,
        "compile_shader": _metal_unavailable,
        "load_metallib": _metal_unavailable,
        "_get_default_mps_generator": lambda: torch.default_generator,
        "Event": _Event,
    }


# -- user locations ---------------------------------------------------------------------------------

_PATHS = sysconfig.get_paths()
_INTERNAL = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
)
_STDLIB = _PATHS["stdlib"] + os.sep
_SITE = (_PATHS["purelib"] + os.sep, _PATHS["platlib"] + os.sep)


def _user_location() -> str:
    """'file:line' of the innermost frame outside torch, this package and the stdlib."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        internal = (
            name.startswith(_INTERNAL)
            or name.startswith("<frozen")
            or (name.startswith(_STDLIB) and not name.startswith(_SITE))
        )
        if not internal:
            path = os.path.abspath(name)
            try:
                rel = os.path.relpath(path)
                path = rel if not rel.startswith("..") else path
            except ValueError:
                pass
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


# -- the context manager ------------------------------------------------------------------------------


def _patch(stack: contextlib.ExitStack, owner: Any, name: str, value: Any) -> None:
    """Set ``owner.name``; on exit restore it exactly (deleting it if it was inherited)."""
    own = vars(owner)
    had = name in own
    old = own.get(name)
    setattr(owner, name, value)
    if had:
        stack.callback(setattr, owner, name, old)
    else:
        stack.callback(delattr, owner, name)


def _pop_own_mode(mode: TorchFunctionMode) -> None:
    """Remove ``mode`` from the torch-function mode stack wherever it sits."""
    above = []
    while _len_torch_function_stack() > 0:
        top = _pop_mode()
        if top is mode:
            break
        above.append(top)
    for m in reversed(above):
        _push_mode(m)


def _restore_default_device(previous: Any, previous_current: torch.device | None) -> None:
    current = getattr(torch._GLOBAL_DEVICE_CONTEXT, "device_context", None)
    if current is not previous:
        torch.set_default_device(previous.device if previous is not None else None)
    _torch_device.CURRENT_DEVICE = previous_current


@contextlib.contextmanager
def emulated_mps(backing: Backing = "cpu") -> Iterator[Emulation]:
    """Run the body as if on a Mac with an ``mps`` device backed by ``backing`` memory.

    Everything it changes is undone on exit, also when the body raises, so the probe can run
    many times in one process. Not re-entrant and not thread-safe (the patches are global).
    """
    global _ACTIVE
    if backing not in ("cpu", "meta"):
        raise ValueError(f"backing must be 'cpu' or 'meta', not {backing!r}")
    if _ACTIVE is not None:
        raise RuntimeError("emulated_mps() is already active; it cannot be nested")
    emu = Emulation(backing)
    import torch.utils.checkpoint as checkpoint

    with contextlib.ExitStack() as stack:
        # Cached sets that must hold torch's own functions, not our stand-ins.
        _torch_device._device_constructors()
        torch.overrides.get_ignored_functions()

        previous_ctx = getattr(torch._GLOBAL_DEVICE_CONTEXT, "device_context", None)
        stack.callback(_restore_default_device, previous_ctx, _torch_device.CURRENT_DEVICE)
        stack.callback(
            setattr,
            checkpoint.DefaultDeviceType,
            "_default_device_type",
            checkpoint.DefaultDeviceType._default_device_type,
        )

        lib = torch.library.Library("aten", "IMPL", "MPS")
        stack.callback(lib._destroy)
        for name, kernel in _factory_kernels():
            lib.impl(name, kernel)

        elem = (_TAG_PRIORITY, _tag_storage, _restore_storage)
        torch.serialization._package_registry.append(elem)
        torch.serialization._package_registry.sort(key=lambda entry: entry[0])
        stack.callback(torch.serialization._package_registry.remove, elem)

        _patch(stack, torch.Tensor, "to", _patched_to)
        _patch(stack, torch.Tensor, "new_tensor", _patched_new_tensor)
        _patch(stack, torch.Tensor, "data", property(_get_data, _set_data))
        _patch(stack, torch, "tensor", _make_from_data(torch.tensor, True))
        _patch(
            stack, torch, "as_tensor", _make_from_data(torch.as_tensor, False, ("dtype", "device"))
        )
        _patch(stack, torch, "asarray", _make_from_data(torch.asarray, False))
        save, load = _wrap_save(torch.save), _wrap_load(torch.load)
        for owner in (torch, torch.serialization):
            _patch(stack, owner, "save", save)
            _patch(stack, owner, "load", load)
        _patch(stack, torch, "compile", _eager_compile)

        backends = torch.backends.mps
        for name in ("is_available", "is_built"):
            _patch(stack, backends, name, lambda: True)
        _patch(stack, backends, "is_macos_or_newer", lambda major, minor: True)
        _patch(stack, backends, "is_macos13_or_newer", lambda minor=0: True)
        _patch(stack, backends, "get_name", lambda: "Apple M (emulated by fallback-probe)")
        _patch(stack, backends, "get_core_count", lambda: os.cpu_count() or 1)
        for name, value in _mps_module_patches(emu).items():
            _patch(stack, torch.mps, name, value)
        profiler = torch.mps.profiler
        _patch(stack, profiler, "profile", lambda *a, **k: contextlib.nullcontext())
        _patch(stack, profiler, "metal_capture", lambda *a, **k: contextlib.nullcontext())
        _patch(stack, profiler, "start", lambda *a, **k: None)
        _patch(stack, profiler, "stop", lambda *a, **k: None)
        _patch(stack, profiler, "is_metal_capture_enabled", lambda: False)
        _patch(stack, profiler, "is_capturing_metal", lambda: False)
        accelerator = torch.accelerator
        _patch(stack, accelerator, "current_accelerator", lambda check_available=False: MPS_DEVICE)
        _patch(stack, accelerator, "current_device_index", lambda: 0)
        _patch(stack, accelerator, "set_device_index", lambda device: None)
        _patch(stack, accelerator, "synchronize", lambda device=None: None)

        if emu._meta:
            mode = _MetaInitMode()
            _push_mode(mode)
            stack.callback(_pop_own_mode, mode)

        _ACTIVE = emu
        stack.callback(globals().__setitem__, "_ACTIVE", None)
        yield emu
