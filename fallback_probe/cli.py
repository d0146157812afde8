"""``fallback-probe``: report to stdout (or ``-o``); the script's own output, progress, the
summary line and warnings to stderr, so ``> report.md`` holds the report alone.

Exit codes (docs/cli.md): 0 done, 1 ``--fail-on`` matched, 2 usage or bad target,
3 the model failed (its report is still written, marked incomplete).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from fallback_probe._version import __version__
from fallback_probe.atomic import write_text
from fallback_probe.errors import ExitCode, ProbeError
from fallback_probe.options import add_options
from fallback_probe.progress import Progress
from fallback_probe.records import Verdict
from fallback_probe.render import Format, render
from fallback_probe.report import Outcome, Report

SUBCOMMANDS = ("ops", "oplists", "render", "diff", "selftest")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``fallback-probe: error: …``, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ProbeError(f"{message} (see {self.prog} --help)")


def positive_seconds(text: str) -> float:
    """``--timeout``: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _run_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fallback-probe",
        usage="fallback-probe TARGET [options] [-- script args...]",
        description="Which ops of a PyTorch model fall back from MPS to the CPU. "
        "Other commands: fallback-probe ops | oplists build|verify | render | diff | selftest "
        "(each has --help).",
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
        "--oplist",
        help="predict mode: judge against this operator-list file (e.g. written by "
        "oplists build --from-dispatcher) instead of the shipped lists",
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
        "--timeout",
        type=positive_seconds,
        default=None,
        help="seconds the script may run, counted from its start (not torch's import); "
        "then it is stopped, its report kept (exit 3)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress line on stderr (default: only when stderr is a terminal)",
    )
    p.add_argument("--version", action="version", version=f"fallback-probe {__version__}")
    return p


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=[f.value for f in Format], default=Format.MARKDOWN.value)
    p.add_argument("-o", "--output", help="write the report here (atomically) instead of stdout")


def _warn(text: str) -> None:
    print(f"fallback-probe: warning: {text}", file=sys.stderr)


def _emit(report: Report, args: argparse.Namespace) -> None:
    text = render(report, Format(args.format))
    if args.output:
        write_text(args.output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        md = text if args.format == Format.MARKDOWN.value else render(report, Format.MARKDOWN)
        try:
            with open(summary_path, "a", encoding="utf-8") as fh:
                fh.write(md + "\n")
        except OSError as exc:  # the report is out; a CI setting never changes the outcome
            _warn(f"could not append to GITHUB_STEP_SUMMARY {summary_path}: {exc.strerror or exc}")
    from fallback_probe.render.markdown import headline

    print(headline(report), file=sys.stderr)
    _warn_unjudged(report)


def _warn_unjudged(report: Report) -> None:
    """Say out loud what a clean-looking headline may hide."""
    n = report.summary["not_judged"]
    device = report.target.device
    if report.outcome is Outcome.NOTHING_JUDGED:
        if n:
            _warn(f"none of the ops that reached {device} could be judged ({n} not judged)")
        else:
            _warn(
                f"no op reached the {device} device, so nothing was judged: does the script "
                f"put its model and inputs on '{device}'?"
            )
    elif n:
        ops = ", ".join(sorted({j.op for j in report.not_judged if j.on_device}))
        _warn(f"{n} ops reached {device} but were not judged: {ops}")


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
        "oplist": args.oplist,
    }


