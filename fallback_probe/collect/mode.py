"""Choosing live or predict: MPS must really work, not merely claim to (mps-facts §9)."""

from __future__ import annotations

import platform
import sys

from fallback_probe.records import Mode

SMOKE_BYTES = 64 * 1024 * 1024


def smoke_test(device_type: str = "mps") -> str | None:
    """``None`` when the device computes correctly and can allocate; else why not."""
    import torch

    if device_type == "mps" and not torch.backends.mps.is_available():
        return "torch.backends.mps.is_available() is False"
    try:
        x = torch.arange(4, dtype=torch.float32, device=device_type)
        if (x * 2 + 1).cpu().tolist() != [1.0, 3.0, 5.0, 7.0]:
            return f"{device_type} computed a wrong result in the smoke test"
        big = torch.empty(SMOKE_BYTES // 4, dtype=torch.float32, device=device_type)
        big.fill_(1.0)
        if float(big[-1].cpu()) != 1.0:
            return f"{device_type} could not fill a 64 MB buffer"
    except Exception as exc:  # any failure means: not usable for a live probe
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{device_type} smoke test failed: {first}"
    return None


def decide(requested: str, device_type: str = "mps") -> tuple[Mode, str]:
    """``requested`` is auto, live or predict; the reason goes into the report."""
    if requested == "predict":
        return Mode.PREDICTED, "predict mode was asked for"
    if requested == "live":
        return Mode.LIVE, "live mode was asked for"
    if device_type == "mps" and not (sys.platform == "darwin" and platform.machine() == "arm64"):
        return Mode.PREDICTED, f"auto: no MPS on {sys.platform} ({platform.machine()})"
    problem = smoke_test(device_type)
    if problem is not None:
        return Mode.PREDICTED, f"auto: {problem}"
    return Mode.LIVE, f"auto: {device_type} passed a smoke test"
