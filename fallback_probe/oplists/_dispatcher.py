"""An operator list read from what the installed dispatcher runs for a key, not from the yaml.

``_rules.py`` predicts statuses from ``native_functions.yaml``; this module asks the live
dispatcher instead, so the two can check each other. For each op it takes the *computed*
dispatch-table entry of the key (``torch._C._dispatch_dump_table``: the kernel a call with that
key runs) and finds which registration provided it (``torch._C._dispatch_dump``: the key's own
kernel, a composite alias key's kernel, or the boxed fallback). The one fact the dispatcher
cannot say is what a generated ``CompositeExplicitAutogradNonFunctional`` wrapper of a
structured op calls: its ``structured_delegate``, read from the installed torch's yaml, whose
own entry is then resolved the same way (mps-facts §5, §11).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from fallback_probe.records import OpStatus

# What the computed entry of a key can be: a kernel registered for the key itself, one of
# the composite alias keys, the boxed fallback, or nothing at all.
OWN, NONFUNCTIONAL, EXPLICIT, IMPLICIT, FALLBACK = (
    "own",
    "CompositeExplicitAutogradNonFunctional",
    "CompositeExplicitAutograd",
    "CompositeImplicitAutograd",
    "fallback",
)
_ENTRY = re.compile(r"^(?P<key>[^:]+): (?P<what>.*)$")
_REGISTERED = re.compile(r"registered at (\S+)")


def computed_source(name: str, key: str) -> str:
    """Which registration the dispatcher runs for ``name`` called with ``key`` (see above)."""
    import torch

    line = _entries(torch._C._dispatch_dump_table(name)).get(key)
    if line is None or "[backend fallback]" in line or line.startswith("fallthrough"):
        return FALLBACK
    if line.endswith("[kernel]"):
        return OWN
    if line.endswith("[math kernel]"):
        return IMPLICIT
    if line.endswith("[default backend kernel]"):
        where = _location(line)
        registrations = _entries(torch._C._dispatch_dump(name))
        for alias in (NONFUNCTIONAL, EXPLICIT):
            if _location(registrations.get(f"{alias}[alias]", "")) == where:
                return alias
    raise ValueError(f"{name}: cannot tell what the dispatcher runs for {key}: {line!r}")


def _location(text: str) -> str | None:
    found = _REGISTERED.search(text)
    return found.group(1) if found is not None else None


def _entries(dump: str) -> dict[str, str]:
    out = {}
    for line in dump.splitlines():
        match = _ENTRY.match(line.strip())
        if match is not None:
            out.setdefault(match["key"], match["what"])
    return out


def resolve(
    names: Iterable[str],
    key: str,
    delegates: Mapping[str, str],
    explicit_fallbacks: Iterable[str] = (),
) -> dict[str, OpStatus]:
    """Each op's status for ``key`` from what the dispatcher runs for it.

    A ``CompositeExplicitAutogradNonFunctional`` entry of an op with a structured delegate is
    the generated wrapper calling the delegate: the op is what the delegate's entry runs
    (native, explicit fallback, composite body, or the fallback reached as the delegate).
    """
    explicit = frozenset(explicit_fallbacks)
    sources: dict[str, str] = {}

    def source(name: str) -> str:
        if name not in sources:
            sources[name] = computed_source(name, key)
        return sources[name]

    def status(name: str, seen: tuple[str, ...] = ()) -> OpStatus:
        if name in explicit:
            return OpStatus.EXPLICIT_FALLBACK
        src = source(name)
        if src == OWN:
            return OpStatus.NATIVE
        if src == IMPLICIT:
            return OpStatus.COMPOSITE_IMPLICIT
        if src == NONFUNCTIONAL and name in delegates and delegates[name] not in seen:
            return status(delegates[name], (*seen, name))
        if src in (NONFUNCTIONAL, EXPLICIT):
            return OpStatus.COMPOSITE_EXPLICIT
        return OpStatus.MISSING

    return {name: status(name) for name in names}
