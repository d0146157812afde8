"""The tensor a script holds on the emulated ``mps`` device.

Its C++ device is the backing device (a C++ ``mps`` device aborts the process, mps-facts §8);
``__torch_dispatch__`` runs each ATen op on the backing tensors and re-wraps the results, so
autograd, optimizers and views keep working on the wrappers. ``__torch_function__`` spots the
API calls that mix devices, where user intent is visible (C++ composites create plain helper
tensors that must *not* trip the check); the ATen ops such a call reaches then decide.
"""

from __future__ import annotations

import copy
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from .aliasing import _MISSING, _PLANS, _SELF, _alias_plan, _apply_plan
from .autocast import autocast_call
from .common import _CPU, MPS_DEVICE, _is_mps, _make_wrapper, _NoSubclassTF, _Tensor
from .mixing import _MIXED_OPS, _call_off_device, _kwargs_mix, _retry_on_device, _seq_mixes
from .modules import _compatible_shallow_copy_type
from .refusals import (
    _ALWAYS_REFUSED,
    MIXED_DEVICE_MESSAGE,
    NUMPY_MESSAGE,
    TENSOR_SPLIT_MESSAGE,
)

if TYPE_CHECKING:
    from .emulation import Emulation

_OpOverload = torch._ops.OpOverload
_ARTIFACTS = frozenset(_ALWAYS_REFUSED)  # dtypes a CPU-route composite may make on its own
_NARROWER = {torch.float64: torch.float32, torch.complex128: torch.complex64}
_aten_to_copy = torch.ops.aten._to_copy
_BIT_VIEWS = frozenset({torch.ops.aten._conj.default, torch.ops.aten._neg_view.default})
_ASKING_NAMES = frozenset({"double", "cdouble", "float_power", "float_power_"})


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
        # A Mac raises. Listed instead: the copy to the CPU that ``.numpy()`` stands for is
        # the op marked with the error, and the script gets the values it asked for.
        emu = self._emu
        emu._refuse(TypeError, NUMPY_MESSAGE, "numpy")
        return emu._raw_to_plain(self, _CPU, None, None).numpy()

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
        autocast = cls._emu._autocast
        if autocast is not None:  # inside torch.autocast("mps"): cast as a Mac would
            args, kwargs = autocast_call(cls, autocast, func, args, kwargs or {})
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
            if not (emu._meta and "meta" in str(err)):
                raise
            message = str(err).replace("meta", str(MPS_DEVICE))
        finally:
            emu._mixed_calls -= 1
        return _retry_on_device(cls, func, args, kwargs or {}, message)

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
            # Listed (unless stopping): the CPU tensors are used as if they were on mps.
            emu._refuse(RuntimeError, MIXED_DEVICE_MESSAGE, "mixed devices")
        if emu._meta:
            out = emu._run_meta(func, uargs, ukwargs, wrap)
        else:
            out = func._op(*uargs, **ukwargs)
        if func in _BIT_VIEWS:
            # A conj/neg bit on the backing that the wrapper does not carry would reach CPU
            # kernels that refuse it (view_as_real in fft.hfft): the view is materialized.
            out = out.resolve_conj().resolve_neg()
        if type(out) is not _Tensor or out.dtype in _ARTIFACTS:
            out = _downcast_artifact(emu, cls, func, args, uargs, ukwargs, out, wrap)
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
            if out.dtype in emu._refused_dtypes or out.requires_grad:
                return emu._wrap(out)
            w = _make_wrapper(
                cls, out.size(), out.stride(), out.storage_offset(), dtype=out.dtype,
                device=out.device,
            )  # fmt: skip
            w._elem = out
            return w
        return emu._wrap_out(out)


