"""Rules of classify/, report.py and verdicts.py that no test noticed when broken on purpose.

Each test here was written after breaking its rule and seeing the suite stay green; each now
fails when its rule breaks. Real ops through the predict path where a real call can reach the
rule; the pure folding functions (rows, matrix) fed with judgements where it cannot.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fallback_probe import oplists
from fallback_probe.api import Probe
from fallback_probe.classify.live import judge_live
from fallback_probe.classify.matrix import build_matrix
from fallback_probe.classify.rules import Judgement
from fallback_probe.records import Mode, OpCall, TensorMeta, Verdict
from fallback_probe.render import Format, render
from fallback_probe.report import Host, Report, Target, build_rows, problem_ops
from fallback_probe.verdicts import target_releases


def _report(release: str, fn: Callable[[], object], **kw: object) -> Report:
    with Probe(mode="predict", torch_version=release, **kw) as p:  # type: ignore[arg-type]
        fn()
    return p.report


def _rows(release: str, fn: Callable[[], object], **kw: object) -> dict[str, tuple[Verdict, str]]:
    return {r.op: (r.verdict, r.reason) for r in _report(release, fn, **kw).ops}


# -- classify/rules.py, on real calls ---------------------------------------------------------
def test_complex128_is_unsupported_and_complex64_needs_macos_14() -> None:
    c128 = _rows("2.15.0", lambda: torch.ones(3, dtype=torch.complex128) * 2, emulate=False)
    assert c128["aten::mul.Tensor"] == (Verdict.UNSUPPORTED, "MPS has no complex128")
    c64 = lambda: torch.ones(3, dtype=torch.complex64) * 2  # noqa: E731
    old = _rows("2.15.0", c64, emulate=False, macos="13")
    assert old["aten::mul.Tensor"] == (
        Verdict.UNSUPPORTED,
        "complex64 on MPS needs macOS 14 or newer",
    )
    assert _rows("2.15.0", c64, emulate=False, macos="14")["aten::mul.Tensor"][0] is Verdict.NATIVE


def test_a_float64_result_is_unsupported_though_every_input_is_float32() -> None:
    rows = _rows("2.15.0", lambda: torch.ones(3).double(), emulate=False)
    assert rows["aten::_to_copy"] == (Verdict.UNSUPPORTED, "MPS has no float64")


def test_a_float64_cpu_scalar_beside_a_device_tensor_is_not_a_float64_device_tensor() -> None:
    rows = _rows(
        "2.15.0", lambda: torch.ones(3, device="mps") * torch.tensor(2.0, dtype=torch.float64)
    )
    assert rows["aten::mul.Tensor"][0] is Verdict.NATIVE


def test_item_is_a_sync_not_a_fallback() -> None:
    rows = _rows("2.15.0", lambda: torch.ones(2, device="mps").sum().item())
    assert rows["aten::_local_scalar_dense"] == (Verdict.NATIVE, "a sync (.item()), not a fallback")


def test_a_kernel_that_only_raises_is_unsupported() -> None:
    def slow_conv() -> object:
        return torch._C._nn.thnn_conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), (3, 3))

    verdict, reason = _rows("2.15.0", slow_conv, emulate=False)["aten::_slow_conv2d_forward"]
    assert verdict is Verdict.UNSUPPORTED
    assert reason == "the MPS kernel of aten::_slow_conv2d_forward only raises in 2.15.0"


def test_a_route_falls_through_to_the_next_candidate_the_release_has() -> None:
    # 2.0 had no _scaled_dot_product_attention_math_for_mps: SDPA's forward ran the portable
    # math, a composite there, judged by the body the recorder traced (collect/sdpa.py).
    q = torch.randn(2, 2, 5, 8)
    report = _report(
        "2.0.1", lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), emulate=False
    )
    rows = {r.op: r for r in report.ops}
    assert not [op for op in rows if "attention" in op]
    assert rows["aten::bmm"].verdict is Verdict.NATIVE
    # This torch's body calls _safe_softmax, which 2.0.1 lacks: not judged, never guessed.
    assert [n.op for n in report.not_judged] == ["aten::_safe_softmax"]


def test_another_librarys_op_is_not_judged_and_says_why() -> None:
    @torch.library.custom_op("fallback_probe_test::twice", mutates_args=())
    def twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    report = _report("2.15.0", lambda: twice(torch.ones(3)), emulate=False)
    assert [(n.op, n.reason) for n in report.not_judged] == [
        ("fallback_probe_test::twice", "registered by another library: not in the list")
    ]
    assert "fallback_probe_test::twice" not in {r.op for r in report.ops}


# -- classify/live.py ---------------------------------------------------------------------------
def test_a_sync_with_a_cpu_copy_under_it_is_not_a_fallback() -> None:
    t = TensorMeta("float32", (), 4, True)
    call = OpCall(0, "aten::_local_scalar_dense", None, "", False, "x.py:1", (t,), (), to_cpu=True)
    (j,) = judge_live([call])
    assert j.verdict is Verdict.NATIVE


# -- report.py: folding calls into rows -----------------------------------------------------------
def _meta(shape: tuple[int, ...], dtype: str = "float32", on_device: bool = True) -> TensorMeta:
    n = 1
    for s in shape:
        n *= s
    return TensorMeta(dtype, shape, 4 * n, on_device)


def _call(i: int, op: str = "aten::mode", **kw: object) -> OpCall:
    fields: dict = {"module": "", "backward": False, "source": "m.py:1"}
    fields |= {"inputs": (_meta((4,)),), "outputs": (_meta((4,)),)} | kw
    return OpCall(
        i, op, None, fields.pop("module"), fields.pop("backward"), fields.pop("source"), **fields
    )


def _j(
    call: OpCall, verdict: Verdict | None = Verdict.FALLBACK, op: str | None = None, **kw
) -> Judgement:
    return Judgement(call, op or call.op, verdict, kw.pop("reason", "r"), **kw)


def test_top_level_is_listed_only_when_no_module_is() -> None:
    rows, _ = build_rows([_j(_call(0, module="enc")), _j(_call(1)), _j(_call(2))])
    assert rows[0].modules == ("enc",)
    (alone,), _ = build_rows([_j(_call(0)), _j(_call(1, backward=True))])
    assert alone.modules == ("(top level)",)


def test_only_device_tensors_give_dtypes_and_bytes() -> None:
    call = _call(0, inputs=(_meta((4,)), _meta((8,), "float64", on_device=False)))
    (row,), _ = build_rows([_j(call)])
    assert row.dtypes == ("float32",)
    assert (row.bytes_to_cpu, row.bytes_from_cpu) == (16, 16)


def test_only_fallbacks_move_bytes() -> None:
    rows, _ = build_rows(
        [_j(_call(0), Verdict.UNSUPPORTED), _j(_call(1, "aten::relu"), Verdict.NATIVE)]
    )
    assert [(r.bytes_to_cpu, r.bytes_from_cpu) for r in rows] == [(0, 0), (0, 0)]


def test_shapes_are_capped_with_a_count() -> None:
    calls = [_j(_call(i, inputs=(_meta((i + 1,)),))) for i in range(5)]
    (row,), _ = build_rows(calls)
    assert row.shapes == ("[1]", "[2]", "[3]", "+2 more")


def test_a_split_call_shares_its_time_and_each_error_keeps_its_row() -> None:
    a = _call(0, seconds=1.0, error="E1")
    b = _call(1, seconds=1.0, error="E2")
    rows, _ = build_rows([_j(a, share=0.5), _j(a, share=0.5), _j(b)])
    # One row per distinct error (two refusals of one op are two blockers), time shared.
    assert [(r.error, r.seconds) for r in rows] == [("E1", 1.0), ("E2", 1.0)]


def test_ties_in_cost_go_to_the_slower_then_the_more_called_op() -> None:
    js = [
        _j(_call(0, "aten::a", seconds=1.0, inputs=(), outputs=())),
        _j(_call(1, "aten::b", seconds=2.0, inputs=(), outputs=())),
        _j(_call(2, "aten::c", inputs=(), outputs=())),
        _j(_call(3, "aten::d", inputs=(), outputs=())),
        _j(_call(4, "aten::d", inputs=(), outputs=())),
    ]
    rows, _ = build_rows(js)
    assert [r.op for r in rows] == ["aten::b", "aten::a", "aten::d", "aten::c"]


def test_not_judged_keeps_each_reason_apart() -> None:
    _, skipped = build_rows([_j(_call(0), None, reason="x"), _j(_call(1), None, reason="y")])
    assert [(n.op, n.calls, n.reason) for n in skipped] == [
        ("aten::mode", 1, "x"),
        ("aten::mode", 1, "y"),
    ]


def test_gates_compare_an_op_by_its_worst_verdict() -> None:
    rows, _ = build_rows([_j(_call(0), Verdict.FALLBACK), _j(_call(1), Verdict.UNSUPPORTED)])
    report = Report(Mode.PREDICTED, "", Target("2.15.0", "15"), Host("", "", ""), True, rows)
    assert problem_ops(report) == {"aten::mode": Verdict.UNSUPPORTED}
    rows, _ = build_rows([_j(_call(0), Verdict.UNSUPPORTED), _j(_call(1), Verdict.FALLBACK)])
    report = Report(Mode.PREDICTED, "", Target("2.15.0", "15"), Host("", "", ""), True, rows)
    assert problem_ops(report) == {"aten::mode": Verdict.UNSUPPORTED}


def test_the_matrix_survives_a_json_round_trip_and_renders() -> None:
    report = _report("all", lambda: torch.mode(torch.randn(8)), emulate=False)
    again = Report.from_dict(report.to_dict())
    assert again.matrix == report.matrix and again.matrix is not None
    md = render(again, Format.MARKDOWN)
    assert "No listed release runs the whole model natively." in md
    assert f"For torch {report.target.torch}: {report.matrix.upgrade}." in md


# -- classify/matrix.py ----------------------------------------------------------------------------
def test_no_newer_release_removing_anything_is_said() -> None:
    report = _report("all", lambda: torch.mode(torch.randn(8)), emulate=False)
    ref = report.target.torch
    assert report.matrix is not None
    assert (
        report.matrix.upgrade
        == f"no listed release newer than {ref} removes any of its 1 problem ops"
    )


def _matrix(cells: dict[str, list[tuple[int, str, Verdict]]], reference: str = "a"):
    per = {r: [_j(_call(i, op), v) for i, op, v in js] for r, js in cells.items()}
    return build_matrix(per, list(cells), reference)


def test_native_from_is_the_oldest_release_after_the_last_problem() -> None:
    m = _matrix(
        {
            "a": [(0, "aten::x", Verdict.NATIVE)],
            "b": [(0, "aten::x", Verdict.FALLBACK)],
            "c": [(0, "aten::x", Verdict.NATIVE)],
        }
    )
    assert m.native_from == "c"  # not "a": b regressed


def test_upgrade_names_the_release_that_removes_the_most() -> None:
    F, N = Verdict.FALLBACK, Verdict.NATIVE
    m = _matrix(
        {
            "a": [(0, "aten::x", F), (1, "aten::y", F)],
            "b": [(0, "aten::x", N), (1, "aten::y", F)],
            "c": [(0, "aten::x", N), (1, "aten::y", N)],
        }
    )
    assert m.upgrade == "upgrade to c removes 2 of 2 problem ops"


def test_a_matrix_cell_shows_the_worst_of_the_ops_calls() -> None:
    F, U, N = Verdict.FALLBACK, Verdict.UNSUPPORTED, Verdict.NATIVE
    m = _matrix(
        {"a": [(0, "aten::x", F), (1, "aten::x", U)], "b": [(0, "aten::x", N), (1, "aten::x", F)]}
    )
    assert m.ops["aten::x"] == {"a": "unsupported", "b": "fallback"}
    m = _matrix(
        {"a": [(0, "aten::x", U), (1, "aten::x", F)], "b": [(0, "aten::x", F), (1, "aten::x", N)]}
    )
    assert m.ops["aten::x"] == {"a": "unsupported", "b": "fallback"}


# -- verdicts.py ------------------------------------------------------------------------------------
def test_an_installed_release_without_a_list_is_judged_by_the_nearest_and_says_so() -> None:
    reference, releases, notes = target_releases(None, "2.16.0")
    assert reference in oplists.releases() and releases == [reference]
    assert notes == [
        f"Torch 2.16.0 has no operator list; judged against the nearest listed release, {reference}."
    ]


def test_a_prediction_for_another_release_says_the_trace_came_from_this_one() -> None:
    def note(release: str) -> list[str]:
        limits = _report(release, lambda: torch.mode(torch.randn(8)), emulate=False).limits
        return [lim for lim in limits if lim.startswith("Traced with torch")]

    installed = oplists.nearest_release(torch.__version__)
    assert note(installed) == []
    assert len(note("2.0.1")) == 1


# -- render/markdown.py -------------------------------------------------------------------------------
def test_markdown_bytes_units_lists_and_cpu_work() -> None:
    from tests.test_markdown_cells import gfm, table_after

    big = _meta((512,))  # 2048 bytes
    js = [_j(_call(i, module=f"m{i}", inputs=(big,), outputs=(big,))) for i in range(5)]
    js.append(_j(_call(9, "aten::add.Tensor", inputs=(big,)), Verdict.UNSUPPORTED))
    rows, _ = build_rows(js)
    report = Report(
        Mode.PREDICTED,
        "",
        Target("2.15.0", "15"),
        Host("", "", ""),
        True,
        rows,
        cpu_work={"aten::randn": 3},
    )
    md = render(report, Format.MARKDOWN)
    head, *body = table_after(md, "## Fallbacks and unsupported ops")
    cells = {r[0]: dict(zip(head, r, strict=True)) for r in body}
    assert (cells["aten::mode"]["to CPU"], cells["aten::mode"]["back"]) == ("10.0 KB", "10.0 KB")
    assert cells["aten::mode"]["module"] == "m0, m1, m2 +2"
    assert (cells["aten::add.Tensor"]["to CPU"], cells["aten::add.Tensor"]["back"]) == ("", "")
    assert "The script's own CPU work (3 op calls on CPU tensors) was not judged" in md
    assert gfm(md).tables


def test_markdown_says_from_which_release_the_model_runs_natively() -> None:
    report = _report("all", lambda: torch.linalg.svd(torch.randn(4, 4)), emulate=False)
    assert report.matrix is not None and report.matrix.native_from == "2.14.1"
    assert "The whole model runs natively from torch 2.14.1 on." in render(report, Format.MARKDOWN)


def test_a_composite_judged_whole_in_one_release_compares_with_its_worst_part() -> None:
    F, N = Verdict.FALLBACK, Verdict.NATIVE
    per = {
        "a": [_j(_call(0, "aten::x"), F)],  # the composite, registered in a
        "b": [_j(_call(1, "aten::y"), F), _j(_call(2, "aten::z"), N)],  # its parts, in b
    }
    m = build_matrix(per, ["a", "b"], "a", parents={1: 0, 2: 0, 0: None})
    assert m.ops["aten::x"] == {"a": "fallback", "b": "fallback"}


def test_a_cpu_copy_under_a_call_without_a_warning_is_still_a_fallback() -> None:
    # The warning can be lost (filtered before the probe, or matched to another call).
    t = TensorMeta("float32", (4,), 16, True)
    call = OpCall(0, "aten::index_copy", None, "", False, "x.py:1", (t,), (t,), to_cpu=True)
    (j,) = judge_live([call])
    assert (j.verdict, j.reason) == (Verdict.FALLBACK, "the profiler showed aten::_to_cpu under it")
