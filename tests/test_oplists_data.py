"""The shipped lists: completeness, known facts, the lookup API, speed, an installed wheel."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

import pytest

from fallback_probe import oplists
from fallback_probe.errors import ExitCode
from fallback_probe.oplists import UnknownRelease, build
from fallback_probe.records import OpStatus

ROOT = Path(__file__).resolve().parent.parent
RELEASES = [
    "2.0.1",
    "2.1.2",
    "2.2.2",
    "2.3.1",
    "2.4.1",
    "2.5.1",
    "2.6.0",
    "2.7.1",
    "2.8.0",
    "2.9.1",
    "2.10.0",
    "2.11.0",
    "2.12.1",
    "2.13.0",
    "2.14.1",
    "2.15.0",
]
# PyPI's published sha256 of each wheel the lists were generated from.
PYPI_SHA256 = {
    "torch-2.0.1-cp311-none-macosx_11_0_arm64.whl": "25aa43ca80dcdf32f13da04c503ec7afdf8e77e3a0183dd85cd3e53b2842e527",
    "torch-2.1.2-cp311-none-macosx_11_0_arm64.whl": "e2d83f07b4aac983453ea5bf8f9aa9dacf2278a8d31247f5d9037f37befc60e4",
    "torch-2.2.2-cp311-none-macosx_11_0_arm64.whl": "49aa4126ede714c5aeef7ae92969b4b0bbe67f19665106463c39f22e0a1860d1",
    "torch-2.3.1-cp311-none-macosx_11_0_arm64.whl": "a7dd4ed388ad1f3d502bf09453d5fe596c7b121de7e0cfaca1e2017782e9bbac",
    "torch-2.4.1-cp311-none-macosx_11_0_arm64.whl": "ddddbd8b066e743934a4200b3d54267a46db02106876d21cf31f7da7a96f98ea",
    "torch-2.5.1-cp311-none-macosx_11_0_arm64.whl": "31f8c39660962f9ae4eeec995e3049b5492eb7360dd4f07377658ef4d728fa4c",
    "torch-2.6.0-cp311-none-macosx_11_0_arm64.whl": "94fc63b3b4bedd327af588696559f68c264440e2503cc9e6954019473d74ae21",
    "torch-2.7.1-cp311-none-macosx_11_0_arm64.whl": "aea4fc1bf433d12843eb2c6b2204861f43d8364597697074c8d38ae2507f8730",
    "torch-2.8.0-cp311-none-macosx_11_0_arm64.whl": "5ae0524688fb6707c57a530c2325e13bb0090b745ba7b4a2cd6a3ce262572916",
    "torch-2.9.1-cp311-none-macosx_11_0_arm64.whl": "52347912d868653e1528b47cafaf79b285b98be3f4f35d5955389b1b95224475",
    "torch-2.10.0-cp311-none-macosx_11_0_arm64.whl": "b7bd80f3477b830dd166c707c5b0b82a898e7b16f59a7d9d42778dd058272e8b",
    "torch-2.11.0-cp311-cp311-macosx_11_0_arm64.whl": "7b6a60d48062809f58595509c524b88e6ddec3ebe25833d6462eeab81e5f2ce4",
    "torch-2.12.1-cp311-cp311-macosx_14_0_arm64.whl": "ef81f503912effea2ce3d9b12a2e3a6ed488943e91271c90c7a829f60baf6aa2",
    "torch-2.13.0-cp311-cp311-macosx_14_0_arm64.whl": "e76f9bcecc52b8ff711239a2f7547d5353df95878ab232f0773c1d95928b92f8",
    "torch-2.14.1-cp311-cp311-macosx_14_0_arm64.whl": "b6074b130fd26bc50f5d171f07dfed70db22dd0c354ab34767729249f9e0f042",
    "torch-2.15.0-cp311-cp311-macosx_14_0_arm64.whl": "e808b63d616a43b326e1a5677d45a2e5babe7a8ce27edb03ddb48e7dd9b6d663",
}


def test_releases_are_the_shipped_files() -> None:
    assert oplists.releases() == tuple(RELEASES)


@pytest.mark.parametrize("release", RELEASES)
def test_provenance_is_complete(release: str) -> None:
    oplist = oplists.load(release)
    prov = oplist.provenance
    assert oplist.torch_version == release
    assert prov["wheel"].startswith(f"torch-{release}-cp311-")
    assert prov["wheel"].endswith("arm64.whl")
    assert prov["sha256"] == PYPI_SHA256[prov["wheel"]]
    assert len(prov["torch_git_version"]) == 40
    int(prov["torch_git_version"], 16)
    assert prov["source"] == "torchgen/packaged/ATen/native/native_functions.yaml"
    assert prov["generator"] == build.GENERATOR
    core_autogen = oplists.version_key(release) >= (2, 6, 0)
    assert prov["autogen_rule"].endswith("only when tagged core" if core_autogen else "never")
    minor = ".".join(release.split(".")[:2])
    assert prov["explicit_fallbacks"].endswith(f"[{minor}]")
    has_expectations = oplists.version_key(release) >= (2, 8, 0)
    assert bool(oplist.mps_test_expectations) == has_expectations
    assert (prov["mps_test_expectations"] != "absent") == has_expectations
    assert len(oplist) > 2900


@pytest.mark.parametrize("release", RELEASES)
def test_the_reviewed_table_is_applied(release: str) -> None:
    minor = ".".join(release.split(".")[:2])
    table = build.load_tables()["releases"][minor]
    oplist = oplists.load(release)
    for name in table["explicit_fallback"]:
        assert oplist.get(name).status is OpStatus.EXPLICIT_FALLBACK
    for name in table["native"]:
        assert oplist.get(name).status is OpStatus.NATIVE
    for name in table["error_kernel"]:
        assert oplist.get(name).error_kernel
    explicit = {e.op for e in oplist.entries() if e.status is OpStatus.EXPLICIT_FALLBACK}
    direct = {"aten::" + name for name in table["explicit_fallback"]}
    # only the table's ops, plus functional ops that reach one of them through a delegate
    assert all(op in direct or oplist.get(op).delegate in direct for op in explicit)


def _status(op: str, release: str) -> OpStatus:
    entry = oplists.load(release).get(op)
    assert entry is not None, (op, release)
    return entry.status


@pytest.mark.parametrize("release", RELEASES)
def test_known_points(release: str) -> None:
    minor = oplists.version_key(release)[:2]
    col2im = OpStatus.EXPLICIT_FALLBACK if minor <= (2, 7) else OpStatus.NATIVE
    assert _status("aten::col2im", release) is col2im
    svd = OpStatus.EXPLICIT_FALLBACK if minor <= (2, 13) else OpStatus.COMPOSITE_IMPLICIT
    assert _status("aten::linalg_svd", release) is svd
    if minor >= (2, 14):
        assert _status("aten::_linalg_svd", release) is OpStatus.NATIVE
    assert _status("aten::mode", release) is OpStatus.MISSING
    assert _status("aten::add.Tensor", release) is OpStatus.NATIVE
    assert oplists.load(release).get("aten::add.Tensor").delegate == "aten::add.out"
    assert _status("aten::embedding_renorm_", release) is OpStatus.EXPLICIT_FALLBACK


@pytest.mark.parametrize("release", RELEASES)
def test_only_ops_torchgen_generates(release: str) -> None:
    oplist = oplists.load(release)
    assert "aten::upsample_nearest3d.vec_out" not in oplist  # autogen of a plain composite
    assert "aten::prelu.out" not in oplist
    core_out = "aten::upsample_bilinear2d.vec_out" in oplist  # a core composite's autogen
    assert core_out == (oplists.version_key(release) >= (2, 6, 0))
    assert oplist.get("aten::native_group_norm.out").status is OpStatus.COMPOSITE_EXPLICIT


def test_bitwise_kernels_outside_the_yaml_in_2_0_only() -> None:
    assert _status("aten::bitwise_and.Tensor_out", "2.0.1") is OpStatus.NATIVE
    assert _status("aten::bitwise_not.out", "2.0.1") is OpStatus.NATIVE


@pytest.mark.parametrize("release", RELEASES)
def test_python_registered_mps_kernels(release: str) -> None:
    """torch registers a few MPS kernels from Python at import (torch/backends/mps, _refs)."""
    minor = oplists.version_key(release)[:2]
    assert _status("aten::native_group_norm", release) is OpStatus.NATIVE
    assert _status("aten::native_group_norm_backward", release) is OpStatus.NATIVE
    assert _status("aten::var_mean.correction", release) is OpStatus.NATIVE
    lu_solve = OpStatus.NATIVE if minor >= (2, 10) else OpStatus.MISSING
    assert _status("aten::linalg_lu_solve.out", release) is lu_solve
    assert _status("aten::linalg_lu_solve", release) is lu_solve


def test_functional_op_records_the_out_op_the_fallback_sees() -> None:
    entry = oplists.load("2.0.1").get("aten::upsample_bicubic2d")
    assert entry is not None
    assert entry.status is OpStatus.MISSING
    assert entry.delegate == "aten::upsample_bicubic2d.out"


def test_sparse_keys_recorded() -> None:
    entry = oplists.load("2.15.0").get("aten::add.Tensor")
    assert "SparseMPS" in entry.sparse_keys
    assert oplists.load("2.0.1").get("aten::add.Tensor").sparse_keys == ()


def test_lookup_spellings() -> None:
    oplist = oplists.load("2.15.0")
    relu = oplist.get("aten::relu")
    assert relu is not None and relu.op == "aten::relu"
    assert oplist.get("relu") == relu == oplist.get("aten::relu.default")
    assert "aten::relu" in oplist and "aten::no_such_op" not in oplist and 3 not in oplist
    assert oplist.get("aten::no_such_op") is None
    assert not any(op.endswith(".default") for op in oplist.ops())
    assert list(oplist.ops()) == sorted(oplist.ops())
    assert "aten::col2im" in oplist.near("aten::colim")


def test_version_resolution() -> None:
    assert oplists.resolve_release("2.13.0+cpu") == "2.13.0"
    assert oplists.resolve_release("2.13.1") == "2.13.0"
    assert oplists.resolve_release("2.14.0.dev20260101") == "2.14.1"
    assert oplists.resolve_release("2.0") == "2.0.1"
    assert oplists.load("2.13.0+cpu") is oplists.load("2.13.0")
    for bad in ("1.13.1", "2.99.0", "banana", ""):
        with pytest.raises(UnknownRelease) as info:
            oplists.resolve_release(bad)
        assert info.value.exit_code == ExitCode.USAGE
        assert "2.0.1, 2.1.2" in str(info.value) and "2.15.0" in str(info.value)
    assert oplists.nearest_release("2.13.0+cu121") == "2.13.0"
    assert oplists.nearest_release("2.99.1") == "2.15.0"
    assert oplists.nearest_release("1.13.1") == "2.0.1"


def test_load_file_rejects_corrupt_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"format": 99}')
    with pytest.raises(oplists.ProbeError, match="corrupt operator list"):
        oplists.load_file(path)
    with pytest.raises(oplists.ProbeError, match="cannot read"):
        oplists.load_file(tmp_path / "missing.json")
    # Entries are made on first use, but every status is checked when the file is read.
    doc = json.loads(oplists._lists_dir().joinpath("torch-2.13.0.json").read_text())
    doc["ops"]["aten::relu"] = {"status": "native-ish"}
    path.write_text(json.dumps(doc))
    with pytest.raises(oplists.ProbeError, match="entry 'aten::relu' has no valid status"):
        oplists.load_file(path)


def test_a_file_read_lazily_answers_as_one_built_whole() -> None:
    lazy = oplists.load("2.13.0")
    eager = oplists.OpList(lazy.torch_version, {e.op: e for e in lazy.entries()})
    assert len(lazy) == len(eager) and lazy.ops() == eager.ops()
    assert lazy.counts() == eager.counts()
    for status in OpStatus:
        assert sorted(lazy.with_status(status)) == sorted(eager.with_status(status))
        assert sorted(lazy.with_status(status)) == [
            e.op for e in lazy.entries() if e.status is status
        ]


def test_load_and_10000_lookups_are_fast() -> None:
    oplists._load_resolved.cache_clear()
    start = time.perf_counter()
    oplist = oplists.load("2.14.1")
    names = oplist.ops()
    for i in range(10_000):
        assert oplist.get(names[i % len(names)]) is not None
    assert time.perf_counter() - start < 0.2


def test_from_dispatcher_uses_the_same_rules() -> None:
    oplist = oplists.from_dispatcher("PrivateUse1", ["aten::linalg_svd"], label="unit test")
    assert oplist.provenance["label"] == "unit test"
    assert oplist.get("aten::linalg_svd").status is OpStatus.EXPLICIT_FALLBACK
    add = oplist.get("aten::add.Tensor")
    assert add.status is OpStatus.MISSING and add.delegate == "aten::add.out"
    assert oplist.get("aten::relu").status is OpStatus.MISSING
    assert oplist.get("aten::dropout").status is OpStatus.COMPOSITE_IMPLICIT
    assert oplist.get("aten::linalg_svd.U") is not None
    cpu = oplists.from_dispatcher("CPU")
    assert cpu.get("aten::relu").status is OpStatus.NATIVE
    assert cpu.get("aten::add.Tensor").status is OpStatus.NATIVE
    assert "SparseCPU" in cpu.get("aten::add.Tensor").sparse_keys


# --- an installed wheel, used from outside the checkout -----------------------------------

LOOKUP = """
import json, fallback_probe.oplists as o
print(json.dumps({
    "file": o.__file__,
    "releases": o.releases(),
    "sizes": [len(o.load(r)) for r in o.releases()],
    "col2im": [o.load(r).get("aten::col2im").status.value for r in o.releases()],
}))
"""


def _can_build_offline() -> bool:
    """setuptools with a bdist_wheel command (built in since 70.1, else the wheel package)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    major, minor = metadata.version("setuptools").split(".")[:2]
    return (int(major), int(minor)) >= (70, 1)


