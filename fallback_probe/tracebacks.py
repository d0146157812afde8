"""A failing script's traceback shows the script, torch and libraries, never fallback-probe.

The probe sits between the user's code and torch (patched entry points, the emulated
device's ``__torch_function__`` / ``__torch_dispatch__``, the recording mode), so an error in
the script's own code would otherwise be reported through a dozen of the probe's frames.
``FALLBACK_PROBE_FULL_TRACEBACK=1`` keeps them, for reporting a bug in the probe itself.
"""

from __future__ import annotations

import os
from types import TracebackType

_PKG = os.path.dirname(os.path.abspath(__file__)) + os.sep
_RUNPY = ("<frozen runpy>", "runpy.py")
FULL_TRACEBACK_ENV = "FALLBACK_PROBE_FULL_TRACEBACK"


def _own(filename: str) -> bool:
    return filename.startswith(_PKG)


def hide_probe_frames(exc: BaseException) -> None:
    """Unlink the probe's frames from ``exc``'s traceback (and its causes'), in place.

    runpy frames the probe's target runner called are the probe's too; frames of the script,
    torch and everything else stay, in order.
    """
    if os.environ.get(FULL_TRACEBACK_ENV) == "1":
        return
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = _kept(e.__traceback__)
        todo += [e.__cause__, e.__context__]


def _kept(tb: TracebackType | None) -> TracebackType | None:
    kept: list[TracebackType] = []
    called_by_probe = False
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if _own(name):
            called_by_probe = True
        elif called_by_probe and name.endswith(_RUNPY):
            pass
        else:
            called_by_probe = False
            kept.append(tb)
        tb = tb.tb_next
    for outer, inner in zip(kept, kept[1:], strict=False):
        outer.tb_next = inner
    if kept:
        kept[-1].tb_next = None
    return kept[0] if kept else None
