"""Run the model's child process: its own output kept off the report, the timeout counted from
the script's start (not torch's import), progress from what the child says on a status pipe.

The child writes ``started`` just before the script runs and ``ops N`` as calls are recorded.
While a progress line is drawn on a terminal, the script's output reaches that terminal through
a pseudo-terminal the parent relays (the script still sees a terminal: line buffering, colours,
its width), so each of its lines starts on a line of its own instead of after the status text.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from dataclasses import dataclass

from fallback_probe.progress import Progress

_GRACE_SECONDS = 10  # after SIGTERM, for the child to stop the model and write its trace
_POLL_SECONDS = 0.2
_DRAIN_SECONDS = 0.2  # after the child ends: output still in its terminals


@dataclass
class ChildResult:
    code: int  # the child's exit status (negative: killed by that signal)
    timed_out: bool
    started: bool  # the script itself began to run
    ops: int  # calls the child said it recorded


@dataclass
class _Relay:
    """One of the child's output streams, read from a pseudo-terminal, written to ``dest``."""

    master: int
    dest: int
    at_line_start: bool = True


def _pseudo_terminal(like: int) -> tuple[int, int]:
    """(master, slave), the slave as wide as the terminal on ``like``."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(like, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
    return master, slave


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def run_child(
    cmd: list[str],
    env: dict[str, str],
    timeout: float | None,
    script_stdout: int | None,
    progress: Progress,
    label: str,
) -> ChildResult:
    """``script_stdout``: the file descriptor the child's stdout goes to (None: ours)."""
    out_dest = 1 if script_stdout is None else script_stdout
    relays: list[_Relay] = []
    slaves: dict[int, int] = {}  # child fd -> pseudo-terminal slave
    if progress.redraws:
        for child_fd, dest in ((1, out_dest), (2, 2)):
            if os.isatty(dest):
                master, slaves[child_fd] = _pseudo_terminal(dest)
                relays.append(_Relay(master, dest))
    read_fd, write_fd = os.pipe()
    env = {**env, "FALLBACK_PROBE_STATUS_FD": str(write_fd)}
    try:
        proc = subprocess.Popen(
            cmd,
            env=env,
            pass_fds=(write_fd,),
            stdout=slaves.get(1, script_stdout),
            stderr=slaves.get(2),
        )
    except BaseException:
        for r in relays:
            os.close(r.master)
        raise
    finally:
        os.close(write_fd)
        for fd in slaves.values():
            os.close(fd)
    result = ChildResult(code=0, timed_out=False, started=False, ops=0)
    started_at: float | None = None
    pending = b""
    reading = {read_fd, *(r.master for r in relays)}
    by_master = {r.master: r for r in relays}
    try:
        while True:
            if reading:
                ready, _, _ = select.select(list(reading), [], [], _POLL_SECONDS)
            else:
                time.sleep(_POLL_SECONDS)
                ready = []
            for fd in ready:
                data = _read(fd)
                if not data:
                    reading.discard(fd)
                elif fd == read_fd:
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        word, _, rest = line.decode("ascii", "replace").partition(" ")
                        if word == "started" and started_at is None:
                            started_at, result.started = time.monotonic(), True
                        elif word == "ops" and rest.isdigit():
                            result.ops = int(rest)
                else:
                    _relay(by_master[fd], data, progress)
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
            if all(r.at_line_start for r in relays):  # never inside a line the script writes
                what = f"{result.ops:,} ops recorded" if result.started else "starting torch"
                progress.update(f"running {label}: {what}, {progress.elapsed()}")
        if not result.timed_out:  # a stopped script's last words are not the user's to read
            _drain(relays, reading, progress)
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(read_fd)
        for r in relays:
            os.close(r.master)
        progress.clear()
    return result


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: every writer of a pseudo-terminal has closed it
        return b""


def _relay(relay: _Relay, data: bytes, progress: Progress) -> None:
    progress.clear()
    _write_all(relay.dest, data)
    relay.at_line_start = data.endswith(b"\n")


def _drain(relays: list[_Relay], reading: set[int], progress: Progress) -> None:
    """What the child wrote just before it ended (a process it started may hold on longer)."""
    masters = [r for r in relays if r.master in reading]
    deadline = time.monotonic() + _DRAIN_SECONDS
    while masters and time.monotonic() < deadline:
        ready, _, _ = select.select([r.master for r in masters], [], [], _DRAIN_SECONDS)
        for r in [r for r in masters if r.master in ready]:
            data = _read(r.master)
            if data:
                _relay(r, data, progress)
            else:
                masters.remove(r)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM first: the child stops the model and writes its whole trace; then SIGKILL."""
    proc.terminate()
    try:
        return proc.wait(timeout=_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
