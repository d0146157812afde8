"""torchvision's operator lists: generated from its wheels' compiled libraries, paired with
torch releases, and judged in predict mode like ATen ops (stand-in ops under the
``torchvision`` namespace: the CUDA-only torchvision wheel here cannot load its own)."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from fallback_probe import oplists
from fallback_probe.oplists import torchvision as tv
from fallback_probe.records import OpStatus
from tests.machofixture import image
from tests.test_cli import SCRIPTS, run_cli, run_json
from tests.wheels import torchvision_wheel

pytest_plugins = ["pytester"]

SHIPPED = Path(__file__).parent.parent / "operator_lists"
IMPL = "__ZNR5torch7Library5_implEPKcONS_11CppFunctionENS_17_RegisterOrVerifyE"
DEF = "__ZNR5torch7Library3defEPKcRKNSt3__16vectorINS_10h"
DEF_FN = "__ZNR5torch7Library3defIRA14_KcPFxvEEERS0_OT_OT0_"
INIT_IMPL = "_aoti_torch_library_init_impl"
STABLE_IMPL = "_torch_library_impl"


def _admits(requirement: str, version: str) -> bool:
    op, wanted = re.fullmatch(r"(==|>=)(.+)", requirement).groups()  # type: ignore[union-attr]
    key = oplists.version_key
    return key(version) == key(wanted) if op == "==" else key(version) >= key(wanted)


def test_pairing_table_is_the_newest_torchvision_each_torch_release_admits() -> None:
    assert set(tv.PAIRS) == set(oplists.releases())
    docs = {release: tv.document(release) for release in tv.releases()}
    for torch_release, paired in tv.PAIRS.items():
        admitting = [r for r, d in docs.items() if _admits(d["torch_requirement"], torch_release)]
        assert admitting, torch_release
        assert paired == max(admitting, key=oplists.version_key), torch_release


def test_lists_say_which_ops_have_mps_kernels() -> None:
    def status(release: str, op: str) -> str:
        return tv.document(release)["ops"][f"torchvision::{op}"]["status"]

    assert status("0.15.2", "nms") == "missing"  # MPS kernels came with 0.16
    assert status("0.16.2", "nms") == status("0.16.2", "roi_align") == "native"
    assert status("0.22.1", "deform_conv2d") == "missing"
    assert status("0.23.0", "deform_conv2d") == "native"
    assert status("0.29.2", "_deform_conv2d_backward") == "missing"
    assert tv.document("0.29.2")["provenance"]["source"] == "torchvision/_C_stable.so"


def test_oplist_lookup_sees_the_paired_torchvision() -> None:
    assert oplists.load("2.0.1").get("torchvision::nms").status is OpStatus.MISSING
    assert oplists.load("2.1.2").get("torchvision::nms").status is OpStatus.NATIVE
    assert oplists.load("2.1.2", torchvision="0.15").get("torchvision::nms").status is (
        OpStatus.MISSING
    )
    assert oplists.load("2.1.2", torchvision="").get("torchvision::nms") is None
    assert "torchvision-0.16.2.json" in oplists.load("2.1.2").provenance["torchvision"]


# --- the generator on real wheels and a fixture ----------------------------------------------


@pytest.mark.parametrize("version", ["0.16.2", "0.29.2"])  # _C.so and the stable-ABI _C_stable.so
def test_real_wheel_regenerates_the_shipped_list_byte_for_byte(version: str, tmp_path) -> None:
    path, text = tv.build_from_wheel(torchvision_wheel(version), tmp_path)
    assert path.name == f"torchvision-{version}.json"
    assert text == (SHIPPED / path.name).read_text(encoding="utf-8")


def _fake_wheel(tmp_path: Path, libraries: dict[str, bytes], requires: str) -> Path:
    wheel = tmp_path / "torchvision-9.1.0-cp311-cp311-macosx_11_0_arm64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(
            "torchvision-9.1.0.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: torchvision\nVersion: 9.1.0\nRequires-Dist: {requires}\n",
        )
        for name, data in libraries.items():
            archive.writestr(name, data)
    return wheel


def test_generator_reads_every_compiled_library_of_a_fixture_wheel(tmp_path: Path) -> None:
    def reg(op: str) -> list[tuple]:
        return [("load", 1, f"str:torchvision::{op}"), ("bl", IMPL)]

    classic = image(
        [
            ("__ZN6vision3opsL41TORCH_LIBRARY_IMPL_init_torchvision_CPU_2ERN5torch7LibraryE",
             reg("nms") + reg("roi_align") + reg("deform_conv2d")),
            ("__ZN6vision3opsL41TORCH_LIBRARY_IMPL_init_torchvision_MPS_2ERN5torch7LibraryE",
             reg("roi_align")),
            ("__ZN6vision3opsL41TORCH_LIBRARY_FRAGMENT_init_torchvision_3E",
             [("load", 0, "str:torchvision::nms(Tensor dets, Tensor scores, float t) -> Tensor"),
              ("mov", 1, 0), ("bl", DEF), ("load", 1, "str:_cuda_version"), ("bl", DEF_FN),
              ("load", 0, "str:torchvision::box_iou(Tensor a, Tensor b) -> Tensor"), ("bl", DEF)]),
        ],
        [IMPL, DEF, DEF_FN],
    )  # fmt: skip
    stable = image(
        [
            ("_static_init",
             [("load", 0, "str:torchvision"), ("load", 1, "str:MPS"), ("bl", INIT_IMPL),
              ("load", 0, "str:torchvision"), ("load", 1, "str:nms"), ("bl", STABLE_IMPL)]),
        ],
        [INIT_IMPL, STABLE_IMPL],
    )  # fmt: skip
    wheel = _fake_wheel(
        tmp_path,
        {"torchvision/_C.so": classic, "torchvision/_C_stable.so": stable},
        "torch (==9.6.0)",
    )
    path, text = tv.build_from_wheel(wheel, tmp_path / "out")
    doc = json.loads(text)
    status = {op.split("::")[1]: e["status"] for op, e in doc["ops"].items()}
    assert status == {
        "nms": "native",  # its MPS kernel is in the second library
        "roi_align": "native",
        "deform_conv2d": "missing",  # CPU only: MPS's boxed fallback
        "_cuda_version": "composite_implicit",  # m.def(name, fn): a catch-all kernel
        "box_iou": "missing",  # defined, no kernel at all
    }
    assert doc["torch_requirement"] == "==9.6.0"
    assert doc["provenance"]["source"] == "torchvision/_C.so, torchvision/_C_stable.so"
    again = tv.build_from_wheel(wheel, tmp_path / "again")[1]
    assert again == text  # same wheel, same bytes


def test_a_wheel_without_compiled_torchvision_is_a_one_line_error(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, {"torchvision/__init__.py": b""}, "torch")
    r = run_cli("oplists", "build", "--torchvision-wheel", str(wheel), "--out-dir", str(tmp_path))
    assert r.returncode == 2 and "no torchvision/_C*.so" in r.stderr
    assert "Traceback" not in r.stderr


# --- judging ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin_all(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tv") / "r.json"
    r, report = run_json(out, str(SCRIPTS / "torchvision_standin.py"), "--torch-version", "all")
    assert r.returncode == 0, r.stderr
    return report


def test_standin_ops_are_judged_per_release(standin_all: dict) -> None:
    matrix = standin_all["matrix"]["ops"]
    assert matrix["torchvision::nms"]["2.0.1"] == "fallback"
    assert matrix["torchvision::roi_align"]["2.0.1"] == "fallback"
    assert matrix["torchvision::nms"]["2.1.2"] == "native"
    assert matrix["torchvision::roi_align"]["2.15.0"] == "native"
    assert matrix["torchvision::deform_conv2d"]["2.7.1"] == "fallback"
    assert matrix["torchvision::deform_conv2d"]["2.8.0"] == "native"
    assert not [n for n in standin_all["not_judged"] if n["op"].startswith("torchvision::")]
    assert (
        "torchvision:: ops were judged against torchvision 0.28.0 (with torch 2.13.0) (each "
        "release of the matrix with its own)." in standin_all["limits"]
    )


def test_torchvision_version_option_overrides_the_pairing(tmp_path: Path) -> None:
    script = str(SCRIPTS / "torchvision_standin.py")
    r, report = run_json(
        tmp_path / "r.json", script, "--torch-version", "2.8", "--torchvision-version", "0.22"
    )
    assert r.returncode == 0, r.stderr
    verdicts = {row["op"]: row["verdict"] for row in report["ops"]}
    assert verdicts["torchvision::deform_conv2d"] == "fallback"
    bad = run_cli(script, "--torch-version", "2.8", "--torchvision-version", "0.99")
    assert bad.returncode == 2 and "unknown torchvision release" in bad.stderr


def test_ops_prints_history_across_torchvision_releases() -> None:
    r = run_cli("ops", "torchvision::nms", "torchvision::deform_conv2d")
    assert r.returncode == 0, r.stderr
    assert "torchvision::nms: missing 0.15, native since 0.16" in r.stdout
    assert "torchvision::deform_conv2d: missing 0.15\u20130.22, native since 0.23" in r.stdout
    r = run_cli("ops", "torchvision::nmz")
    assert r.returncode == 2 and "did you mean torchvision::nms" in r.stderr


def test_installed_torchvision_is_judged_with_the_installed_torch(monkeypatch) -> None:
    from importlib import metadata

    versions = {"torch": "2.1.2+cpu", "torchvision": "0.15.2+cpu"}
    monkeypatch.setattr(metadata, "version", lambda name: versions[name])
    tv.installed_pair.cache_clear()
    try:
        assert tv.installed_pair() == ("2.1.2", "0.15.2")
        # the installed release is judged with the installed torchvision, others with their pair
        assert oplists.load("2.1.2").get("torchvision::nms").status is OpStatus.MISSING
        assert oplists.load("2.2.2").get("torchvision::nms").status is OpStatus.NATIVE
        versions["torchvision"] = "0.99.0"  # not listed: the pairing table decides
        tv.installed_pair.cache_clear()
        assert oplists.load("2.1.2").get("torchvision::nms").status is OpStatus.NATIVE
    finally:
        tv.installed_pair.cache_clear()


def test_reason_names_the_torchvision_release(standin_all: dict) -> None:
    rows = {row["op"]: row for row in standin_all["ops"]}
    assert "torchvision 0.28.0 (with torch 2.13.0)" in json.dumps(rows["torchvision::nms"])


@pytest.mark.slow
@pytest.mark.parametrize("version", sorted(set(tv.PAIRS.values()), key=oplists.version_key))
def test_every_shipped_list_regenerates_from_its_wheel(version: str, tmp_path) -> None:
    """All 15 (about 30 MB of wheels): only with ``-m slow``, to keep CI's downloads small."""
    path, text = tv.build_from_wheel(torchvision_wheel(version), tmp_path)
    assert text == (SHIPPED / path.name).read_text(encoding="utf-8")


