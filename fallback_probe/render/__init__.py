"""Renderers: each a pure ``render(report) -> str``; saved reports re-render without a rerun."""

from __future__ import annotations

from enum import Enum

from fallback_probe.report import Report


class Format(str, Enum):
    MARKDOWN = "markdown"
    JSON = "json"


def render(report: Report, fmt: Format) -> str:
    # Imported here so loading one renderer never pays for the others.
    if fmt is Format.MARKDOWN:
        from fallback_probe.render import markdown

        return markdown.render(report)
    if fmt is Format.JSON:
        from fallback_probe.render import json_format

        return json_format.render(report)
    raise AssertionError(f"unhandled format {fmt}")  # keeps the enum exhaustive for checkers
