"""`oplists verify`: the explicit-fallback table against a wheel's compiled registrations.

The real check reads torch 2.0.1's macOS wheel (the richest table: 10 explicit fallbacks,
C++ and Python natives), from a local cache or one bounded download; a small assembled
Mach-O checks the decoder on code shapes the compiler produces in other releases.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from fallback_probe import oplists
from fallback_probe.oplists import _macho, build, verify
from tests.machofixture import image
from tests.test_cli import run_cli
from tests.wheels import torch_wheel

FALLBACK_BODY = "__ZN2atL34TORCH_LIBRARY_IMPL_init_aten_MPS_3ERN5torch7LibraryE"
GENERATED_BODY = "__ZN2at12_GLOBAL__N_134TORCH_LIBRARY_IMPL_init_aten_MPS_1ERN5torch7LibraryE"
BOXED = "__ZN3c1011BoxedKernel19make_boxed_functionIXadL_ZN2atL12mps_fallbackERKNS_14OpHandleE"
IMPL = "__ZNR5torch7Library5_implEPKcONS_11CppFunctionENS_17_RegisterOrVerifyE"
CTOR = "__ZN5torch11CppFunctionC1EN3c1014KernelFunctionE"
SLOW = "__ZN2atL23slow_conv2d_forward_mpsERKNS_6TensorE"


def _register(op: str, *kernel: tuple) -> list[tuple]:
    return [*kernel, ("bl", CTOR), ("load", 1, f"str:{op}"), ("bl", IMPL)]


def fake_libtorch() -> bytes:
    """MPSFallback.mm as clang 17 compiles it in 2.10: &mps_fallback's boxed kernel loaded
    once into x21 and stored for each registration; a generated body beside it."""
    fallback = [("load", 21, f"sym:{BOXED}")]
    fallback += _register("embedding_renorm_", ("stp", 21))
    fallback += _register("linalg_svd", ("stp", 21))
    fallback += _register("_slow_conv2d_forward", ("load", 1, f"sym:{SLOW}"))
    generated = _register("add.out") + _register("add.Tensor") + _register("abs.out")
    return image(
        [(FALLBACK_BODY, fallback), (GENERATED_BODY, generated)], [BOXED, IMPL, CTOR, SLOW]
    )


def test_decoder_reads_registrations_and_their_kernels_from_assembled_code() -> None:
    compiled = verify.read_compiled(fake_libtorch())
    assert compiled.fallback == {"embedding_renorm_", "linalg_svd"}
    assert compiled.other_in_fallback_file == {"_slow_conv2d_forward"}
    assert compiled.elsewhere == {"add.out", "add.Tensor", "abs.out"}


def test_a_library_without_mps_bodies_or_not_arm64_is_an_error() -> None:
    with pytest.raises(Exception, match="no TORCH_LIBRARY_IMPL"):
        verify.read_compiled(image([("_other", [("bl", IMPL)])], [IMPL]))
    with pytest.raises(_macho.MachOError, match="Mach-O"):
        _macho.MachO(b"\x7fELF" + bytes(64))


def test_compare_names_each_disagreeing_entry() -> None:
    compiled = verify.read_compiled(fake_libtorch())
    table = {
        "explicit_fallback": ["embedding_renorm_", "linalg_svd"],
        "error_kernel": ["_slow_conv2d_forward"],
        "native": ["add.Tensor"],
        "native_from": ["x.mm"],
    }
    yaml_native = {"add.out", "abs.out"}
    assert verify.compare(table, yaml_native, {}, compiled, []) == []
    moved = {
        **table,
        "explicit_fallback": ["embedding_renorm_"],
        "native": ["add.Tensor", "linalg_svd"],
    }
    problems = verify.compare(moved, yaml_native, {}, compiled, [])
    assert any("registers linalg_svd but the table does not list it" in p for p in problems)
    python = [verify.PythonRegistration("native_group_norm", "torch/backends/mps/__init__.py")]
    problems = verify.compare(table, yaml_native, {}, compiled, python)
    assert any("native_group_norm" in p for p in problems)
    assert any("torch/backends/mps/__init__.py registers MPS kernels" in p for p in problems)


def test_python_registrations_read_with_ast() -> None:
    source = (
        "from torch.library import Library as _Library\n"
        "_lib = None\n"
        "def _init():\n"
        "    global _lib\n"
        "    _lib = _Library('aten', 'IMPL')\n"
        "    _lib.impl('native_group_norm', f, 'MPS')\n"
        "    _lib.impl('mode', f, 'CPU')\n"
        "mps_lib = torch.library.Library('aten', 'IMPL', 'MPS')\n"
        "mps_lib.impl('aten::linalg_lu_solve.out', g)\n"
        "other = torch.library.Library('mylib', 'IMPL', 'MPS')\n"
        "other.impl('thing', g)\n"
    )
    found = verify.read_python([("torch/x.py", source)])
    assert [(r.op, r.path) for r in found] == [
        ("linalg_lu_solve.out", "torch/x.py"),
        ("native_group_norm", "torch/x.py"),
    ]


# --- a real wheel ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel_2_0() -> Path:
    return torch_wheel("2.0.1")


@pytest.fixture(scope="module")
def verdict_2_0(wheel_2_0: Path) -> verify.Verdict:
    return verify.verify_wheel(wheel_2_0)


def test_shipped_table_agrees_with_the_2_0_wheel(verdict_2_0: verify.Verdict) -> None:
    assert verdict_2_0.problems == ()
    compiled = verdict_2_0.compiled
    assert compiled.fallback == set(build.load_tables()["releases"]["2.0"]["explicit_fallback"])
    assert compiled.other_in_fallback_file == {"_slow_conv2d_forward"}
    assert {"bitwise_and.Tensor_out", "add.out"} <= compiled.elsewhere
    assert {r.op for r in verdict_2_0.python} == {
        "native_group_norm",
        "native_group_norm_backward",
        "var_mean.correction",
    }


@pytest.mark.parametrize(
    "field, change",
    [
        ("explicit_fallback", lambda ops: ops[1:]),  # one dropped
        ("explicit_fallback", lambda ops: [*ops, "mode"]),  # one added
        ("native", lambda ops: [op for op in ops if op != "bitwise_not.out"]),  # a C++ native
        ("native", lambda ops: [op for op in ops if op != "var_mean.correction"]),  # a Python one
        ("error_kernel", lambda ops: []),
    ],
)
def test_a_table_altered_by_one_entry_disagrees(verdict_2_0, field, change) -> None:
    tables = build.load_tables()
    raw = copy.deepcopy(tables["releases"]["2.0"])
    raw[field] = change(raw[field])
    yaml_native = verdict_2_0.compiled.elsewhere - {
        "bitwise_and.Tensor_out", "bitwise_or.Tensor_out", "bitwise_xor.Tensor_out",
        "bitwise_not.out",
    }  # fmt: skip
    shipped = tables["releases"]["2.0"]
    compiled, python = verdict_2_0.compiled, verdict_2_0.python
    assert verify.compare(shipped, yaml_native, {}, compiled, python) == []
    problems = verify.compare(raw, yaml_native, {}, compiled, python)
    assert problems and all(p.startswith(field) for p in problems)


def test_cli_verify_exits_1_naming_the_entry(wheel_2_0: Path, tmp_path: Path) -> None:
    ok = run_cli("oplists", "verify", "--wheel", str(wheel_2_0), timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "table [2.0] agrees" in ok.stdout
    tables = build.load_tables()
    tables["releases"]["2.0"]["explicit_fallback"].remove("im2col")
    altered = tmp_path / "table.json"
    altered.write_text(json.dumps(tables))
    bad = run_cli(
        "oplists", "verify", "--wheel", str(wheel_2_0), "--table", str(altered), timeout=300
    )
    assert bad.returncode == 1, bad.stderr
    assert "[2.0] explicit_fallback: mps_fallback registers im2col but the table" in bad.stdout
    assert "Traceback" not in bad.stderr


def test_cli_verify_bad_input_is_one_line(tmp_path: Path) -> None:
    r = run_cli("oplists", "verify", "--wheel", str(tmp_path / "none.whl"))
    assert r.returncode == 2
    assert r.stderr.startswith("fallback-probe: error:") and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("release", oplists.releases())
def test_every_listed_wheel_agrees_with_the_table(release: str) -> None:
    """All 16 wheels (1.3 GB): only with ``-m slow``; CI checks 2.0.1 above."""
    assert verify.verify_wheel(torch_wheel(release)).problems == ()
