"""Per-release MPS operator lists: (op overload, release) -> status and the facts behind it.

The lists are generated from each release's own ``native_functions.yaml`` (see
docs/operator-lists.md) and shipped as ``fallback_probe.operator_lists/torch-X.Y.Z.json``.
Loading never imports torch, so a lookup is cheap enough to run per traced op.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

from fallback_probe.errors import ExitCode, ProbeError
from fallback_probe.records import OpStatus

__all__ = [
    "FORMAT",
    "OpEntry",
    "OpList",
    "UnknownRelease",
    "from_dispatcher",
    "load",
    "load_file",
    "nearest_release",
    "normalize_op",
    "releases",
    "resolve_release",
    "version_key",
]

FORMAT = 1  # bumped when the file layout changes; load_file rejects other formats
_FILE = re.compile(r"torch-(\d+\.\d+\.\d+)\.json\Z")
_VERSION = re.compile(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?")

DtypeTable = Mapping[str, "tuple[str, ...] | str | None"]


@dataclass(frozen=True, slots=True)
class OpEntry:
    """What the MPS key (or another backend key) does with one op overload in one release."""

    op: str  # "aten::add.Tensor" / "aten::relu" (PyTorch's spelling, never ".default")
    status: OpStatus
    # structured_delegate target, "aten::add.out". For a functional op whose delegate has no
    # kernel for the key, the boxed fallback sees the call under this name (mps-facts §5).
    delegate: str | None = None
    sparse_keys: tuple[str, ...] = ()  # "SparseMPS", "SparseCsrMPS" if registered
    error_kernel: bool = False  # the key's kernel only raises (_slow_conv2d_forward)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status.value}
        if self.delegate:
            out["delegate"] = self.delegate
        if self.sparse_keys:
            out["sparse_keys"] = list(self.sparse_keys)
        if self.error_kernel:
            out["error_kernel"] = True
        return out

    @classmethod
    def from_json(cls, op: str, raw: Mapping[str, Any]) -> OpEntry:
        return cls(
            op=op,
            status=OpStatus(raw["status"]),
            delegate=raw.get("delegate"),
            sparse_keys=tuple(raw.get("sparse_keys", ())),
            error_kernel=bool(raw.get("error_kernel", False)),
        )


class UnknownRelease(ProbeError):
    """A torch version with no shipped operator list (exit code 2)."""

    def __init__(self, version: str, known: Iterable[str] | None = None) -> None:
        listed = ", ".join(known if known is not None else releases())
        super().__init__(
            f"unknown torch release {version!r}; known releases: {listed}", ExitCode.USAGE
        )
        self.version = version


def normalize_op(name: str) -> str:
    """``relu`` / ``aten::relu.default`` / ``aten.relu.default`` -> ``aten::relu``."""
    name = name.strip()
    if "::" not in name:
        if name.startswith("aten."):
            name = name[len("aten.") :]
        name = "aten::" + name
    if name.endswith(".default"):
        name = name[: -len(".default")]
    return name


class OpList:
    """One release's (or one live backend's) op statuses.

    A list read from a file keeps its JSON entries and makes an ``OpEntry`` only when one is
    asked for: a probe looks up a few hundred of ~3,000 ops, and ``--torch-version all``
    reads 16 lists in each of the CLI's two processes.
    """

    __slots__ = (
        "torch_version",
        "provenance",
        "_expectations",
        "_raw_expectations",
        "_entries",
        "_raw",
        "_names",
        "_libraries",
    )

    def __init__(
        self,
        torch_version: str,
        entries: Mapping[str, OpEntry],
        provenance: Mapping[str, str] | None = None,
        mps_test_expectations: Mapping[str, DtypeTable] | None = None,
    ) -> None:
        self.torch_version = torch_version
        self.provenance: Mapping[str, str] = MappingProxyType(dict(provenance or {}))
        self._expectations: Mapping[str, DtypeTable] | None = MappingProxyType(
            dict(mps_test_expectations or {})
        )
        self._raw_expectations: Mapping[str, Any] = {}
        self._entries = dict(entries)
        self._raw: Mapping[str, Mapping[str, Any]] = {}  # op -> JSON entry, when read lazily
        self._names: tuple[str, ...] | None = None
        self._libraries: dict[str, str] = {}  # namespace -> release of a merged library list

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> OpList:
        """A list from its parsed JSON file; entries are checked as they are first used."""
        ops = doc["ops"]
        if not isinstance(ops, dict):
            raise TypeError("'ops' is not an object")
        known = {status.value for status in OpStatus}
        for op, raw in ops.items():  # a cheap check of every entry, so a bad file fails here
            if not isinstance(raw, dict) or raw.get("status") not in known:
                raise ValueError(f"entry {op!r} has no valid status")
        ol = cls(doc["torch_version"], {}, doc["provenance"])
        ol._raw = ops
        ol._raw_expectations = doc.get("mps_test_expectations", {})
        ol._expectations = None
        return ol

    @property
    def mps_test_expectations(self) -> Mapping[str, DtypeTable]:
        if self._expectations is None:
            self._expectations = MappingProxyType(
                {
                    table: {name: _dtypes(value) for name, value in rows.items()}
                    for table, rows in self._raw_expectations.items()
                }
            )
        return self._expectations

    def _lookup(self, op: str) -> OpEntry | None:
        entry = self._entries.get(op)
        if entry is None:
            raw = self._raw.get(op)
            if raw is not None:
                entry = self._entries[op] = _entry(op, raw)
        return entry

    def get(self, op: str) -> OpEntry | None:
        entry = self._lookup(op)
        if entry is None:
            entry = self._lookup(normalize_op(op))
        return entry

    def release_of(self, op: str) -> str:
        """Which release decides ``op``: the torch release, or a merged library's
        (``torchvision 0.15.2 (with torch 2.0.1)`` for ``torchvision::`` ops)."""
        return self._libraries.get(op.split("::", 1)[0], self.torch_version)

    def __contains__(self, op: object) -> bool:
        return isinstance(op, str) and self.get(op) is not None

    def __len__(self) -> int:
        return len(self._raw) if self._raw else len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ops())

    def ops(self) -> tuple[str, ...]:
        """Every op overload name, sorted."""
        if self._names is None:
            self._names = tuple(sorted(self._raw if self._raw else self._entries))
        return self._names

    def with_status(self, *statuses: OpStatus) -> Iterator[str]:
        """Names of the ops with one of ``statuses``, without making their entries."""
        if not self._raw:
            return (op for op, e in self._entries.items() if e.status in statuses)
        values = {s.value for s in statuses}
        return (op for op, raw in self._raw.items() if raw.get("status") in values)

    def entries(self) -> Iterator[OpEntry]:
        return (self._lookup(name) for name in self.ops())  # type: ignore[misc]

    def near(self, op: str, n: int = 3) -> list[str]:
        """Up to ``n`` known names that look like ``op`` (for "did you mean")."""
        return near_names(normalize_op(op), self.ops(), n)

    def counts(self) -> dict[str, int]:
        """Ops per status, in OpStatus order (statuses with no op included as 0)."""
        out = {status.value: 0 for status in OpStatus}
        for entry in self.entries():
            out[entry.status.value] += 1
        return out

    def __repr__(self) -> str:
        return f"OpList(torch_version={self.torch_version!r}, ops={len(self)})"


def near_names(op: str, names: Iterable[str], n: int = 3) -> list[str]:
    """difflib suggestions; names sharing the base name (before the overload) come first."""
    names = list(names)
    base = op.split(".", 1)[0]
    same_base = [name for name in names if name.split(".", 1)[0] == base and name != op]
    close = difflib.get_close_matches(op, names, n=n, cutoff=0.6)
    return list(dict.fromkeys([*same_base, *close]))[:n]


def version_key(version: str) -> tuple[int, int, int]:
    """``"2.13.1+cpu"`` -> ``(2, 13, 1)``; raises ValueError if it is not a version."""
    match = _VERSION.match(version)
    if match is None:
        raise ValueError(f"not a torch version: {version!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def _lists_dir() -> Any:
    return resources.files("fallback_probe.operator_lists")


@functools.lru_cache(maxsize=1)
def releases() -> tuple[str, ...]:
    """The listed releases, oldest first, read from the shipped files."""
    found = []
    for item in _lists_dir().iterdir():
        match = _FILE.match(item.name)
        if match:
            found.append(match[1])
    return tuple(sorted(found, key=version_key))


def resolve_release(version: str) -> str:
    """The listed release of ``version``'s major.minor (``2.13.0+cpu``, ``2.14.0.dev2026...``)."""
    known = releases()
    try:
        major_minor = version_key(version)[:2]
    except ValueError:
        raise UnknownRelease(version, known) from None
    for release in known:
        if version_key(release)[:2] == major_minor:
            return release
    raise UnknownRelease(version, known)


