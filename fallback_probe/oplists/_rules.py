"""The status rules: parsed ``native_functions.yaml`` entries -> ``{op: OpEntry}``.

Pure functions, no I/O. The rules mirror torchgen (``torchgen/model.py``,
``NativeFunction.from_yaml``) and the dispatcher's table rules (mps-facts §5):

1. the reviewed per-release table (explicit_fallbacks.json) wins for the ops it lists;
2. ``MPS`` among a ``dispatch:`` entry's comma-separated keys -> native;
3. ``structured_delegate: X`` -> the status of X when X runs on the key (native or explicit
   fallback) or X is itself composite-explicit (its body is then what runs: composite), else
   missing; the delegate is recorded because a functional op without a kernel reaches the
   fallback through a generated wrapper as X;
4. ``CompositeImplicitAutograd`` among the keys, or no ``dispatch:`` at all -> composite_implicit
   (torchgen adds that key itself when ``dispatch:`` is absent; ``dispatch: {}`` adds nothing);
5. ``CompositeExplicitAutograd`` / ``CompositeExplicitAutogradNonFunctional`` -> composite_explicit;
6. anything else -> missing (the boxed fallback);
7. each ``autogen:`` name is an extra overload with a generated CompositeExplicitAutograd kernel,
   except that torchgen generates nothing for a group whose entries are all composite-implicit
   (``native_function_generation.py``); from 2.6 on it does for such groups tagged ``core``.
   It also skips groups that are all ``manual_cpp_binding``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from fallback_probe.oplists import OpEntry
from fallback_probe.records import OpStatus

IMPLICIT = "CompositeImplicitAutograd"
EXPLICIT = ("CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional")


class RuleError(ValueError):
    """The yaml or the table is inconsistent (e.g. a table op the release does not define)."""


@dataclass(frozen=True, slots=True)
class YamlEntry:
    """The parts of one ``- func:`` entry that decide a status."""

    name: str  # yaml OperatorName: "add.out", "relu"
    dispatch_keys: frozenset[str] | None = None  # None: no dispatch: section
    structured_delegate: str | None = None  # "add.out"
    autogen: tuple[str, ...] = ()
    core: bool = False  # tags include "core"
    manual_cpp_binding: bool = False

    def composite_implicit(self) -> bool:
        """torchgen's has_composite_implicit_autograd_kernel."""
        if self.dispatch_keys is None:
            return self.structured_delegate is None
        return IMPLICIT in self.dispatch_keys


@dataclass(frozen=True, slots=True)
class ReleaseTable:
    """One release's registrations made outside the yaml (explicit_fallbacks.json)."""

    explicit_fallback: frozenset[str] = field(default_factory=frozenset)
    native: frozenset[str] = field(default_factory=frozenset)
    error_kernel: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_json(cls, raw: Mapping[str, Iterable[str]]) -> ReleaseTable:
        return cls(
            frozenset(raw.get("explicit_fallback", ())),
            frozenset(raw.get("native", ())),
            frozenset(raw.get("error_kernel", ())),
        )

    def names(self) -> frozenset[str]:
        return self.explicit_fallback | self.native | self.error_kernel


def op_id(yaml_name: str) -> str:
    """``add.out`` -> ``aten::add.out``; ``relu`` -> ``aten::relu``."""
    return "aten::" + yaml_name


def parse_entries(doc: object) -> list[YamlEntry]:
    """The ``- func:`` entries of a loaded native_functions.yaml."""
    if not isinstance(doc, list):
        raise RuleError("native_functions.yaml is not a list of entries")
    out = []
    for raw in doc:
        if not isinstance(raw, dict) or not isinstance(raw.get("func"), str):
            raise RuleError(f"entry without a func: {raw!r:.80}")
        out.append(parse_entry(raw))
    return out


def parse_entry(raw: Mapping[str, object]) -> YamlEntry:
    func = str(raw["func"])
    name = func.split("(", 1)[0].strip()
    if not name or " " in name or "::" in name:
        raise RuleError(f"cannot read an operator name from {func!r}")
    dispatch = raw.get("dispatch")
    keys: frozenset[str] | None = None
    if dispatch is not None:
        if not isinstance(dispatch, dict):
            raise RuleError(f"{name}: dispatch is not a mapping")
        keys = frozenset(
            key.strip() for spec in dispatch if spec != "__line__" for key in spec.split(",")
        )
    delegate = raw.get("structured_delegate")
    autogen = raw.get("autogen") or ""
    if not isinstance(autogen, str) or (delegate is not None and not isinstance(delegate, str)):
        raise RuleError(f"{name}: autogen / structured_delegate must be strings")
    tags = raw.get("tags") or []
    return YamlEntry(
        name=name,
        dispatch_keys=keys,
        structured_delegate=delegate,
        autogen=tuple(part.strip() for part in autogen.split(",") if part.strip()),
        core="core" in ([tags] if isinstance(tags, str) else tags),
        manual_cpp_binding=raw.get("manual_cpp_binding") is True,
    )


