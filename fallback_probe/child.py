"""The model's own process: ``python -m fallback_probe.child SPEC``.

The parent starts it with the fallback variable already set (libtorch reads it once, at load)
and reads back the trace file, which is flushed as the run goes, so a crash or a timeout
still leaves what ran. Exit codes: 0 done, 2 bad target, 3 the model failed.

It tells the parent on a status pipe (``FALLBACK_PROBE_STATUS_FD``, taken out of the
environment before the script sees it) when the script starts — ``--timeout`` counts from
there — and how many calls it has recorded, for the progress line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from fallback_probe.atomic import write_text
from fallback_probe.collect import call_line, write_call
from fallback_probe.errors import ExitCode, ProbeError
from fallback_probe.target import Target, load_function, run_function, run_script

_FLUSH_EVERY = 256
_CHECK_EVERY = 64  # calls between looks at the clock, for the progress count
_SAY_SECONDS = 0.25


def _print_user_traceback(exc: BaseException) -> None:
    """The user's exception as theirs: frames of fallback-probe and runpy left out."""
    tb = exc.__traceback__
    pkg = str(Path(__file__).resolve().parent)
    while tb is not None and (
        tb.tb_frame.f_code.co_filename.startswith(pkg)
        or tb.tb_frame.f_code.co_filename.endswith("runpy.py")
    ):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


class Stopped(BaseException):
    """SIGTERM from the parent (``--timeout``): unwind so the trace is written whole."""


class _Status:
    """Lines to the parent; a parent that went away is no reason to fail the model."""

    def __init__(self) -> None:
        fd = os.environ.pop("FALLBACK_PROBE_STATUS_FD", None)
        self.fd = int(fd) if fd and fd.isdigit() else None
        if self.fd is not None:
            os.set_inheritable(self.fd, False)  # not the script's own subprocesses

    def say(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (line + "\n").encode("ascii"))
        except OSError:
            self.fd = None


def _silence() -> None:
    """After a stop nothing more is the user's to read: what a model stopped inside C++
    prints while it unwinds (pybind11's ``terminate called …``) goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str]) -> int:
    status = _Status()
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    target = Target(Path(spec["path"]), spec.get("function"), tuple(spec.get("args", ())))
    from fallback_probe.api import Probe

    probe = Probe(**spec["probe"])
    fh = open(spec["trace_path"], "w", encoding="utf-8")  # noqa: SIM115 - closed in finally
    count = 0
    said = time.monotonic()

    def sink(call):  # type: ignore[no-untyped-def]
        nonlocal count, said
        write_call(fh, call)
        count += 1
        if count % _CHECK_EVERY == 0:
            if count % _FLUSH_EVERY == 0:
                fh.flush()
            now = time.monotonic()
            if now - said >= _SAY_SECONDS:  # and on disk, should the process be killed
                fh.flush()
                status.say(f"ops {count}")
                said = now

    def on_sigterm(signum: int, frame: object) -> None:
        # What ran is on disk even if unwinding aborts the process (RuntimeError: the signal
        # came in the middle of a write).
        with contextlib.suppress(OSError, RuntimeError):
            fh.flush()
        _silence()
        raise Stopped

    signal.signal(signal.SIGTERM, on_sigterm)

    probe.sink = sink
    code = ExitCode.OK
    try:
        started = False
        try:
            with probe:
                started = True
                fh.write(probe._col.header_json() + "\n")
                fh.flush()
                status.say("started")
                if target.function is None:
                    run_script(target)
                else:
                    device = "mps" if probe._col.mode.value == "predicted" else probe.device_type
                    run_function(load_function(target), device, spec.get("train", False))
                status.say(f"ops {count}")
        except ProbeError as exc:
            print(f"fallback-probe: error: {exc}", file=sys.stderr)
            code = exc.exit_code
        except Stopped:
            code = ExitCode.MODEL_FAILED
        except SystemExit as exc:
            if exc.code not in (None, 0):
                code = ExitCode.MODEL_FAILED
        except BaseException as exc:
            if started:  # the user's model failed: theirs to read
                _print_user_traceback(exc)
            else:  # our bug, not the model's: say so, with our traceback
                print(
                    "fallback-probe: internal error while starting the probe; please report it",
                    file=sys.stderr,
                )
                traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            code = ExitCode.MODEL_FAILED
    finally:
        fh.close()
    col = probe.collection
    if col is not None:
        # The streamed lines were a safety net; the final file carries live evidence that
        # only exists once the profiler has stopped.
        lines = [col.header_json(), *(call_line(c) for c in col.trace), col.footer_json()]
        write_text(spec["trace_path"], "\n".join(lines) + "\n")
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
