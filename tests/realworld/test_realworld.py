"""Real third-party model code, run unchanged under the probe (predict mode, emulated mps).

Each script in ``scripts/`` is a user's script: it picks ``mps`` when
``torch.backends.mps.is_available()`` and prints its numbers. Every case checks that

- the probe does not change what the script computes (its output equals the plain run's);
- the run finishes and the report is complete, for the oldest, a middle and the newest
  listed release (one trace judged against each, as ``--torch-version all`` does);
- ops whose status the operator lists state are judged so (``EXPECTED``), and what is not
  judged is not judged for a true reason.

A case the probe gets wrong is a strict xfail naming the problem and its item of issue 11, so
it turns red once fixed (docs/realworld.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from fallback_probe import Verdict, oplists
from fallback_probe.render import Format, render
from fallback_probe.report import Report
from tests.realworld._runner import RELEASES
from tests.realworld.conftest import SCRIPTS, Run, child_env

F = "fallback"
N = "native"
U = "unsupported"
ALL_NATIVE = {r: N for r in RELEASES}

# op family (name without overload, trailing "_" dropped) -> verdict per release, each read
# from the operator lists (`fallback-probe ops aten::X`). Only ops the script surely runs.
EXPECTED: dict[str, dict[str, Mapping[str, str]]] = {
    "gpt2_generate": {
        "aten::isin": {"2.0.1": F, "2.8.0": N, "2.15.0": N},  # generate's stopping criteria
        "aten::addmm": ALL_NATIVE,  # GPT-2's Conv1D
        "aten::native_layer_norm": ALL_NATIVE,
        "aten::cumsum": ALL_NATIVE,
    },
    "llama_sample": {
        "aten::isin": {"2.0.1": F, "2.8.0": N, "2.15.0": N},
        "aten::multinomial": ALL_NATIVE,  # do_sample
        "aten::topk": ALL_NATIVE,  # top-k warper
        "aten::cumsum": ALL_NATIVE,  # top-p warper
        "aten::rsqrt": ALL_NATIVE,  # RMSNorm
    },
    "t5_beam_search": {
        "aten::isin": {"2.0.1": F, "2.8.0": N, "2.15.0": N},
        "aten::topk": ALL_NATIVE,  # beam selection
        "aten::_log_softmax": ALL_NATIVE,
        "aten::gather": ALL_NATIVE,
    },
    "bert_mlm_train": {
        "aten::lerp": {"2.0.1": F, "2.8.0": N, "2.15.0": N},  # AdamW's moving averages
        "aten::linalg_vector_norm": {"2.0.1": F, "2.8.0": N, "2.15.0": N},  # clip_grad_norm_
        "aten::nll_loss_forward": ALL_NATIVE,
        "aten::embedding_dense_backward": ALL_NATIVE,
        "aten::gelu_backward": ALL_NATIVE,
    },
    "wav2vec2_ctc": {
        "aten::_ctc_loss": {"2.0.1": F, "2.8.0": F, "2.15.0": N},
        "aten::_ctc_loss_backward": {"2.0.1": F, "2.8.0": F, "2.15.0": N},
        "aten::_weight_norm_interface": {"2.0.1": F, "2.8.0": N, "2.15.0": N},  # pos. conv
        "aten::native_group_norm": ALL_NATIVE,
        "aten::_mps_convolution": ALL_NATIVE,
        "aten::mps_convolution_backward": ALL_NATIVE,
    },
    "clip_forward": {
        "aten::_mps_convolution": ALL_NATIVE,  # patch embedding
        "aten::native_layer_norm": ALL_NATIVE,
        "aten::argmax": ALL_NATIVE,  # pooling at the end-of-text token
    },
    "mixtral_moe": {
        "aten::histc": {"2.0.1": F, "2.8.0": N, "2.15.0": N},  # expert counts
        "aten::_grouped_mm": {"2.8.0": F, "2.15.0": N},  # experts; no such op in 2.0.1
        "aten::topk": ALL_NATIVE,  # routing
        "aten::silu_backward": ALL_NATIVE,
    },
    "unet_ddpm_train": {
        "aten::lerp": {"2.0.1": F, "2.8.0": N, "2.15.0": N},
        "aten::native_group_norm_backward": ALL_NATIVE,
        "aten::upsample_nearest2d_backward": ALL_NATIVE,
        "aten::mse_loss": ALL_NATIVE,
    },
    "distributions": {
        "aten::_sample_dirichlet": {"2.0.1": F, "2.8.0": F, "2.15.0": N},  # Beta.sample
        "aten::linalg_cholesky_ex": {"2.0.1": F, "2.8.0": N, "2.15.0": N},  # MVN
        "aten::lgamma": {"2.0.1": F, "2.8.0": N, "2.15.0": N},  # Beta.log_prob
        "aten::xlogy": {"2.0.1": F, "2.8.0": N, "2.15.0": N},
        "aten::multinomial": ALL_NATIVE,  # Categorical.sample
    },
    "numpy_float64": {
        "aten::_to_copy": {r: U for r in RELEASES},  # float64 refused, the run carries on
    },
}


def _xfail(finding: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=finding)


# Marks on the cases that go through the script's run (numbers, completeness, verdicts).
CRASHES: dict[str, list[pytest.MarkDecorator]] = {}  # none left open on main
CASES = list(EXPECTED)


def _cases(marks: Mapping[str, list[pytest.MarkDecorator]]) -> list[Any]:
    return [pytest.param(c, id=c, marks=marks.get(c, [])) for c in CASES]


def _case_releases(
    extra: Callable[[str, str], list[pytest.MarkDecorator]] = lambda c, r: [],
) -> list[Any]:
    """(case, release) parameters: the case's crash marks plus ``extra(case, release)``."""
    return [
        pytest.param(c, r, id=f"{c}-{r}", marks=[*CRASHES.get(c, []), *extra(c, r)])
        for c in CASES
        for r in RELEASES
    ]


