"""``fallback-probe oplists build --from-dispatcher``: a list for a torch no list ships for.

On a Mac with a nightly, the live dispatch table knows which ops have an MPS kernel; kernels
registered from MPSFallback.mm are the explicit CPU fallbacks. Predict mode reads the file
with ``--oplist PATH``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fallback_probe.atomic import write_text
from fallback_probe.errors import ExitCode, ProbeError


def from_dispatcher_main(argv: list[str]) -> int:
    """Write the installed release's list from the live dispatch table (a nightly on a Mac)."""
    p = argparse.ArgumentParser(
        prog="fallback-probe oplists build --from-dispatcher",
        description="Write the installed torch's operator list from its live dispatch table.",
    )
    p.add_argument("--from-dispatcher", action="store_true", required=True)
    p.add_argument("--dispatch-key", default="MPS", help="backend key (default MPS)")
    p.add_argument(
        "--explicit-from",
        default="MPSFallback.mm",
        help="kernels registered from this source file are explicit CPU fallbacks "
        "(default MPSFallback.mm)",
    )
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    p.add_argument("-o", "--output", help="file to write (default torch-VERSION.json here)")
    args = p.parse_args(argv)
    for module in args.imports:
        importlib.import_module(module)
    import torch

    from fallback_probe import oplists
    from fallback_probe.oplists.build import render as render_list

    if not oplists._is_key(args.dispatch_key):
        raise ProbeError(f"unknown dispatch key {args.dispatch_key!r}", ExitCode.USAGE)
    explicit = explicit_fallbacks(args.dispatch_key, args.explicit_from)
    ol = oplists.from_dispatcher(
        args.dispatch_key, explicit, label="oplists build --from-dispatcher"
    )
    version = torch.__version__.split("+")[0]
    text = render_list(version, ol.provenance, {e.op: e for e in ol.entries()}, {})
    out = args.output or f"torch-{version}.json"
    write_text(out, text)
    counts = ol.counts()
    print(f"wrote {out}: {len(ol)} ops, {counts}", file=sys.stderr)
    return ExitCode.OK


def explicit_fallbacks(dispatch_key: str, source: str) -> list[str]:
    """Ops whose ``dispatch_key`` kernel was registered from ``source`` (the fallback file),
    except kernels that only raise (``_slow_conv2d_forward``)."""
    import torch

    found = []
    for op in torch._C._dispatch_get_all_op_names():
        if not op.startswith("aten::") or not torch._C._dispatch_has_kernel_for_dispatch_key(
            op, dispatch_key
        ):
            continue
        for line in torch._C._dispatch_dump(op).splitlines():
            if line.startswith(f"{dispatch_key}:") and source in line:
                found.append(op)
    return [op for op in found if op != "aten::_slow_conv2d_forward"]
