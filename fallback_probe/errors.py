"""Exit codes and the one error type the CLI turns into a one-line message."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented in docs/cli.md; the pytest plugin and the CLI share them."""

    OK = 0
    FOUND = 1  # --fail-on found fallbacks / unsupported ops
    USAGE = 2  # bad arguments, bad target, unknown release, corrupt input file
    MODEL_FAILED = 3  # the user's model raised, crashed or timed out


class ProbeError(Exception):
    """An expected failure: the CLI prints ``fallback-probe: error: <message>`` and exits."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
