"""Probe overhead against the plain run, side by side: ``python -m tests.benchmarks.run``.

Prints one markdown table (and, with ``--json``, writes the raw samples). ``--quick`` runs
every benchmark on a tiny configuration, once, to check the harness (goals are not judged
then); ``--only`` picks benchmarks by name. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.benchmarks import harness, workloads
from tests.benchmarks.harness import RELEASE, ProcessRun

BENCHMARKS = ("cnn", "resnet18", "micro", "decoder7b", "matrix", "plugin")
TINY_DECODER = ["--vocab", "256", "--dim", "64", "--layers", "2", "--hidden", "128", "--heads", "4"]
GB = 1 << 30


@dataclass
class Row:
    benchmark: str
    plain: str
    probed: str
    result: str
    noise: str
    goal: str
    met: bool | None  # None: not judged (--quick, or a reference row)
    raw: dict[str, object]


@dataclass
class Options:
    quick: bool
    repeats: int
    warmup: int


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _fmt_mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def _ratio_row(
    name: str, plain: harness.Samples, probed: harness.Samples, goal: float | None, opts: Options
) -> Row:
    rs = harness.ratios(probed, plain)
    ratio = statistics.median(rs)
    lo, hi = harness.spread(rs)
    return Row(
        benchmark=name,
        plain=_fmt_s(plain.median),
        probed=_fmt_s(probed.median),
        result=f"{ratio:.2f}×",
        noise=f"{lo:.2f}–{hi:.2f}×",
        goal=f"≤ {goal:g}×" if goal is not None else "reference",
        met=None if goal is None or opts.quick else ratio <= goal,
        raw={"plain_s": plain.seconds, "probed_s": probed.seconds, "ratios": rs},
    )


# -- in-process: training steps ----------------------------------------------------------------


def in_process(label: str, workload: Callable[[], None], goal: float, opts: Options) -> list[Row]:
    """Plain CPU run vs predict mode on the emulated mps, and with emulation off."""
    hooks = harness.global_module_hooks()
    variants = {
        "plain": workload,
        "probed": harness.probed(workload, emulate=True),
        "no_emulation": harness.probed(workload, emulate=False),
    }
    samples = harness.interleaved(variants, opts.repeats, opts.warmup)
    if harness.global_module_hooks() != hooks:
        raise RuntimeError("a probe left global module hooks behind: plain runs got slower")
    return [
        _ratio_row(
            f"{label}: predict, emulated mps", samples["plain"], samples["probed"], goal, opts
        ),
        _ratio_row(
            f"{label}: predict, emulate=False",
            samples["plain"],
            samples["no_emulation"],
            None,
            opts,
        ),
    ]


def bench_cnn(opts: Options) -> list[Row]:
    return in_process(
        "seed CNN step (docs/examples/simple_cnn.py)", workloads.seed_cnn(), 1.3, opts
    )


def bench_resnet18(opts: Options) -> list[Row]:
    cfg = (
        workloads.ResNetConfig(batch=2, size=32, width=8)
        if opts.quick
        else workloads.ResNetConfig()
    )
    label = f"ResNet-18-sized step ({cfg.batch}×3×{cfg.size}×{cfg.size}, Adam)"
    return in_process(label, workloads.resnet18(cfg), 1.3, opts)


def bench_micro(opts: Options) -> list[Row]:
    cfg = workloads.MicroConfig(blocks=2) if opts.quick else workloads.MicroConfig()
    label = f"op-bound micro-model ({cfg.blocks} tiny blocks, SGD)"
    return in_process(label, workloads.micro(cfg), 2.0, opts)


# -- subprocesses: the CLI and pytest ----------------------------------------------------------


def _env() -> dict[str, str]:
    """This environment without an outer pytest's or a probe's variables."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTEST_") and k != "PYTORCH_ENABLE_MPS_FALLBACK"
    }


def _cli(*args: str) -> Callable[[], ProcessRun]:
    cmd = [sys.executable, "-m", "fallback_probe", *args]
    return lambda: harness.run_measured(cmd, cwd=workloads.REPO, env=_env())


