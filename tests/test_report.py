"""The report contract: folding judgements into rows, JSON round trip, renderers, diff."""

from __future__ import annotations

import json
import re

import pytest

from fallback_probe.classify.rules import Judgement
from fallback_probe.diff import diff_reports, render_diff
from fallback_probe.errors import ProbeError
from fallback_probe.records import Mode, OpCall, TensorMeta, Verdict
from fallback_probe.render import Format, render
from fallback_probe.report import Host, Report, Target, build_rows


def _call(i: int, op: str, module: str = "enc.attn", shape=(4, 8), dtype="float32") -> OpCall:
    t = TensorMeta(dtype, shape, 4 * shape[0] * shape[1], True)
    return OpCall(i, op, None, module, False, "model.py:12", (t,), (t,))


def _report(judgements: list[Judgement], **kw) -> Report:
    rows, not_judged = build_rows(judgements)
    return Report(
        mode=kw.get("mode", Mode.PREDICTED),
        mode_reason="predict mode was asked for",
        target=Target(kw.get("torch", "2.15.0"), "15"),
        host=Host("2.13.0+cpu", "3.11.7", "linux x86_64"),
        complete=kw.get("complete", True),
        error=kw.get("error"),
        ops=rows,
        not_judged=not_judged,
        limits=("Predicted, not observed.",),
    )


def _sample() -> Report:
    js = [
        Judgement(_call(0, "aten::relu"), "aten::relu", Verdict.NATIVE, "MPS kernel"),
        Judgement(_call(1, "aten::relu"), "aten::relu", Verdict.NATIVE, "MPS kernel"),
        Judgement(_call(2, "aten::mode"), "aten::mode", Verdict.FALLBACK, "no MPS kernel"),
        Judgement(_call(3, "aten::mul.Tensor"), "aten::mul.out", Verdict.FALLBACK, "no kernel"),
        Judgement(
            _call(4, "aten::mul.Tensor", shape=(64, 64)), "aten::mul.out", Verdict.FALLBACK, "x"
        ),
        Judgement(
            _call(5, "aten::add.Tensor", dtype="float64"),
            "aten::add.Tensor",
            Verdict.UNSUPPORTED,
            "MPS has no float64",
        ),
        Judgement(_call(6, "torchvision::nms"), "torchvision::nms", None, "another library"),
    ]
    return _report(js)


def test_rows_fold_calls_and_sort_problems_by_cost() -> None:
    r = _sample()
    assert [(row.op, row.verdict) for row in r.ops] == [
        ("aten::add.Tensor", Verdict.UNSUPPORTED),
        ("aten::mul.out", Verdict.FALLBACK),
        ("aten::mode", Verdict.FALLBACK),
        ("aten::relu", Verdict.NATIVE),
    ]
    mul = r.ops[1]
    assert mul.calls == 2
    assert mul.called_as == ("aten::mul.Tensor",)
    assert mul.bytes_to_cpu == 128 + 64 * 64 * 4
    assert mul.modules == ("enc.attn",)
    assert mul.sources == ("model.py:12",)
    assert r.summary == {"native": 1, "fallback": 2, "unsupported": 1, "not_judged": 1}
    assert [(n.op, n.calls) for n in r.not_judged] == [("torchvision::nms", 1)]


def test_json_round_trip_is_lossless() -> None:
    r = _sample()
    d = json.loads(render(r, Format.JSON))
    assert d["schema_version"] == 2
    assert d["mode"] == "predicted"
    assert d["target"] == {"torch": "2.15.0", "macos": "15", "device": "mps"}
    assert d["summary"] == {"native": 1, "fallback": 2, "unsupported": 1, "not_judged": 1}
    assert d["outcome"] == "problems"
    assert "matrix" not in d
    again = Report.from_dict(d)
    assert again == r
    assert render(again, Format.MARKDOWN) == render(r, Format.MARKDOWN)


def test_markdown_says_predicted_target_and_limits() -> None:
    md = render(_sample(), Format.MARKDOWN)
    assert (
        "Predicted for torch 2.15.0 on macOS 15 (mps): 2 fallback, 1 unsupported, 1 native, "
        "1 not judged" in md
    )
    assert re.search(r"\| `aten::mul.out` +\| `aten::mul.Tensor` +\| fallback", md)  # called as
    assert "What this report could not see" in md
    assert "`torchvision::nms` (1 calls): not judged" in md
    assert "<details><summary>Native ops (1)</summary>" in md


def test_incomplete_report_says_so() -> None:
    r = _report([], complete=False, error="RuntimeError: boom")
    md = render(r, Format.MARKDOWN)
    assert "incomplete" in md and "RuntimeError: boom" in md
    assert json.loads(r.to_json())["complete"] is False


def test_load_rejects_garbage_with_one_line(tmp_path) -> None:
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    with pytest.raises(ProbeError, match="r.json is not a fallback-probe report"):
        Report.load(bad)
    bad.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ProbeError, match="schema_version 99"):
        Report.load(bad)
    with pytest.raises(ProbeError, match="cannot read report"):
        Report.load(tmp_path / "missing.json")


def test_diff_lists_new_and_resolved() -> None:
    old = _sample()
    new = _report(
        [
            Judgement(_call(0, "aten::mode"), "aten::mode", Verdict.FALLBACK, "x"),
            Judgement(_call(1, "aten::col2im"), "aten::col2im", Verdict.FALLBACK, "x"),
        ],
        torch="2.8.0",
    )
    d = diff_reports(old, new)
    assert [(c.op, c.verdict) for c in d.new] == [("aten::col2im", Verdict.FALLBACK)]
    assert [(c.op, c.verdict) for c in d.resolved] == [
        ("aten::add.Tensor", Verdict.UNSUPPORTED),
        ("aten::mul.out", Verdict.FALLBACK),
    ]
    assert any("differ in target" in n for n in d.notes)
    md = render_diff(d, Format.MARKDOWN)
    assert "## New (1)" in md and "`aten::col2im`" in md
    assert json.loads(render_diff(d, Format.JSON))["new"] == [
        {
            "op": "aten::col2im",
            "verdict": "fallback",
            "modules": ["enc.attn"],
            "sources": ["model.py:12"],
            "called_as": [],
        }
    ]


def test_one_call_that_fell_back_several_times_splits_its_bytes() -> None:
    from fallback_probe.classify.live import judge_live

    t = TensorMeta("float32", (4, 4), 64, True)
    call = OpCall(
        0,
        "aten::_foreach_sqrt",
        None,
        "",
        False,
        "x.py:1",
        (t, t),
        (t, t),
        fallback_ops=("aten::sqrt.out", "aten::sqrt.out"),
        to_cpu=True,
    )
    rows, _ = build_rows(judge_live([call]))
    (row,) = rows
    assert (row.op, row.calls) == ("aten::sqrt.out", 2)
    assert row.bytes_to_cpu == 128 and row.bytes_from_cpu == 128  # not 256: counted once
