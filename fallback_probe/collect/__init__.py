"""Collectors: run code and record what it did, as ``OpCall`` records (no verdicts here)."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field

from fallback_probe.records import Mode, OpCall, call_from_json, call_to_json
from fallback_probe.report import Host


def this_host() -> Host:
    import torch

    system = "macOS " + platform.mac_ver()[0] if sys.platform == "darwin" else sys.platform
    return Host(
        torch=torch.__version__,
        python=platform.python_version(),
        platform=f"{system} {platform.machine()}",
    )


@dataclass
class Collection:
    """Everything a run recorded: the input to judging, in-process or from a child's file."""

    mode: Mode
    mode_reason: str
    device_type: str
    host: Host
    trace: list[OpCall] = field(default_factory=list)
    cpu_work: dict[str, int] = field(default_factory=dict)
    complete: bool = True
    error: str | None = None
    limits: list[str] = field(default_factory=list)
    macos: str | None = None  # the real macOS version, live on a Mac

    def header_json(self) -> str:
        return json.dumps(
            {
                "mode": self.mode.value,
                "mode_reason": self.mode_reason,
                "device_type": self.device_type,
                "host": [self.host.torch, self.host.python, self.host.platform],
                "macos": self.macos,
            }
        )

    def footer_json(self) -> str:
        return json.dumps(
            {
                "complete": self.complete,
                "error": self.error,
                "cpu_work": self.cpu_work,
                "limits": self.limits,
            }
        )


def call_line(call: OpCall) -> str:
    return json.dumps(call_to_json(call), separators=(",", ":"))


def write_call(fh, call: OpCall) -> None:  # type: ignore[no-untyped-def]
    fh.write(call_line(call) + "\n")


def read_collection(lines: list[str]) -> Collection:
    """Parse a child's trace file: a header line, call lines, a footer if it finished."""
    head = json.loads(lines[0])
    col = Collection(
        mode=Mode(head["mode"]),
        mode_reason=head["mode_reason"],
        device_type=head["device_type"],
        host=Host(*head["host"]),
        macos=head.get("macos"),
    )
    footer = None
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            v = json.loads(line)
        except ValueError:  # the last line of a process that died mid-write
            continue
        if isinstance(v, dict):
            footer = v
        else:
            col.trace.append(call_from_json(v))
    col.trace.sort(key=lambda c: c.index)
    if footer is None:
        col.complete = False
        col.error = "the model's process ended without finishing its trace"
    else:
        col.complete = footer["complete"]
        col.error = footer["error"]
        col.cpu_work = footer["cpu_work"]
        col.limits = footer["limits"]
    return col
