"""torchvision's operators on MPS, per release, read from its macOS arm64 wheels.

torchvision registers its ops (``torchvision::nms``, ``roi_align`` ...) in compiled
libraries: ``torchvision/_C.so`` through 0.28 (``TORCH_LIBRARY_IMPL(torchvision, KEY, m)``
bodies, decoded like libtorch's) and the stable-ABI ``torchvision/_C_stable.so`` from 0.29
(``aoti_torch_library_init_impl(ns, KEY)`` then ``torch_library_impl(handle, op, fn)`` calls,
inlined into static initializers, so the whole code is scanned). Every ``torchvision/_C*.so``
in the wheel is read. Status of an op for the MPS key:

- an MPS kernel -> ``native``;
- else a CompositeImplicitAutograd kernel (or a catch-all ``m.def(name, fn)``) ->
  ``composite_implicit``; a CompositeExplicitAutograd kernel -> ``composite_explicit``;
- else ``missing``: the boxed MPS fallback (``kernels`` shows e.g. CPU only).

The list of a torchvision release is judged with the torch release it pairs with
(:data:`PAIRS`, checked by the tests against each wheel's ``Requires-Dist: torch``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import zipfile
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from fallback_probe.atomic import write_text
from fallback_probe.errors import ProbeError
from fallback_probe.oplists import FORMAT, _macho, _wheel, version_key
from fallback_probe.records import OpStatus

GENERATOR = f"fallback-probe oplists build --torchvision-wheel (format {FORMAT})"
NAMESPACE = "torchvision"
_FILE = re.compile(r"torchvision-(\d+\.\d+\.\d+)\.json\Z")
_LIBRARY = re.compile(r"torchvision/_C\w*\.so\Z")
_SCHEMA = re.compile(r"(?:torchvision::)?([A-Za-z_]\w*(?:\.\w+)?)\(.*\)\s*->")
_IMPL_BODY = re.compile(r"TORCH_LIBRARY_IMPL_init_torchvision_(\w+?)_\d+E")
_DEF_BODY = re.compile(r"TORCH_LIBRARY(?:_FRAGMENT)?_init_torchvision_\d+E")
_STABLE_INIT_IMPL = re.compile(r"_?aoti_torch_library_init_impl\Z")
_STABLE_INIT_DEF = re.compile(r"_?aoti_torch_library_init_(fragment|def|library)\Z")
_STABLE_IMPL = re.compile(r"_?(aoti_)?torch_library_impl\Z")
_STABLE_DEF = re.compile(r"_?aoti_torch_library_def\Z")
_CLASSIC_DEF = re.compile(r"7Library3def")
_REQUIRES = re.compile(r"Requires-Dist:\s*torch\s*\(?\s*([=<>!~]=?)\s*([0-9][\w.]*)")

# torch release -> the torchvision release judged with it: the newest torchvision whose
# wheel's Requires-Dist admits that torch (0.29.x says "torch>=2.14.0": no 0.30 yet).
PAIRS: dict[str, str] = {
    "2.0.1": "0.15.2",
    "2.1.2": "0.16.2",
    "2.2.2": "0.17.2",
    "2.3.1": "0.18.1",
    "2.4.1": "0.19.1",
    "2.5.1": "0.20.1",
    "2.6.0": "0.21.0",
    "2.7.1": "0.22.1",
    "2.8.0": "0.23.0",
    "2.9.1": "0.24.1",
    "2.10.0": "0.25.0",
    "2.11.0": "0.26.0",
    "2.12.1": "0.27.1",
    "2.13.0": "0.28.0",
    "2.14.1": "0.29.2",
    "2.15.0": "0.29.2",
}
ENV = "FALLBACK_PROBE_TORCHVISION_VERSION"  # set by --torchvision-version for the child


def op_name(name: str) -> str:
    """``nms`` / ``torchvision::nms`` / ``torchvision.nms.default`` -> ``torchvision::nms``."""
    name = name.strip()
    if name.startswith("torchvision."):
        name = "torchvision::" + name[len("torchvision.") :]
    if not name.startswith("torchvision::"):
        name = "torchvision::" + name
    return name[: -len(".default")] if name.endswith(".default") else name


def read_library(data: bytes) -> tuple[dict[str, set[str]], set[str], set[str]]:
    """``({op: dispatch keys with a kernel}, defined ops, catch-all ops)`` of one library."""
    image = _macho.MachO(data)
    kernels: dict[str, set[str]] = {}
    defined: set[str] = set()
    catch_all: set[str] = set()
    for name, start, end in image.functions(_IMPL_BODY):
        if ".cold" in name:
            continue
        key = _IMPL_BODY.search(name)[1]  # type: ignore[index]
        for registration in image.registrations(start, end):
            kernels.setdefault(op_name(registration.op), set()).add(key)
    for _, start, end in image.functions(_DEF_BODY):
        for event in image.scan(start, end):
            if event.callee is None and (match := _SCHEMA.match(event.args[0] or "")):
                defined.add(op_name(match[1]))
            elif event.callee and _CLASSIC_DEF.search(event.callee):
                name = event.args[1] or ""
                if name and "(" not in name:  # m.def("name", fn): a catch-all kernel
                    catch_all.add(op_name(name))
    _read_stable(image, kernels, defined)
    defined |= kernels.keys() | catch_all
    return kernels, defined, catch_all


def _read_stable(image: _macho.MachO, kernels: dict[str, set[str]], defined: set[str]) -> None:
    key: str | None = None
    for event in image.scan(*image.text_range()):
        callee, args = event.callee, event.args
        if callee is None:
            continue
        if _STABLE_INIT_IMPL.match(callee):
            key = args[1] if args[0] == NAMESPACE else None
        elif _STABLE_INIT_DEF.match(callee):
            key = None
        elif _STABLE_IMPL.match(callee) and key and args[1]:
            kernels.setdefault(op_name(args[1]), set()).add(key)
        elif _STABLE_DEF.match(callee) and (match := _SCHEMA.match(args[1] or "")):
            defined.add(op_name(match[1]))


def status_of(keys: Iterable[str], catch_all: bool) -> OpStatus:
    keys = set(keys)
    if "MPS" in keys:
        return OpStatus.NATIVE
    if catch_all or "CompositeImplicitAutograd" in keys:
        return OpStatus.COMPOSITE_IMPLICIT
    if "CompositeExplicitAutograd" in keys or "CompositeExplicitAutogradNonFunctional" in keys:
        return OpStatus.COMPOSITE_EXPLICIT
    return OpStatus.MISSING


def read_wheel(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Version, torch requirement, libraries read and every op's kernels, from one wheel."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(archive.namelist())
            libraries = [n for n in names if _LIBRARY.match(n)]
            metadata = [
                n for n in names if re.fullmatch(r"torchvision-[^/]+\.dist-info/METADATA", n)
            ]
            if not libraries or not metadata:
                raise ProbeError(
                    f"{Path(path).name} has no torchvision/_C*.so: not a torchvision wheel?"
                )
            meta = archive.read(metadata[0]).decode("utf-8")
            kernels: dict[str, set[str]] = {}
            defined: set[str] = set()
            catch_all: set[str] = set()
            for library in libraries:
                k, d, c = read_library(archive.read(library))
                for op, keys in k.items():
                    kernels.setdefault(op, set()).update(keys)
                defined |= d
                catch_all |= c
    except (OSError, zipfile.BadZipFile, _macho.MachOError) as exc:
        raise ProbeError(f"cannot read {Path(path).name}: {exc}") from exc
    version = re.search(r"^Version:\s*(\S+)", meta, re.M)
    requires = _REQUIRES.search(meta)
    if version is None:
        raise ProbeError(f"{Path(path).name}: METADATA has no Version")
    return {
        "version": version[1],
        "torch_requirement": "".join(requires.groups()) if requires else "",
        "libraries": libraries,
        "ops": {
            op: {
                "status": status_of(kernels.get(op, set()), op in catch_all).value,
                "kernels": sorted(
                    kernels.get(op, set()) | ({"CatchAll"} if op in catch_all else set())
                ),
            }
            for op in sorted(defined)
        },
    }


def render(info: Mapping[str, Any], wheel_name: str, sha256: str) -> str:
    """The list file: deterministic (sorted keys, one op per line, no timestamps)."""
    ops = info["ops"]
    counts = {status.value: 0 for status in OpStatus}
    for entry in ops.values():
        counts[entry["status"]] += 1
    provenance = {
        "wheel": wheel_name,
        "sha256": sha256,
        "source": ", ".join(info["libraries"]),
        "method": "TORCH_LIBRARY_IMPL(torchvision, KEY) bodies and stable-ABI "
        "torch_library_impl calls decoded from the arm64 code (fallback_probe/oplists/_macho.py)",
        "generator": GENERATOR,
    }
    op_lines = ",\n".join(
        f"    {json.dumps(op)}: {json.dumps(ops[op], sort_keys=True)}" for op in sorted(ops)
    )
    provenance_text = json.dumps(provenance, indent=2, sort_keys=True).replace("\n", "\n  ")
    return (
        "{\n"
        f'  "format": {FORMAT},\n'
        f'  "torchvision_version": {json.dumps(info["version"])},\n'
        f'  "torch_requirement": {json.dumps(info["torch_requirement"])},\n'
        f'  "provenance": {provenance_text},\n'
        f'  "counts": {json.dumps(counts)},\n'
        f'  "ops": {{\n{op_lines}\n  }}\n'
        "}\n"
    )


def build_from_wheel(
    wheel_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> tuple[Path, str]:
    """Write ``out_dir/torchvision-X.Y.Z.json`` from a local wheel; returns ``(path, text)``."""
    info = read_wheel(wheel_path)
    if not re.fullmatch(r"\d+\.\d+\.\d+", info["version"]):
        raise ProbeError(f"torchvision {info['version']} is not a final release (X.Y.Z)")
    text = render(info, Path(wheel_path).name, _wheel.sha256_file(wheel_path))
    target = Path(out_dir) / f"torchvision-{info['version']}.json"
    write_text(target, text)
    return target, text


# --- loading -----------------------------------------------------------------------------


def _lists_dir() -> Any:
    return resources.files("fallback_probe.operator_lists")


@functools.lru_cache(maxsize=1)
def releases() -> tuple[str, ...]:
    """The listed torchvision releases, oldest first."""
    found = [m[1] for item in _lists_dir().iterdir() if (m := _FILE.match(item.name))]
    return tuple(sorted(found, key=version_key))


@functools.cache
def document(release: str) -> dict[str, Any]:
    """The parsed list of a listed torchvision release (``0.16`` or ``0.16.2``)."""
    wanted = version_key(release)[:2]
    for listed in releases():
        if version_key(listed)[:2] == wanted:
            text = _lists_dir().joinpath(f"torchvision-{listed}.json").read_text("utf-8")
            return json.loads(text)
    raise ProbeError(
        f"unknown torchvision release {release!r}; known releases: {', '.join(releases())}"
    )


def paired(torch_release: str) -> str | None:
    """The torchvision release judged with ``torch_release``: ``--torchvision-version`` (via
    the environment); else, when ``torch_release`` is the installed torch's, the installed
    torchvision's listed release; else :data:`PAIRS`."""
    chosen = os.environ.get(ENV)
    if chosen:
        return chosen
    local = installed_pair()
    if local is not None and local[0] == torch_release:
        return local[1]
    return PAIRS.get(torch_release)


@functools.lru_cache(maxsize=1)
def installed_pair() -> tuple[str, str] | None:
    """``(torch release, torchvision release)`` of what is installed, when both are listed.

    Versions are read from package metadata: torchvision is never imported (its compiled
    ops may not load, as with a CUDA build on a machine without CUDA).
    """
    from importlib import metadata

    from fallback_probe.oplists import UnknownRelease, resolve_release

    try:
        torch_version, tv_version = metadata.version("torch"), metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        return None
    wanted = _minor(tv_version)
    listed = [r for r in releases() if _minor(r) == wanted]
    try:
        return (resolve_release(torch_version), listed[0]) if listed else None
    except UnknownRelease:
        return None


def _minor(version: str) -> tuple[int, int] | None:
    try:
        return version_key(version)[:2]
    except ValueError:
        return None
