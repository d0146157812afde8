"""Catch composite ops before they decompose, when some release registers them directly.

A dispatch mode sits below autograd, where ``CompositeImplicitAutograd`` ops have already
been replaced by their parts. MPS ≤ 2.13 registers ``linalg_svd`` straight to the CPU
fallback, so the whole call leaves the GPU (mps-facts §5). To see such ops, predict mode
registers a pass-through kernel at ``AutogradCPU``/``AutogradMeta`` that records the call as a
parent and then runs the usual decomposition; it is removed when the probe ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch._C import DispatchKey

from fallback_probe.collect.tracer import Recorder
from fallback_probe.oplists import OpList
from fallback_probe.records import OpStatus

_KEYS = ("AutogradCPU", "AutogradMeta")


@lru_cache(maxsize=8)
def directly_registered_composites(lists: tuple[OpList, ...]) -> tuple[str, ...]:
    """Ops that are explicit fallbacks in a judged release and composite in this torch. Only
    the judged releases matter: the trace is judged against them alone."""
    names = {op for ol in lists for op in ol.with_status(OpStatus.EXPLICIT_FALLBACK)}
    return tuple(sorted(n for n in names if _decomposes_here(n)))


def _decomposes_here(name: str) -> bool:
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    try:
        return has(name, DispatchKey.CompositeImplicitAutograd) and not has(name, DispatchKey.CPU)
    except RuntimeError:  # not an op of the installed torch
        return False


def _overload(name: str) -> torch._ops.OpOverload:
    ns, _, rest = name.partition("::")
    base, _, overload = rest.partition(".")
    return getattr(getattr(getattr(torch.ops, ns), base), overload or "default")


@contextmanager
def intercepting(recorder: Recorder, names: Iterable[str]) -> Iterator[None]:
    names = tuple(names)
    if not names:
        yield
        return
    lib = torch.library.Library("aten", "IMPL")  # noqa: TOR901 - removed on exit
    try:
        for name in names:
            op = _overload(name)

            def kernel(*args, _op=op, _name=name, **kwargs):  # type: ignore[no-untyped-def]
                with recorder.composite(_name, args, kwargs) as results:
                    result = _op.decompose(*args, **kwargs)
                    results.append(result)
                    return result

            schema_name = name.partition("::")[2]
            for key in _KEYS:
                lib.impl(schema_name, kernel, key)
        yield
    finally:
        lib._destroy()
