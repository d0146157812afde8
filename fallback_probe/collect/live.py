"""Live evidence on a real device: warnings, the profiler's ``_to_cpu``, MPS-specific errors.

Works for any backend whose missing ops reach a boxed CPU fallback (MPS, the fpdev test
backend, out-of-tree PrivateUse1 backends): pass its device type and fallback variable.
"""

from __future__ import annotations

import os
import time
import warnings
from bisect import bisect_right
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
from fallback_probe.collect.scalars import call_op
from fallback_probe.collect.tracer import Recorder
from fallback_probe.records import OpCall

_MARK = "fallback_probe#"
# The note a call carries when its kernel sent inputs to the CPU itself, then the warning.
KERNEL_CPU_PATH = "kernel CPU path: "


class LiveRecorder(Recorder):
    """Runs each op for real and keeps the evidence of what the backend did with it."""

    def __init__(self, device_type: str, fallback_env: str) -> None:
        super().__init__(is_on_device=lambda t: t.device.type == device_type, decompose=False)
        self.device_type = device_type
        self.fallback_env = fallback_env
        self.log: list[warnings.WarningMessage] = []
        self.late_env = False  # the variable is set now but the backend raised anyway
        self.unmatched_warnings: list[str] = []
        self.unattached_kernel_paths: list[str] = []  # warned where the probe traced no call
        self._index = 0
        self._log_at: dict[int, int] = {}  # mark -> length of the warning log when it started

    def run(self, func, name: str, args: tuple, kwargs: dict) -> tuple[Any, dict[str, Any]]:
        index = self._index = self._index + 1
        self._log_at[index] = len(self.log)
        t0 = time.perf_counter()
        try:
            with torch.profiler.record_function(f"{_MARK}{index}"):
                result = call_op(func, args, kwargs)
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

    def apply_profile(self, prof: torch.profiler.profile | None) -> None:
        """Attach the evidence, which only exists once the run is over.

        Each op event with an ``aten::_to_cpu`` child is a fallback; it is filed under the
        call whose range encloses it. Warnings reach Python late (when the outermost C++
        call returns, not when the op does), so they are matched to those events in order,
        by op name: they supply the overload the profiler leaves out (``aten::sum`` →
        ``aten::sum.IntList_out``). A kernel's own CPU-path warning becomes a note on its call.
        """
        events: dict[int, tuple[float, int, str]] = {}  # parent event id -> (start, mark, name)
        for ev in prof.events() if prof is not None else ():
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
        marked = [
            (c, next((int(n[5:]) for n in c.notes if n.startswith("mark=")), None))
            for c in self.calls
        ]
        kernel = self._kernel_notes(marked)
        calls = []
        for c, mark in marked:
            notes = tuple(n for n in c.notes if not n.startswith("mark="))
            notes += tuple(kernel.get(mark, ())) if mark is not None else ()
            fell = tuple(named.get(mark, ())) if mark is not None else ()
            calls.append(replace(c, to_cpu=bool(fell), fallback_ops=fell, notes=notes))
        self.calls = calls

    def _kernel_notes(self, marked: list[tuple[OpCall, int | None]]) -> dict[int, list[str]]:
        """mark -> the kernel CPU-path warnings its call raised.

        A warning reaches Python when the outermost C++ call returns, so the one logged at
        position ``p`` came from the calls that started after the log last grew before ``p``
        (one user-level call and the quiet calls before it): the latest of them that runs the
        op it names, else the latest of them (a kernel calling that op inside).
        """
        by_mark = {mark: c for c, mark in marked if mark is not None}
        starts = sorted({self._log_at[m] for m in by_mark})
        windows: dict[int, list[int]] = {}  # log length at start -> marks, in call order
        for mark in sorted(by_mark):
            windows.setdefault(self._log_at[mark], []).append(mark)
        pending: dict[tuple[int, str], list[str]] = {}  # (window, op) -> messages, in order
        for pos, w in enumerate(self.log):
            text = str(w.message)
            op = kernel_cpu_path_from_warning(text)
            if op is None:
                continue
            k = bisect_right(starts, pos)
            if k == 0:
                self.unattached_kernel_paths.append(op)
                continue
            pending.setdefault((starts[k - 1], op), []).append(_first_sentences(text))
        notes: dict[int, list[str]] = {}
        for (start, op), messages in pending.items():
            window = windows[start]
            same = [m for m in window if by_mark[m].op.split(".")[0] == op]
            targets = same[-len(messages) :] if same else []
            targets = [window[-1]] * (len(messages) - len(targets)) + targets
            for mark, message in zip(targets, messages, strict=True):
                notes.setdefault(mark, []).append(KERNEL_CPU_PATH + message)
        return notes


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
    notes += kernel_cpu_path_notes(recorder.calls)
    for op in sorted(set(recorder.unattached_kernel_paths)):
        notes.append(
            f"The kernel of {op} ran it on the CPU itself (its own warning) outside any call "
            "the probe traced (another thread?); not a fallback."
        )
    if recorder.unmatched_warnings:
        names = ", ".join(sorted(set(recorder.unmatched_warnings)))
        notes.append(
            f"Fallback warnings the probe could not tie to a traced call: {names}. They fell "
            "back (their warning says so) but are not in the verdicts: an op run on a thread "
            "the probe does not trace, or with no aten::_to_cpu event under it."
        )
    return notes


def kernel_cpu_path_notes(calls: list[OpCall]) -> list[str]:
    """One note per op and warning: which calls, where, and the kernel's own words."""
    groups: dict[tuple[str, str], list[OpCall]] = {}
    for c in sorted(calls, key=lambda c: c.index):
        for n in c.notes:
            if n.startswith(KERNEL_CPU_PATH):
                groups.setdefault((c.op, n[len(KERNEL_CPU_PATH) :]), []).append(c)
    notes = []
    for (op, message), group in sorted(groups.items()):
        first = group[0]
        where = ", ".join(filter(None, (first.module and f"in {first.module}", first.source)))
        count = f"{len(group)} call" + ("s" if len(group) > 1 else "")
        notes.append(
            f"{op} ({count}{', first ' + where if where else ''}): its kernel ran it on the "
            f'CPU itself — "{message}" Not a backend fallback, so judged native; its time '
            "includes the CPU round trip."
        )
    return notes


def _first_sentences(text: str) -> str:
    """A warning without the C++ location torch appends to it."""
    return text.split(" (Triggered internally at")[0].strip()


def late_env_note(recorder: LiveRecorder) -> str | None:
    if not recorder.late_env:
        return None
    return (
        f"{recorder.fallback_env}=1 is set, yet the backend raised NotImplementedError: the "
        "variable was set after the backend loaded (it is read once, at load). Those ops are "
        "reported unsupported here; started with the variable set, they fall back to the CPU."
    )


__all__ = ["LiveRecorder", "OpCall", "live_notes", "live_recording"]
