"""Live evidence on a real device: warnings, the profiler's ``_to_cpu``, MPS-specific errors.

Works for any backend whose missing ops reach a boxed CPU fallback (MPS, the fpdev test
backend, out-of-tree PrivateUse1 backends): pass its device type and fallback variable.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch.utils._pytree import tree_map

from fallback_probe.collect.evidence import (
    classify_error,
    fallback_op_from_warning,
    kernel_cpu_path_from_warning,
)
from fallback_probe.collect.tracer import Recorder
from fallback_probe.records import OpCall

_MARK = "fallback_probe#"


class LiveRecorder(Recorder):
    """Runs each op for real and keeps the evidence of what the backend did with it."""

    def __init__(self, device_type: str, fallback_env: str) -> None:
        super().__init__(is_on_device=lambda t: t.device.type == device_type, decompose=False)
        self.device_type = device_type
        self.fallback_env = fallback_env
        self.log: list[warnings.WarningMessage] = []
        self.late_env = False  # the variable is set now but the backend raised anyway
        self.unmatched_warnings: list[str] = []
        self._index = 0

    def run(self, func, name: str, args: tuple, kwargs: dict) -> tuple[Any, dict[str, Any]]:
        index = self._index = self._index + 1
        t0 = time.perf_counter()
        try:
            with torch.profiler.record_function(f"{_MARK}{index}"):
                result = func(*args, **kwargs)
        except Exception as exc:
            kind = classify_error(exc, self.device_type)
            if kind is None:
                raise
            return self._on_cpu(func, args, kwargs, exc, kind, index)
        return result, {"seconds": time.perf_counter() - t0, "notes": (f"mark={index}",)}

    def _on_cpu(self, func, args, kwargs, exc, kind, index) -> tuple[Any, dict[str, Any]]:
        """Record the refusal, run the op on the CPU, carry on: one run lists every blocker."""
        kind_name, named = kind
        if kind_name.value == "not_implemented" and os.environ.get(self.fallback_env) == "1":
            self.late_env = True
        dev = self.device_type

        def to_cpu(x: Any) -> Any:
            return x.cpu() if isinstance(x, torch.Tensor) and x.device.type == dev else x

        cpu_args, cpu_kwargs = tree_map(to_cpu, args), tree_map(to_cpu, kwargs)
        try:
            out = func(*cpu_args, **cpu_kwargs)
        except Exception:
            raise exc from None
        # Mutated arguments were CPU copies: write the results back to the device tensors.
        for arg, cpu_arg, sarg in zip(args, cpu_args, func._schema.arguments, strict=False):
            if sarg.alias_info is not None and sarg.alias_info.is_write and cpu_arg is not arg:
                arg.copy_(cpu_arg)
        device = next(
            (a.device for a in args if isinstance(a, torch.Tensor) and a.device.type == dev),
            torch.device(dev),
        )
        result = tree_map(
            lambda x: x.to(device) if isinstance(x, torch.Tensor) and x.device.type == "cpu" else x,
            out,
        )
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        notes = (kind_name.value, named) if named else (kind_name.value,)
        return result, {"error": f"{type(exc).__name__}: {message}", "notes": notes}

    def apply_profile(self, prof: torch.profiler.profile) -> None:
        """Attach the evidence, which only exists once the run is over.

        Each op event with an ``aten::_to_cpu`` child is a fallback; it is filed under the
        call whose range encloses it. Warnings reach Python late (when the outermost C++
        call returns, not when the op does), so they are matched to those events in order,
        by op name: they supply the overload the profiler leaves out (``aten::sum`` →
        ``aten::sum.IntList_out``).
        """
        events: dict[int, tuple[float, int, str]] = {}  # parent event id -> (start, mark, name)
        for ev in prof.events():
            if ev.name != "aten::_to_cpu" or ev.cpu_parent is None:
                continue
            op_event = ev.cpu_parent
            ancestor = op_event
            while ancestor is not None and not ancestor.name.startswith(_MARK):
                ancestor = ancestor.cpu_parent
            if ancestor is not None:
                mark = int(ancestor.name[len(_MARK) :])
                events[op_event.id] = (op_event.time_range.start, mark, op_event.name)
        # Warnings queued per op name, in arrival order: matching stays linear in long runs.
        warned: dict[str, deque[str]] = {}
        for w in self.log:
            if op := fallback_op_from_warning(str(w.message)):
                warned.setdefault(op.split(".")[0], deque()).append(op)
        named: dict[int, list[str]] = {}
        for _, mark, base in sorted(events.values()):
            queue = warned.get(base)
            full = queue.popleft() if queue else None
            named.setdefault(mark, []).append(full or base)
        self.unmatched_warnings = [op for queue in warned.values() for op in queue]
        calls = []
        for c in self.calls:
            mark = next((int(n[5:]) for n in c.notes if n.startswith("mark=")), None)
            notes = tuple(n for n in c.notes if not n.startswith("mark="))
            fell = tuple(named.get(mark, ())) if mark is not None else ()
            calls.append(replace(c, to_cpu=bool(fell), fallback_ops=fell, notes=notes))
        self.calls = calls

    def kernel_cpu_paths(self) -> list[str]:
        return [op for w in self.log if (op := kernel_cpu_path_from_warning(str(w.message)))]


@contextmanager
def live_recording(recorder: LiveRecorder, profile: bool = True) -> Iterator[LiveRecorder]:
    """Warnings on every call (``set_warn_always``), recorded with "always" filters."""
    was = torch.is_warn_always_enabled()
    with ExitStack() as stack:
        log = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        recorder.log = log  # type: ignore[assignment]
        torch.set_warn_always(True)
        stack.callback(torch.set_warn_always, was)
        prof = None
        if profile:
            prof = stack.enter_context(
                torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            )
        try:
            with recorder:
                yield recorder
        finally:
            stack.pop_all().close()  # stop the profiler, restore warnings, then read
            if prof is not None:
                recorder.apply_profile(prof)
            for w in log:
                text = str(w.message)
                if (
                    fallback_op_from_warning(text) is None
                    and kernel_cpu_path_from_warning(text) is None
                ):
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def live_notes(recorder: LiveRecorder) -> list[str]:
    """What the report must say beyond the verdicts."""
    notes = []
    note = late_env_note(recorder)
    if note:
        notes.append(note)
    for op in sorted(set(recorder.kernel_cpu_paths())):
        notes.append(
            f"An MPS kernel sent {op} to the CPU itself (its own warning); not a fallback."
        )
    if recorder.unmatched_warnings:
        names = ", ".join(sorted(set(recorder.unmatched_warnings)))
        notes.append(f"Fallback warnings with no matching profiler event: {names}.")
    return notes


def late_env_note(recorder: LiveRecorder) -> str | None:
    if not recorder.late_env:
        return None
    return (
        f"{recorder.fallback_env}=1 is set, yet the backend raised NotImplementedError: the "
        "variable was set after the backend loaded (it is read once, at load). Those ops are "
        "reported unsupported here; started with the variable set, they fall back to the CPU."
    )


__all__ = ["LiveRecorder", "OpCall", "live_notes", "live_recording"]
