"""Probe options defined once, shared by the CLI (``--mode``) and pytest (``--fallback-mode``)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_MACOS_FORM = re.compile(r"(\d+)(\.\d+){0,2}")
_OLDEST_MACOS = 12  # MPS needs macOS 12.3


def macos_version(text: str) -> str:
    """``--macos``: MAJOR[.MINOR[.PATCH]], from the first macOS with MPS on. Anything else
    was once taken as "below 14" and judged that way without a word."""
    m = _MACOS_FORM.fullmatch(text.strip())
    if m is None or int(m.group(1)) < _OLDEST_MACOS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a macOS version with MPS: use MAJOR[.MINOR[.PATCH]], "
            f"{_OLDEST_MACOS} or newer, e.g. 14 or 14.4"
        )
    return text.strip()


@dataclass(frozen=True)
class Option:
    name: str  # "torch-version": --torch-version on the CLI, --fallback-torch-version in pytest
    help: str
    default: str | None = None
    choices: tuple[str, ...] | None = None
    type: Callable[[str], Any] | None = None  # validates and converts; errors exit 2

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


PROBE_OPTIONS: tuple[Option, ...] = (
    Option(
        "mode",
        "live on a usable MPS device, predict elsewhere (auto, the default), or force one",
        "auto",
        ("auto", "live", "predict"),
    ),
    Option(
        "torch-version",
        "release to predict for: X.Y[.Z] or 'all' (default: the installed release, else the "
        "nearest listed one)",
    ),
    Option(
        "macos",
        "macOS version to predict for: MAJOR[.MINOR[.PATCH]], e.g. 14.4 (default: 15)",
        type=macos_version,
    ),
    Option(
        "device",
        "what emulated MPS tensors are backed by in predict mode: cpu, or meta (no memory)",
        "cpu",
        ("cpu", "meta"),
    ),
)


def add_options(add: Callable[..., Any], prefix: str = "") -> None:
    """``add`` is ``ArgumentParser.add_argument`` or pytest's ``group.addoption``."""
    for opt in PROBE_OPTIONS:
        kwargs: dict[str, Any] = {"help": opt.help, "default": opt.default}
        if opt.choices:
            kwargs["choices"] = list(opt.choices)
        if opt.type is not None:
            kwargs["type"] = opt.type
        add(f"--{prefix}{opt.name}", dest=f"{prefix.replace('-', '_')}{opt.dest}", **kwargs)
