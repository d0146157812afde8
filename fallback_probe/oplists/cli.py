"""``fallback-probe ops`` and ``fallback-probe oplists build|verify``.

The main CLI hands over the words after ``ops`` / ``oplists build``; each function parses
them itself, prints results to stdout and one-line errors to stderr, and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from tabulate import tabulate

from fallback_probe.errors import ExitCode, ProbeError
from fallback_probe.oplists import (
    OpEntry,
    OpList,
    load,
    near_names,
    nearest_release,
    normalize_op,
    releases,
)

PROG_OPS = "fallback-probe ops"
PROG_BUILD = "fallback-probe oplists build"
PROG_VERIFY = "fallback-probe oplists verify"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so errors keep our one-line format."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ProbeError(f"{self.prog}: {message}")


def _fail(exc: ProbeError) -> int:
    print(f"fallback-probe: error: {exc}", file=sys.stderr)
    return int(exc.exit_code)


def _run(
    parser: argparse.ArgumentParser, argv: Sequence[str], body: Callable[[argparse.Namespace], int]
) -> int:
    try:
        args = parser.parse_args(list(argv))
        return body(args)
    except ProbeError as exc:
        return _fail(exc)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except BrokenPipeError:  # "| head": stop quietly, as other CLI tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return int(ExitCode.OK)


# --- ops ---------------------------------------------------------------------------------


def _ops_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG_OPS,
        description="Show how MPS handles ATen ops: every listed release, or one release.",
    )
    parser.add_argument("ops", nargs="*", metavar="OP", help="e.g. aten::col2im, aten::add.Tensor")
    parser.add_argument(
        "--torch-version",
        help="one release (patch/dev versions map to their minor's listed release)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def ops_main(argv: list[str]) -> int:
    """Entry point for ``fallback-probe ops``."""
    return _run(_ops_parser(), argv, _ops)


def _ops(args: argparse.Namespace) -> int:
    names = [normalize_op(op) for op in args.ops]
    if args.torch_version is None and names and all(_is_torchvision(op) for op in names):
        return _torchvision_history(names, args.format)
    if args.torch_version is None and not names:
        args.torch_version = nearest_release(_installed_torch())
    if args.torch_version is not None:
        return _one_release(load(args.torch_version), names, args.format)
    return _history(names, args.format)


def _installed_torch() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return releases()[-1] if releases() else "0.0"


def _one_release(oplist: OpList, names: list[str], fmt: str) -> int:
    wanted = names or list(oplist.ops())
    found = {op: oplist.get(op) for op in wanted}
    unknown = [op for op, entry in found.items() if entry is None]
    known = {op: entry for op, entry in found.items() if entry is not None}
    if fmt == "json":
        doc = {
            "torch_version": oplist.torch_version,
            "torchvision": oplist.provenance.get("torchvision"),
            "ops": {op: entry.status.value for op, entry in known.items()},
        }
        print(json.dumps(doc, indent=2))
    elif names:
        for op, entry in known.items():
            print(f"{op}: {entry.status.value}{_notes(entry)} ({oplist.torch_version})")
    else:
        rows = [(op, entry.status.value, _notes(entry).strip()) for op, entry in known.items()]
        print(f"torch {oplist.torch_version}: {len(rows)} ops")
        print(tabulate(rows, headers=("op", "status", "notes"), tablefmt="plain"))
    return _report_unknown(unknown, lambda op: oplist.near(op), f"torch {oplist.torch_version}")


def _history(names: list[str], fmt: str) -> int:
    lists = [load(release) for release in releases()]
    every = sorted({op for oplist in lists for op in oplist.ops()})
    unknown = [op for op in names if not any(op in oplist for oplist in lists)]
    known = [op for op in names if op not in unknown]
    if fmt == "json":
        doc = {
            "releases": [oplist.torch_version for oplist in lists],
            "ops": {
                op: {
                    oplist.torch_version: (e.status.value if (e := oplist.get(op)) else None)
                    for oplist in lists
                }
                for op in known
            },
        }
        print(json.dumps(doc, indent=2))
    else:
        for op in known:
            print(f"{op}: {history_line([oplist.get(op) for oplist in lists], lists)}")
    return _report_unknown(unknown, lambda op: near_names(op, every), "any listed release")


def _is_torchvision(op: str) -> bool:
    return op.startswith("torchvision::")


def _torchvision_history(names: list[str], fmt: str) -> int:
    """Each op's status across the listed torchvision releases (with the torch each pairs)."""
    from fallback_probe.oplists import torchvision as tv

    lists = [
        OpList(
            release,
            {op: OpEntry.from_json(op, raw) for op, raw in tv.document(release)["ops"].items()},
        )
        for release in tv.releases()
    ]
    every = sorted({op for oplist in lists for op in oplist.ops()})
    unknown = [op for op in names if op not in every]
    known = [op for op in names if op not in unknown]
    if fmt == "json":
        doc = {
            "torchvision_releases": [ol.torch_version for ol in lists],
            "pairs": dict(tv.PAIRS),
            "ops": {
                op: {
                    ol.torch_version: (e.status.value if (e := ol.get(op)) else None)
                    for ol in lists
                }
                for op in known
            },
        }
        print(json.dumps(doc, indent=2))
    else:
        for op in known:
            line = history_line([ol.get(op) for ol in lists], lists)
            print(f"{op}: {line} (torchvision releases)")
    return _report_unknown(unknown, lambda op: near_names(op, every), "any listed torchvision")


