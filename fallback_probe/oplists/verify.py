"""Check the hand-typed explicit-fallback table against what a torch wheel really registers.

Three readings of one macOS wheel must agree with ``explicit_fallbacks.json`` for its minor:

- the compiled ``torch/lib/libtorch_cpu.dylib``: every ``TORCH_LIBRARY_IMPL(aten, MPS, m)``
  body, decoded by :mod:`._macho`. Registrations bound to ``mps_fallback`` are the explicit
  fallbacks; the other kernels in those same bodies (MPSFallback.mm) are the error kernels;
  registrations elsewhere that the yaml does not explain are hand-written native kernels;
- the yaml (``native_functions.yaml``): what the generated code must register;
- the wheel's Python files: ``Library("aten", "IMPL"[, "MPS"]).impl(op, fn[, "MPS"])`` calls,
  read with ``ast`` (never imported), are the natives registered from Python.
"""

from __future__ import annotations

import ast
import os
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fallback_probe.errors import ExitCode, ProbeError
from fallback_probe.oplists import _macho, _rules, _wheel, _yaml
from fallback_probe.records import OpStatus

LIBRARY_MEMBER = "torch/lib/libtorch_cpu.dylib"
_MPS_FALLBACK = re.compile(r"\d+mps_fallback")  # the mangled name of at::mps_fallback
_SPARSE_KEYS = ("SparseMPS", "SparseCsrMPS")


class TableMismatch(ProbeError):
    """The table disagrees with the wheel (exit 1: a finding, not bad input)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.FOUND)


@dataclass(frozen=True, slots=True)
class CompiledRegistrations:
    """The MPS registrations of one libtorch_cpu.dylib, by what their kernel is."""

    fallback: frozenset[str]  # bound to mps_fallback
    other_in_fallback_file: frozenset[str]  # other kernels beside them (MPSFallback.mm)
    elsewhere: frozenset[str]  # every other TORCH_LIBRARY_IMPL(aten, MPS) registration
    sparse: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PythonRegistration:
    op: str  # "linalg_lu_solve.out", as the yaml names it
    path: str  # wheel member


@dataclass(frozen=True, slots=True)
class Verdict:
    """One wheel's check: ``problems`` is empty when the table agrees."""

    torch_version: str
    minor: str
    problems: tuple[str, ...]
    compiled: CompiledRegistrations
    python: tuple[PythonRegistration, ...]

    def summary(self) -> str:
        if self.problems:
            return f"torch {self.torch_version}: {len(self.problems)} disagreement(s)"
        c = self.compiled
        return (
            f"torch {self.torch_version}: table [{self.minor}] agrees with the wheel "
            f"({len(c.fallback)} explicit fallback(s), {len(c.other_in_fallback_file)} error "
            f"kernel(s), {len(c.elsewhere)} other C++ MPS registrations, "
            f"{len(self.python)} from Python)"
        )


def _bare(op: str, namespace: str = "aten") -> str:
    prefix = f"{namespace}::"
    return op[len(prefix) :] if op.startswith(prefix) else op


def read_compiled(data: bytes) -> CompiledRegistrations:
    """Decode every ``TORCH_LIBRARY_IMPL(aten, MPS / SparseMPS / SparseCsrMPS, m)`` body."""
    image = _macho.MachO(data)
    fallback: set[str] = set()
    beside: set[str] = set()
    elsewhere: set[str] = set()
    bodies = 0
    for _, start, end in image.functions(_macho.library_impl_functions("aten", "MPS")):
        bodies += 1
        registrations = image.registrations(start, end)
        bound = {_bare(r.op) for r in registrations if r.uses(_MPS_FALLBACK)}
        others = {_bare(r.op) for r in registrations} - bound
        fallback |= bound
        (beside if bound else elsewhere).update(others)
    if not bodies:
        raise ProbeError("no TORCH_LIBRARY_IMPL(aten, MPS, ...) body in the library's symbols")
    sparse = {}
    for key in _SPARSE_KEYS:
        found: set[str] = set()
        for _, start, end in image.functions(_macho.library_impl_functions("aten", key)):
            found |= {_bare(r.op) for r in image.registrations(start, end)}
        sparse[key] = frozenset(found)
    return CompiledRegistrations(
        frozenset(fallback), frozenset(beside), frozenset(elsewhere), sparse
    )


def read_python(files: Iterable[tuple[str, str]]) -> list[PythonRegistration]:
    """``Library("aten", ...)`` objects' ``.impl(op, fn, "MPS")`` calls in ``(path, source)``."""
    out = []
    for path, source in files:
        if "MPS" not in source or "Library" not in source:
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        out.extend(PythonRegistration(op, path) for op in _mps_impls(tree))
    return sorted(set(out), key=lambda r: (r.op, r.path))


