"""Predict verdicts the way the MPS dispatcher would decide them (docs/verdicts.md).

Pure functions over records: a trace is judged against any number of releases without
running the model again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fallback_probe.classify.routes import (
    CONDITIONAL_TARGETS,
    ROUTES,
    TRANSPOSED_ROUTES,
    is_cpu_only,
)
from fallback_probe.oplists import OpEntry, OpList
from fallback_probe.records import EMPTY_BODY, TRANSPOSED, UNTRACED, OpCall, OpStatus, Verdict

NO_FLOAT64 = frozenset({"float64", "complex128"})
NEEDS_MACOS_14 = frozenset({"bfloat16", "complex64"})
# Calls that move data by design (mps-facts §9): syncs, not fallbacks.
SYNC_OPS = frozenset({"aten::_local_scalar_dense"})


@dataclass(frozen=True, slots=True)
class Judgement:
    """One call's verdict: ``op`` is the op the backend sees (a delegate or route target)."""

    call: OpCall
    op: str
    verdict: Verdict | None  # None: not judged (see ``reason``)
    reason: str
    share: float = 1.0  # of the call's tensors, when one call fell back several times


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def dtype_verdict(call: OpCall, macos: str) -> tuple[Verdict, str] | None:
    """MPS refuses some dtypes outright, whatever kernel the op has (mps-facts §6)."""
    return _dtype_verdict(call, _version_tuple(macos) < (14,))


def _dtype_verdict(
    call: OpCall, old_macos: bool, inside: bool = False
) -> tuple[Verdict, str] | None:
    """``inside``: the call runs in a composite's body. A body traced off the device takes
    torch's non-MPS branch where it checks the device, and those branches make float64 helper
    tensors that the MPS branch makes in float32 (``get_atol_rtol`` for ``linalg.pinv``,
    ``matrix_rank``): there float64 says nothing about the Mac. What the script put on the
    device is refused at the composite itself, which is judged before its body."""
    for t in (*call.inputs, *call.outputs):
        if not t.on_device:
            continue
        if t.dtype in NO_FLOAT64 and not inside:
            return Verdict.UNSUPPORTED, f"MPS has no {t.dtype}"
        if old_macos and t.dtype in NEEDS_MACOS_14:
            return Verdict.UNSUPPORTED, f"{t.dtype} on MPS needs macOS 14 or newer"
    return None


def _entry_verdict(
    op: str, entry: OpEntry, release: str, oplist: OpList
) -> tuple[str, Verdict | None, str]:
    """Verdict for an op the backend reaches; ``None`` means: judge what it ran instead."""
    status = entry.status
    if entry.error_kernel:
        return op, Verdict.UNSUPPORTED, f"the MPS kernel of {op} only raises in {release}"
    if status is OpStatus.NATIVE:
        return op, Verdict.NATIVE, f"MPS kernel in {release}"
    if status is OpStatus.EXPLICIT_FALLBACK:
        # Registered itself (2.0 linalg_vector_norm): reached as itself. Only an op that
        # inherits the registration from its delegate (2.0 sgn <- sgn.out) reaches the
        # delegate, through its generated wrapper.
        delegate = oplist.get(entry.delegate) if entry.delegate else None
        inherited = delegate is not None and delegate.status is OpStatus.EXPLICIT_FALLBACK
        reached = entry.delegate if inherited else op
        via = f" (reaches the backend as {reached})" if reached != op else ""
        return (
            reached,
            Verdict.FALLBACK,
            f"registered straight to the CPU fallback in {release}{via}",
        )
    if status is OpStatus.MISSING:
        reached = entry.delegate or op
        via = f" (reaches the backend as {reached})" if reached != op else ""
        return reached, Verdict.FALLBACK, f"no MPS kernel in {release}{via}"
    return op, None, f"{status.value} in {release}"


# Composites the recorder never opens other than views, and why each is native on MPS.
_JUDGED_WHOLE = {
    "aten::copy_": "copies with MPS's own copy inside its body (Copy.cpp: mps_copy_)",
    "aten::detach": "metadata only",
    "aten::lift_fresh": "metadata only",
}


class _Prepared:
    """What judging needs of a trace whatever the release: the call tree and, per call,
    whether it touches the device and what its dtypes alone decide. Built once for a matrix
    of releases (the 7B trace has ~3,000 calls, judged 16 times)."""

    __slots__ = ("roots", "children", "facts")

    def __init__(self, trace: Sequence[OpCall], macos: str) -> None:
        self.children: dict[int, list[OpCall]] = {}
        self.roots: list[OpCall] = []
        for call in trace:
            if call.parent is None:
                self.roots.append(call)
            else:
                self.children.setdefault(call.parent, []).append(call)
        old_macos = _version_tuple(macos) < (14,)
        self.facts: dict[int, tuple[bool, tuple[Verdict, str] | None]] = {
            c.index: (c.touches_device, _dtype_verdict(c, old_macos, c.parent is not None))
            for c in trace
        }


