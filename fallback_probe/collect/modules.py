"""Which ``nn.Module`` issued an op, forward or backward, at a few microseconds per module call.

torch's ``ModuleTracker`` names modules well (``Model.layers.0.fc``) but learns about backward
by registering multi-grad hooks on every module call's inputs and outputs: ~30 us per call on
plain tensors, more on the emulated device, and a handle kept per call until the probe ends.
This keeps its naming and its global forward hooks and attributes backward differently: every
autograd node carries the sequence number of the forward op that created it, so a backward op
belongs to the module that was innermost when that number was handed out. Module enters and
exits are stamped with the autograd sequence counter; a backward op looks up its node's number.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import torch
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.utils.module_tracker import ModuleTracker

_peek = getattr(torch._C._autograd, "_get_sequence_nr", None)
_current_node = getattr(torch._C, "_current_autograd_node", None)
_graph_task = torch._C._current_graph_task_id
_NO_SEQUENCE = 2**64 - 1  # what AccumulateGrad nodes carry

# Sequence numbers only work where torch exposes both ends; older builds use ModuleTracker.
SUPPORTED = _peek is not None and _current_node is not None


def display_name(fqn: str) -> str:
    """``Model.layers.0.fc`` -> ``layers.0.fc``; a root module keeps its class name."""
    head, _, rest = fqn.partition(".")
    return rest or head


class ModuleStack(ModuleTracker):
    """A ``ModuleTracker`` without per-call grad hooks; ask :meth:`where` instead of ``parents``."""

    def __init__(self) -> None:
        super().__init__()
        self._open: list[str] = []  # display names of the modules whose forward is running
        self._stamps: list[int] = []  # sequence counter at each enter/exit, non-decreasing
        self._owners: list[str] = []  # innermost module right after that enter/exit
        self._names: dict[str, str] = {}

    # -- forward hooks (registered by __enter__, torch's global module hooks) -----------------
    def _fw_pre_hook(self, mod: torch.nn.Module, input: Any) -> None:
        fqn = self._get_mod_name(mod)
        name = self._names.get(fqn)
        if name is None:
            name = self._names[fqn] = display_name(fqn)
        self._open.append(name)
        self._stamp(name)

    def _fw_post_hook(self, mod: torch.nn.Module, input: Any, output: Any) -> None:
        name = self._names.get(self._get_mod_name(mod))
        opened = self._open
        if opened and opened[-1] == name:
            opened.pop()
        elif name in opened:
            # Modules above it on the stack ended without their hook (a forward raised, and
            # a torch without always_call): they cannot be running once this one returns.
            del opened[len(opened) - 1 - opened[::-1].index(name) :]
        self._stamp(opened[-1] if opened else "")

    def _stamp(self, owner: str) -> None:
        seq = _peek()  # type: ignore[misc]
        if self._stamps and self._stamps[-1] == seq:
            self._owners[-1] = owner  # no node was created since the last event
        else:
            self._stamps.append(seq)
            self._owners.append(owner)

    def __enter__(self) -> ModuleStack:
        self._fw_pre_handle = register_module_forward_pre_hook(self._fw_pre_hook)
        try:  # always_call: a forward that raises still closes its module
            self._fw_post_handle = register_module_forward_hook(
                self._fw_post_hook, always_call=True
            )
        except TypeError:  # a torch without it: _fw_post_hook repairs the stack
            self._fw_post_handle = register_module_forward_hook(self._fw_post_hook)
        return self

    # -- queries -------------------------------------------------------------------------
    def where(self) -> tuple[str, bool]:
        """(module display name or "", whether this runs in a backward pass)."""
        if _graph_task() == -1:
            return (self._open[-1] if self._open else ""), False
        node = _current_node()  # type: ignore[misc]
        if node is None:  # an engine callback, outside any node
            return "", True
        seq = node._sequence_nr()
        # AccumulateGrad (UINT64_MAX) and nodes made before the probe (before the first
        # stamp) are nobody's. The engine may run a device's backward on its own thread,
        # whose counter says nothing about the forward thread's numbers: only stamps count.
        i = bisect_right(self._stamps, seq) - 1
        if i < 0 or seq == _NO_SEQUENCE:
            return "", True
        return self._owners[i], True


class LegacyModules(ModuleTracker):
    """torch's own tracker, for builds without the sequence-number bindings."""

    def where(self) -> tuple[str, bool]:
        parents = self.parents
        if len(parents) <= 1:
            return "", self.is_bw
        deepest = max((p for p in parents if p != "Global"), key=lambda p: p.count("."))
        return display_name(deepest), self.is_bw


def module_tracker() -> ModuleStack | LegacyModules:
    return ModuleStack() if SUPPORTED else LegacyModules()