def _family(op: str) -> str:
    return op.split(".")[0].rstrip("_")


def _verdicts(report: Mapping[str, Any], family: str) -> set[str]:
    return {row["verdict"] for row in report["ops"] if _family(row["op"]) == family}


@pytest.fixture
def run(realworld_runs: Callable[[str], Run], request: pytest.FixtureRequest) -> Run:
    return realworld_runs(request.node.callspec.params["case"])


def _finished(run: Run) -> None:
    """A report of a run the probe broke is not the script's report: every check needs this."""
    assert run.error is None, run.error


@pytest.mark.parametrize("case", _cases(CRASHES))
def test_script_finishes_with_the_same_numbers(case: str, run: Run) -> None:
    assert run.plain_stdout.strip(), "the script prints its numbers"
    _finished(run)
    assert run.probe_stdout == run.plain_stdout


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("case", _cases(CRASHES))
def test_report_is_complete_and_judges_known_ops(case: str, release: str, run: Run) -> None:
    _finished(run)
    report = run.releases[release]
    assert report["mode"] == "predicted"
    assert report["target"]["torch"] == release
    assert report["complete"] is True, report["error"]
    assert report["error"] is None
    assert report["summary"]["native"] >= 1
    for family, by_release in EXPECTED[case].items():
        if release not in by_release:
            continue
        seen = _verdicts(report, family)
        assert seen == {by_release[release]}, f"{family} in {release}: {seen}"


@pytest.mark.parametrize(("case", "release"), _case_releases())
def test_not_judged_is_for_a_true_reason(case: str, release: str, run: Run) -> None:
    _finished(run)
    report = run.releases[release]
    listed = oplists.load(release)
    judged = {row["op"] for row in report["ops"]}
    for item in report["not_judged"]:
        assert item["calls"] >= 1
        assert item["op"] not in judged, f"{item['op']} both judged and not judged"
        if item["reason"] == f"not an op of torch {release}":
            assert listed.get(item["op"]) is None, f"{item['op']} is in the {release} list"
        else:  # nothing else may escape a verdict on these scripts
            pytest.fail(f"{item['op']} not judged: {item['reason']}")
    for family, by_release in EXPECTED[case].items():
        if release not in by_release:  # the op does not exist in this release: said so
            absent = [n for n in report["not_judged"] if _family(n["op"]) == family]
            assert absent, f"{family} neither judged nor listed as not judged in {release}"


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("case", _cases(CRASHES))
def test_report_round_trips_and_renders(case: str, release: str, run: Run) -> None:
    """A saved report of real code re-renders: every problem op named in the markdown."""
    _finished(run)
    report = Report.from_dict(run.releases[release])
    assert report.to_dict() == run.releases[release]
    text = render(report, Format.MARKDOWN)
    assert f"Predicted for torch {release}" in text
    for row in report.rows(Verdict.FALLBACK, Verdict.UNSUPPORTED):
        assert f"`{row.op}`" in text, row.op