def judge(
    trace: Sequence[OpCall], oplist: OpList, macos: str, prepared: _Prepared | None = None
) -> list[Judgement]:
    """Judge every device call of a trace against one release's operator list.

    A composite whose status lets it decompose is judged by the calls recorded inside it;
    one that the release registers directly (or routes) is judged itself and its children
    are skipped — as the dispatcher does.
    """
    prep = prepared if prepared is not None else _Prepared(trace, macos)
    release = oplist.torch_version
    children = prep.children
    facts = prep.facts
    out: list[Judgement] = []
    by_op: dict[str, tuple[str, Verdict | None, str] | None] = {}  # an op's entry verdict
    stack = list(reversed(prep.roots))
    while stack:
        call = stack.pop()
        kids = children.get(call.index, ())
        j = _judge_one(call, bool(kids), oplist, release, facts[call.index], by_op)
        if j is None:
            stack.extend(reversed(kids))
        else:
            out.append(j)
    return out


def _judge_one(
    call: OpCall,
    has_children: bool,
    oplist: OpList,
    release: str,
    facts: tuple[bool, tuple[Verdict, str] | None],
    by_op: dict[str, tuple[str, Verdict | None, str] | None],
) -> Judgement | None:
    op = call.op
    touches_device, by_dtype = facts
    if not touches_device:
        return None if has_children else Judgement(call, op, None, "ran on the CPU by the script")
    if call.error is not None:  # the emulated device saw a Mac refuse it (dtype, devices)
        return Judgement(call, op, Verdict.UNSUPPORTED, f"a Mac raises {call.error}")
    if op in SYNC_OPS:
        return Judgement(call, op, Verdict.NATIVE, "a sync (.item()), not a fallback")
    if by_dtype is not None:
        return Judgement(call, op, by_dtype[0], by_dtype[1])
    routes = ROUTES.get(op)
    if routes is not None and TRANSPOSED in call.notes:
        routes = TRANSPOSED_ROUTES.get(op, routes)
    if routes is not None:
        for target in routes:
            entry = oplist.get(target)
            condition = CONDITIONAL_TARGETS.get(target)
            if entry is None or (condition is not None and condition not in call.notes):
                continue
            name, verdict, reason = _entry_verdict(target, entry, release, oplist)
            if verdict is None:
                # A composite target: judged by the body the recorder filed under the call.
                if has_children:
                    return None
                untraced = next((n for n in call.notes if n.startswith(UNTRACED)), None)
                why = untraced or f"{UNTRACED}: the recorder traces no body for this route"
                return Judgement(call, op, None, f"on MPS it runs as {target}, {reason}; {why}")
            return Judgement(call, name, verdict, f"{reason}; on MPS {op} runs as {target}")
        return Judgement(call, op, None, f"none of {', '.join(routes)} exists in {release}")
    if op in by_op:
        known = by_op[op]
    else:
        entry = oplist.get(op)
        known = by_op[op] = (
            None if entry is None else _entry_verdict(op, entry, oplist.release_of(op), oplist)
        )
    if known is None:
        if is_cpu_only(op):
            return Judgement(call, op, None, "a CPU-only kernel with no MPS counterpart known")
        if not op.startswith("aten::"):
            return Judgement(call, op, None, "registered by another library: not in the list")
        return Judgement(call, op, None, f"not an op of torch {release}")
    name, verdict, reason = known
    if verdict is not None:
        return Judgement(call, name, verdict, reason)
    if has_children:
        return None
    untraced = next((n for n in call.notes if n.startswith(UNTRACED)), None)
    if untraced is not None:  # what it calls is unknown: no verdict rather than a guess
        return Judgement(call, op, None, f"{reason}, and its {untraced}")
    if EMPTY_BODY in call.notes:
        return Judgement(call, op, Verdict.NATIVE, f"{reason}; its body calls no other op")
    # Not opened on purpose (tracer.NEVER_DECOMPOSE, or a view whose body reaches only view
    # ops, native in every judged list).
    why = _JUDGED_WHOLE.get(op, "a view: its body reaches only view ops")
    return Judgement(call, op, Verdict.NATIVE, f"{reason}; {why}")


def judge_all(
    trace: Sequence[OpCall], oplists: Iterable[OpList], macos: str
) -> dict[str, list[Judgement]]:
    """``judge`` against each list, sharing the work that does not depend on the release."""
    prepared = _Prepared(trace, macos)
    return {ol.torch_version: judge(trace, ol, macos, prepared) for ol in oplists}
