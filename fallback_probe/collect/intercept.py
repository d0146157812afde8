"""Catch composite ops before they decompose, when some release registers them directly.

A dispatch mode sits below autograd, where ``CompositeImplicitAutograd`` ops have already
been replaced by their parts. A direct MPS registration wins over the decomposition
(mps-facts §5): MPS ≤ 2.13 registers ``linalg_svd`` straight to the CPU fallback, so the whole
call leaves the GPU; 2.5–2.9 have an MPS kernel for ``linalg_lu_factor``, whose parts here
(``linalg_lu_factor_ex``) had none. To see such ops, predict mode registers a pass-through
kernel at ``AutogradCPU``/``AutogradMeta`` (the keys of plain, emulated and meta-backed
tensors alike) that records the call as a parent and then runs the usual decomposition; the
judge uses the parent where the release registers it and the parts elsewhere. The kernels are
removed when the probe ends.
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


# What a direct registration for the MPS key makes of an op: its own kernel or the fallback.
_DIRECT = (OpStatus.EXPLICIT_FALLBACK, OpStatus.NATIVE)
# Native in every listed release and among the most frequent ops of a model, so left to
# decompose (a Python kernel per call would cost more than it tells): their parts here
# (t, addmm, matmul, max_pool2d_with_indices) are native in every listed release too, which
# tests/test_composites.py checks against each list.
JUDGED_BY_PARTS = frozenset({"aten::linear", "aten::max_pool2d"})


@lru_cache(maxsize=8)
def directly_registered_composites(lists: tuple[OpList, ...]) -> tuple[str, ...]:
    """Ops registered for MPS in a judged release (an MPS kernel, or straight to the
    fallback) that decompose above the dispatch mode in this torch. Only the judged releases
    matter: the trace is judged against them alone."""
    names = {op for ol in lists for op in ol.with_status(*_DIRECT)} - JUDGED_BY_PARTS
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
