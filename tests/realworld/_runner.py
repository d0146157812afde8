"""Run one user script under the probe in a fresh process and save what the tests check.

``python _runner.py SCRIPT OUT.json``: the script runs unchanged as ``__main__`` inside
``fallback_probe.probe(mode="predict", torch_version="all")`` (emulated mps), its own output
going to this process's stdout as usual. One trace is then judged for each release in
``RELEASES``; OUT.json holds those reports, the ``all`` report and the script's error, if any.

A fresh process per run, because libraries cache what they learn about the device
(transformers' ``is_torch_mps_available`` is an ``lru_cache``): a plain run and a probed run
in one process would not run the same code.
"""

from __future__ import annotations

import json
import runpy
import sys
import traceback
from pathlib import Path

RELEASES = ("2.0.1", "2.8.0", "2.15.0")  # the oldest, a middle and the newest listed


def main(script: str, out: str) -> int:
    import fallback_probe
    from fallback_probe.verdicts import make_report

    error = None
    path = Path(script).resolve()
    sys.argv = [str(path)]
    sys.path.insert(0, str(path.parent))
    try:
        with fallback_probe.probe(mode="predict", torch_version="all") as p:
            runpy.run_path(str(path), run_name="__main__")
    except BaseException as exc:  # the report is kept either way; the tests read the error
        error = "".join(traceback.format_exception(exc))
    sys.stdout.flush()
    assert p.collection is not None
    result = {
        "error": error,
        "all": p.report.to_dict(),
        "releases": {r: make_report(p.collection, r).to_dict() for r in RELEASES},
    }
    Path(out).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