def _mps_impls(tree: ast.AST) -> Iterator[str]:
    libraries: dict[str, tuple[str, str | None]] = {}  # variable -> (namespace, default key)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            spec = _library_call(node.value)
            name = _target_name(node.targets[0])
            if spec is not None and name is not None:
                libraries[name] = spec
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "impl":
            continue
        owner = node.func.value
        spec = _library_call(owner) if isinstance(owner, ast.Call) else None
        if spec is None:
            spec = libraries.get(_target_name(owner) or "")
        if spec is None or spec[0] != "aten" or not node.args:
            continue
        op = _constant(node.args[0])
        key = _constant(node.args[2]) if len(node.args) > 2 else None
        for keyword in node.keywords:
            if keyword.arg == "dispatch_key":
                key = _constant(keyword.value)
        if op is not None and (key or spec[1]) == "MPS":
            yield _bare(op)


def _library_call(node: ast.AST) -> tuple[str, str | None] | None:
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if not name.endswith("Library") or not node.args:
        return None
    namespace = _constant(node.args[0])
    key = _constant(node.args[2]) if len(node.args) > 2 else None
    for keyword in node.keywords:
        if keyword.arg == "dispatch_key":
            key = _constant(keyword.value)
    return (namespace, key) if namespace else None


def _target_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _constant(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def compare(
    table_raw: Mapping[str, Any],
    yaml_native: Iterable[str],
    yaml_sparse: Mapping[str, Iterable[str]],
    compiled: CompiledRegistrations,
    python: Iterable[PythonRegistration],
) -> list[str]:
    """Every disagreement between one release's table entry and what the wheel registers."""
    table = _rules.ReleaseTable.from_json(table_raw)
    yaml_native = set(yaml_native)
    python = list(python)
    problems: list[str] = []

    def differ(what: str, listed: Iterable[str], found: Iterable[str], where: str) -> None:
        listed, found = set(listed), set(found)
        for op in sorted(listed - found):
            problems.append(f"{what}: the table lists {op} but {where} does not register it")
        for op in sorted(found - listed):
            problems.append(f"{what}: {where} registers {op} but the table does not list it")

    differ("explicit_fallback", table.explicit_fallback, compiled.fallback, "mps_fallback")
    differ(
        "error_kernel",
        table.error_kernel,
        compiled.other_in_fallback_file,
        "the MPSFallback.mm registration function (non-fallback kernel)",
    )
    cpp_native = compiled.elsewhere - yaml_native
    python_native = {r.op for r in python}
    differ("native", table.native, cpp_native | python_native, "the wheel (C++ or Python)")
    for op in sorted(yaml_native - compiled.elsewhere - compiled.fallback):
        problems.append(f"yaml: {op} has an MPS kernel in the yaml but libtorch_cpu registers none")
    for key, ops in sorted(yaml_sparse.items()):
        differ(f"yaml {key}", ops, compiled.sparse.get(key, ()), f"TORCH_LIBRARY_IMPL(aten, {key})")
    named = [str(source).split(":", 1)[0] for source in table_raw.get("native_from", ())]
    for path in sorted({r.path for r in python}):
        if path not in named:
            problems.append(f"native_from: {path} registers MPS kernels but is not named")
    for path in named:
        if path.endswith(".py") and path not in {r.path for r in python}:
            problems.append(f"native_from: {path} is named but registers no MPS kernel")
    return problems


def verify_wheel(
    wheel_path: str | os.PathLike[str], tables: Mapping[str, Any] | None = None
) -> Verdict:
    """Read one torch macOS arm64 wheel and compare it with its minor's table entry."""
    from fallback_probe.oplists import build

    members = _wheel.read_members(wheel_path)
    version, _ = _wheel.version_info(members.version_py)
    minor = ".".join(version.split(".")[:2])
    tables = build.load_tables() if tables is None else tables
    table_raw = tables["releases"].get(minor)
    if table_raw is None:
        raise TableMismatch(f"torch {version}: the table has no entry for {minor}")
    try:
        with zipfile.ZipFile(wheel_path) as archive:
            if LIBRARY_MEMBER not in archive.namelist():
                raise ProbeError(f"{Path(wheel_path).name} has no {LIBRARY_MEMBER}")
            compiled = read_compiled(archive.read(LIBRARY_MEMBER))
            python = read_python(
                (name, archive.read(name).decode("utf-8", "replace"))
                for name in archive.namelist()
                if name.startswith("torch/") and name.endswith(".py")
            )
    except (OSError, zipfile.BadZipFile, _macho.MachOError) as exc:
        raise ProbeError(f"cannot read {Path(wheel_path).name}: {exc}") from exc
    entries = _rules.parse_entries(_yaml.load(members.yaml))
    statuses = _rules.classify(
        entries, core_composites_autogen=_rules.autogen_rule(members.generation)
    )
    yaml_native = {_bare(op) for op, e in statuses.items() if e.status is OpStatus.NATIVE}
    yaml_sparse = {
        key: {_bare(op) for op, e in statuses.items() if key in e.sparse_keys}
        for key in _SPARSE_KEYS
    }
    problems = compare(table_raw, yaml_native, yaml_sparse, compiled, python)
    return Verdict(version, minor, tuple(problems), compiled, tuple(python))
