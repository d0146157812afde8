"""A composite that passes a Python scalar on as a wrapped-number tensor is traced and judged.

``bitwise_left_shift.Tensor_Scalar`` (CompositeExplicitAutograd) calls
``bitwise_left_shift.Tensor`` with its scalar wrapped; a dispatch mode receives that argument
as a plain ``int`` (found by the render helper's rule audit: the probe crashed without
emulation and left the call not judged with it).
"""

from __future__ import annotations

import pytest
import torch

from fallback_probe.api import Probe
from fallback_probe.records import Verdict


@pytest.mark.parametrize("emulate", [True, False])
@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("2.4.1", {"aten::bitwise_left_shift.Tensor_out": "fallback"}),  # explicit to 2.4
        ("2.5.1", {}),
    ],
)
def test_scalar_shift_reaches_the_tensor_overload(emulate: bool, release: str, expected) -> None:  # type: ignore[no-untyped-def]
    with Probe(mode="predict", torch_version=release, emulate=emulate) as p:
        x = torch.arange(8, device="mps" if emulate else "cpu")
        y = torch.bitwise_left_shift(x, 1)
    assert p.collection is not None and p.collection.error is None
    assert y.cpu().tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    report = p.report
    problems = {r.op: r.verdict.value for r in report.rows(Verdict.FALLBACK, Verdict.UNSUPPORTED)}
    assert problems == expected
    assert not report.not_judged
