"""The public context manager: ``with fallback_probe.api() as p: ...; p.report``.

Like torch's ``FlopCounterMode`` it never prints: the report is an object to render, save,
compare or assert on.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from functools import lru_cache
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from fallback_probe.collect import Collection, this_host
from fallback_probe.collect.mode import decide
from fallback_probe.oplists import OpList
from fallback_probe.records import Mode, OpCall, OpStatus
from fallback_probe.report import Report
from fallback_probe.tracebacks import hide_probe_frames
from fallback_probe.verdicts import make_report

if TYPE_CHECKING:
    from fallback_probe.collect.emulate import Emulation

DEFAULT_FALLBACK_ENV = {"mps": "PYTORCH_ENABLE_MPS_FALLBACK"}


def fallback_env_for(device_type: str) -> str:
    return DEFAULT_FALLBACK_ENV.get(device_type, f"{device_type.upper()}_ENABLE_FALLBACK")


class Probe:
    """Collects while open; ``report`` is ready once the block ends, even if it raised."""

    def __init__(
        self,
        *,
        mode: Literal["auto", "live", "predict"] = "auto",
        torch_version: str | None = None,
        macos: str | None = None,
        device: Literal["cpu", "meta"] = "cpu",
        emulate: bool = True,
        stop_at_refusal: bool = False,
        device_type: str = "mps",
        fallback_env: str | None = None,
        oplist: OpList | str | os.PathLike[str] | None = None,
        emulation: Emulation | None = None,
    ) -> None:
        if isinstance(oplist, (str, os.PathLike)):
            from fallback_probe import oplists

            oplist = oplists.load_file(oplist)
        self.requested_mode = mode
        self.torch_version = torch_version
        self.macos = macos
        self.backing = device
        self.emulate = emulate
        self.stop_at_refusal = stop_at_refusal
        self.device_type = device_type
        self.fallback_env = fallback_env or fallback_env_for(device_type)
        self.oplist = oplist
        # An emulation already active (the pytest plugin keeps one for the whole session):
        # emulations do not nest, so the probe records on it instead of entering its own.
        self.active_emulation = emulation
        self.collection: Collection | None = None
        self._report: Report | None = None
        self._stack: ExitStack | None = None
        self._recorder = None
        self._emulation: Emulation | None = None
        self._seen_before = (0, 0)  # the active emulation's placeholders, refusals at entry
        self.sink = None  # optional per-call callback (the CLI's child streams to a file)

    @property
    def report(self) -> Report:
        if self._report is None:
            if self.collection is None:
                raise RuntimeError("the probe has not finished: read .report after the block")
            self._report = make_report(self.collection, self.torch_version, self.macos, self.oplist)
        return self._report

    @property
    def trace(self) -> list[OpCall]:
        return [] if self.collection is None else list(self.collection.trace)

    def trace_so_far(self) -> list[OpCall]:
        """The calls recorded until now, in call order, while the block still runs."""
        return [] if self._recorder is None else self._recorder.trace()

    def __enter__(self) -> Probe:
        if self.torch_version is not None:
            from fallback_probe import oplists

            if self.torch_version != "all":
                oplists.resolve_release(self.torch_version)  # fail before running anything
        mode, reason = decide(self.requested_mode, self.device_type)
        self.collection = None
        self._report = None
        self._col = Collection(mode, reason, self.device_type, this_host())
        stack = ExitStack()
        try:
            if mode is Mode.LIVE:
                self._enter_live(stack)
            else:
                self._enter_predict(stack)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def _enter_live(self, stack: ExitStack) -> None:
        import platform

        from fallback_probe.collect.live import LiveRecorder, live_recording

        rec = LiveRecorder(self.device_type, self.fallback_env)
        rec.sink = self.sink
        if os.environ.get(self.fallback_env) != "1":
            self._col.limits.append(
                f"{self.fallback_env} was not set to 1 for this run: ops without a kernel "
                "raised and are reported unsupported, not as fallbacks."
            )
        if self.device_type == "mps":
            self._col.macos = platform.mac_ver()[0] or None
        else:
            self._col.macos = f"n/a ({self.device_type} backend)"
        self._recorder = stack.enter_context(live_recording(rec))

    def _enter_predict(self, stack: ExitStack) -> None:
        from fallback_probe.collect.intercept import directly_registered_composites, intercepting
        from fallback_probe.collect.tracer import Recorder

        is_on_device = handler = refused = None
        if self.active_emulation is not None:
            self._emulation = emu = self.active_emulation
            self._seen_before = (len(emu.placeholders), len(emu.refusals))
            emu.discard_pending()  # made between probes: no op of this one to mark
        elif self.emulate:
            from fallback_probe.collect.emulate import emulated_mps

            emulation = emulated_mps(
                self.backing, stop_at_refusal=self.stop_at_refusal, macos=self.macos
            )
            self._emulation = stack.enter_context(emulation)
        if self._emulation is not None:
            is_on_device = self._emulation.is_emulated
            handler = self._emulation.dispatch
            refused = self._emulation.take_refusal
        elif self.backing == "meta":
            self._col.limits.append("--device meta needs emulation; ran on the CPU instead.")
        lists = self._judged_lists()
        rec = Recorder(
            is_on_device=is_on_device,
            decompose=_composites_of(lists),
            handler=handler,
            refused=refused,
            open_views=not _views_native(lists),
        )
        rec.sink = self.sink
        stack.enter_context(rec)
        stack.enter_context(intercepting(rec, directly_registered_composites(lists)))
        self._recorder = rec

    def _judged_lists(self) -> tuple[OpList, ...]:
        from fallback_probe import oplists
        from fallback_probe.verdicts import target_releases

        if self.oplist is not None:
            return (self.oplist,)
        _, releases, _ = target_releases(self.torch_version, self._col.host.torch)
        return tuple(oplists.load(r) for r in releases)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        assert self._stack is not None
        try:
            self._stack.close()
        finally:
            col = self._col
            rec = self._recorder
            col.trace = rec.trace() if rec is not None else []
            col.cpu_work = dict(rec.cpu_work) if rec is not None else {}
            if exc_type is not None:
                col.complete = False
                col.error = _describe(exc_type, exc)
                if exc is not None:
                    hide_probe_frames(exc)
            self._add_notes(col)
            self.collection = col
        return False

    def _add_notes(self, col: Collection) -> None:
        if col.mode is Mode.LIVE:
            from fallback_probe.collect.live import live_notes

            col.limits.extend(live_notes(self._recorder))  # type: ignore[arg-type]
            return
        emu = self._emulation
        if emu is None:
            col.limits.append("Emulation off: every op of the run was judged as if it ran on MPS.")
            return
        placeholders, rejections = self._seen_before  # only what this block added
        for op, where in emu.placeholders[placeholders:]:
            col.limits.append(f"{op} at {where} returned a placeholder (no data on meta).")
        for refusal in emu.refusals[rejections:]:
            if not refusal.on_op:  # the others are unsupported verdicts, with this error
                col.limits.append(f"A Mac would refuse this at {refusal.where}: {refusal.error}")


@lru_cache(maxsize=8)
def _composites_of(lists: tuple[OpList, ...]) -> frozenset[str]:
    """Ops worth opening: composite in a judged release. Native and missing ops are judged
    whole, so running their composite body would only cost time."""
    # Cached: the plugin opens a probe per test, and walking 3,000 entries costs ~2 ms.
    composite = (OpStatus.COMPOSITE_EXPLICIT, OpStatus.COMPOSITE_IMPLICIT)
    return frozenset(op for ol in lists for op in ol.with_status(*composite))


def _views_native(lists: tuple[OpList, ...]) -> bool:
    """What composite view ops reach is native in every judged list (docs/verdicts.md)."""
    for ol in lists:
        for op in ("aten::as_strided", "aten::view"):
            entry = ol.get(op)
            if entry is None or entry.status is not OpStatus.NATIVE:
                return False
    return True


def _describe(exc_type: type[BaseException], exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""
    return f"{exc_type.__name__}: {text}" if text else exc_type.__name__


# ``with fallback_probe.probe(...) as p:`` reads like torch's own context managers; the
# alias keeps Probe's typed signature (docs/api.md).
probe = Probe
