"""float64 made inside a composite's body traced off the device is not a Mac's refusal.

``linalg.pinv`` builds its tolerance tensors in float64 on every device but MPS
(``get_atol_rtol`` in LinearAlgebra.cpp); traced on meta its body shows float64 ops that a Mac
never runs. Found by the differential sweep (docs/accuracy.md).
"""

from __future__ import annotations

import pytest
import torch

from fallback_probe.api import Probe
from fallback_probe.records import Verdict


def _problems(release: str, fn) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with Probe(mode="predict", torch_version=release) as p:
        fn()
    return {r.op: r.verdict.value for r in p.report.rows(Verdict.FALLBACK, Verdict.UNSUPPORTED)}


def test_pinv_body_float64_is_not_refused() -> None:
    def run() -> None:
        torch.linalg.pinv(torch.randn(5, 3, device="mps"), rtol=torch.tensor(1e-5, device="mps"))

    # 2.8.0 registers linalg_svd straight to the CPU fallback; nothing else leaves MPS.
    assert _problems("2.8.0", run) == {"aten::linalg_svd": "fallback"}
    assert _problems("2.15.0", run) == {}


@pytest.mark.parametrize("release", ["2.0.1", "2.15.0"])
def test_float64_the_script_puts_on_the_device_is_still_refused(release: str) -> None:
    def run() -> None:
        x = torch.randn(4, 4, device="mps")
        torch.linalg.pinv(x.double())

    assert "unsupported" in _problems(release, run).values()
