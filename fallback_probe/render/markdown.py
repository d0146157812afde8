"""Markdown for GitHub (PR comments, ``$GITHUB_STEP_SUMMARY``): problems first, natives folded."""

from __future__ import annotations

from fallback_probe.limits import split_limits
from fallback_probe.records import Mode, Verdict
from fallback_probe.render.cells import cell, cell_list, table
from fallback_probe.report import OpRow, Report

NAMING = (
    "Ops are named as the backend reaches them; *called as* is the op the script called when "
    "that differs (an in-place or functional op the backend runs as its `out=` variant, a "
    "convolution routed to its MPS kernel). The JSON report and the pytest baseline use the "
    "same names."
)

_MAX_LIST = 3


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _short(items: tuple[str, ...]) -> str:
    return cell_list(items, _MAX_LIST)


def headline(report: Report) -> str:
    """One line a human reads first; also the CLI's stderr summary."""
    s = report.summary
    how = "Observed" if report.mode is Mode.LIVE else "Predicted"
    t = report.target
    state = "" if report.complete else " (incomplete: the run stopped early)"
    return (
        f"{how} for torch {t.torch} on macOS {t.macos} ({t.device}): "
        f"{s['fallback']} fallback, {s['unsupported']} unsupported, {s['native']} native, "
        f"{s['not_judged']} not judged{state}"
    )


def _problem_table(rows: list[OpRow], live: bool) -> str:
    headers = ["op", "called as", "verdict", "calls", "module", "source", "dtypes", "shapes"]
    headers += ["to CPU", "back"]
    if live:
        headers.append("time")
    headers.append("why")
    body = []
    for r in rows:
        why = r.error or r.reason
        line = [
            cell(r.op, code=True),
            _short(r.called_as),
            r.verdict.value,
            r.calls,
            _short(r.modules),
            _short(r.sources),
            cell(", ".join(r.dtypes)),
            cell(", ".join(r.shapes)),
            _human_bytes(r.bytes_to_cpu) if r.verdict is Verdict.FALLBACK else "",
            _human_bytes(r.bytes_from_cpu) if r.verdict is Verdict.FALLBACK else "",
        ]
        if live:
            line.append(f"{r.seconds * 1000:.2f} ms" if r.seconds is not None else "")
        line.append(cell(why))
        body.append(line)
    return table(body, headers)


def _limits_section(report: Report, has_problems: bool) -> list[str]:
    """This run's own notes and unjudged device ops in view; the standing limits of the mode,
    the same in every report, folded."""
    shown, folded = split_limits(report.limits, report.summary["fallback"] > 0)
    on_cpu = [n for n in report.not_judged if not n.on_device]
    if not (shown or folded or report.not_judged):
        return []
    out = ["", "## What this report could not see", ""]
    out += [f"- {cell(lim)}" for lim in shown]
    for n in report.not_judged:
        if n.on_device:
            op = cell(n.op, code=True, in_table=False)
            out.append(f"- {op} ({n.calls} calls): not judged — {cell(n.reason)}")
    if folded or on_cpu:
        out += ["", f"<details><summary>More limits ({len(folded) + len(on_cpu)})</summary>", ""]
        out += [f"- {cell(lim)}" for lim in folded]
        out += [
            f"- {cell(n.op, code=True, in_table=False)} ({n.calls} calls): {cell(n.reason)}"
            for n in on_cpu
        ]
        out += ["", "How each verdict is made: docs/verdicts.md in fallback-probe.", "</details>"]
    return out


def render(report: Report) -> str:
    t, h = report.target, report.host
    out = ["# fallback-probe report", "", f"**{headline(report)}**", ""]
    how = (
        "observed on this machine" if report.mode is Mode.LIVE else "predicted from operator lists"
    )
    out.append(
        f"Mode: {report.mode.value} ({how}; {report.mode_reason}). "
        f"Target: torch {t.torch}, macOS {t.macos}, "
        f"device {cell(t.device, code=True, in_table=False)}. "
        f"Ran with torch {h.torch} on {h.platform}, Python {h.python}."
    )
    if report.error:
        out += ["", f"> **The run did not finish:** {cell(report.error)}"]
    problems = report.rows(Verdict.UNSUPPORTED, Verdict.FALLBACK)
    out += ["", "## Fallbacks and unsupported ops", ""]
    if problems:
        out.append(_problem_table(problems, report.mode is Mode.LIVE))
    else:
        out.append("None.")
    if report.matrix is not None:
        m = report.matrix
        out += ["", "## Across releases", ""]
        if m.ops:
            body = [
                [cell(op, code=True), _short(m.called_as.get(op, ())), *(v[r] for r in m.releases)]
                for op, v in m.ops.items()
            ]
            out.append(table(body, ["op", "called as", *m.releases]))
        else:
            out.append("No fallback or unsupported op in any listed release.")
        out.append("")
        if m.native_from:
            out.append(f"The whole model runs natively from torch {m.native_from} on.")
        else:
            out.append("No listed release runs the whole model natively.")
        if m.upgrade:
            out.append(f"For torch {t.torch}: {m.upgrade}.")
    out += _limits_section(report, bool(problems))
    natives = report.rows(Verdict.NATIVE)
    out += ["", f"<details><summary>Native ops ({len(natives)})</summary>", ""]
    if natives:
        body = [
            [
                cell(r.op, code=True),
                _short(r.called_as),
                r.calls,
                _short(r.modules),
                cell(", ".join(r.dtypes)),
            ]
            for r in natives
        ]
        out.append(table(body, ["op", "called as", "calls", "module", "dtypes"]))
    out += ["", "</details>"]
    if any(r.called_as for r in report.ops) or (report.matrix and report.matrix.called_as):
        out += ["", NAMING]
    if report.cpu_work:
        total = sum(report.cpu_work.values())
        out += [
            "",
            f"The script's own CPU work ({total} op calls on CPU tensors) was not judged: "
            "on a Mac it runs on the CPU too.",
        ]
    return "\n".join(out) + "\n"
