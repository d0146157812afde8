"""What changed between two saved reports: new problems fail a gate, resolved ones are news."""

from __future__ import annotations

import json
from dataclasses import dataclass

from fallback_probe.records import Verdict
from fallback_probe.render import Format
from fallback_probe.render.cells import cell, cell_list, table
from fallback_probe.report import OpRow, Report, problem_ops


@dataclass(frozen=True)
class Change:
    """One new or resolved problem op, and where it is (from the report that has it)."""

    op: str
    verdict: Verdict
    modules: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    called_as: tuple[str, ...] = ()


@dataclass(frozen=True)
class Diff:
    new: tuple[Change, ...]
    resolved: tuple[Change, ...]
    notes: tuple[str, ...]


_WHERE = ("modules", "sources", "called_as")


def _change(report: Report, op: str, verdict: Verdict) -> Change:
    rows: list[OpRow] = [r for r in report.ops if r.op == op and r.verdict is verdict]
    merged = {k: dict.fromkeys(x for r in rows for x in getattr(r, k)) for k in _WHERE}
    return Change(op, verdict, *(tuple(merged[k]) for k in _WHERE))


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
    added = tuple(_change(new, op, v) for op, v in sorted(after.items()) if before.get(op) != v)
    gone = tuple(_change(old, op, v) for op, v in sorted(before.items()) if op not in after)
    return Diff(added, gone, tuple(notes))


def render_diff(d: Diff, fmt: Format) -> str:
    if fmt is Format.JSON:
        return (
            json.dumps(
                {
                    "new": [_change_dict(c) for c in d.new],
                    "resolved": [_change_dict(c) for c in d.resolved],
                    "notes": list(d.notes),
                },
                indent=2,
            )
            + "\n"
        )
    if fmt is Format.MARKDOWN:
        out = ["# fallback-probe diff"]
        if d.notes:
            out += ["", *(f"> {cell(n)}" for n in d.notes)]
        for title, items in (("New", d.new), ("Resolved", d.resolved)):
            out += ["", f"## {title} ({len(items)})", ""]
            if items:
                body = [
                    [
                        cell(c.op, code=True),
                        cell_list(c.called_as),
                        c.verdict.value,
                        cell_list(c.modules),
                        cell_list(c.sources),
                    ]
                    for c in items
                ]
                out.append(table(body, ["op", "called as", "verdict", "module", "source"]))
            else:
                out.append("None.")
        return "\n".join(out) + "\n"
    raise AssertionError(f"unhandled format {fmt}")


def _change_dict(c: Change) -> dict[str, object]:
    return {
        "op": c.op,
        "verdict": c.verdict.value,
        "modules": list(c.modules),
        "sources": list(c.sources),
        "called_as": list(c.called_as),
    }
