"""A sign of life on stderr during long work, stdlib only.

On a terminal one status line is rewritten in place; elsewhere (CI logs, files) it is off
unless forced, and when forced it prints a plain line at most every few seconds, so logs stay
readable. A library (tqdm, rich) would add a dependency for one line of text: not worth it.

The pytest plugin can use it too: ``Progress(enabled=...)`` then ``update("12 tests probed")``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_TERMINAL_EVERY = 0.2  # seconds between redraws on a terminal
_LOG_EVERY = 5.0  # seconds between lines when forced on something else


def wanted(flag: bool | None, stream: TextIO | None = None) -> bool:
    """``--progress`` / ``--no-progress`` decide; by default, only on a terminal."""
    if flag is not None:
        return flag
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


class Progress:
    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = wanted(enabled, self.stream)
        self.redraws = self.enabled and wanted(None, self.stream)  # one line, in place
        self._every = _TERMINAL_EVERY if self.redraws else _LOG_EVERY
        self._last = float("-inf")
        self._drawn = False
        self.started = time.monotonic()

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"

    def update(self, text: str, force: bool = False) -> None:
        """Show ``text`` (throttled unless ``force``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self._every:
            return
        self._last = now
        line = f"fallback-probe: {text}"
        if self.redraws:
            self.stream.write("\r\x1b[K" + line)
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Remove the status line before other output (a summary, a warning)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
