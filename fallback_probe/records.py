"""The vocabulary every stage shares: op statuses, verdicts, and one frozen record per op call.

Records keep no tensors: only names, dtypes, shapes and byte counts, so a trace of a large
model costs a few hundred bytes per call and can be judged again against any release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class OpStatus(str, Enum):
    """What the MPS dispatch key does with an op in one release (docs/operator-lists.md)."""

    NATIVE = "native"
    EXPLICIT_FALLBACK = "explicit_fallback"
    COMPOSITE_IMPLICIT = "composite_implicit"
    COMPOSITE_EXPLICIT = "composite_explicit"
    MISSING = "missing"


class Verdict(str, Enum):
    """The three answers a user gets for an op."""

    NATIVE = "native"
    FALLBACK = "fallback"
    UNSUPPORTED = "unsupported"


class Mode(str, Enum):
    LIVE = "live"
    PREDICTED = "predicted"


# A note the recorder puts on a convolution call that was transposed: MPS routes it elsewhere.
TRANSPOSED = "transposed"
# The start of a note on a composite whose body could not be run to see what it calls.
UNTRACED = "body not traced"
# A note on a composite whose body ran and called no other op.
EMPTY_BODY = "body calls no op"
# A note on an attention call MPS would run as ``_scaled_dot_product_attention_math_for_mps``
# where the release has it (collect/sdpa.py); its children are the portable math otherwise.
MATH_FOR_MPS = "no grad, dropout 0, contiguous"


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """What the report needs of one tensor argument or result."""

    dtype: str  # torch's short name, e.g. "float32"
    shape: tuple[int, ...]
    nbytes: int
    on_device: bool  # on the probed device (mps, or the emulated / test device)


@dataclass(frozen=True, slots=True)
class OpCall:
    """One call of one ATen op overload, as the probe saw it."""

    index: int  # position in the trace
    op: str  # "aten::name" or "aten::name.overload", PyTorch's own spelling
    parent: int | None  # index of the composite call this one ran inside, if any
    module: str  # deepest module path, "" at top level
    backward: bool
    source: str  # "path/to/file.py:LINE" of the user's code, "" if unknown
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    # Live evidence (empty / None in predict mode):
    fallback_ops: tuple[str, ...] = ()  # ops named by fallback warnings raised inside this call
    to_cpu: bool = False  # the profiler showed aten::_to_cpu directly under this call
    error: str | None = None  # the MPS-specific error this call raised, if it did
    seconds: float | None = None  # wall time of the call (live only)
    notes: tuple[str, ...] = field(default=())  # e.g. "placeholder result" under --device meta

    @property
    def touches_device(self) -> bool:
        return any(t.on_device for t in self.inputs) or any(t.on_device for t in self.outputs)


# -- trace files: one JSON list per call, so a crashed run still leaves what it recorded ----
def call_to_json(c: OpCall) -> list[object]:
    return [
        c.index,
        c.op,
        c.parent,
        c.module,
        c.backward,
        c.source,
        [[t.dtype, list(t.shape), t.nbytes, t.on_device] for t in c.inputs],
        [[t.dtype, list(t.shape), t.nbytes, t.on_device] for t in c.outputs],
        list(c.fallback_ops),
        c.to_cpu,
        c.error,
        c.seconds,
        list(c.notes),
    ]


def call_from_json(v: list) -> OpCall:  # type: ignore[type-arg]
    def metas(items: list) -> tuple[TensorMeta, ...]:  # type: ignore[type-arg]
        return tuple(TensorMeta(d, tuple(s), int(n), bool(o)) for d, s, n, o in items)

    return OpCall(
        index=int(v[0]),
        op=v[1],
        parent=v[2],
        module=v[3],
        backward=bool(v[4]),
        source=v[5],
        inputs=metas(v[6]),
        outputs=metas(v[7]),
        fallback_ops=tuple(v[8]),
        to_cpu=bool(v[9]),
        error=v[10],
        seconds=v[11],
        notes=tuple(v[12]),
    )
