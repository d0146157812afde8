"""Generate one release's operator list from its macOS arm64 wheel.

The output is deterministic (same wheel -> byte-identical file): no timestamps, sorted keys,
one op per line so a new release's changes read as a short diff.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from fallback_probe.atomic import write_text
from fallback_probe.errors import ProbeError
from fallback_probe.oplists import FORMAT, OpEntry, _common_mps, _rules, _wheel, _yaml
from fallback_probe.records import OpStatus

GENERATOR = f"fallback-probe oplists build (format {FORMAT})"
TABLE_FILE = "fallback_probe/oplists/explicit_fallbacks.json"
_FINAL = re.compile(r"\d+\.\d+\.\d+\Z")


def load_tables() -> dict[str, Any]:
    """The reviewed per-release table (explicit_fallbacks.json, shipped as package data)."""
    text = resources.files("fallback_probe.oplists").joinpath("explicit_fallbacks.json")
    return json.loads(text.read_text(encoding="utf-8"))


def release_table(version: str, tables: Mapping[str, Any]) -> _rules.ReleaseTable:
    minor = ".".join(version.split(".")[:2])
    raw = tables["releases"].get(minor)
    if raw is None:
        raise ProbeError(
            f"no reviewed explicit-fallback table for torch {minor}: read that release's "
            f"aten/src/ATen/mps/MPSFallback.mm and add it to {TABLE_FILE}"
        )
    return _rules.ReleaseTable.from_json(raw)


def build_document(
    members: _wheel.WheelMembers,
    wheel_name: str,
    sha256: str,
    tables: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """``(torch_version, file text)`` for one wheel's members."""
    version, git_version = _wheel.version_info(members.version_py)
    if not _FINAL.match(version):
        raise ProbeError(f"torch {version} is not a final release (X.Y.Z)")
    tables = load_tables() if tables is None else tables
    table = release_table(version, tables)
    try:
        core_autogen = _rules.autogen_rule(members.generation)
        entries = _rules.parse_entries(_yaml.load(members.yaml))
        entries = _rules.classify(entries, table, core_composites_autogen=core_autogen)
    except (_yaml.YamlError, _rules.RuleError) as exc:
        raise ProbeError(f"{wheel_name}: {exc}") from exc
    expectations = _common_mps.extract(members.common_mps) if members.common_mps else {}
    minor = ".".join(version.split(".")[:2])
    provenance = {
        "wheel": wheel_name,
        "sha256": sha256,
        "torch_git_version": git_version,
        "source": _wheel.YAML_MEMBER,
        "autogen_rule": (
            f"{_wheel.GENERATION_MEMBER}: composite-implicit groups get autogen variants "
            + ("only when tagged core" if core_autogen else "never")
        ),
        "mps_test_expectations": _wheel.COMMON_MPS_MEMBER if members.common_mps else "absent",
        "explicit_fallbacks": f"{TABLE_FILE} [{minor}]",
        "generator": GENERATOR,
    }
    return version, render(version, provenance, entries, expectations)


def render(
    version: str,
    provenance: Mapping[str, str],
    entries: Mapping[str, OpEntry],
    expectations: Mapping[str, Any],
) -> str:
    counts = {status.value: 0 for status in OpStatus}
    for entry in entries.values():
        counts[entry.status.value] += 1

    def block(value: Any) -> str:
        return json.dumps(value, indent=2, sort_keys=True).replace("\n", "\n  ")

    op_lines = ",\n".join(
        f"    {json.dumps(op)}: {json.dumps(entries[op].to_json(), sort_keys=True)}"
        for op in sorted(entries)
    )
    return (
        "{\n"
        f'  "format": {FORMAT},\n'
        f'  "torch_version": {json.dumps(version)},\n'
        f'  "provenance": {block(dict(provenance))},\n'
        f'  "counts": {json.dumps(counts)},\n'
        f'  "ops": {{\n{op_lines}\n  }},\n'
        f'  "mps_test_expectations": {block(expectations)}\n'
        "}\n"
    )


def build_from_wheel(
    wheel_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    expected_version: str | None = None,
    tables: Mapping[str, Any] | None = None,
) -> tuple[Path, str]:
    """Write ``out_dir/torch-X.Y.Z.json`` from a local wheel; returns ``(path, text)``."""
    members = _wheel.read_members(wheel_path)
    sha256 = _wheel.sha256_file(wheel_path)
    version, text = build_document(members, Path(wheel_path).name, sha256, tables)
    if expected_version is not None and version != expected_version:
        raise ProbeError(f"{Path(wheel_path).name} is torch {version}, not {expected_version}")
    target = Path(out_dir) / f"torch-{version}.json"
    write_text(target, text)
    return target, text


def build_release(
    version: str,
    out_dir: str | os.PathLike[str],
    download_dir: str | os.PathLike[str] | None = None,
) -> tuple[Path, str]:
    """Find the release's wheel on PyPI, download and verify it, and build from it."""
    wheel = _wheel.find_wheel(version)
    if download_dir is not None:
        Path(download_dir).mkdir(parents=True, exist_ok=True)
        return build_from_wheel(_wheel.download(wheel, download_dir), out_dir, version)
    with tempfile.TemporaryDirectory(prefix="fallback-probe-wheel-") as tmp:
        return build_from_wheel(_wheel.download(wheel, tmp), out_dir, version)


def default_out_dir() -> Path:
    """Where the shipped lists live (the checkout's operator_lists/ in an editable install)."""
    return Path(str(resources.files("fallback_probe.operator_lists")))
