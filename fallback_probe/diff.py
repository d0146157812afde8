"""What changed between two saved reports: new problems fail a gate, resolved ones are news."""

from __future__ import annotations

import json
from dataclasses import dataclass

from fallback_probe.records import Verdict
from fallback_probe.render import Format
from fallback_probe.render.cells import cell, table
from fallback_probe.report import Report, problem_ops


@dataclass(frozen=True)
class Diff:
    new: tuple[tuple[str, Verdict], ...]
    resolved: tuple[tuple[str, Verdict], ...]
    notes: tuple[str, ...]


def diff_reports(old: Report, new: Report) -> Diff:
    before, after = problem_ops(old), problem_ops(new)
    notes = []
    if (old.target, old.mode) != (new.target, new.mode):
        notes.append(
            f"The reports differ in target or mode: {old.mode.value} torch {old.target.torch} "
            f"macOS {old.target.macos} vs {new.mode.value} torch {new.target.torch} macOS "
            f"{new.target.macos}."
        )
    for r in (old, new):
        if not r.complete:
            notes.append(
                f"A report is incomplete ({r.error}): ops after the stop are not compared."
            )
    added = tuple(sorted((op, v) for op, v in after.items() if before.get(op) != v))
    gone = tuple(sorted((op, v) for op, v in before.items() if op not in after))
    return Diff(added, gone, tuple(notes))


def render_diff(d: Diff, fmt: Format) -> str:
    if fmt is Format.JSON:
        return (
            json.dumps(
                {
                    "new": [{"op": op, "verdict": v.value} for op, v in d.new],
                    "resolved": [{"op": op, "verdict": v.value} for op, v in d.resolved],
                    "notes": list(d.notes),
                },
                indent=2,
            )
            + "\n"
        )
    if fmt is Format.MARKDOWN:
        out = ["# fallback-probe diff", ""]
        out += [f"> {cell(n)}" for n in d.notes]
        for title, items in (("New", d.new), ("Resolved", d.resolved)):
            out += ["", f"## {title} ({len(items)})", ""]
            if items:
                out.append(
                    table([[cell(op, code=True), v.value] for op, v in items], ["op", "verdict"])
                )
            else:
                out.append("None.")
        return "\n".join(out) + "\n"
    raise AssertionError(f"unhandled format {fmt}")
