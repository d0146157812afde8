"""Events, streams and generators of the emulated ``mps`` device.

``torch.Event(device="mps")``, ``torch.Stream("mps")`` and ``torch.Generator("mps")`` are C++
types whose constructors refuse ``mps`` on a build without it. Their stand-ins are subclasses
built on the CPU flavour of the same type (so ``isinstance`` and C++ arguments still work) that
report ``mps``. The emulated device is synchronous: work is done when an op returns, so an
event is complete once recorded, and its timings are the host's clock between two records.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch

from .common import MPS_DEVICE, _is_mps

_ORIG_EVENT = torch.Event
_ORIG_STREAM = torch.Stream
_ORIG_GENERATOR = torch.Generator
_ids = itertools.count(1)

# torch 2.13's wording (aten/src/ATen/mps/MPSEvent.mm, c10/core/impl/InlineEvent.h).
NOT_TIMED = "Events were not created with argument 'enable_timing=True'"
NOT_RECORDED = "Both events must be recorded before calculating elapsed time."


class _Timed:
    """Record / elapsed-time bookkeeping shared by both event types."""

    enable_timing: bool
    _id: int
    _recorded_ns: int | None

    def _record(self) -> None:
        self._recorded_ns = time.perf_counter_ns()

    def _elapsed(self, end: _Timed) -> float:
        start_ns, end_ns = self._recorded_ns, end._recorded_ns
        if not (self.enable_timing and end.enable_timing) or start_ns is None or end_ns is None:
            raise RuntimeError(NOT_TIMED)
        if end_ns <= start_ns:
            raise RuntimeError(f"End event {end._id} was not recorded after start event {self._id}")
        return (end_ns - start_ns) / 1e6


class MPSModuleEvent(_Timed):
    """``torch.mps.Event``: query is False until recorded (MPSEvent::query)."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.enable_timing = enable_timing
        self._id = next(_ids)
        self._recorded_ns = None

    def record(self) -> None:
        self._record()

    def wait(self) -> None:
        return None

    def query(self) -> bool:
        return self._recorded_ns is not None

    def synchronize(self) -> None:
        return None

    def elapsed_time(self, end_event: MPSModuleEvent) -> float:
        return self._elapsed(end_event)


class _IsInstanceOf(type):
    """``isinstance(x, torch.Event)`` keeps meaning the real type while the name is patched."""

    _real: type

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, cls._real)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, cls._real)


def _wants_mps(device: Any) -> bool:
    return device is None or _is_mps(device) or isinstance(device, int)


class _OnMPS:
    """Built by ``__new__`` on the CPU flavour of a C++ type; says ``mps``. Comes before the
    C++ base so its ``device`` wins."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ did the work; the C++ type's own init would parse mps again

    @property
    def device(self) -> torch.device:
        return MPS_DEVICE


class _EventMeta(_IsInstanceOf):
    _real = _ORIG_EVENT


class DeviceEvent(_OnMPS, _ORIG_EVENT, _Timed, metaclass=_EventMeta):  # type: ignore[misc]
    """``torch.Event`` on mps (also the default device: the current accelerator is mps)."""

    def __new__(
        cls,
        device: Any = None,
        *,
        enable_timing: bool = False,
        blocking: bool = False,
        interprocess: bool = False,
    ) -> Any:
        if not _wants_mps(device):
            return _ORIG_EVENT(
                device, enable_timing=enable_timing, blocking=blocking, interprocess=interprocess
            )
        self = _ORIG_EVENT.__new__(cls, device="cpu")
        self.enable_timing = enable_timing
        self._id = next(_ids)
        self._recorded_ns = None
        return self

    @property
    def event_id(self) -> int:  # type: ignore[override]
        return self._id

    def record(self, stream: Any = None) -> None:  # type: ignore[override]
        self._record()

    def wait(self, stream: Any = None) -> None:  # type: ignore[override]
        return None

    def query(self) -> bool:  # type: ignore[override]
        return True  # not recorded, or recorded and (synchronously) done

    def synchronize(self) -> None:  # type: ignore[override]
        return None

    def elapsed_time(self, end_event: Any) -> float:  # type: ignore[override]
        if self._recorded_ns is None or getattr(end_event, "_recorded_ns", None) is None:
            raise RuntimeError(NOT_RECORDED)
        return self._elapsed(end_event)

    def ipc_handle(self) -> Any:  # type: ignore[override]
        raise RuntimeError("MPS events cannot be shared between processes")

    def __repr__(self) -> str:
        flag = 1 if self.enable_timing else 0
        return (
            f"torch.Event device_type=mps, device_index=0, event_flag={flag}, event_id={self._id}"
        )


class _StreamMeta(_IsInstanceOf):
    _real = _ORIG_STREAM


class DeviceStream(_OnMPS, _ORIG_STREAM, metaclass=_StreamMeta):  # type: ignore[misc]
    """``torch.Stream`` on mps: one in-order queue that is always done."""

    def __new__(cls, device: Any = None, *, priority: int = 0) -> Any:
        if not _wants_mps(device):
            return _ORIG_STREAM(device, priority=priority)
        self = _ORIG_STREAM.__new__(cls, device="cpu")
        self._priority = priority
        return self

    @property
    def device_type(self) -> int:  # type: ignore[override]
        return 13  # c10::DeviceType::MPS, as torch.Stream reports it

    @property
    def device_index(self) -> int:  # type: ignore[override]
        return 0

    @property
    def stream_id(self) -> int:  # type: ignore[override]
        return 0

    @property
    def priority(self) -> int:
        return self._priority

    def query(self) -> bool:  # type: ignore[override]
        return True

    def synchronize(self) -> None:  # type: ignore[override]
        return None

    def wait_event(self, event: Any) -> None:  # type: ignore[override]
        return None

    def wait_stream(self, stream: Any) -> None:  # type: ignore[override]
        return None

    def record_event(self, event: Any = None) -> Any:  # type: ignore[override]
        event = DeviceEvent("mps") if event is None else event
        event.record(self)
        return event

    def is_capturing(self) -> bool:  # type: ignore[override]
        return False

    @property
    def native_handle(self) -> int:  # type: ignore[override]
        return 0

    def __enter__(self) -> DeviceStream:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceStream)

    def __hash__(self) -> int:
        return hash(("mps", 0, 0))

    def __repr__(self) -> str:
        return "torch.Stream device_type=mps, device_index=0, stream_id=0"


class _GeneratorMeta(type(_ORIG_GENERATOR), _IsInstanceOf):  # type: ignore[misc]
    _real = _ORIG_GENERATOR


class DeviceGenerator(_OnMPS, _ORIG_GENERATOR, metaclass=_GeneratorMeta):  # type: ignore[misc]
    """``torch.Generator("mps")``: a CPU generator (what ops on the emulated device draw
    from, so results equal the CPU run) that says ``mps``."""

    def __new__(cls, device: Any = "cpu") -> Any:
        if not _is_mps(device):
            return _ORIG_GENERATOR(device)
        return _ORIG_GENERATOR.__new__(cls, "cpu")
