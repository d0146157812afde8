"""``python -m tests.differential --releases 2.0.1,2.8.0,2.15.0 --json out.json [--markdown out.md]``

Exit 0 when every disagreement is explained in tests/differential/explained.json, 1 otherwise,
2 on bad usage. ``--releases all`` runs the 16 listed releases.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from fallback_probe import oplists
from fallback_probe.atomic import write_text
from tests.differential import check, load_explained, markdown, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.differential")
    p.add_argument("--releases", default="2.0.1,2.8.0,2.15.0", help="comma-separated, or all")
    p.add_argument("--json", dest="json_path", help="write the summary JSON here")
    p.add_argument("--markdown", help="write the markdown table here")
    p.add_argument("--ops", default="*", help="only OpInfos matching this glob")
    p.add_argument("--samples", type=int, default=1, help="samples per OpInfo (0: all)")
    p.add_argument("--jobs", type=int, default=2, help="releases swept at once")
    args = p.parse_args(argv)
    if args.releases == "all":
        releases = list(oplists.releases())
    else:
        try:
            releases = [oplists.resolve_release(v) for v in args.releases.split(",") if v]
        except oplists.UnknownRelease as exc:
            print(f"differential: {exc}", file=sys.stderr)
            return 2
    started = time.perf_counter()
    result = run(
        releases,
        ops=args.ops,
        samples=args.samples or None,
        jobs=args.jobs,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["samples_per_opinfo"] = args.samples or "all"
    explained = load_explained()
    if args.json_path:
        write_text(args.json_path, json.dumps(result, indent=1) + "\n")
    table = markdown(result, explained)
    if args.markdown:
        write_text(args.markdown, table)
    else:
        sys.stdout.write(table)
    problems = check(result, explained)
    for line in problems:
        print(line, file=sys.stderr)
    print(
        f"differential: {len(releases)} releases in {result['seconds']} s, "
        f"{len(problems)} problems",
        file=sys.stderr,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
