"""Judging alone, cold: one trace against one release, then against all of them.

Run in a fresh process (``python -m tests.benchmarks.judge_only``), as the CLI's parent
judges: operator lists are read from disk on first use, so each round clears their cache.
Prints one JSON object: the calls judged and the seconds per round of each variant.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import runpy
import sys
import time

from tests.benchmarks.harness import RELEASE
from tests.benchmarks.workloads import DECODER_7B


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("script_args", nargs="*")
    a = p.parse_args(argv)

    import fallback_probe
    from fallback_probe import oplists
    from fallback_probe.verdicts import make_report

    old_argv = sys.argv
    sys.argv = [str(DECODER_7B), *a.script_args]
    try:
        with (
            fallback_probe.probe(mode="predict", torch_version="all", device="meta") as probe,
            contextlib.redirect_stdout(io.StringIO()),
        ):
            runpy.run_path(str(DECODER_7B), run_name="__main__")
    finally:
        sys.argv = old_argv
    col = probe.collection
    assert col is not None

    def judged(version: str) -> float:
        oplists._load_resolved.cache_clear()
        start = time.perf_counter()
        make_report(col, version)
        return time.perf_counter() - start

    one: list[float] = []
    every: list[float] = []
    for i in range(a.repeats):
        pair = [(one, RELEASE), (every, "all")]
        for samples, version in pair if i % 2 == 0 else reversed(pair):
            samples.append(judged(version))
    print(
        json.dumps(
            {"calls": len(col.trace), "releases": len(oplists.releases()), "one": one, "all": every}
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
