"""The generator: wheel choice, member reading, determinism and provenance. No network."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from fallback_probe.errors import ProbeError
from fallback_probe.oplists import _wheel, build, load_file
from fallback_probe.oplists.cli import build_main
from fallback_probe.records import OpStatus

FIXTURES = Path(__file__).parent / "fixtures" / "oplists"
COMMON_MPS = 'def mps_ops_modifier(ops):\n    SKIPLIST = {"nn.functional.conv3d": None}\n'
GENERATION = "if are_manual or has_view_ops or are_composite_implicit and not is_core:\n"


def make_wheel(
    directory: Path, version: str = "2.15.0", common_mps: bool = True, name: str | None = None
) -> Path:
    """A tiny stand-in torch wheel with the members the generator reads."""
    path = directory / (name or f"torch-{version}-cp311-cp311-macosx_14_0_arm64.whl")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(_wheel.YAML_MEMBER, (FIXTURES / "native_functions.yaml").read_text())
        archive.writestr(
            _wheel.VERSION_MEMBER,
            f"__version__ = '{version}'\ndebug = False\ngit_version = '{'ab' * 20}'\n",
        )
        archive.writestr(_wheel.GENERATION_MEMBER, GENERATION)
        if common_mps:
            archive.writestr(_wheel.COMMON_MPS_MEMBER, COMMON_MPS)
        archive.writestr("torch/lib/libtorch_cpu.dylib", b"\0" * 64)
    return path


def test_build_is_deterministic(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    first, text1 = build.build_from_wheel(wheel, tmp_path / "a")
    second, text2 = build.build_from_wheel(wheel, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    assert text1 == text2 == first.read_text()
    assert first.name == "torch-2.15.0.json"


def test_built_file_content(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    path, text = build.build_from_wheel(wheel, tmp_path)
    doc = json.loads(text)
    assert doc["provenance"] == {
        "wheel": wheel.name,
        "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "torch_git_version": "ab" * 20,
        "source": _wheel.YAML_MEMBER,
        "autogen_rule": f"{_wheel.GENERATION_MEMBER}: composite-implicit groups get autogen "
        "variants only when tagged core",
        "mps_test_expectations": _wheel.COMMON_MPS_MEMBER,
        "explicit_fallbacks": "fallback_probe/oplists/explicit_fallbacks.json [2.15]",
        "generator": build.GENERATOR,
    }
    assert sum(doc["counts"].values()) == len(doc["ops"])
    assert list(doc["ops"]) == sorted(doc["ops"])
    # one op per line: diff-friendly
    op_lines = [line for line in text.splitlines() if line.startswith('    "aten::')]
    assert len(op_lines) == len(doc["ops"])
    oplist = load_file(path)
    assert oplist.get("aten::embedding_renorm_").status is OpStatus.EXPLICIT_FALLBACK
    assert oplist.get("aten::_slow_conv2d_forward").error_kernel
    assert oplist.mps_test_expectations == {
        "mps_ops_modifier.SKIPLIST": {"nn.functional.conv3d": None}
    }


def test_release_without_common_mps(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, version="2.0.1", common_mps=False)
    tables = {"releases": {"2.0": {"explicit_fallback": ["linalg_svd"]}}}
    path, text = build.build_from_wheel(wheel, tmp_path, tables=tables)
    doc = json.loads(text)
    assert doc["mps_test_expectations"] == {}
    assert doc["provenance"]["mps_test_expectations"] == "absent"
    assert load_file(path).get("linalg_svd").status is OpStatus.EXPLICIT_FALLBACK


def test_release_without_reviewed_table_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, version="9.1.0")
    with pytest.raises(ProbeError, match=r"no reviewed explicit-fallback table for torch 9\.1"):
        build.build_from_wheel(wheel, tmp_path)


def test_non_final_version_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, version="2.16.0.dev20260101", name="torch-dev.whl")
    with pytest.raises(ProbeError, match="not a final release"):
        build.build_from_wheel(wheel, tmp_path)


def test_build_main_with_local_wheel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wheel = make_wheel(tmp_path)
    out = tmp_path / "out"
    code = build_main(["--wheel", str(wheel), "--out-dir", str(out), "--torch-version", "2.15.0"])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "torch-2.15.0.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give --torch-version"),
        (["--wheel", "/nonexistent/torch.whl"], "cannot read wheel"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_build_main_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert build_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fallback-probe: error: ") and message in err
    assert err.count("\n") == 1


def test_build_main_version_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wheel = make_wheel(tmp_path)
    argv = ["--wheel", str(wheel), "--torch-version", "2.14.1", "--out-dir", str(tmp_path)]
    assert build_main(argv) == 2
    assert "is torch 2.15.0, not 2.14.1" in capsys.readouterr().err


def test_not_a_torch_wheel(tmp_path: Path) -> None:
    path = tmp_path / "other.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.py", "")
    with pytest.raises(_wheel.WheelError, match="not a torch wheel"):
        _wheel.read_members(path)


def test_version_info_reads_without_executing() -> None:
    source = "import os\nos.exit(1)\n__version__ = '2.8.0'\ngit_version: str = 'abc'\n"
    assert _wheel.version_info(source) == ("2.8.0", "abc")
    with pytest.raises(_wheel.WheelError):
        _wheel.version_info("__version__ = '2.8.0'\n")


# --- choosing and downloading the wheel ---------------------------------------------------


def _file(name: str, yanked: bool = False) -> dict:
    return {
        "filename": name,
        "url": f"https://files.example/{name}",
        "hashes": {"sha256": hashlib.sha256(name.encode()).hexdigest()},
        "yanked": yanked,
    }


def test_pick_wheel_prefers_cp311_and_skips_build_numbers() -> None:
    files = [
        _file("torch-2.10.0-2-cp311-none-macosx_11_0_arm64.whl"),
        _file("torch-2.10.0-cp310-none-macosx_11_0_arm64.whl"),
        _file("torch-2.10.0-cp311-none-macosx_11_0_arm64.whl"),
        _file("torch-2.10.0-cp311-none-manylinux_2_28_aarch64.whl"),
        _file("torch-2.10.0-cp313-cp313t-macosx_14_0_arm64.whl"),
        _file("torch-2.1.0-cp311-none-macosx_11_0_arm64.whl"),
        _file("torch-2.10.0.tar.gz"),
    ]
    chosen = _wheel.pick_wheel(files, "2.10.0")
    assert chosen.filename == "torch-2.10.0-cp311-none-macosx_11_0_arm64.whl"
    assert chosen.sha256 == files[2]["hashes"]["sha256"]


def test_pick_wheel_falls_back_to_another_python() -> None:
    files = [
        _file("torch-9.0.0-cp313-cp313-macosx_14_0_arm64.whl"),
        _file("torch-9.0.0-cp312-cp312-macosx_14_0_arm64.whl"),
        _file("torch-9.0.0-cp311-cp311-macosx_14_0_arm64.whl", yanked=True),
        _file("torch-9.0.0-cp314-cp314t-macosx_14_0_arm64.whl"),
    ]
    assert _wheel.pick_wheel(files, "9.0.0").filename.startswith("torch-9.0.0-cp312")
    with pytest.raises(_wheel.WheelError, match="no macOS arm64 wheel"):
        _wheel.pick_wheel(files, "9.1.0")


class _FakeResponse(io.BytesIO):
    def __enter__(self) -> _FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_find_and_download_verify_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = make_wheel(tmp_path).read_bytes()
    name = "torch-2.15.0-cp311-cp311-macosx_14_0_arm64.whl"
    index = {
        "files": [
            {
                "filename": name,
                "url": "https://files.example/" + name,
                "hashes": {"sha256": hashlib.sha256(payload).hexdigest()},
            }
        ]
    }
    seen: list[str] = []

    def fake_urlopen(request: object, timeout: float = 0) -> _FakeResponse:
        url = request if isinstance(request, str) else request.full_url  # type: ignore[attr-defined]
        seen.append(url)
        if url == _wheel.SIMPLE_URL:
            assert request.get_header("Accept") == "application/vnd.pypi.simple.v1+json"  # type: ignore[attr-defined]
            return _FakeResponse(json.dumps(index).encode())
        return _FakeResponse(payload)

    monkeypatch.setattr(_wheel.urllib.request, "urlopen", fake_urlopen)
    out = tmp_path / "lists"
    path, text = build.build_release("2.15.0", out, download_dir=tmp_path / "dl")
    assert path == out / "torch-2.15.0.json"
    assert json.loads(text)["provenance"]["sha256"] == index["files"][0]["hashes"]["sha256"]
    assert seen == [_wheel.SIMPLE_URL, "https://files.example/" + name]

    index["files"][0]["hashes"]["sha256"] = "0" * 64
    with pytest.raises(_wheel.WheelError, match="sha256 mismatch"):
        build.build_release("2.15.0", out)
