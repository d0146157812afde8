"""``fallback-probe ops``: text and JSON output, history ranges, error paths."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from fallback_probe import oplists
from fallback_probe.oplists import OpEntry
from fallback_probe.oplists.cli import history_line, ops_main
from fallback_probe.records import OpStatus

Capture = pytest.CaptureFixture[str]


def run(argv: list[str], capsys: Capture) -> tuple[int, str, str]:
    code = ops_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_history_of_named_ops(capsys: Capture) -> None:
    code, out, err = run(["aten::col2im", "aten::mode", "linalg_svd"], capsys)
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "aten::col2im: explicit_fallback 2.0\u20132.7, native since 2.8",
        "aten::mode: missing in every release",
        "aten::linalg_svd: explicit_fallback 2.0\u20132.13, composite_implicit since 2.14",
    ]


def test_history_notes_the_delegate(capsys: Capture) -> None:
    code, out, _ = run(["aten::_linalg_svd"], capsys)
    assert code == 0
    assert out.strip() == (
        "aten::_linalg_svd: missing 2.0\u20132.13, native since 2.14 (delegate aten::_linalg_svd.U)"
    )


def test_history_json(capsys: Capture) -> None:
    code, out, _ = run(["aten::col2im", "--format", "json"], capsys)
    doc = json.loads(out)
    assert code == 0
    assert doc["releases"] == list(oplists.releases())
    assert doc["ops"]["aten::col2im"]["2.7.1"] == "explicit_fallback"
    assert doc["ops"]["aten::col2im"]["2.8.0"] == "native"


class _Fake:
    def __init__(self, version: str) -> None:
        self.torch_version = version


def _entry(status: OpStatus) -> OpEntry:
    return OpEntry("aten::x", status)


def test_history_line_ranges() -> None:
    lists = [_Fake(v) for v in ("2.0.1", "2.1.2", "2.2.2", "2.3.1")]
    n, m = _entry(OpStatus.NATIVE), _entry(OpStatus.MISSING)
    assert history_line([None, None, n, n], lists) == "absent 2.0\u20132.1, native since 2.2"
    assert history_line([m, n, m, m], lists) == "missing 2.0, native 2.1, missing since 2.2"
    assert history_line([n, n, n, None], lists) == "native 2.0\u20132.2, absent 2.3"
    assert history_line([m] * 4, lists) == "missing in every release"
    assert history_line([m, m, m, n], lists) == "missing 2.0\u20132.2, native since 2.3"


def test_one_release_json(capsys: Capture) -> None:
    code, out, err = run(["--torch-version", "2.15.0", "--format", "json"], capsys)
    doc = json.loads(out)
    assert code == 0 and err == ""
    assert doc["torch_version"] == "2.15.0"
    assert len(doc["ops"]) == len(oplists.load("2.15.0"))
    assert doc["ops"]["aten::add.Tensor"] == "native"
    assert doc["ops"]["aten::linalg_svd"] == "composite_implicit"
    assert not any(op.endswith(".default") for op in doc["ops"])
    assert all(op.startswith(("aten::", "torchvision::")) for op in doc["ops"])
    assert doc["ops"]["torchvision::nms"] == "native"  # the paired torchvision's ops too
    assert doc["torchvision"].startswith("torchvision-0.29.2.json")


def test_one_release_named_ops_text(capsys: Capture) -> None:
    code, out, _ = run(["--torch-version", "2.13.1", "aten::linalg_svd", "mode"], capsys)
    assert code == 0
    assert out.splitlines() == [
        "aten::linalg_svd: explicit_fallback (2.13.0)",
        "aten::mode: missing (2.13.0)",
    ]


def test_one_release_table(capsys: Capture) -> None:
    code, out, _ = run(["--torch-version", "2.0.1"], capsys)
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == f"torch 2.0.1: {len(oplists.load('2.0.1'))} ops"
    assert lines[1].split() == ["op", "status", "notes"]
    assert any(line.split()[:2] == ["aten::col2im", "explicit_fallback"] for line in lines)


def test_default_release_is_the_installed_torchs(capsys: Capture) -> None:
    code, out, _ = run(["--format", "json"], capsys)
    from importlib.metadata import version

    assert code == 0
    assert json.loads(out)["torch_version"] == oplists.nearest_release(version("torch"))


def test_unknown_op_suggests_near_names(capsys: Capture) -> None:
    code, out, err = run(["aten::col2im", "aten::colim"], capsys)
    assert code == 2
    assert out.startswith("aten::col2im:")
    assert err.startswith("fallback-probe: error: unknown op 'aten::colim'")
    assert "aten::col2im" in err and err.count("\n") == 1


def test_unknown_op_in_one_release(capsys: Capture) -> None:
    code, out, err = run(["--torch-version", "2.15.0", "aten::relux", "--format", "json"], capsys)
    assert code == 2
    assert json.loads(out)["ops"] == {}
    assert "unknown op 'aten::relux' in torch 2.15.0; did you mean" in err
    assert "aten::relu" in err


@pytest.mark.parametrize("version", ["3.0.0", "1.13.1", "nightly"])
def test_unknown_release_lists_known_ones(version: str, capsys: Capture) -> None:
    code, out, err = run(["--torch-version", version], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"fallback-probe: error: unknown torch release {version!r}")
    assert "2.0.1" in err and "2.15.0" in err and err.count("\n") == 1


def test_bad_arguments(capsys: Capture) -> None:
    code, _, err = run(["--format", "xml"], capsys)
    assert code == 2
    assert err.startswith("fallback-probe: error: fallback-probe ops: argument --format")


def test_help(capsys: Capture) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "fallback-probe ops" in out


def _main_cli_has_ops() -> bool:
    if importlib.util.find_spec("fallback_probe.cli") is None:
        return False
    done = subprocess.run(
        [sys.executable, "-m", "fallback_probe", "ops", "--help"], capture_output=True, text=True
    )
    return done.returncode == 0 and "--torch-version" in done.stdout


@pytest.mark.skipif(not _main_cli_has_ops(), reason="the main CLI does not route 'ops' yet")
def test_through_the_main_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fallback_probe", "ops", "aten::col2im"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "aten::col2im: explicit_fallback 2.0\u20132.7, native since 2.8"
    bad = subprocess.run(
        [sys.executable, "-m", "fallback_probe", "ops", "--torch-version", "9.9"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("fallback-probe: error: unknown torch release")