def _report_unknown(unknown: list[str], suggest: Callable[[str], list[str]], where: str) -> int:
    for op in unknown:
        near = suggest(op)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        print(f"fallback-probe: error: unknown op {op!r} in {where}{hint}", file=sys.stderr)
    return int(ExitCode.USAGE) if unknown else int(ExitCode.OK)


def _notes(entry: OpEntry) -> str:
    notes = []
    if entry.delegate:
        notes.append(f"delegate {entry.delegate}")
    if entry.error_kernel:
        notes.append("error kernel: raises")
    if entry.sparse_keys:
        notes.append("+" + "+".join(entry.sparse_keys))
    return f" ({'; '.join(notes)})" if notes else ""


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def history_line(entries: Sequence[OpEntry | None], lists: Sequence[OpList]) -> str:
    """``explicit_fallback 2.0–2.7, native since 2.8`` / ``missing in every release``."""
    labels = [e.status.value if e is not None else "absent" for e in entries]
    runs: list[tuple[str, int, int]] = []
    for index, label in enumerate(labels):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], index)
        else:
            runs.append((label, index, index))
    if len(runs) == 1:
        text = f"{runs[0][0]} in every release"
    else:
        parts = []
        for label, first, last in runs:
            start, end = _minor(lists[first].torch_version), _minor(lists[last].torch_version)
            if last == len(labels) - 1 and label != "absent":
                parts.append(f"{label} since {start}")
            elif first == last:
                parts.append(f"{label} {start}")
            else:
                parts.append(f"{label} {start}\u2013{end}")
        text = ", ".join(parts)
    latest = next((e for e in reversed(entries) if e is not None), None)
    return text + (_notes(latest) if latest is not None else "")


# --- oplists build -----------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG_BUILD,
        description="Generate operator_lists/torch-X.Y.Z.json from the release's macOS wheel.",
    )
    parser.add_argument("--torch-version", help="X.Y.Z; downloads the wheel from PyPI")
    parser.add_argument("--wheel", help="a local torch macOS arm64 wheel instead of downloading")
    parser.add_argument(
        "--torchvision-wheel",
        nargs="+",
        metavar="WHEEL",
        help="local torchvision macOS arm64 wheels: write operator_lists/torchvision-X.Y.Z.json",
    )
    parser.add_argument("--out-dir", help="default: the package's operator_lists folder")
    parser.add_argument("--download-dir", help="keep the downloaded wheel here")
    return parser


def build_main(argv: list[str]) -> int:
    """Entry point for ``fallback-probe oplists build``."""
    return _run(_build_parser(), argv, _build)


def _build(args: argparse.Namespace) -> int:
    from fallback_probe.oplists import build

    out_dir = args.out_dir or build.default_out_dir()
    if args.torchvision_wheel:
        from fallback_probe.oplists import torchvision

        for wheel in args.torchvision_wheel:
            path, text = torchvision.build_from_wheel(wheel, out_dir)
            _print_counts(path, text)
        if not args.wheel and not args.torch_version:
            return int(ExitCode.OK)
    if not args.wheel and not args.torch_version:
        raise ProbeError(f"{PROG_BUILD}: give --torch-version X.Y.Z or --wheel PATH")
    if args.wheel:
        path, text = build.build_from_wheel(args.wheel, out_dir, args.torch_version)
    else:
        path, text = build.build_release(args.torch_version, out_dir, args.download_dir)
    _print_counts(path, text)
    return int(ExitCode.OK)


def _print_counts(path: object, text: str) -> None:
    counts = json.loads(text)["counts"]
    summary = ", ".join(f"{status} {count}" for status, count in counts.items())
    print(f"wrote {path}: {sum(counts.values())} ops ({summary})")


# --- oplists verify ----------------------------------------------------------------------


def _verify_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG_VERIFY,
        description=(
            "Check fallback_probe/oplists/explicit_fallbacks.json against torch wheels: the "
            "MPS registrations compiled into torch/lib/libtorch_cpu.dylib and the Python "
            "files' Library.impl(..., 'MPS') calls. Exit 1 on any disagreement."
        ),
    )
    parser.add_argument(
        "--wheel", nargs="+", required=True, metavar="WHEEL", help="torch macOS arm64 wheels"
    )
    parser.add_argument("--table", help="a table file to check instead of the shipped one")
    return parser


def verify_main(argv: list[str]) -> int:
    """Entry point for ``fallback-probe oplists verify``."""
    return _run(_verify_parser(), argv, _verify)


def _verify(args: argparse.Namespace) -> int:
    from fallback_probe.oplists import verify

    tables = None
    if args.table:
        try:
            with open(args.table, encoding="utf-8") as fh:
                tables = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ProbeError(f"{PROG_VERIFY}: cannot read table {args.table}: {exc}") from exc
    failed = False
    for wheel in args.wheel:
        verdict = verify.verify_wheel(wheel, tables)
        print(verdict.summary())
        for problem in verdict.problems:
            print(f"  [{verdict.minor}] {problem}")
        failed = failed or bool(verdict.problems)
    return int(ExitCode.FOUND if failed else ExitCode.OK)


def oplists_main(argv: list[str]) -> int:
    """``fallback-probe oplists build|verify ...``."""
    commands = {"build": build_main, "verify": verify_main}
    if not argv or argv[0] not in commands:
        return _fail(ProbeError("usage: fallback-probe oplists {build,verify} ... (see --help)"))
    return commands[argv[0]](argv[1:])