def nearest_release(version: str) -> str:
    """Same minor if listed, else the newest older release (the oldest if older than all)."""
    known = releases()
    if not known:
        raise UnknownRelease(version, known)
    try:
        wanted = version_key(version)[:2]
    except ValueError:
        raise UnknownRelease(version, known) from None
    older = [r for r in known if version_key(r)[:2] <= wanted]
    return older[-1] if older else known[0]


def load(release: str, torchvision: str | None = None) -> OpList:
    """The shipped list of a listed release or of any version that resolves to one.

    It also holds the ``torchvision::`` ops of ``torchvision`` (a listed torchvision
    release; ``""`` for none), by default the release paired with ``release``
    (``oplists.torchvision.paired``), so predict mode judges them like ATen ops.
    """
    from fallback_probe.oplists import torchvision as tv

    resolved = resolve_release(release)
    chosen = tv.paired(resolved) if torchvision is None else torchvision
    return _load_resolved(resolved, chosen or "")


@functools.cache
def _load_resolved(release: str, torchvision: str = "") -> OpList:
    text = _lists_dir().joinpath(f"torch-{release}.json").read_text(encoding="utf-8")
    return _parse(text, f"torch-{release}.json", torchvision)


def load_file(path: str | os.PathLike[str]) -> OpList:
    """Any file in the operator-list format (e.g. one built for a release not shipped)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ProbeError(f"cannot read operator list {os.fspath(path)!r}: {exc.strerror}") from exc
    return _parse(text, os.fspath(path))


def _parse(text: str, where: str, torchvision: str = "") -> OpList:
    try:
        doc = json.loads(text)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
        if torchvision:
            doc = _with_torchvision(doc, torchvision)
        oplist = OpList.from_document(doc)
        if torchvision:
            label = doc["provenance"]["torchvision"].split(".json", 1)[0].replace("-", " ")
            oplist._libraries["torchvision"] = f"{label} (with torch {oplist.torch_version})"
        return oplist
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProbeError(f"corrupt operator list {where}: {exc}") from exc


def _with_torchvision(doc: dict[str, Any], release: str) -> dict[str, Any]:
    from fallback_probe.oplists import torchvision as tv

    extra = tv.document(release)
    name = f"torchvision-{extra['torchvision_version']}.json"
    provenance = {**doc["provenance"], "torchvision": f"{name} ({extra['provenance']['wheel']})"}
    return {**doc, "ops": {**doc["ops"], **extra["ops"]}, "provenance": provenance}


_STATUSES = {status.value: status for status in OpStatus}


def _entry(op: str, raw: Mapping[str, Any]) -> OpEntry:
    """``OpEntry.from_json``, with a short path for the usual entry: a status alone."""
    if len(raw) == 1:
        status = _STATUSES.get(raw.get("status"))  # type: ignore[arg-type]
        if status is not None:
            return OpEntry(op, status)
    return OpEntry.from_json(op, raw)


def _dtypes(value: Any) -> tuple[str, ...] | str | None:
    return tuple(value) if isinstance(value, list) else value


def from_dispatcher(
    dispatch_key: str, explicit_fallbacks: Iterable[str] = (), label: str = ""
) -> OpList:
    """Statuses for ``dispatch_key`` read from what the installed torch's dispatcher runs.

    Predicts an out-of-tree backend (e.g. ``PrivateUse1``), and checks the yaml rules the
    shipped lists are built with: each op's status comes from the kernel the computed dispatch
    table holds for the key (``_dispatcher.py``), never from the yaml's keys. Only what a
    generated structured wrapper calls (its ``structured_delegate``) comes from the installed
    torch's own native_functions.yaml.
    """
    import torch

    from fallback_probe.oplists import _dispatcher

    has = torch._C._dispatch_has_kernel_for_dispatch_key
    delegates, delegate_source = _installed_delegates()
    sparse = tuple(
        key for key in (f"Sparse{dispatch_key}", f"SparseCsr{dispatch_key}") if _is_key(key)
    )
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("aten::"))
    explicit = {normalize_op(op) for op in explicit_fallbacks}
    statuses = _dispatcher.resolve(names, dispatch_key, delegates, explicit)
    entries = {
        name: OpEntry(
            op=name,
            status=statuses[name],
            delegate=delegates.get(name),
            sparse_keys=tuple(key for key in sparse if has(name, key)),
        )
        for name in names
    }
    provenance = {
        "source": "live dispatcher (computed dispatch table)",
        "dispatch_key": dispatch_key,
        "torch": torch.__version__,
        "torch_git_version": str(getattr(torch.version, "git_version", "")),
        "structured_delegates": delegate_source,
    }
    if label:
        provenance["label"] = label
    return OpList(torch.__version__, entries, provenance)


def _is_key(name: str) -> bool:
    import torch

    return name in torch._C.DispatchKey.__members__


def _installed_delegates() -> tuple[dict[str, str], str]:
    """``{functional op: delegate}`` from the installed torchgen's packaged yaml, if present."""
    import importlib.util
    from pathlib import Path

    from fallback_probe.oplists import _rules, _yaml

    spec = importlib.util.find_spec("torchgen")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location, "packaged", "ATen", "native", "native_functions.yaml")
        if path.is_file():
            entries = _rules.parse_entries(_yaml.load(path.read_text(encoding="utf-8")))
            delegates = {
                _rules.op_id(e.name): _rules.op_id(e.structured_delegate)
                for e in entries
                if e.structured_delegate
            }
            return delegates, "torchgen/packaged/ATen/native/native_functions.yaml"
    return {}, "unavailable (no torchgen in the installed torch)"
