"""An explicit CPU-fallback registration on an ``.out`` op catches the functional call too.

MPS registered ``sgn.out`` and ``bitwise_*_shift.Tensor_out`` straight to the CPU fallback in
early releases. A script calls the functional op (``torch.sgn``); the backend sees its
structured delegate, and PyTorch's warning names that: ``aten::sgn.out``. An op registered
itself (2.0's ``linalg_vector_norm``) is reached as itself. Real calls, on the emulated ``mps``
device, judged by the shipped lists.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fallback_probe.api import Probe
from fallback_probe.records import Verdict
from fallback_probe.report import OpRow


def _rows(release: str, fn: Callable[[], object]) -> dict[str, OpRow]:
    with Probe(mode="predict", torch_version=release) as p:
        fn()
    return {r.op: r for r in p.report.ops}


def _sgn() -> object:
    return torch.sgn(torch.randn(8, device="mps"))


def _vector_norm() -> object:
    return torch.linalg.vector_norm(torch.randn(8, device="mps"))


def _left_shift() -> object:
    x = torch.arange(8, device="mps")
    return torch.bitwise_left_shift(x, x)


def _right_shift() -> object:
    x = torch.arange(8, device="mps")
    return torch.bitwise_right_shift(x, x)


CASES = [
    ("2.0.1", _sgn, "aten::sgn", "aten::sgn.out"),
    ("2.1.2", _sgn, "aten::sgn", "aten::sgn.out"),
    *(
        (release, fn, f"aten::{name}.Tensor", f"aten::{name}.Tensor_out")
        for release in ("2.0.1", "2.1.2", "2.2.2", "2.3.1", "2.4.1")
        for fn, name in ((_left_shift, "bitwise_left_shift"), (_right_shift, "bitwise_right_shift"))
    ),
]


@pytest.mark.parametrize(
    ("release", "fn", "called", "reached"),
    CASES,
    ids=[f"{c[3].removeprefix('aten::')}-{c[0]}" for c in CASES],
)
def test_functional_call_is_reported_as_the_registered_delegate(
    release: str, fn: Callable[[], object], called: str, reached: str
) -> None:
    rows = _rows(release, fn)
    assert called not in rows  # the backend never sees the functional op
    row = rows[reached]
    assert row.verdict is Verdict.FALLBACK
    assert row.called_as == (called,)
    assert f"reaches the backend as {reached}" in row.reason
    assert "straight to the CPU fallback" in row.reason


def test_an_op_registered_itself_is_reached_as_itself_not_as_its_delegate() -> None:
    rows = _rows("2.0.1", _vector_norm)
    assert "aten::linalg_vector_norm.out" not in rows
    row = rows["aten::linalg_vector_norm"]
    assert (row.verdict, row.called_as) == (Verdict.FALLBACK, ())
    assert row.reason == "registered straight to the CPU fallback in 2.0.1"


@pytest.mark.parametrize(
    ("release", "fn", "op"),
    [
        ("2.2.2", _sgn, "aten::sgn"),
        ("2.1.2", _vector_norm, "aten::linalg_vector_norm"),
        ("2.5.1", _left_shift, "aten::bitwise_left_shift.Tensor"),
    ],
)
def test_once_the_delegate_has_a_kernel_the_functional_op_is_native(
    release: str, fn: Callable[[], object], op: str
) -> None:
    rows = _rows(release, fn)
    assert rows[op].verdict is Verdict.NATIVE
    assert not [r for r in rows.values() if r.verdict is not Verdict.NATIVE]
