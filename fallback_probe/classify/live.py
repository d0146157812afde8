"""Verdicts from what a live run observed (docs/verdicts.md, mps-facts §1–3, §9)."""

from __future__ import annotations

from collections.abc import Sequence

from fallback_probe.classify.rules import SYNC_OPS, Judgement
from fallback_probe.records import OpCall, Verdict


def judge_live(trace: Sequence[OpCall]) -> list[Judgement]:
    """Each call: an MPS-specific error → unsupported; a fallback warning or ``_to_cpu``
    under it → fallback (named as the warning names it); otherwise native."""
    out: list[Judgement] = []
    for call in trace:
        if not call.touches_device:
            continue
        if call.error is not None:
            kind = call.notes[0] if call.notes else "error"
            out.append(Judgement(call, call.op, Verdict.UNSUPPORTED, f"raised ({kind})"))
            continue
        if call.fallback_ops:
            # A composite (e.g. _foreach_addcdiv_) can fall back once per tensor: split the
            # bytes between those events rather than count the call's tensors each time.
            share = 1.0 / len(call.fallback_ops)
            for named in call.fallback_ops:
                out.append(
                    Judgement(call, named, Verdict.FALLBACK, "the fallback warning named it", share)
                )
            continue
        if call.to_cpu and call.op not in SYNC_OPS:
            reason = "the profiler showed aten::_to_cpu under it"
            out.append(Judgement(call, call.op, Verdict.FALLBACK, reason))
            continue
        out.append(Judgement(call, call.op, Verdict.NATIVE, "ran on the device"))
    return out