def _type_as(self: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return self.to(device=other.device, dtype=other.dtype)


def _delegate(name: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(type(self), name)(self, *args, **kwargs)

    return call


def _tensor_split(self: torch.Tensor, indices: Any, *args: Any, **kwargs: Any) -> Any:
    """A Mac wants tensor_split's index tensor on the CPU (the C++ check here would pass and
    then read the wrapper's unallocated data): listed, then split with the CPU indices."""
    emu = self._emu if type(self) is not _Tensor else None
    if emu is not None and type(indices) is emu._cls:
        indices = emu._raw_to_plain(indices, _CPU, None, None)
        emu._refuse(RuntimeError, TENSOR_SPLIT_MESSAGE, "cpu argument")
    with _NoSubclassTF():
        return torch.tensor_split(self, indices, *args, **kwargs)


_TF_SPECIAL: dict[Any, Callable[..., Any]] = {
    torch.Tensor.type_as: _type_as,
    torch.tensor_split: _tensor_split,
    torch.Tensor.tensor_split: _tensor_split,
    torch._has_compatible_shallow_copy_type: _compatible_shallow_copy_type,
}
for _name in ("cpu", "numpy", "tolist", "data_ptr", "untyped_storage", "get_device"):
    _TF_SPECIAL[getattr(torch.Tensor, _name)] = _delegate(_name)


# -- float64 a C++ composite makes on its own -----------------------------------------------------


def _downcast_artifact(
    emu: Emulation,
    cls: type,
    func: Any,
    args: tuple[Any, ...],
    uargs: list[Any],
    ukwargs: dict[str, Any],
    out: Any,
    wrap: bool,
) -> Any:
    """An op inside a user's call made float64/complex128 that the call never asked for.

    The emulated tensors are CPU tensors to C++, so composites take their CPU route, which
    sometimes computes in double (``toAccumulateType`` for a CPU device in ``renorm``'s
    backward, ``get_atol_rtol`` in ``linalg.matrix_rank``); on MPS the same code uses float32.
    Such an op is run again with its double helpers and ``dtype=`` in single precision, as
    the MPS route would, instead of being reported as a refusal the script never made.
    """
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if not any(isinstance(o, torch.Tensor) and o.dtype in _ARTIFACTS for o in outs):
        return out
    call = _user_call()
    if call is None:
        return out  # not inside a torch call of the script: made as the script asked
    if func.overloadpacket is _aten_to_copy or _asks_for_double(*call):
        return out  # a conversion (autograd's casts of gradients), or the script's own double
    for a in args:  # double already on the device (a gradient of a double graph): genuine
        for x in a if type(a) is list or type(a) is tuple else (a,):
            if type(x) is cls and x.dtype in _ARTIFACTS:
                return out

    def narrow(x: Any) -> Any:
        if isinstance(x, torch.dtype):
            return _NARROWER.get(x, x)
        if isinstance(x, torch.Tensor) and x.dtype in _NARROWER:
            return x.to(_NARROWER[x.dtype])
        if type(x) is list or type(x) is tuple:
            return type(x)(narrow(y) for y in x)
        return x

    args = [narrow(a) for a in uargs]
    kwargs = {k: narrow(v) for k, v in ukwargs.items()}
    if emu._meta:
        return emu._run_meta(func, args, kwargs, wrap)
    return func._op(*args, **kwargs)


def _user_call() -> tuple[Any, tuple[Any, ...], dict[str, Any] | None] | None:
    """(func, args, kwargs) of the outermost ``__torch_function__`` running in this thread:
    the torch call the script made (read from the stack only when double shows up)."""
    found = None
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is _TORCH_FUNCTION_CODE:
            found = frame.f_locals
        frame = frame.f_back
    if found is None:
        return None
    return found["func"], found["args"], found["kwargs"]


def _asks_for_double(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> bool:
    """The user's call wants double: it names float64/complex128, converts to it, or takes
    a tensor that already is (then its results are the script's own float64)."""
    if getattr(func, "__name__", "") in _ASKING_NAMES:
        return True
    for v in (*args, *(kwargs or {}).values()):
        for x in v if type(v) is list or type(v) is tuple else (v,):
            if isinstance(x, torch.dtype) and x in _ARTIFACTS:
                return True
            if isinstance(x, torch.Tensor) and x.dtype in _ARTIFACTS:
                return True
            if isinstance(x, str) and "Double" in x:  # .type("torch.DoubleTensor")
                return True
    return False


_TORCH_FUNCTION_CODE = _MPSTensorBase.__torch_function__.__func__.__code__
