"""``fallback-probe``: report to stdout (or ``-o``), a one-line summary to stderr.

Exit codes (docs/cli.md): 0 done, 1 ``--fail-on`` matched, 2 usage or bad target,
3 the model failed (its report is still written, marked incomplete).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fallback_probe._version import __version__
from fallback_probe.atomic import write_text
from fallback_probe.errors import ExitCode, ProbeError
from fallback_probe.options import add_options
from fallback_probe.records import Verdict
from fallback_probe.render import Format, render
from fallback_probe.report import Report

SUBCOMMANDS = ("ops", "oplists", "render", "diff")
_GRACE_SECONDS = 10


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fallback-probe",
        usage="fallback-probe TARGET [options] [-- script args...]",
        description="Which ops of a PyTorch model fall back from MPS to the CPU. "
        "Other commands: fallback-probe ops | oplists build|verify | render | diff (each has --help).",
    )
    p.add_argument("target", help="script.py (run as __main__) or file.py:function")
    add_options(p.add_argument)
    p.add_argument(
        "--no-emulate",
        dest="emulate",
        action="store_false",
        help="predict mode: judge every op as if on MPS instead of emulating an mps device",
    )
    p.add_argument(
        "--stop-at-refusal",
        action="store_true",
        help="predict mode: stop at the first thing a Mac refuses (float64, mixed devices, "
        ".numpy() of an mps tensor), raising its error as a Mac does, instead of listing "
        "every refusal as unsupported and running on",
    )
    p.add_argument(
        "--torchvision-version",
        help="predict mode: judge torchvision:: ops against this torchvision release "
        "(default: the one paired with each judged torch release)",
    )
    p.add_argument(
        "--train",
        action="store_true",
        help="file.py:function targets: also run backward and one optimizer step",
    )
    p.add_argument(
        "--device-type",
        default="mps",
        help="live mode: the PyTorch device to probe (default mps; any backend with a boxed CPU fallback)",
    )
    p.add_argument(
        "--fallback-env",
        default=None,
        help="live mode: the variable that turns the backend's CPU fallback on "
        "(default PYTORCH_ENABLE_MPS_FALLBACK for mps)",
    )
    _add_output(p)
    p.add_argument(
        "--fail-on",
        action="append",
        choices=["fallback", "unsupported"],
        default=[],
        help="exit 1 if any op gets this verdict (repeatable)",
    )
    p.add_argument(
        "--timeout", type=float, default=None, help="seconds before the model is stopped (exit 3)"
    )
    p.add_argument("--version", action="version", version=f"fallback-probe {__version__}")
    return p


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=[f.value for f in Format], default=Format.MARKDOWN.value)
    p.add_argument("-o", "--output", help="write the report here (atomically) instead of stdout")


def _emit(report: Report, args: argparse.Namespace) -> None:
    text = render(report, Format(args.format))
    if args.output:
        write_text(args.output, text)
    else:
        sys.stdout.write(text)
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        md = text if args.format == Format.MARKDOWN.value else render(report, Format.MARKDOWN)
        with open(summary_path, "a", encoding="utf-8") as fh:
            fh.write(md + "\n")
    from fallback_probe.render.markdown import headline

    print(headline(report), file=sys.stderr)


def _probe_spec(args: argparse.Namespace) -> dict[str, object]:
    return {
        "mode": args.mode,
        "torch_version": args.torch_version,
        "macos": args.macos,
        "device": args.device,
        "emulate": args.emulate,
        "stop_at_refusal": args.stop_at_refusal,
        "device_type": args.device_type,
        "fallback_env": args.fallback_env,
    }


def run_target(args: argparse.Namespace) -> int:
    from fallback_probe.api import fallback_env_for
    from fallback_probe.collect import read_collection
    from fallback_probe.target import Target
    from fallback_probe.verdicts import make_report

    target = Target.parse(args.target, tuple(args.args))
    if args.torch_version not in (None, "all"):
        from fallback_probe import oplists

        oplists.resolve_release(args.torch_version)
    if args.torchvision_version:
        from fallback_probe.oplists import torchvision

        chosen = torchvision.document(args.torchvision_version)["torchvision_version"]
        os.environ[torchvision.ENV] = chosen  # read by oplists.load here and in the child
    env = dict(os.environ)
    env[args.fallback_env or fallback_env_for(args.device_type)] = "1"
    with tempfile.TemporaryDirectory(prefix="fallback-probe-") as tmp:
        trace_path = Path(tmp) / "trace.jsonl"
        spec_path = Path(tmp) / "spec.json"
        spec = {
            "path": str(target.path),
            "function": target.function,
            "args": list(target.args),
            "train": args.train,
            "probe": _probe_spec(args),
            "trace_path": str(trace_path),
        }
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        cmd = [sys.executable, "-m", "fallback_probe.child", str(spec_path)]
        timed_out = False
        proc = subprocess.Popen(cmd, env=env)
        try:
            code = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the child stops the model and writes its whole trace.
            proc.terminate()
            try:
                proc.wait(timeout=_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code, timed_out = ExitCode.MODEL_FAILED, True
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
        if code == ExitCode.USAGE:
            return ExitCode.USAGE  # the child said why
        lines = trace_path.read_text(encoding="utf-8").splitlines() if trace_path.exists() else []
        if not lines:
            print(
                f"fallback-probe: error: the model's process died before tracing (exit {code})",
                file=sys.stderr,
            )
            return ExitCode.MODEL_FAILED
        col = read_collection(lines)
    if timed_out:
        col.complete, col.error = False, f"ran past --timeout {args.timeout:g} s and was stopped"
    elif code not in (ExitCode.OK, ExitCode.MODEL_FAILED):
        col.complete = False
        col.error = col.error or f"the model's process died (exit status {code})"
    if not col.complete and code == ExitCode.OK:
        code = ExitCode.MODEL_FAILED
    report = make_report(col, args.torch_version, args.macos)
    _emit(report, args)
    if code != ExitCode.OK:
        return ExitCode.MODEL_FAILED
    wanted = {Verdict(v) for v in args.fail_on}
    if wanted and any(r.verdict in wanted for r in report.ops):
        return ExitCode.FOUND
    return ExitCode.OK


def render_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="fallback-probe render", description="Re-render a saved JSON report."
    )
    p.add_argument("report")
    _add_output(p)
    args = p.parse_args(argv)
    _emit(Report.load(args.report), args)
    return ExitCode.OK


def diff_main(argv: list[str]) -> int:
    from fallback_probe.diff import diff_reports, render_diff

    p = argparse.ArgumentParser(
        prog="fallback-probe diff",
        description="New and resolved fallbacks between two saved reports; exit 1 if any is new.",
    )
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--format", choices=[f.value for f in Format], default=Format.MARKDOWN.value)
    args = p.parse_args(argv)
    d = diff_reports(Report.load(args.old), Report.load(args.new))
    sys.stdout.write(render_diff(d, Format(args.format)))
    return ExitCode.FOUND if d.new else ExitCode.OK


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        cmd, rest = argv[0], argv[1:]
        if cmd == "ops":
            from fallback_probe.oplists.cli import ops_main

            return ops_main(rest)
        if cmd == "oplists":
            from fallback_probe.oplists.cli import oplists_main

            return oplists_main(rest)
        if cmd == "render":
            return render_main(rest)
        return diff_main(rest)
    # Everything after the first "--" belongs to the script, untouched by our parser.
    script_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1 :]
    args = _run_parser().parse_args(argv)
    args.args = script_args
    return run_target(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return int(_dispatch(argv))
    except ProbeError as exc:
        print(f"fallback-probe: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except SystemExit as exc:  # argparse: --help is 0, bad usage is 2
        return int(exc.code) if isinstance(exc.code, int) else ExitCode.USAGE
    except KeyboardInterrupt:
        print("fallback-probe: interrupted", file=sys.stderr)
        return 130
