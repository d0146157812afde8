"""Real macOS wheels for tests: local folders first, else one bounded download, else skip.

``FALLBACK_PROBE_WHEEL_DIRS`` names folders that already hold wheels (read, never written).

``FALLBACK_PROBE_WHEEL_CACHE`` (default ``~/.cache/fallback-probe-wheels``) keeps what was
downloaded, so CI pays for each wheel once (torch 2.0.1: 56 MB; torchvision: ~2 MB).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Folders that already hold wheels (os.pathsep-separated), read before the download cache.
_LOCAL = tuple(
    Path(p) for p in os.environ.get("FALLBACK_PROBE_WHEEL_DIRS", "").split(os.pathsep) if p
)


def _cache() -> Path:
    default = Path.home() / ".cache" / "fallback-probe-wheels"
    return Path(os.environ.get("FALLBACK_PROBE_WHEEL_CACHE", default))


def _find(prefix: str) -> Path | None:
    for folder in (*_LOCAL, _cache()):
        found = sorted(folder.glob(f"{prefix}-*macosx*arm64.whl")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def _fetch(package: str, version: str, platform: str) -> Path:
    prefix = f"{package}-{version}"
    found = _find(prefix)
    if found is not None:
        return found
    cache = _cache()
    dest = cache / f".download-{os.getpid()}"  # xdist workers never see a half-written wheel
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "-q", f"{package}=={version}", "--no-deps",
        "--only-binary=:all:", "--platform", platform, "--python-version", "3.11", "-d", str(dest),
    ]  # fmt: skip
    error: Exception | None = None
    for env in (None, {**os.environ, "PIP_CONFIG_FILE": os.devnull}):  # then PyPI itself
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=600, env=env)
            break
        except (subprocess.SubprocessError, OSError) as exc:
            error = exc
    else:
        pytest.skip(f"{prefix} macOS wheel not cached and not downloadable: {error}")
    for wheel in dest.glob("*.whl"):
        os.replace(wheel, cache / wheel.name)
    dest.rmdir()
    found = _find(prefix)
    if found is None:
        pytest.skip(f"{prefix}: pip downloaded no macOS arm64 wheel")
    return found


def torch_wheel(version: str) -> Path:
    minor = int(version.split(".")[1])
    return _fetch("torch", version, "macosx_14_0_arm64" if minor >= 12 else "macosx_11_0_arm64")


def torchvision_wheel(version: str) -> Path:
    minor = int(version.split(".")[1])
    return _fetch(
        "torchvision", version, "macosx_14_0_arm64" if minor >= 27 else "macosx_11_0_arm64"
    )
