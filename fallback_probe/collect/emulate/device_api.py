"""The device API a Mac gives a script: ``torch.backends.mps``, ``torch.mps``,
``torch.accelerator``, ``torch.compile``."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import warnings
from typing import TYPE_CHECKING, Any

import torch

from .common import MPS_DEVICE, _patch

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
        "current_allocated_memory": functools.partial(_live_bytes, emu),
        "driver_allocated_memory": functools.partial(_live_bytes, emu),
        "recommended_max_memory": lambda: _physical_memory() * 3 // 4,
        "compile_shader": _metal_unavailable,
        "load_metallib": _metal_unavailable,
        "_get_default_mps_generator": lambda: torch.default_generator,
        "Event": _Event,
    }


def _patch_device_api(stack: contextlib.ExitStack, emu: Emulation) -> None:
    """Patch the device API for the length of ``stack``."""
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
