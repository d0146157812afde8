"""One release of the sweep, in a process where fpdev is release V (FPDEV_RELEASE set).

``python -m tests.differential.worker V OUT.json [--ops GLOB] [--samples N]``; progress on
stderr. The parent (tests/differential/__init__.py) starts one per release.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from fallback_probe.atomic import write_text
from fallback_probe.selftest import sweep
from tests.fpdev import ENV_VAR, load_fpdev
from tests.fpdev.release import RELEASE_VAR


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.differential.worker")
    p.add_argument("release")
    p.add_argument("out")
    p.add_argument("--ops", default="*")
    p.add_argument("--samples", type=int, default=None)
    args = p.parse_args(argv)
    if os.environ.get(RELEASE_VAR) != args.release or os.environ.get(ENV_VAR) != "1":
        print(f"worker: set {RELEASE_VAR}={args.release} and {ENV_VAR}=1", file=sys.stderr)
        return 2
    load_fpdev()
    started = time.perf_counter()
    result = sweep(
        args.release,
        "fpdev",
        ENV_VAR,
        pattern=args.ops,
        max_samples=args.samples,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    summary = result.summary()
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_text(args.out, json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