@pytest.mark.parametrize("case", _cases(CRASHES))
def test_matrix_agrees_with_each_release(case: str, run: Run) -> None:
    """The ``all`` matrix and the per-release reports come from one trace: same problems."""
    _finished(run)
    matrix = run.all["matrix"]
    assert matrix is not None
    assert set(RELEASES) <= set(matrix["releases"])
    for release in RELEASES:
        in_matrix = {op for op, row in matrix["ops"].items() if row[release] in (F, U)}
        in_report = {row["op"] for row in run.releases[release]["ops"] if row["verdict"] != N}
        assert in_matrix == in_report, release


@pytest.mark.parametrize(("case", "release"), _case_releases(lambda c, r: []))
def test_no_op_is_judged_by_its_composite_status_alone(case: str, release: str, run: Run) -> None:
    """Issue 11.1: a composite is judged by what it reaches on a Mac, not by being composite."""
    _finished(run)
    alone = [
        row["op"]
        for row in run.releases[release]["ops"]
        if row["reason"].startswith(
            ("runs as other ops on MPS (", "decomposes into portable ops (")
        )
    ]
    assert not alone, f"judged by status alone in {release}: {alone}"
    assert not [x for x in run.releases[release]["limits"] if "by their status alone" in x]


# -- through the real CLI ---------------------------------------------------------------------


def _cli(
    script: Path, tmp_path: Path, *options: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("fallback-probe")),
            str(script),
            "--mode",
            "predict",
            "--format",
            "json",
            "-o",
            str(out),
            *options,
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert out.exists(), proc.stderr[-3000:]
    return proc, json.loads(out.read_text(encoding="utf-8"))


def test_cli_one_release_judges_as_the_all_trace(
    realworld_runs: Callable[[str], Run], tmp_path: Path
) -> None:
    """`fallback-probe distributions.py --torch-version 2.0.1`: a trace recorded for one
    release gets the verdicts the ``all`` trace gets for it, and prints the plain numbers."""
    run = realworld_runs("distributions")
    proc, report = _cli(SCRIPTS / "distributions.py", tmp_path, "--torch-version", "2.0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == run.plain_stdout
    assert report["complete"] is True
    assert report["target"]["torch"] == "2.0.1"

    def verdicts(rep: Mapping[str, Any]) -> set[tuple[str, str]]:
        return {(row["op"], row["verdict"]) for row in rep["ops"]}

    assert verdicts(report) == verdicts(run.releases["2.0.1"])
    assert ("aten::_sample_dirichlet", F) in verdicts(report)


def test_cli_gpt2_generate_newest(realworld_runs: Callable[[str], Run], tmp_path: Path) -> None:
    run = realworld_runs("gpt2_generate")
    proc, report = _cli(SCRIPTS / "gpt2_generate.py", tmp_path, "--torch-version", "2.15.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == run.plain_stdout
    assert report["complete"] is True
    assert report["summary"]["fallback"] == report["summary"]["unsupported"] == 0


def test_cli_numpy_float64_lists_the_refusal(
    realworld_runs: Callable[[str], Run], tmp_path: Path
) -> None:
    """Issue 11.3: exit 0, the refusal an unsupported row with its dtype and source line."""
    run = realworld_runs("numpy_float64")
    proc, report = _cli(SCRIPTS / "numpy_float64.py", tmp_path, "--torch-version", "2.0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == run.plain_stdout
    assert report["complete"] is True
    refused = [row for row in report["ops"] if row["verdict"] == U]
    assert refused, report["ops"]
    assert all("float64" in row["dtypes"] for row in refused)
    sources = {s for row in refused for s in row["sources"]}
    assert any(s.endswith("numpy_float64.py:13") for s in sources), sources
    assert "fallback_probe" not in proc.stderr  # the probe's frames stay out of the user's view
