"""The device API a Mac gives a script: ``torch.backends.mps``, ``torch.mps`` (and its
profiler), ``torch.accelerator``, ``torch.Event`` / ``Stream`` / ``Generator`` on mps,
``torch.get_device_module``, pinned memory and ``torch.compile``.

Every public name of those modules is either given an emulated behaviour here or left as
torch has it on purpose (tests/test_device_api.py enumerates them from torch itself, so a name
a later torch adds fails a test until it is decided). The surface is the installed torch's:
the script runs with it, whatever release the report is for.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch

from .autocast import _AUTOCAST
from .autocast import _track as _track_autocast
from .common import _is_mps, _patch
from .refusals import refused_dtypes
from .streams import DeviceEvent, DeviceGenerator, DeviceStream, MPSModuleEvent

if TYPE_CHECKING:
    from .emulation import Emulation


def _live_bytes(emu: Emulation) -> int:
    """Bytes held by live mps tensors (what the MPS allocator would hold), on demand."""
    seen: set[int] = set()
    total = 0
    for obj in gc.get_objects():
        if type(obj) is emu._cls:
            storage = obj._elem.untyped_storage()
            if storage._cdata not in seen:
                seen.add(storage._cdata)
                total += storage.nbytes()
    return total


def _eager_compile(model: Any = None, **kwargs: Any) -> Any:
    """torch.compile stand-in: emulated tensors are traced op by op, so run eagerly."""
    warnings.warn(
        "fallback-probe: torch.compile is not emulated on the mps device; running eagerly",
        stacklevel=2,
    )
    if model is None:
        return lambda m: m
    return model


def _metal_unavailable(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(
        "Metal shaders need a real Apple GPU; the emulated mps device of fallback-probe "
        "cannot compile or run them"
    )


def _no_graphs(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(
        "torch.accelerator.Graph captures work on a real device; the emulated mps device of "
        "fallback-probe runs each op eagerly and cannot capture or replay graphs"
    )


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _check_index(device: Any = None) -> None:
    """The one emulated device is index 0 (``None``, ``0``, ``"mps"``, ``"mps:0"``)."""
    if device is None:
        return
    index = device if isinstance(device, int) else torch.device(device).index
    if isinstance(device, (str, torch.device)) and not _is_mps(device):
        raise ValueError(f"{device} doesn't match the current accelerator mps.")
    if index not in (None, 0):
        raise RuntimeError(f"Invalid device index {index}: the mps device count is 1")


class _Memory:
    """What the MPS allocator would report: the bytes of live mps tensors, counted on demand
    (so not for tight loops); peaks are the largest count seen since the last reset."""

    def __init__(self, emu: Emulation) -> None:
        self.emu = emu
        self.peak = 0

    def current(self) -> int:
        now = _live_bytes(self.emu)
        self.peak = max(self.peak, now)
        return now

    def stats(self, device: Any = None, /) -> OrderedDict[str, Any]:
        _check_index(device)
        now = self.current()
        return OrderedDict(
            [
                ("allocated_bytes.all.current", now),
                ("allocated_bytes.all.peak", self.peak),
                ("reserved_bytes.all.current", now),
                ("reserved_bytes.all.peak", self.peak),
            ]
        )

    def reset_peak(self, device: Any = None, /) -> None:
        _check_index(device)
        self.peak = _live_bytes(self.emu)

    def info(self, device: Any = None, /) -> tuple[int, int]:
        _check_index(device)
        total = _physical_memory()
        return max(total - self.current(), 0), total


class _DeviceIndex:
    """``torch.accelerator.device_index(i)``: there is one device, so nothing to switch."""

    def __init__(self, device: int | None, /) -> None:
        _check_index(device)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _mps_module(emu: Emulation) -> dict[str, Any]:
    """``torch.mps``: the public functions, each acting like a synchronous device."""

    def set_per_process_memory_fraction(fraction: float) -> None:
        if not isinstance(fraction, float):
            raise TypeError("Invalid type for fraction argument, must be `float`")
        if fraction < 0 or fraction > 2:
            raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~2")
        emu._memory_fraction = fraction

    def manual_seed(seed: int) -> None:
        # Random ops on emulated tensors draw from the CPU generator of their backing.
        torch.default_generator.manual_seed(int(seed))

    def host_alias_storage(storage: torch.UntypedStorage) -> torch.UntypedStorage:
        return storage  # the backing storage already lives in host memory

    live = functools.partial(_live_bytes, emu)
    return {
        "device_count": lambda: 1,
        "is_available": lambda: True,
        "synchronize": lambda: None,
        "empty_cache": lambda: None,
        "manual_seed": manual_seed,
        "seed": lambda: torch.default_generator.seed() and None,
        "get_rng_state": lambda device="mps": torch.get_rng_state(),
        "set_rng_state": lambda new_state, device="mps": torch.set_rng_state(new_state),
        "set_per_process_memory_fraction": set_per_process_memory_fraction,
        "current_allocated_memory": live,
        "driver_allocated_memory": live,
        "recommended_max_memory": lambda: _physical_memory() * 3 // 4,
        "compile_shader": _metal_unavailable,
        "load_metallib": _metal_unavailable,
        "_get_default_mps_generator": lambda: torch.default_generator,
        "_host_alias_storage": host_alias_storage,
        "Event": MPSModuleEvent,
    }


def _profiler() -> dict[str, Any]:
    """``torch.mps.profiler``: nothing to capture on a device that is not there."""
    return {
        "profile": lambda *a, **k: contextlib.nullcontext(),
        "metal_capture": lambda *a, **k: contextlib.nullcontext(),
        "start": lambda *a, **k: None,
        "stop": lambda *a, **k: None,
        "is_metal_capture_enabled": lambda: False,
        "is_capturing_metal": lambda: False,
    }


def _backends(macos: str | None) -> dict[str, Any]:
    """``torch.backends.mps``: available and built; the macOS checks answer for ``macos``."""
    target = _macos_tuple(macos)

    def is_macos_or_newer(major: int, minor: int) -> bool:
        return target >= (major, minor)

    return {
        "is_available": lambda: True,
        "is_built": lambda: True,
        "is_macos_or_newer": is_macos_or_newer,
        "is_macos13_or_newer": lambda minor=0: is_macos_or_newer(13, minor),
        "get_name": lambda: "Apple M (emulated by fallback-probe)",
        "get_core_count": lambda: os.cpu_count() or 1,
    }


def _macos_tuple(macos: str | None) -> tuple[int, int]:
    if macos is None:
        return (99, 0)  # the newest
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in macos.split(".")[:2]]
    return (parts[0], parts[1] if len(parts) > 1 else 0)


def _accelerator(emu: Emulation, macos: str | None) -> dict[str, Any]:
    """``torch.accelerator``: one synchronous device, ``mps``, with index 0."""
    memory = _Memory(emu)
    stream = DeviceStream("mps")
    refused = set(refused_dtypes(macos))
    supported = {d for d in vars(torch).values() if isinstance(d, torch.dtype) and d not in refused}

    def current_accelerator(check_available: bool = False) -> torch.device:
        return torch.device("mps")  # as torch reports it: no index

    def current_stream(device: Any = None, /) -> DeviceStream:
        _check_index(device)
        return stream

    def get_device_capability(device: Any = None, /) -> dict[str, Any]:
        _check_index(device)
        return {"supported_dtypes": set(supported)}

    def index_setter(device: Any, /) -> None:
        _check_index(device)

    return {
        "Graph": _no_graphs,
        "current_accelerator": current_accelerator,
        "current_device_idx": lambda: 0,
        "current_device_index": lambda: 0,
        "get_device_capability": get_device_capability,
        "current_stream": current_stream,
        "device_count": lambda: 1,
        "device_index": _DeviceIndex,
        "empty_cache": lambda: None,
        "empty_host_cache": lambda: None,
        "get_memory_info": memory.info,
        "is_available": lambda: True,
        "max_memory_allocated": lambda device=None, /: memory.stats(device)[
            "allocated_bytes.all.peak"
        ],
        "max_memory_reserved": lambda device=None, /: memory.stats(device)[
            "reserved_bytes.all.peak"
        ],
        "memory_allocated": lambda device=None, /: memory.stats(device)[
            "allocated_bytes.all.current"
        ],
        "memory_reserved": lambda device=None, /: memory.stats(device)[
            "reserved_bytes.all.current"
        ],
        "memory_stats": memory.stats,
        "reset_accumulated_memory_stats": lambda device=None, /: _check_index(device),
        "reset_peak_memory_stats": memory.reset_peak,
        "set_device_idx": index_setter,
        "set_device_index": index_setter,
        "set_stream": lambda stream, /: None,
        "synchronize": lambda device=None, /: _check_index(device),
    }


_ORIG_GET_DEVICE_MODULE = torch.get_device_module
_ORIG_PIN_MEMORY = torch.Tensor.pin_memory
_ORIG_IS_PINNED = torch.Tensor.is_pinned


def _get_device_module(device: Any = None) -> Any:
    if device is None or _is_mps(device):
        return torch.mps
    return _ORIG_GET_DEVICE_MODULE(device)


def _pinning(emu: Emulation) -> tuple[Any, Any]:
    """``Tensor.pin_memory`` / ``is_pinned``: with an accelerator present a Mac pins CPU
    tensors in page-locked memory; here a pinned tensor is a copy that says it is pinned."""

    def pin_memory(self: torch.Tensor, device: Any = None) -> torch.Tensor:
        if type(self) is emu._cls:
            raise RuntimeError("cannot pin 'mps' memory: only dense CPU tensors can be pinned")
        if is_pinned(self):
            return self
        out = self.clone()
        out.__dict__[_PINNED] = True
        return out

    def is_pinned(self: torch.Tensor, device: Any = None) -> bool:
        return bool(self.__dict__.get(_PINNED, False))

    return pin_memory, is_pinned


_PINNED = "_fallback_probe_pinned"


def _patch_device_api(stack: contextlib.ExitStack, emu: Emulation, macos: str | None) -> None:
    """Patch the device API for the length of ``stack``."""
    _patch(stack, torch, "compile", _eager_compile)
    for name, value in _backends(macos).items():
        _patch(stack, torch.backends.mps, name, value)
    for name, value in _mps_module(emu).items():
        _patch(stack, torch.mps, name, value)
    _patch(stack, torch.mps.event, "Event", MPSModuleEvent)
    for name, value in _profiler().items():
        _patch(stack, torch.mps.profiler, name, value)
    for name, value in _accelerator(emu, macos).items():
        _patch(stack, torch.accelerator, name, value)
        if name in vars(torch.accelerator.memory):  # called there by module-global name
            _patch(stack, torch.accelerator.memory, name, value)
    _patch(stack, torch, "Event", DeviceEvent)
    _patch(stack, torch, "Stream", DeviceStream)
    _patch(stack, torch, "Generator", DeviceGenerator)
    _patch(stack, torch, "get_device_module", _get_device_module)
    enter, exit_ = _track_autocast(emu)
    _patch(stack, _AUTOCAST, "__enter__", enter)
    _patch(stack, _AUTOCAST, "__exit__", exit_)
    pin_memory, is_pinned = _pinning(emu)
    _patch(stack, torch.Tensor, "pin_memory", pin_memory)
    _patch(stack, torch.Tensor, "is_pinned", is_pinned)
