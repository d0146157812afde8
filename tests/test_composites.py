"""Composites judged by what they reach on a Mac, on the emulated device too (issue 11).

The expectations come from PyTorch, not from this package: which inner op each wrapper calls
is what the installed torch's own composite kernels call, and whether that op had an MPS
kernel is what each release's macOS wheel says (mps-facts §11).
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fallback_probe import oplists
from fallback_probe.api import Probe
from fallback_probe.collect import shadow, tracer
from fallback_probe.collect.intercept import JUDGED_BY_PARTS
from fallback_probe.records import Verdict

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "tests" / "fixtures" / "scripts" / "composites.py"
INNER = {
    "aten::kthvalue.values",
    "aten::_cummax_helper",
    "aten::_cummin_helper",
    "aten::_logcumsumexp",
    "aten::nanmedian.dim_values",
}


def _problems(ops) -> set[str]:  # type: ignore[no-untyped-def]
    return {o.op for o in ops if o.verdict is not Verdict.NATIVE}


def _probe(release: str, **kw):  # type: ignore[no-untyped-def]
    with Probe(mode="predict", torch_version=release, **kw) as p:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return p


@pytest.mark.parametrize("backing", ["cpu", "meta"])
def test_inner_ops_of_composites_on_the_emulated_device(backing: str, capsys) -> None:  # type: ignore[no-untyped-def]
    old = _probe("2.3.1", device=backing)
    assert _problems(old.report.ops) == INNER
    assert not old.report.not_judged
    assert not any("status alone" in line for line in old.report.limits)
    assert not [o.reason for o in old.report.ops if "runs as other ops" in o.reason]
    new = _probe("2.15.0", device=backing)
    assert _problems(new.report.ops) == set()
    assert {o.op for o in new.report.ops} >= INNER  # reached, and native there


def test_the_chain_of_all_dims_ends_in_its_composite_body() -> None:
    p = _probe("2.3.1")
    trace = p.trace
    by_index = {c.index: c for c in trace}
    dims = next(c for c in trace if c.op == "aten::all.dims")
    kids = [c for c in trace if c.parent == dims.index]
    # The generated wrapper runs (it outranks all.dims' own kernel) and calls all.dims_out...
    assert [c.op for c in kids if c.op != "aten::empty.memory_format"] == ["aten::all.dims_out"]
    out = kids[-1] if kids[-1].op == "aten::all.dims_out" else kids[0]
    # ...whose composite body reduces with all.dim, native in 2.3.1.
    assert "aten::all.dim" in {c.op for c in trace if c.parent == out.index}
    assert all(c.touches_device for c in trace if c.parent is not None)
    assert by_index[dims.index].touches_device
    assert not {o.op for o in p.report.ops} & {"aten::all.dims_out", "aten::any.dims_out"}


def _cli(*args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        r = subprocess.run(
            [sys.executable, "-m", "fallback_probe", str(SCRIPT), *args,
             "--format", "json", "-o", str(out)],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r, json.loads(out.read_text())


def test_through_the_cli_with_the_printed_results_of_the_plain_run() -> None:
    plain = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    r, report = _cli("--torch-version", "2.3.1")
    assert r.stdout == plain  # same numbers, same random draws
    problems = {o["op"] for o in report["ops"] if o["verdict"] != "native"}
    assert problems == INNER


def test_a_composite_does_not_change_its_arguments_twice() -> None:
    x = torch.arange(12.0).reshape(3, 4)
    with Probe(mode="predict", torch_version="2.3.1"):
        y = x.to("mps")
        out_v = torch.empty(0, device="mps")
        out_i = torch.empty(0, dtype=torch.long, device="mps")
        torch.kthvalue(y, 2, dim=1, out=(out_v, out_i))
        z = torch.zeros(3, 4, device="mps").add_(1.0)
        got = (out_v.cpu(), out_i.cpu(), z.cpu())
    want = torch.kthvalue(x, 2, dim=1)
    assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)
    assert torch.equal(got[2], torch.ones(3, 4))


def test_a_body_that_cannot_run_is_not_judged_rather_than_native(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # _logcumsumexp has no meta kernel: with no room to run it on zeros, logcumsumexp's
    # body stays unknown, and the call must not be called native.
    monkeypatch.setattr(shadow, "MAX_MATERIALIZED_BYTES", 0)
    monkeypatch.setattr(tracer, "_BODIES", {})  # bodies seen by earlier tests were traced
    with Probe(mode="predict", torch_version="2.3.1") as p:
        torch.logcumsumexp(torch.randn(4, 6, device="mps"), 1)
    judged = {o.op for o in p.report.ops}
    assert "aten::logcumsumexp" not in judged and "aten::_logcumsumexp" not in judged
    reasons = {n.op: n.reason for n in p.report.not_judged}
    assert "body not traced" in reasons["aten::logcumsumexp"]


def test_each_body_is_traced_once_per_signature() -> None:
    with Probe(mode="predict", torch_version="2.3.1") as p:
        x = torch.randn(4, 6, device="mps")
        for _ in range(3):
            torch.cummax(x, 1)
        torch.cummax(torch.randn(2, 3, device="mps"), 0)
    cummax = [c for c in p.trace if c.op == "aten::cummax"]
    helper = [c for c in p.trace if c.op == "aten::_cummax_helper"]
    assert len(cummax) == 4 and len(helper) == 4
    assert [h.inputs[0].shape for h in helper] == [(4, 6)] * 3 + [(2, 3)]
    assert len({c.index for c in p.trace}) == len(p.trace)


def test_composites_that_decompose_above_the_mode_on_the_emulated_device() -> None:
    def svd() -> None:
        torch.linalg.svd(torch.randn(4, 4, device="mps"))

    with Probe(mode="predict", torch_version="2.13.0") as old:
        svd()
    assert _problems(old.report.ops) == {"aten::linalg_svd"}
    with Probe(mode="predict", torch_version="2.14.1") as new:
        svd()
    assert _problems(new.report.ops) == set()
    assert "aten::_linalg_svd" in {o.op for o in new.report.ops}


def test_the_release_matrix_judges_the_inner_ops() -> None:
    api = _probe("all").report.matrix
    assert api is not None
    _, report = _cli("--torch-version", "all")
    matrix = report["matrix"]
    assert dict(api.ops) == matrix["ops"] and api.native_from == matrix["native_from"]
    rows = matrix["ops"]
    assert set(rows) == INNER
    assert {op: rows[op]["2.3.1"] for op in INNER} == dict.fromkeys(INNER, "fallback")
    assert {op: rows[op]["2.15.0"] for op in INNER} == dict.fromkeys(INNER, "native")
    assert matrix["native_from"] == "2.9.1"  # kthvalue.values and _logcumsumexp: 2.9


@pytest.mark.parametrize("release", oplists.releases())
def test_ops_left_to_decompose_reach_only_native_parts(release: str) -> None:
    # A Mac runs linear and max_pool2d as MPS kernels of their own; the probe judges their
    # parts instead (intercept.JUDGED_BY_PARTS), which is only right while those are native.
    x = torch.randn(2, 3, 8, 8)
    with Probe(mode="predict", torch_version=release, emulate=False) as p:
        torch.nn.functional.linear(x, torch.randn(5, 8), torch.randn(5))
        torch.nn.functional.linear(x[0, 0], torch.randn(5, 8))
        torch.nn.functional.max_pool2d(x, 2)
    assert {o.op for o in p.report.ops if o.verdict is not Verdict.NATIVE} == set()
    assert not p.report.not_judged
    assert {c.op for c in p.trace} >= {"aten::addmm", "aten::max_pool2d_with_indices"}
    assert {"aten::linear", "aten::max_pool2d"} == JUDGED_BY_PARTS  # a new one needs a case


def test_an_mps_kernel_of_a_composite_wins_before_it_decomposes() -> None:
    # 2.5-2.9 register linalg_lu_factor for MPS; its parts here (linalg_lu_factor_ex) had no
    # MPS kernel until 2.9. The trace must show the parent the Mac runs.
    def lu() -> None:
        torch.linalg.lu_factor(torch.randn(4, 4, device="mps"))

    for release, problems in (("2.4.1", {"aten::linalg_lu_factor_ex.out"}), ("2.5.1", set())):
        with Probe(mode="predict", torch_version=release) as p:
            lu()
        assert _problems(p.report.ops) == problems, release


def test_a_matrix_opens_what_any_judged_release_treats_as_composite() -> None:
    from fallback_probe.api import _composites_of
    from fallback_probe.oplists import OpEntry, OpList
    from fallback_probe.records import OpStatus

    def one(version: str, status: OpStatus) -> OpList:
        return OpList(version, {"aten::cummax": OpEntry("aten::cummax", status)})

    native, composite = one("9.0.0", OpStatus.NATIVE), one("9.1.0", OpStatus.COMPOSITE_EXPLICIT)
    assert "aten::cummax" in _composites_of((native, composite))
    assert "aten::cummax" in _composites_of((composite, native))
    assert "aten::cummax" not in _composites_of((native,))


def test_a_composite_this_torch_runs_as_its_own_kernel_is_not_guessed_native() -> None:
    # _embedding_bag_backward decomposed in 2.0 (composite_implicit); this torch has kernels
    # for it, so what 2.0 ran is unknown: not judged, with the reason. 2.15 has an MPS kernel.
    def bag() -> None:
        emb = torch.nn.EmbeddingBag(10, 3, mode="sum").to("mps")
        emb(torch.tensor([[1, 2], [3, 4]], device="mps")).sum().backward()

    with Probe(mode="predict", torch_version="2.0.1") as old:
        bag()
    reasons = {n.op: n.reason for n in old.report.not_judged}
    assert "body not traced" in reasons["aten::_embedding_bag_backward"]
    assert "aten::_embedding_bag_backward" not in {o.op for o in old.report.ops}
    with Probe(mode="predict", torch_version="2.15.0") as new:
        bag()
    assert not new.report.not_judged
    assert "aten::_embedding_bag_backward" in {o.op for o in new.report.ops}


def test_an_implicit_composite_reaching_the_mode_runs_its_decomposition() -> None:
    # With autograd off, softmax.int reaches the mode whole; on a Mac the MPS key then runs
    # the same decomposition, into _softmax.
    with Probe(mode="predict", torch_version="2.13.0") as p, torch.inference_mode():
        torch.softmax(torch.randn(3, 4, device="mps"), 1)
    softmax = next(c for c in p.trace if c.op == "aten::softmax.int")
    assert [c.op for c in p.trace if c.parent == softmax.index] == ["aten::_softmax"]
    assert not p.report.not_judged


def test_an_explicit_fallback_is_reached_as_the_op_that_was_registered() -> None:
    # 2.0 registers the functional linalg_vector_norm itself; sgn only through sgn.out.
    # What fpdev configured as 2.0.1 (torch's real dispatcher) names (docs/accuracy.md).
    with Probe(mode="predict", torch_version="2.0.1") as p:
        x = torch.randn(4, 4, device="mps")
        torch.linalg.vector_norm(x)
        torch.sgn(x)
    assert _problems(p.report.ops) == {"aten::linalg_vector_norm", "aten::sgn.out"}


@pytest.mark.parametrize("emulate", [True, False])
def test_views_are_opened_when_a_list_lacks_what_they_reach(emulate: bool) -> None:
    # With as_strided missing, views are opened: expand reaches as_strided (a fallback), while
    # alias's body dispatches nothing and says so.
    from dataclasses import replace

    from fallback_probe.oplists import OpList
    from fallback_probe.records import OpStatus

    base = oplists.load("2.13.0")
    entries = {e.op: e for e in base.entries()}
    entries["aten::as_strided"] = replace(entries["aten::as_strided"], status=OpStatus.MISSING)
    custom = OpList("2.13.0", entries, {"label": "as_strided missing"})
    with Probe(mode="predict", oplist=custom, emulate=emulate) as p:
        x = torch.randn(3, 4, device="mps" if emulate else "cpu")
        torch.ops.aten.alias(x)
        x.expand(2, 3, 4)
    rows = {o.op: o for o in p.report.ops}
    assert rows["aten::as_strided"].verdict is Verdict.FALLBACK
    assert "aten::expand" not in rows  # judged by what its body reached
    assert rows["aten::alias"].verdict is Verdict.NATIVE
    assert rows["aten::alias"].reason.endswith("its body calls no other op")