def bench_decoder7b(opts: Options) -> list[Row]:
    script_args = TINY_DECODER if opts.quick else []
    probe = _cli(
        str(workloads.DECODER_7B),
        "--device",
        "meta",
        "--torch-version",
        RELEASE,
        "--",
        *script_args,
    )
    floor = lambda: harness.run_measured([sys.executable, "-c", "import torch"], env=_env())  # noqa: E731
    runs = harness.interleaved_processes(
        {"import_torch": floor, "probe": probe}, max(1, opts.repeats // 3)
    )
    wall = statistics.median(r.seconds for r in runs["probe"])
    rss = max(r.max_rss_bytes for r in runs["probe"])
    floor_wall = statistics.median(r.seconds for r in runs["import_torch"])
    floor_rss = max(r.max_rss_bytes for r in runs["import_torch"])
    walls = [r.seconds for r in runs["probe"]]
    summary = runs["probe"][-1].stderr.strip().splitlines()[-1:]
    return [
        Row(
            benchmark="7B decoder on meta: `fallback-probe decoder_7b.py --device meta`"
            + (" (tiny config)" if opts.quick else ""),
            plain=f"`import torch` alone: {_fmt_s(floor_wall)}, {_fmt_mb(floor_rss)}",
            probed=f"{_fmt_s(wall)}, {_fmt_mb(rss)} peak RSS",
            result=f"{wall:.2f} s, {rss / GB:.2f} GB",
            noise=f"{min(walls):.2f}–{max(walls):.2f} s",
            goal="≤ 5 s, ≤ 1 GB",
            met=None if opts.quick else wall <= 5 and rss <= GB,
            raw={
                "probe_s": walls,
                "probe_rss": [r.max_rss_bytes for r in runs["probe"]],
                "import_torch_s": [r.seconds for r in runs["import_torch"]],
                "import_torch_rss": [r.max_rss_bytes for r in runs["import_torch"]],
                "summary": summary,
            },
        )
    ]


def bench_matrix(opts: Options) -> list[Row]:
    script_args = TINY_DECODER if opts.quick else []
    target = [str(workloads.DECODER_7B), "--device", "meta"]
    variants = {
        "one": _cli(*target, "--torch-version", RELEASE, "--", *script_args),
        "all": _cli(*target, "--torch-version", "all", "--", *script_args),
    }
    runs = harness.interleaved_processes(variants, max(1, opts.repeats // 2))
    one = harness.Samples([r.seconds for r in runs["one"]])
    every = harness.Samples([r.seconds for r in runs["all"]])
    diffs = harness.differences(every, one)
    extra = statistics.median(diffs)
    lo, hi = harness.spread(diffs)
    judge = harness.run_measured(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.judge_only",
            "--repeats",
            str(max(1, opts.repeats // 2)),
            "--",
            *script_args,
        ],
        cwd=workloads.REPO,
        env=_env(),
    )
    if judge.returncode != 0:
        raise RuntimeError(f"judge_only failed:\n{judge.stderr[-4000:]}")
    j = json.loads(judge.stdout.strip().splitlines()[-1])
    jd = harness.differences(harness.Samples(j["all"]), harness.Samples(j["one"]))
    jlo, jhi = harness.spread(jd)
    j_extra = statistics.median(jd)
    return [
        Row(
            benchmark="release matrix: whole CLI run of the 7B decoder, `--torch-version all` vs one",
            plain=_fmt_s(one.median),
            probed=_fmt_s(every.median),
            result=f"+{extra:.2f} s",
            noise=f"{lo:+.2f} to {hi:+.2f} s",
            goal="≤ +0.5 s",
            met=None if opts.quick else extra <= 0.5,
            raw={"one_s": one.seconds, "all_s": every.seconds},
        ),
        Row(
            benchmark=f"release matrix: judging alone, {j['calls']} calls, {j['releases']} lists read cold",
            plain=_fmt_s(statistics.median(j["one"])),
            probed=_fmt_s(statistics.median(j["all"])),
            result=f"+{j_extra:.2f} s",
            noise=f"{jlo:+.2f} to {jhi:+.2f} s",
            goal="≤ +0.5 s",
            met=None if opts.quick else j_extra <= 0.5,
            raw=j,
        ),
    ]


def bench_plugin(opts: Options) -> list[Row]:
    from tests.benchmarks.suite import write_suite

    with tempfile.TemporaryDirectory(prefix="fp-bench-suite-") as tmp:
        root = Path(tmp)
        count = write_suite(root, 5 if opts.quick else 50)
        pytest = [sys.executable, "-m", "pytest", "-q", str(root)]
        gate = [*pytest, "--fallback-probe", "--fallback-torch-version", RELEASE]
        first = harness.run_measured([*gate, "--fallback-update"], cwd=root, env=_env())
        if first.returncode != 0:
            raise RuntimeError(f"recording the baseline failed:\n{first.stdout[-4000:]}")
        variants = {
            "plain": lambda: harness.run_measured(pytest, cwd=root, env=_env()),
            "probed": lambda: harness.run_measured(gate, cwd=root, env=_env()),
        }
        runs = harness.interleaved_processes(variants, max(1, opts.repeats // 2))
    plain = harness.Samples([r.seconds for r in runs["plain"]])
    probed = harness.Samples([r.seconds for r in runs["probed"]])
    row = _ratio_row(
        f"pytest plugin: {count}-test generated suite, whole session", plain, probed, 1.10, opts
    )
    return [row]


RUNNERS: dict[str, Callable[[Options], list[Row]]] = {
    "cnn": bench_cnn,
    "resnet18": bench_resnet18,
    "micro": bench_micro,
    "decoder7b": bench_decoder7b,
    "matrix": bench_matrix,
    "plugin": bench_plugin,
}


def render(rows: Sequence[Row], machine: dict[str, str], opts: Options, command: str) -> str:
    from tabulate import tabulate

    def met(row: Row) -> str:
        return "–" if row.met is None else ("yes" if row.met else "**no**")

    table = tabulate(
        [[r.benchmark, r.plain, r.probed, r.result, r.noise, r.goal, met(r)] for r in rows],
        headers=["benchmark", "plain", "probed", "result", "noise (IQR)", "goal", "met"],
        tablefmt="github",
    )
    lines = [table, "", f"Command: `{command}`", ""]
    rounds = "1 round (quick)" if opts.quick else f"median of {opts.repeats} interleaved rounds"
    lines.append(
        f"In-process rows: {rounds} after {opts.warmup} warm-up; CLI and pytest rows: fewer rounds of fresh processes (see docs/performance.md)."
    )
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.run", description=__doc__)
    p.add_argument(
        "--quick", action="store_true", help="tiny configurations, one round: checks the harness"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds per in-process benchmark (default 15)",
    )
    p.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {', '.join(BENCHMARKS)}",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, here and in the CLI and pytest processes (default 1: "
        "steadier on a shared machine, and the probe's per-op cost does not shrink with threads)",
    )
    p.add_argument(
        "--json", type=Path, default=None, help="also write rows, raw samples and machine here"
    )
    a = p.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
        os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the CLI's and pytest's processes
    repeats = a.repeats if a.repeats is not None else (1 if a.quick else 15)
    opts = Options(quick=a.quick, repeats=repeats, warmup=1 if a.quick else 2)
    machine = harness.machine()
    rows: list[Row] = []
    for name in names:  # in-process benchmarks first: nothing a subprocess does reaches them
        rows += RUNNERS[name](opts)
        print(f"[{name} done]", file=sys.stderr, flush=True)
    command = "python -m tests.benchmarks.run" + ("" if argv is None else " " + " ".join(argv))
    if argv is None:
        command = "python -m tests.benchmarks.run " + " ".join(sys.argv[1:])
    sys.stdout.write(render(rows, machine, opts, command.strip()))
    if a.json is not None:
        a.json.write_text(
            json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
