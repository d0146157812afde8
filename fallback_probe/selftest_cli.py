"""``fallback-probe selftest``: the OpInfo sweep against the user's own device.

The selftest runs the OpInfo sweep (fallback_probe/selftest.py) on the user's own device: each
call predicted for the installed release (or ``--torch-version``) and observed live, so a Mac
user can check the predictor against their machine and file what disagrees.
Exit codes: 0 all agree, 1 disagreements found, 2 usage / no device / no expecttest.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
from typing import Any

from fallback_probe._version import __version__
from fallback_probe.atomic import write_text
from fallback_probe.errors import ExitCode, ProbeError
from fallback_probe.selftest import CallResult, SweepResult, require_opinfo, sweep

_CHILD_MARK = "FALLBACK_PROBE_SELFTEST_CHILD"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fallback-probe selftest",
        description="Check predicted verdicts against this machine: every OpInfo of torch's "
        "test database predicted for a release and run live on the device.",
    )
    p.add_argument("--torch-version", help="release to predict for (default: the installed one)")
    p.add_argument("--oplist", help="predict from this operator-list file instead")
    p.add_argument("--device-type", default="mps", help="device to run live on (default mps)")
    p.add_argument(
        "--fallback-env",
        help="variable that turns the device's CPU fallback on "
        "(default PYTORCH_ENABLE_MPS_FALLBACK for mps)",
    )
    p.add_argument("--ops", default="*", help="only OpInfos whose name matches this glob")
    p.add_argument("--samples", type=int, default=3, help="samples per OpInfo (default 3; 0: all)")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first (the package of an out-of-tree backend)",
    )
    p.add_argument("--json", dest="json_path", help="also write the results here as JSON")
    return p


def selftest_main(argv: list[str]) -> int:
    from fallback_probe.api import fallback_env_for

    args = _parser().parse_args(argv)
    require_opinfo()
    env_var = args.fallback_env or fallback_env_for(args.device_type)
    if os.environ.get(env_var) != "1":
        # The backend reads the variable once, when it loads: run again with it set.
        env = {**os.environ, env_var: "1", _CHILD_MARK: "1"}
        cmd = [sys.executable, "-m", "fallback_probe", "selftest", *argv]
        return subprocess.run(cmd, env=env, check=False).returncode
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ProbeError(f"cannot import {module!r}: {exc}", ExitCode.USAGE) from None
    _check_device(args.device_type)
    release, oplist = _target(args)
    result = sweep(
        release,
        args.device_type,
        env_var,
        pattern=args.ops,
        max_samples=args.samples or None,
        oplist=oplist,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if result.opinfos == 0:
        raise ProbeError(f"no OpInfo matches --ops {args.ops!r}", ExitCode.USAGE)
    sys.stdout.write(render(result, args))
    if args.json_path:
        write_text(args.json_path, json.dumps({"releases": {release: result.summary()}}) + "\n")
    return ExitCode.FOUND if result.disagreements else ExitCode.OK


def render(result: SweepResult, args: argparse.Namespace) -> str:
    """The agreement line, then each disagreement as an issue ready to file."""
    import torch

    s = result.summary()
    lines = [
        f"selftest: torch {torch.__version__}, predicted for {result.release}, observed on "
        f"{args.device_type}: {s['opinfos']} OpInfos, {s['calls']} calls, {s['agree']} agree, "
        f"{len(s['disagree'])} disagree, {len(s['errors'])} not compared (the call failed)"
    ]
    for n, call in enumerate(result.disagreements, 1):
        lines += ["", *_issue(n, call, result.release, args)]
    return "\n".join(lines) + "\n"


def _issue(n: int, call: CallResult, release: str, args: argparse.Namespace) -> list[str]:
    import torch

    def verdicts(v: dict[str, str]) -> str:
        return ", ".join(f"`{op}` {verdict}" for op, verdict in sorted(v.items())) or "nothing"

    repro = f"fallback-probe selftest --ops '{call.opinfo}' --torch-version {release}"
    if args.device_type != "mps":
        repro += f" --device-type {args.device_type}"
    return [
        f"## Disagreement {n}: OpInfo `{call.opinfo}`, sample {call.sample} ({call.phase})",
        f"- predicted for torch {release}: {verdicts(call.predicted)} falls back / is unsupported",
        f"- observed on {args.device_type}: {verdicts(call.observed)}",
        f"- input: {call.description or '-'}",
        f"- environment: torch {torch.__version__}, fallback-probe {__version__}, "
        f"{platform.platform()}, macOS {platform.mac_ver()[0] or 'n/a'}",
        f"- reproduce: `{repro}`",
    ]


def _check_device(device_type: str) -> None:
    import torch

    try:
        torch.empty(1, device=device_type)
    except Exception as exc:  # any failure: there is no usable device of that type
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProbeError(f"no {device_type} device here: {first}", ExitCode.USAGE) from None


def _target(args: argparse.Namespace) -> tuple[str, Any]:
    import torch

    from fallback_probe import oplists

    if args.oplist:
        oplist = oplists.load_file(args.oplist)
        return oplist.torch_version, oplist
    return oplists.resolve_release(args.torch_version or torch.__version__), None
