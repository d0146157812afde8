"""Find, download and read a torch macOS arm64 wheel: only the few members the lists need.

The macOS wheel is the source of truth because the MPS kernels only exist there; the yaml in
it is the one that release's codegen used. Downloads are verified against PyPI's sha256.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fallback_probe.errors import ProbeError

SIMPLE_URL = "https://pypi.org/simple/torch/"
YAML_MEMBER = "torchgen/packaged/ATen/native/native_functions.yaml"
VERSION_MEMBER = "torch/version.py"
COMMON_MPS_MEMBER = "torch/testing/_internal/common_mps.py"
GENERATION_MEMBER = "torchgen/native_function_generation.py"  # which autogen ops exist
PREFERRED_PYTHON = "cp311"
# name-version-python-abi-platform.whl; a build tag ("torch-2.10.0-2-...") adds a sixth part.
_WHEEL = re.compile(
    r"torch-(?P<version>[^-]+)-(?P<py>cp\d+)-(?P<abi>[^-]+)-(?P<plat>macosx_\d+_\d+_arm64)\.whl\Z"
)


class WheelError(ProbeError):
    """No such wheel, a failed download, a bad hash or a wheel without the members."""


@dataclass(frozen=True, slots=True)
class WheelFile:
    filename: str
    url: str
    sha256: str


@dataclass(frozen=True, slots=True)
class WheelMembers:
    yaml: str
    version_py: str
    common_mps: str | None  # absent before 2.8
    generation: str | None = None  # torchgen's rule for autogen'd variants


def pick_wheel(files: Iterable[Mapping[str, Any]], version: str) -> WheelFile:
    """The macOS arm64 wheel of ``version``: cp311 if there is one, else the oldest cpXY.

    Build-number re-uploads and free-threaded ("t") builds are skipped: the yaml is the same
    and the plain wheel is what users install.
    """
    candidates = []
    for item in files:
        match = _WHEEL.match(str(item.get("filename", "")))
        if not match or match["version"] != version or item.get("yanked"):
            continue
        if match["abi"].endswith("t"):
            continue
        sha = (item.get("hashes") or {}).get("sha256")
        if not sha:
            continue
        rank = (match["py"] != PREFERRED_PYTHON, int(match["py"][2:]), item["filename"])
        candidates.append((rank, WheelFile(item["filename"], item["url"], sha)))
    if not candidates:
        raise WheelError(f"PyPI has no macOS arm64 wheel of torch {version}")
    return min(candidates, key=lambda pair: pair[0])[1]


def find_wheel(version: str, index_url: str = SIMPLE_URL) -> WheelFile:
    """Ask PyPI's JSON simple API for the wheel of ``version``."""
    request = urllib.request.Request(
        index_url, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            index = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise WheelError(f"cannot read the PyPI index {index_url}: {exc}") from exc
    return pick_wheel(index.get("files", []), version)


def download(wheel: WheelFile, dest_dir: str | os.PathLike[str]) -> Path:
    """Download the whole wheel into ``dest_dir`` and check its sha256 against PyPI's."""
    target = Path(dest_dir) / wheel.filename
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(wheel.url, timeout=120) as response, open(target, "wb") as fh:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise WheelError(f"cannot download {wheel.url}: {exc}") from exc
    if digest.hexdigest() != wheel.sha256:
        target.unlink(missing_ok=True)
        raise WheelError(f"sha256 mismatch for {wheel.filename}: PyPI says {wheel.sha256}")
    return target


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_members(path: str | os.PathLike[str]) -> WheelMembers:
    """Read the yaml, version.py, torchgen's variant generation and (2.8+) common_mps.py."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for member in (YAML_MEMBER, VERSION_MEMBER):
                if member not in names:
                    raise WheelError(f"{os.fspath(path)} has no {member}: not a torch wheel?")

            def text(member: str) -> str:
                return archive.read(member).decode("utf-8")

            common = text(COMMON_MPS_MEMBER) if COMMON_MPS_MEMBER in names else None
            generation = text(GENERATION_MEMBER) if GENERATION_MEMBER in names else None
            return WheelMembers(text(YAML_MEMBER), text(VERSION_MEMBER), common, generation)
    except (OSError, zipfile.BadZipFile) as exc:
        raise WheelError(f"cannot read wheel {os.fspath(path)}: {exc}") from exc


def version_info(version_py: str) -> tuple[str, str]:
    """``(__version__, git_version)`` from torch/version.py, read with ``ast``, never executed."""
    found: dict[str, str] = {}
    for node in ast.parse(version_py).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if (
            isinstance(target, ast.Name)
            and isinstance(value, ast.Constant)
            and isinstance(value.value, str)
        ):
            found[target.id] = value.value
    if "__version__" not in found or "git_version" not in found:
        raise WheelError("torch/version.py has no __version__ / git_version")
    return found["__version__"], found["git_version"]