def classify(
    entries: Iterable[YamlEntry],
    table: ReleaseTable = ReleaseTable(),
    key: str = "MPS",
    sparse_keys: tuple[str, ...] = ("SparseMPS", "SparseCsrMPS"),
    core_composites_autogen: bool = True,
) -> dict[str, OpEntry]:
    """Every overload (including generated ones) -> its OpEntry for dispatch key ``key``.

    ``core_composites_autogen``: whether this release's torchgen generates the ``autogen:``
    variants of core-tagged composite-implicit ops (2.6+; see :func:`autogen_rule`).
    """
    entries = list(entries)
    by_name: dict[str, YamlEntry] = {}
    for entry in entries:
        if entry.name in by_name:
            raise RuleError(f"operator {entry.name} is defined twice")
        by_name[entry.name] = entry
    sources: dict[str, list[YamlEntry]] = {}
    for entry in entries:
        for name in entry.autogen:  # 2.0 lists some twice (functional and in-place entry)
            if name in by_name:
                raise RuleError(f"autogen {name} is also a func entry")
            sources.setdefault(name, []).append(entry)
    for name, group in sources.items():
        if _generated(group, core_composites_autogen):
            by_name[name] = YamlEntry(name=name, dispatch_keys=frozenset(EXPLICIT[:1]))
    unknown = sorted(table.names() - by_name.keys())
    if unknown:
        raise RuleError(f"the release table names ops this release does not define: {unknown}")
    statuses: dict[str, OpStatus] = {}

    def status_of(name: str, seen: tuple[str, ...] = ()) -> OpStatus:
        if name in statuses:
            return statuses[name]
        if name in seen:
            raise RuleError(f"structured_delegate cycle: {' -> '.join((*seen, name))}")
        entry = by_name.get(name)
        if entry is None:
            raise RuleError(f"{seen[-1]}: structured_delegate {name} is not defined")
        statuses[name] = _own_status(entry, table, key, lambda d: status_of(d, (*seen, name)))
        return statuses[name]

    result = {}
    for name in sorted(by_name):
        entry = by_name[name]
        keys = entry.dispatch_keys or frozenset()
        result[op_id(name)] = OpEntry(
            op=op_id(name),
            status=status_of(name),
            delegate=op_id(entry.structured_delegate) if entry.structured_delegate else None,
            sparse_keys=tuple(k for k in sparse_keys if k in keys),
            error_kernel=name in table.error_kernel,
        )
    return result


def _generated(group: list[YamlEntry], core_composites_autogen: bool) -> bool:
    """Does torchgen generate the autogen variant these entries declare?"""
    if all(entry.manual_cpp_binding for entry in group):
        return False
    if all(entry.composite_implicit() for entry in group):
        return core_composites_autogen and any(entry.core for entry in group)
    return True


def autogen_rule(native_function_generation_py: str | None) -> bool:
    """Read from the release's own torchgen whether core composite-implicit ops get variants.

    torchgen <= 2.5: ``if are_manual or has_view_ops or are_composite_implicit: continue``;
    2.6+: ``... or are_composite_implicit and not is_core``. Anything else is a new rule to
    review, so it is an error rather than a guess.
    """
    source = native_function_generation_py or ""
    if re.search(r"are_composite_implicit\s+and\s+not\s+is_core\b", source):
        return True
    if re.search(r"or\s+are_composite_implicit\s*:", source):
        return False
    raise RuleError("torchgen's rule for generating autogen variants changed: review _rules.py")


def _own_status(
    entry: YamlEntry, table: ReleaseTable, key: str, delegate_status: Callable[[str], OpStatus]
) -> OpStatus:
    if entry.name in table.explicit_fallback:
        return OpStatus.EXPLICIT_FALLBACK
    if entry.name in table.native or entry.name in table.error_kernel:
        return OpStatus.NATIVE
    keys = entry.dispatch_keys
    if keys is not None and key in keys:
        return OpStatus.NATIVE
    if entry.structured_delegate is not None:
        # The op's generated wrapper (or its own composite kernel) calls X: what X's entry for
        # the key runs is what the call reaches. A composite X runs its body on the device, so
        # "missing, delegate X" would name a fallback that never happens (all.dims, 2.2+).
        status = delegate_status(entry.structured_delegate)
        if status in (OpStatus.NATIVE, OpStatus.EXPLICIT_FALLBACK, OpStatus.COMPOSITE_EXPLICIT):
            return status
        return OpStatus.MISSING
    if keys is None or IMPLICIT in keys:
        return OpStatus.COMPOSITE_IMPLICIT
    if any(k in keys for k in EXPLICIT):
        return OpStatus.COMPOSITE_EXPLICIT
    return OpStatus.MISSING