def run_target(args: argparse.Namespace) -> int:
    from fallback_probe.api import fallback_env_for
    from fallback_probe.collect import read_collection
    from fallback_probe.supervise import run_child
    from fallback_probe.target import Target
    from fallback_probe.verdicts import make_report

    target = Target.parse(args.target, tuple(args.args))
    oplist = None
    if args.oplist:
        from fallback_probe import oplists

        oplist = oplists.load_file(args.oplist)  # fails before the model runs
    if args.torch_version not in (None, "all"):
        from fallback_probe import oplists

        oplists.resolve_release(args.torch_version)
    if args.torchvision_version:
        from fallback_probe.oplists import torchvision

        chosen = torchvision.document(args.torchvision_version)["torchvision_version"]
        os.environ[torchvision.ENV] = chosen  # read by oplists.load here and in the child
    env = dict(os.environ)
    env[args.fallback_env or fallback_env_for(args.device_type)] = "1"
    progress = Progress(args.progress)
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
        # With the report on stdout, the script's prints go to stderr: still seen, never in it.
        script_stdout = None if args.output else _stderr_fd()
        sys.stdout.flush()
        child = run_child(cmd, env, args.timeout, script_stdout, progress, target.path.name)
        code = child.code
        if code == ExitCode.USAGE and not child.timed_out:
            return ExitCode.USAGE  # the child said why
        lines = trace_path.read_text(encoding="utf-8").splitlines() if trace_path.exists() else []
        if not lines:
            print(
                f"fallback-probe: error: the model's process died before tracing (exit {code})",
                file=sys.stderr,
            )
            return ExitCode.MODEL_FAILED
        col = read_collection(lines)
    if child.timed_out:
        col.complete, col.error = False, f"ran past --timeout {args.timeout:g} s and was stopped"
    elif code not in (ExitCode.OK, ExitCode.MODEL_FAILED):
        col.complete = False
        col.error = col.error or f"the model's process died (exit status {code})"
    if not col.complete and code == ExitCode.OK:
        code = ExitCode.MODEL_FAILED

    def judging(release: str, done: int, total: int) -> None:
        progress.update(f"judging against torch {release} ({done}/{total} releases)", True)

    report = make_report(col, args.torch_version, args.macos, oplist, on_release=judging)
    progress.clear()
    _emit(report, args)
    if code != ExitCode.OK:
        return ExitCode.MODEL_FAILED
    return _fail_on(report, args.fail_on)


def _stderr_fd() -> int:
    """Our stderr's descriptor; 2 when sys.stderr is not a file (captured by a test harness)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return 2


def _fail_on(report: Report, fail_on: list[str]) -> int:
    """Exit 1, and say why in one line, when an op has a ``--fail-on`` verdict."""
    wanted = {Verdict(v) for v in fail_on}
    hits = sorted({r.op for r in report.ops if r.verdict in wanted})
    if not hits:
        return ExitCode.OK
    names = ", ".join(hits[:5]) + (f" +{len(hits) - 5} more" if len(hits) > 5 else "")
    verdicts = " or ".join(sorted(v.value for v in wanted))
    print(
        f"fallback-probe: exit 1: --fail-on {verdicts} matched {len(hits)} ops: {names}",
        file=sys.stderr,
    )
    return ExitCode.FOUND


def render_main(argv: list[str]) -> int:
    p = _Parser(prog="fallback-probe render", description="Re-render a saved JSON report.")
    p.add_argument("report")
    _add_output(p)
    args = p.parse_args(argv)
    _emit(Report.load(args.report), args)
    return ExitCode.OK


def diff_main(argv: list[str]) -> int:
    from fallback_probe.diff import diff_reports, render_diff

    p = _Parser(
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


def _oplists_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fallback-probe oplists",
        usage="fallback-probe oplists {build,verify} [options]",
        description="Operator lists. 'build' generates one from a torch macOS arm64 wheel; "
        "'verify' checks the explicit-fallback table against torch wheels. Each has --help. "
        "An op's status in every release: fallback-probe ops OP.",
    )
    p.add_argument("command", choices=["build", "verify"], help="what to do")
    return p


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        cmd, rest = argv[0], argv[1:]
        if cmd == "ops":
            from fallback_probe.oplists.cli import ops_main

            return ops_main(rest)
        if cmd == "selftest":
            from fallback_probe.selftest_cli import selftest_main

            return selftest_main(rest)
        if cmd == "oplists":
            if rest[:1] == ["build"] and "--from-dispatcher" in rest:
                from fallback_probe.oplists.dispatcher import from_dispatcher_main

                return from_dispatcher_main(rest[1:])
            if rest[:1] not in (["build"], ["verify"]):
                _oplists_parser().parse_args(rest)  # --help, or a one-line usage error
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
