"""The tensor a script holds on the emulated ``mps`` device.

Its C++ device is the backing device (a C++ ``mps`` device aborts the process, mps-facts §8);
``__torch_dispatch__`` runs each ATen op on the backing tensors and re-wraps the results, so
autograd, optimizers and views keep working on the wrappers. ``__torch_function__`` spots the
API calls that mix devices, where user intent is visible (C++ composites create plain helper
tensors that must *not* trip the check); the ATen ops such a call reaches then decide.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from .aliasing import _MISSING, _PLANS, _SELF, _alias_plan, _apply_plan
from .common import _CPU, MPS_DEVICE, _is_mps, _make_wrapper, _NoSubclassTF, _Tensor
from .mixing import _MIXED_OPS, _call_off_device, _kwargs_mix, _seq_mixes
from .modules import _compatible_shallow_copy_type
from .refusals import _UNSUPPORTED_DTYPES, MIXED_DEVICE_MESSAGE, NUMPY_MESSAGE

if TYPE_CHECKING:
    from .emulation import Emulation

_OpOverload = torch._ops.OpOverload


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


def _type_as(self: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return self.to(device=other.device, dtype=other.dtype)


def _delegate(name: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(type(self), name)(self, *args, **kwargs)

    return call


_TF_SPECIAL: dict[Any, Callable[..., Any]] = {
    torch.Tensor.type_as: _type_as,
    torch._has_compatible_shallow_copy_type: _compatible_shallow_copy_type,
}
for _name in ("cpu", "numpy", "tolist", "data_ptr", "untyped_storage", "get_device"):
    _TF_SPECIAL[getattr(torch.Tensor, _name)] = _delegate(_name)
