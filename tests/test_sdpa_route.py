"""Scaled-dot-product attention is judged by what MPS runs (attention.cpp, SDPBackend::math).

Expectations come from the operator lists: every op the portable math calls (bmm, mul,
_safe_softmax -> _softmax/isneginf/all.dim/where.self_out, tril, where.self, and backward
bmm/_softmax_backward_data/mul/add) is native in 2.0.1, 2.8.0 and 2.15.0, except that 2.0.1 has
no ``_safe_softmax`` (its math called softmax): not judged there rather than guessed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from fallback_probe import oplists
from fallback_probe.api import Probe
from fallback_probe.oplists import OpEntry, OpList
from fallback_probe.records import OpStatus, Verdict

RELEASES = ("2.0.1", "2.8.0", "2.15.0")


def plain() -> None:
    q = torch.randn(1, 2, 4, 8, device="mps", requires_grad=True)
    F.scaled_dot_product_attention(q, q, q).sum().backward()


def masked() -> None:
    q = torch.randn(1, 2, 4, 8, device="mps", requires_grad=True)
    mask = torch.ones(4, 4, dtype=torch.bool, device="mps").tril()
    F.scaled_dot_product_attention(q, q, q, attn_mask=mask).sum().backward()
    F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    q4 = torch.randn(1, 4, 4, 8, device="mps", requires_grad=True)  # grouped-query (llama)
    F.scaled_dot_product_attention(q4, q, q, enable_gqa=True).sum().backward()


def _probe(fn: Callable[[], None], **kw: object) -> Probe:
    with Probe(mode="predict", **kw) as p:  # type: ignore[arg-type]
        fn()
    return p


def _by_verdict(p: Probe, verdict: Verdict) -> set[str]:
    return {r.op for r in p.report.ops if r.verdict is verdict}


@pytest.mark.parametrize("fn", [plain, masked])
@pytest.mark.parametrize("release", RELEASES)
def test_attention_with_grad_is_judged_by_the_portable_math(fn, release: str) -> None:
    p = _probe(fn, torch_version=release)
    assert _by_verdict(p, Verdict.FALLBACK) == set()
    assert _by_verdict(p, Verdict.UNSUPPORTED) == set()
    ops = {r.op: r for r in p.report.ops}
    assert not [r.op for r in p.report.ops if "decomposes into portable ops" in r.reason]
    # Neither the routed calls nor their targets are rows: their children are.
    assert not [op for op in ops if "attention" in op or "_for_cpu" in op]
    assert {"aten::bmm", "aten::_softmax_backward_data"} <= set(ops)
    unjudged = {n.op for n in p.report.not_judged}
    if release == "2.0.1":
        assert unjudged == {"aten::_safe_softmax"}
    else:
        assert ops["aten::isneginf"].verdict is Verdict.NATIVE  # _safe_softmax's body
        assert unjudged == set()


def _without(release: str, *missing: str) -> OpList:
    entries = {e.op: e for e in oplists.load(release).entries()}
    for op in missing:
        entries[op] = OpEntry(op, OpStatus.MISSING)
    return OpList("custom", entries)


def test_an_op_of_the_math_body_without_kernel_falls_back() -> None:
    # Forward (isneginf inside _safe_softmax) and backward (_softmax_backward_data) bodies.
    ol = _without("2.15.0", "aten::isneginf", "aten::_softmax_backward_data")
    p = _probe(plain, oplist=ol)
    assert _by_verdict(p, Verdict.FALLBACK) == {"aten::isneginf", "aten::_softmax_backward_data"}


def test_without_grad_mps_runs_math_for_mps_where_the_release_has_it() -> None:
    def nograd() -> None:
        q = torch.randn(1, 2, 4, 8, device="mps")
        F.scaled_dot_product_attention(q, q, q, is_causal=True)

    new = _probe(nograd, torch_version="2.15.0")
    made = {"aten::empty.memory_format", "aten::normal_"}  # randn
    assert {r.op: r.verdict for r in new.report.ops if r.op not in made} == {
        "aten::_scaled_dot_product_attention_math_for_mps": Verdict.NATIVE
    }

    # Not contiguous: the portable math, even where _math_for_mps exists.
    def strided() -> None:
        q = torch.randn(1, 4, 2, 8, device="mps").transpose(1, 2)
        F.scaled_dot_product_attention(q, q, q)

    p = _probe(strided, oplist=_without("2.15.0", "aten::bmm"))
    assert _by_verdict(p, Verdict.FALLBACK) == {"aten::bmm"}
    old = _probe(nograd, torch_version="2.0.1")
    assert "aten::_scaled_dot_product_attention_math_for_mps" not in {r.op for r in old.report.ops}
    assert "aten::bmm" in {r.op for r in old.report.ops}
