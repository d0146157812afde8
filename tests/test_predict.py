"""Predict mode end to end on small models: the dispatcher's rules, release by release."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fallback_probe import oplists
from fallback_probe.api import Probe
from fallback_probe.oplists import OpEntry, OpList
from fallback_probe.records import OpStatus, Verdict


def _verdicts(torch_version: str, fn, **kw) -> dict[str, Verdict]:
    with Probe(mode="predict", torch_version=torch_version, emulate=False, **kw) as p:
        fn()
    out: dict[str, Verdict] = {}
    for row in p.report.ops:
        out[row.op] = row.verdict
    return out


def test_missing_op_falls_back_in_every_release() -> None:
    for release in ("2.0.1", "2.15.0"):
        v = _verdicts(release, lambda: torch.mode(torch.randn(16)))
        assert v["aten::mode"] is Verdict.FALLBACK


def test_explicit_registration_on_a_composite_wins_before_it_decomposes() -> None:
    def svd() -> None:
        torch.linalg.svd(torch.randn(4, 4))

    old = _verdicts("2.13.0", svd)
    assert old["aten::linalg_svd"] is Verdict.FALLBACK
    assert "aten::_linalg_svd" not in old  # the decomposition never reaches the backend
    new = _verdicts("2.14.1", svd)
    assert "aten::linalg_svd" not in new
    assert new["aten::_linalg_svd"] is Verdict.NATIVE


def test_explicit_fallback_of_an_ordinary_op_follows_the_release() -> None:
    def fold() -> None:
        nn.functional.fold(torch.randn(1, 3 * 2 * 2, 12), output_size=(4, 5), kernel_size=2)

    assert _verdicts("2.7.1", fold)["aten::col2im"] is Verdict.FALLBACK
    assert _verdicts("2.8.0", fold)["aten::col2im"] is Verdict.NATIVE


def test_float64_is_unsupported_and_bfloat16_needs_macos_14() -> None:
    v = _verdicts("2.15.0", lambda: torch.ones(3, dtype=torch.float64) * 2)
    assert v["aten::mul.Tensor"] is Verdict.UNSUPPORTED
    bf = lambda: torch.ones(3, dtype=torch.bfloat16) * 2  # noqa: E731
    assert _verdicts("2.15.0", bf, macos="13")["aten::mul.Tensor"] is Verdict.UNSUPPORTED
    assert _verdicts("2.15.0", bf, macos="14")["aten::mul.Tensor"] is Verdict.NATIVE


def test_device_routed_composites_are_judged_by_their_mps_targets() -> None:
    conv = nn.Conv2d(3, 4, 3)
    lstm = nn.LSTM(8, 16, batch_first=True)
    q = torch.randn(2, 2, 5, 8, requires_grad=True)

    def run() -> None:
        conv(torch.randn(1, 3, 8, 8)).sum().backward()
        lstm(torch.randn(2, 5, 8))[0].sum().backward()
        nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()

    v = _verdicts("2.15.0", run)
    assert v["aten::_mps_convolution"] is Verdict.NATIVE
    assert v["aten::mps_convolution_backward"] is Verdict.NATIVE
    assert v["aten::_lstm_mps"] is Verdict.NATIVE
    assert v["aten::lstm_mps_backward"] is Verdict.NATIVE
    assert not [op for op in v if "mkldnn" in op or "_for_cpu" in op]
    # With grad MPS runs the portable math (attention.cpp): judged by its ops (test_sdpa_route).
    assert "aten::_scaled_dot_product_attention_math_for_mps" not in v
    assert v["aten::_softmax_backward_data"] is Verdict.NATIVE


def test_functional_op_without_kernel_is_reported_as_its_out_variant() -> None:
    # In 2.0, lerp had no MPS kernel: its functional form reaches the fallback as the .out op
    v = _verdicts("2.0.1", lambda: torch.lerp(torch.randn(3), torch.randn(3), 0.5))
    assert v["aten::lerp.Scalar_out"] is Verdict.FALLBACK
    assert "aten::lerp.Scalar" not in v


def test_all_releases_matrix_and_upgrade_advice() -> None:
    with Probe(mode="predict", torch_version="all", emulate=False) as p:
        torch.linalg.svd(torch.randn(4, 4))
        torch.mode(torch.randn(8))
    m = p.report.matrix
    assert m is not None
    assert m.ops["aten::linalg_svd"]["2.13.0"] == "fallback"
    assert m.ops["aten::linalg_svd"]["2.14.1"] == "native"
    assert m.ops["aten::mode"]["2.15.0"] == "fallback"
    assert m.native_from is None  # mode never gains a kernel
    assert m.upgrade == "upgrade to 2.14.1 removes 1 of 2 problem ops"


def test_rows_carry_module_source_and_bytes() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.mode(self.head(x), dim=-1).values

    net = Net()
    with Probe(mode="predict", torch_version="2.15.0", emulate=False) as p:
        net(torch.randn(2, 4))
    (row,) = [r for r in p.report.ops if r.op == "aten::mode"]
    assert row.modules == ("Net",)
    assert row.sources and row.sources[0].startswith("tests/test_predict.py:")
    assert row.bytes_to_cpu == 2 * 4 * 4
    assert row.bytes_from_cpu == 2 * 4 + 2 * 8


def test_unknown_release_fails_before_running() -> None:
    ran = []
    with pytest.raises(Exception, match="2.99"), Probe(mode="predict", torch_version="2.99"):
        ran.append(1)
    assert not ran


def test_a_failing_block_still_leaves_its_report() -> None:
    with (
        pytest.raises(ZeroDivisionError),
        Probe(mode="predict", torch_version="2.15.0", emulate=False) as p,
    ):
        torch.mode(torch.randn(4))
        1 / 0  # noqa: B018
    r = p.report
    assert r.complete is False
    assert r.error == "ZeroDivisionError: division by zero"
    assert "aten::mode" in [x.op for x in r.ops]  # what ran before the error


def test_transposed_convolution_is_routed_to_its_own_mps_kernels() -> None:
    ct = nn.ConvTranspose2d(4, 3, 3)
    v = _verdicts("2.15.0", lambda: ct(torch.randn(1, 4, 8, 8)).sum().backward())
    assert v["aten::_mps_convolution_transpose"] is Verdict.NATIVE
    assert v["aten::mps_convolution_transpose_backward"] is Verdict.NATIVE
    assert "aten::_mps_convolution" not in v


def test_view_composites_are_judged_whole_when_what_they_reach_is_native() -> None:
    x = torch.randn(2, 3)
    with Probe(mode="predict", torch_version="2.13.0", emulate=False) as p:
        x.t()
    assert [c.op for c in p.trace] == ["aten::t"]
    assert {r.op: r.verdict for r in p.report.ops} == {"aten::t": Verdict.NATIVE}
    # Where as_strided has no kernel, the view is opened and its parts are judged.
    base = oplists.load("2.13.0")
    entries = {e.op: e for e in base.entries()}
    entries["aten::as_strided"] = OpEntry("aten::as_strided", OpStatus.MISSING)
    with Probe(mode="predict", oplist=OpList("custom", entries), emulate=False) as p:
        x.t()
    assert [c.op for c in p.trace] == ["aten::t", "aten::transpose.int", "aten::as_strided"]
    assert {r.op: r.verdict for r in p.report.ops} == {"aten::as_strided": Verdict.FALLBACK}


def test_a_compiled_function_is_recorded_and_dynamo_never_traces_the_probe(
    recwarn: pytest.WarningsRecorder,
) -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return (x.sin() + 1).relu()

    g = torch.compile(f, backend="eager")
    with Probe(mode="predict", torch_version="2.13.0", emulate=False) as p:
        x = torch.randn(4)
        g(x)
        g(x)
    body = {"aten::sin", "aten::add.Tensor", "aten::relu"}
    assert [c.op for c in p.trace if c.op in body] == [
        "aten::sin",
        "aten::add.Tensor",
        "aten::relu",
    ] * 2
    assert not [w for w in recwarn if "ynamo" in str(w.message)]
