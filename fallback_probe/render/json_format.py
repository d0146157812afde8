"""The versioned JSON report (docs/report-schema.md)."""

from __future__ import annotations

from fallback_probe.report import Report


def render(report: Report) -> str:
    return report.to_json()