def _build_wheel(dist: Path, tmp: Path) -> Path:
    if importlib.util.find_spec("pip") is None:
        pytest.skip("building is impossible here: no pip")
    source = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("fallback_probe", "operator_lists"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist)]
    offline = _can_build_offline()
    if offline:
        command.append("--no-build-isolation")  # no download needed
    done = subprocess.run([*command, str(source)], capture_output=True, text=True)
    unreachable = ("No matching distribution", "Could not find a version", "NewConnectionError")
    if done.returncode != 0 and not offline and any(m in done.stderr for m in unreachable):
        pytest.skip(f"building is impossible here: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr
    (wheel,) = dist.glob("fallback_probe-*.whl")
    return wheel


def test_every_release_loads_from_an_installed_wheel(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path / "dist", tmp_path)
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if sys.prefix != sys.base_prefix:  # running inside a venv: let the new one see its packages
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        Path(purelib, "_outer_env.pth").write_text("\n".join(sorted(parent)) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--ignore-installed",
        ]
        + ["--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(python), "-c", LOOKUP], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert Path(result["file"]).resolve().is_relative_to(venv.resolve())
    assert result["releases"] == RELEASES
    assert min(result["sizes"]) > 2900
    assert result["col2im"] == ["explicit_fallback"] * 8 + ["native"] * 8