STANDIN_TEST = """
import torch

lib = torch.library.Library("torchvision", "FRAGMENT")
lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
lib.impl("nms", lambda dets, scores, t: torch.argsort(scores), "CPU")

def test_detect():
    boxes, scores = torch.rand(8, 4, device="mps"), torch.rand(8, device="mps")
    torch.ops.torchvision.nms(boxes, scores, 0.5)
"""


def test_baseline_records_and_gates_a_torchvision_fallback(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_standin=STANDIN_TEST)
    old = ("--fallback-probe", "--fallback-torch-version", "2.0.1")
    pytester.runpytest_subprocess(*old, "--fallback-update").assert_outcomes(passed=1)
    baseline = json.loads(pytester.path.joinpath("fallback-baseline.json").read_text())
    assert json.dumps(baseline).count('"torchvision::nms": "fallback"') == 1
    pytester.runpytest_subprocess(*old).assert_outcomes(passed=1)  # known: the gate passes
    pytester.path.joinpath("fallback-baseline.json").unlink()
    new = ("--fallback-probe", "--fallback-torch-version", "2.1.2", "--fallback-update")
    pytester.runpytest_subprocess(*new).assert_outcomes(passed=1)
    baseline = json.loads(pytester.path.joinpath("fallback-baseline.json").read_text())
    assert "torchvision::nms" not in json.dumps(baseline)  # native in 0.16.2: not a problem
