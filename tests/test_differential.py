"""Predict mode against PyTorch's own dispatcher (fpdev-as-V), over torch's OpInfo database.

The sweep itself lives in fallback_probe/selftest.py; tests/differential runs it per release
in a child where fpdev is that release. Every disagreement must be listed, with its reason, in
tests/differential/explained.json (mirrored in docs/accuracy.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from tests.differential import EXPLAINED, check, explain, load_explained
from tests.fpdev import ENV_VAR, REPO_ROOT, run_in_subprocess
from tests.fpdev.conftest_plugin import fpdev_build  # noqa: F401
from tests.fpdev.release import RELEASE_VAR

pytest.importorskip("expecttest", reason="the OpInfo sweep needs the test extra (expecttest)")

CI_RELEASES = ("2.0.1", "2.8.0", "2.15.0")  # oldest, a middle one, newest


def item(opinfo: str, predicted: dict[str, str], observed: dict[str, str]) -> dict[str, Any]:
    return {"opinfo": opinfo, "sample": "0/forward", "predicted": predicted, "observed": observed}


EXAMPLE = [
    {
        "id": "skew",
        "ops": ["aten::cholesky"],
        "side": "observed",
        "reason": "r",
        "counts": {"2.15.0": 1},
    },
]


def test_explain_needs_every_differing_op_covered_on_its_side() -> None:
    assert explain(item("cholesky", {}, {"aten::cholesky": "fallback"}), EXAMPLE) == "skew"
    # The same op on the other side is not this explanation.
    assert explain(item("cholesky", {"aten::cholesky": "fallback"}, {}), EXAMPLE) is None
    # On both sides with different verdicts: not an "observed only" difference either.
    both_sides = item("cholesky", {"aten::cholesky": "fallback"}, {"aten::cholesky": "unsupported"})
    assert explain(both_sides, EXAMPLE) is None
    # A second differing op that nothing explains leaves the call unexplained.
    both = {"aten::cholesky": "fallback", "aten::sin.out": "fallback"}
    assert explain(item("cholesky", {}, both), EXAMPLE) is None
    # Ops with the same verdict on both sides are not part of the difference.
    shared = {"aten::cholesky": "fallback", "aten::sin.out": "fallback"}
    assert explain(item("x", {"aten::sin.out": "fallback"}, shared), EXAMPLE) == "skew"


def test_explain_limited_to_its_opinfos() -> None:
    only = [{**EXAMPLE[0], "opinfos": ["cholesky*"]}]
    assert explain(item("cholesky", {}, {"aten::cholesky": "fallback"}), only) == "skew"
    assert explain(item("linalg.cholesky", {}, {"aten::cholesky": "fallback"}), only) is None


def test_check_fails_on_unexplained_and_on_counts_above_the_list() -> None:
    one = item("cholesky", {}, {"aten::cholesky": "fallback"})
    ok = {"releases": {"2.15.0": {"disagree": [one]}}}
    assert check(ok, EXAMPLE) == []
    twice = {"releases": {"2.15.0": {"disagree": [one, one]}}}
    assert check(twice, EXAMPLE) == ["2.15.0: skew seen 2 times, listed at most 1"]
    other = {"releases": {"2.15.0": {"disagree": [item("sin", {}, {"aten::sin": "fallback"})]}}}
    assert len(check(other, EXAMPLE)) == 1 and "unexplained sin" in check(other, EXAMPLE)[0]


def test_explained_list_is_documented() -> None:
    """Every explanation has a reason and appears, by id, in docs/accuracy.md."""
    doc = (REPO_ROOT / "docs" / "accuracy.md").read_text(encoding="utf-8")
    for entry in load_explained(EXPLAINED):
        assert entry["reason"] and entry["ops"], entry["id"]
        assert f"`{entry['id']}`" in doc, entry["id"]


@pytest.mark.usefixtures("fpdev_build")
def test_the_oracle_fails_when_the_predictor_is_wrong() -> None:
    """Break the predictor on purpose (2.8.0's list says sin has no MPS kernel): the sweep must
    report every sin call, with the ops on each side."""
    code = textwrap.dedent(
        """
        import json
        from fallback_probe import oplists
        from fallback_probe.oplists import OpEntry
        from fallback_probe.records import OpStatus
        from tests.fpdev import load_fpdev
        load_fpdev()  # fpdev is the real 2.8.0: sin is native
        ol = oplists.load("2.8.0")
        ol._raw = dict(ol._raw)
        for op in ("aten::sin", "aten::sin.out"):
            ol._entries[op] = OpEntry(op, OpStatus.MISSING, "aten::sin.out" if op == "aten::sin" else None)
        from fallback_probe.selftest import sweep
        r = sweep("2.8.0", "fpdev", "FPDEV_ENABLE_FALLBACK", pattern="sin", max_samples=3)
        print("RESULT:" + json.dumps(r.summary()))
        """
    )
    done = run_in_subprocess(code, {RELEASE_VAR: "2.8.0", ENV_VAR: "1"})
    assert done.returncode == 0, done.stderr
    summary = json.loads(next(x[7:] for x in done.stdout.splitlines() if x.startswith("RESULT:")))
    assert summary["opinfos"] == 1 and summary["calls"] >= 2
    samples = summary["calls"] // 2  # each sin sample runs forward and backward
    forward = [d for d in summary["disagree"] if d["sample"].endswith("/forward")]
    assert len(forward) == samples == len(summary["disagree"])  # backward (cos, mul) agrees
    assert all(d["predicted"] == {"aten::sin.out": "fallback"} for d in forward)
    assert all(d["observed"] == {} for d in forward)


@pytest.mark.usefixtures("fpdev_build")
def test_three_releases_have_no_unexplained_disagreement(tmp_path: Any) -> None:
    """The CI sweep, through the module command: first sample of every OpInfo and the client
    models, forward and backward, in 2.0.1, 2.8.0 and 2.15.0. Exit 1 (and this test fails) on
    any disagreement not in explained.json, or seen more often than it lists."""
    out, md = tmp_path / "out.json", tmp_path / "out.md"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.differential", "--releases", ",".join(CI_RELEASES),
         "--json", str(out), "--markdown", str(md)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    problems = [line for line in done.stderr.splitlines() if not line.startswith("[")]
    assert done.returncode == 0, "\n".join(problems[-40:])
    result = json.loads(out.read_text())
    for release in CI_RELEASES:
        summary = result["releases"][release]
        assert summary["opinfos"] >= 700, release  # every OpInfo of op_db, plus client models
        assert summary["calls"] >= 1000, release
        assert summary["agree"] + len(summary["disagree"]) == summary["calls"]
    assert check(result, load_explained()) == []
    table = md.read_text()
    assert all(f"| {release} | " in table for release in CI_RELEASES)
