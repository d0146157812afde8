"""Timing the probe against the plain run: interleaved, paired, median of N.

Machines running these are shared and noisy, so every figure is taken in one process run
(or one batch of interleaved subprocesses): after a warm-up of each variant, the variants
run in turn, ABAB... with the order flipped every other round (ABBA) so drift and order
effects cancel, and a ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

RELEASE = "2.13.0"  # the release every probe here predicts for


@dataclass
class Samples:
    """Wall seconds of one variant, one per round, in round order."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def interleaved(
    variants: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, Samples]:
    """Run every variant ``warmup`` times untimed, then ``repeats`` timed rounds, ABBA."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    out = {name: Samples() for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            gc.collect()
            start = time.perf_counter()
            variants[name]()
            out[name].seconds.append(time.perf_counter() - start)
    return out


def ratios(probed: Samples, plain: Samples) -> list[float]:
    return [p / b for p, b in zip(probed.seconds, plain.seconds, strict=True)]


def differences(probed: Samples, plain: Samples) -> list[float]:
    return [p - b for p, b in zip(probed.seconds, plain.seconds, strict=True)]


def spread(values: Sequence[float]) -> tuple[float, float]:
    """(low, high) quartiles; the whole range for fewer than 4 values."""
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


# -- probing in-process -----------------------------------------------------------------------


def global_module_hooks() -> int:
    """Global nn.Module hooks: a probe must leave none, or later plain runs pay for them."""
    from torch.nn.modules import module

    return len(module._global_forward_pre_hooks) + len(module._global_forward_hooks)


def probed(workload: Callable[[], None], emulate: bool = True) -> Callable[[], None]:
    """The workload inside a predict-mode probe, report included (judging is part of it)."""
    import fallback_probe

    def run() -> None:
        with fallback_probe.probe(mode="predict", torch_version=RELEASE, emulate=emulate) as p:
            workload()
        p.report  # noqa: B018 - the judging is part of the cost

    return run


# -- subprocesses -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessRun:
    seconds: float
    max_rss_bytes: int  # the largest resident set of the process and its waited-for children
    returncode: int
    stdout: str
    stderr: str


# Runs the command and writes its wall seconds and its peak RSS to the file in argv[1]. A
# child forked from this (large) process would report at least our RSS as its peak, since
# Linux counts the pages of the forked copy before exec; the small wrapper's own children
# are forked from a fresh interpreter, so RUSAGE_CHILDREN measures the command alone.
_WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as fh:
    json.dump([seconds, rss * (1 if sys.platform == "darwin" else 1024)], fh)
sys.exit(code)
"""


def run_measured(
    cmd: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> ProcessRun:
    """Wall time and peak RSS of ``cmd`` and the children it waits for (the CLI's model
    process), measured by a small wrapper process (see ``_WRAPPER``)."""
    import json
    import tempfile

    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.TemporaryDirectory() as tmp,
    ):
        result = Path(tmp, "usage.json")
        code = subprocess.call(
            [sys.executable, "-c", _WRAPPER, str(result), *cmd],
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=err,
        )
        seconds, rss = json.loads(result.read_text()) if result.exists() else (0.0, 0)
        out.seek(0)
        err.seek(0)
        return ProcessRun(seconds, int(rss), code, out.read(), err.read())


def interleaved_processes(
    variants: Mapping[str, Callable[[], ProcessRun]], repeats: int, warmup: int = 0
) -> dict[str, list[ProcessRun]]:
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    out: dict[str, list[ProcessRun]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            run = variants[name]()
            if run.returncode != 0:
                raise RuntimeError(
                    f"{name} exited {run.returncode}:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
                )
            out[name].append(run)
    return out


# -- the machine ----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    try:
        ram = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        ram = "unknown"
    try:
        load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "cpu": f"{cpu}, {os.cpu_count()} logical CPUs",
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": f"{torch.__version__}, {torch.get_num_threads()} intra-op threads",
        "load average at start (1, 5, 15 min)": load,
    }


def self_max_rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
