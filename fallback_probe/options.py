"""Probe options defined once, shared by the CLI (``--mode``) and pytest (``--fallback-mode``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    name: str  # "torch-version": --torch-version on the CLI, --fallback-torch-version in pytest
    help: str
    default: str | None = None
    choices: tuple[str, ...] | None = None

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
    Option("macos", "macOS version to predict for (default: 15)"),
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
        add(f"--{prefix}{opt.name}", dest=f"{prefix.replace('-', '_')}{opt.dest}", **kwargs)
