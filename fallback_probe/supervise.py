"""Run the model's child process: its own output kept off the report, the timeout counted from
the script's start (not torch's import), progress from what the child says on a status pipe.

The child writes ``started`` just before the script runs and ``ops N`` as calls are recorded.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from dataclasses import dataclass

from fallback_probe.progress import Progress

_GRACE_SECONDS = 10  # after SIGTERM, for the child to stop the model and write its trace
_POLL_SECONDS = 0.2


@dataclass
class ChildResult:
    code: int  # the child's exit status (negative: killed by that signal)
    timed_out: bool
    started: bool  # the script itself began to run
    ops: int  # calls the child said it recorded


def run_child(
    cmd: list[str],
    env: dict[str, str],
    timeout: float | None,
    script_stdout: int | None,
    progress: Progress,
    label: str,
) -> ChildResult:
    """``script_stdout``: where the child's stdout goes (a file descriptor; None: inherited)."""
    read_fd, write_fd = os.pipe()
    env = {**env, "FALLBACK_PROBE_STATUS_FD": str(write_fd)}
    try:
        proc = subprocess.Popen(cmd, env=env, pass_fds=(write_fd,), stdout=script_stdout)
    finally:
        os.close(write_fd)
    result = ChildResult(code=0, timed_out=False, started=False, ops=0)
    started_at: float | None = None
    pending = b""
    open_pipe = True
    try:
        while True:
            if open_pipe:
                ready, _, _ = select.select([read_fd], [], [], _POLL_SECONDS)
                if ready:
                    data = os.read(read_fd, 4096)
                    open_pipe = bool(data)
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        word, _, rest = line.decode("ascii", "replace").partition(" ")
                        if word == "started" and started_at is None:
                            started_at, result.started = time.monotonic(), True
                        elif word == "ops" and rest.isdigit():
                            result.ops = int(rest)
            else:
                time.sleep(_POLL_SECONDS)
            code = proc.poll()
            if code is not None:
                result.code = code
                break
            if (
                timeout is not None
                and started_at is not None
                and time.monotonic() - started_at > timeout
            ):
                progress.clear()
                result.code, result.timed_out = _stop(proc), True
                break
            what = f"{result.ops:,} ops recorded" if result.started else "starting torch"
            progress.update(f"running {label}: {what}, {progress.elapsed()}")
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(read_fd)
        progress.clear()
    return result


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM first: the child stops the model and writes its whole trace; then SIGKILL."""
    proc.terminate()
    try:
        return proc.wait(timeout=_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
