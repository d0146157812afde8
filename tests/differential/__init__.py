"""The differential check: predict mode against fpdev-as-V, release by release.

For each release V a child process loads fpdev as V (tests/fpdev/release.py) and runs the
sweep of ``fallback_probe.selftest``: every OpInfo sample predicted for V on the emulated mps
device and observed live on fpdev. Disagreements are matched against ``explained.json``
(mirrored in docs/accuracy.md); anything else is a bug in the predictor or in fpdev-as-V.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.fpdev import ENV_VAR, REPO_ROOT
from tests.fpdev.release import RELEASE_VAR

EXPLAINED = Path(__file__).with_name("explained.json")
WORKER_TIMEOUT = 3000.0


def run_release(
    release: str,
    ops: str = "*",
    samples: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The sweep summary of one release, from a child where fpdev is that release."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, RELEASE_VAR)}
    env.update({ENV_VAR: "1", RELEASE_VAR: release})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory(prefix="differential-") as tmp:
        out = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "tests.differential.worker", release, str(out), "--ops", ops]
        if samples is not None:
            cmd += ["--samples", str(samples)]
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        tail: list[str] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("USDT:"):  # the profiler's start/stop chatter
                continue
            tail = [*tail[-20:], line.rstrip()]
            if log is not None and line.startswith(f"[{release}]"):
                log(line.rstrip())
        code = proc.wait(timeout=WORKER_TIMEOUT)
        if code != 0 or not out.exists():
            raise RuntimeError(f"sweep of {release} failed (exit {code}):\n" + "\n".join(tail))
        return json.loads(out.read_text(encoding="utf-8"))


def run(
    releases: Iterable[str],
    ops: str = "*",
    samples: int | None = None,
    jobs: int = 2,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``{"releases": {V: summary}}`` for every release, ``jobs`` children at a time."""
    releases = list(releases)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {v: pool.submit(run_release, v, ops, samples, log) for v in releases}
        return {"releases": {v: futures[v].result() for v in releases}}


# -- explained disagreements -------------------------------------------------------------------


def load_explained(path: Path = EXPLAINED) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))["explained"]


def differing_ops(item: dict[str, Any]) -> set[str]:
    """Ops whose verdict differs between predicted and observed (missing on one side too)."""
    pred, obs = item["predicted"], item["observed"]
    return {op for op in set(pred) | set(obs) if pred.get(op) != obs.get(op)}


def explain(item: dict[str, Any], explained: list[dict[str, Any]]) -> str | None:
    """The id of the explanation that covers every differing op of ``item``, if one does.

    An entry with ``opinfos`` (globs) explains only calls of those OpInfos."""
    ops = differing_ops(item)
    for entry in explained:
        globs = entry.get("opinfos")
        if globs and not any(fnmatch.fnmatchcase(item["opinfo"], g) for g in globs):
            continue
        if ops and all(_covers(entry, op, item) for op in ops):
            return entry["id"]
    return None


def _covers(entry: dict[str, Any], op: str, item: dict[str, Any]) -> bool:
    side = entry.get("side", "either")  # "observed": only live sees it; "predicted": only predict
    if op not in entry["ops"]:
        return False
    if side == "observed":
        return op in item["observed"] and op not in item["predicted"]
    if side == "predicted":
        return op in item["predicted"] and op not in item["observed"]
    return True


def check(result: dict[str, Any], explained: list[dict[str, Any]]) -> list[str]:
    """Problems: unexplained disagreements, and explanations seen more often than listed."""
    problems = []
    for release, summary in result["releases"].items():
        seen: dict[str, int] = {}
        for item in summary["disagree"]:
            why = explain(item, explained)
            if why is None:
                problems.append(f"{release}: unexplained {_line(item)}")
            else:
                seen[why] = seen.get(why, 0) + 1
        for entry in explained:
            limit = entry.get("counts", {}).get(release)
            got = seen.get(entry["id"], 0)
            if limit is not None and got > limit:
                problems.append(
                    f"{release}: {entry['id']} seen {got} times, listed at most {limit}"
                )
    return problems


def _line(item: dict[str, Any]) -> str:
    return (
        f"{item['opinfo']} sample {item['sample']} ({item.get('input', '')}): "
        f"predicted {item['predicted']}, observed {item['observed']}"
    )


def markdown(result: dict[str, Any], explained: list[dict[str, Any]] | None = None) -> str:
    """A table per release, then every disagreement with its explanation (or none)."""
    explained = explained if explained is not None else []
    lines = [
        "| release | OpInfos | calls | agree | disagree | not compared |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for release, s in result["releases"].items():
        lines.append(
            f"| {release} | {s['opinfos']} | {s['calls']} | {s['agree']} | "
            f"{len(s['disagree'])} | {len(s.get('errors', []))} |"
        )
    for release, s in result["releases"].items():
        if not s["disagree"]:
            continue
        lines += [
            "",
            f"### {release}",
            "",
            "| OpInfo | sample | predicted | observed | explained |",
        ]
        lines.append("|---|---|---|---|---|")
        for item in s["disagree"]:
            lines.append(
                "| {} | {} | {} | {} | {} |".format(
                    _cell(item["opinfo"]),
                    _cell(item["sample"]),
                    _cell(_verdicts(item["predicted"])),
                    _cell(_verdicts(item["observed"])),
                    _cell(explain(item, explained) or "**no**"),
                )
            )
    return "\n".join(lines) + "\n"


def _verdicts(v: dict[str, str]) -> str:
    return ", ".join(f"{op} {verdict}" for op, verdict in sorted(v.items())) or "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
