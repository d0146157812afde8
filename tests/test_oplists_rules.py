"""The status rules, the yaml subset parser and the common_mps.py reader, on small fixtures."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fallback_probe.oplists import _common_mps, _rules, _yaml
from fallback_probe.records import OpStatus

FIXTURE = Path(__file__).parent / "fixtures" / "oplists" / "native_functions.yaml"
TABLE = _rules.ReleaseTable(
    explicit_fallback=frozenset({"linalg_svd", "embedding_renorm_", "sgn.out"}),
    native=frozenset({"bitwise_and.Tensor_out"}),
    error_kernel=frozenset({"_slow_conv2d_forward"}),
)

N, EF = OpStatus.NATIVE, OpStatus.EXPLICIT_FALLBACK
CI, CE, M = OpStatus.COMPOSITE_IMPLICIT, OpStatus.COMPOSITE_EXPLICIT, OpStatus.MISSING


@pytest.fixture(scope="module")
def result() -> dict:
    return _rules.classify(_rules.parse_entries(_yaml.load(FIXTURE.read_text())), TABLE)


@pytest.mark.parametrize(
    ("op", "status"),
    [
        ("aten::native_op", N),  # "CPU, CUDA, MPS: fn"
        ("aten::cpu_only", M),
        ("aten::lookalike_keys", M),  # SparseMPS / QuantizedMPS / NestedTensorMPS are not MPS
        ("aten::add.out", N),
        ("aten::add.Tensor", N),  # delegate has MPS
        ("aten::add_.Tensor", N),
        ("aten::upsample.vec", M),  # delegate without MPS
        ("aten::upsample.out", M),
        ("aten::chain", N),  # delegate chain chain -> chain.mid -> chain.out (MPS)
        ("aten::chain.mid", N),
        ("aten::reduce.dims", CE),  # delegate without MPS but composite: its body runs
        ("aten::reduce.dims_out", CE),
        ("aten::reduce2.dims", M),  # delegate without any kernel: the fallback, as .dims_out
        ("aten::implicit_default", CI),  # no dispatch, no delegate
        ("aten::implicit_named", CI),  # CompositeImplicitAutograd + NestedTensor keys
        ("aten::implicit_nested_only", M),  # the NestedTensor composite covers no dense key
        ("aten::implicit_with_mps", N),  # an MPS kernel wins over the composite
        ("aten::explicit_op", CE),
        ("aten::explicit_op.out", CE),  # autogen
        ("aten::explicit_nonfunctional", CE),
        ("aten::explicit_with_mps", N),
        ("aten::empty_dispatch", M),  # "dispatch: {}" gets no implicit kernel
        ("aten::fused_", N),
        ("aten::fused", CE),  # autogen'd variants never inherit the MPS kernel
        ("aten::fused.out", CE),
        ("aten::implicit_autogen", CI),
        ("aten::implicit_core", CI),
        ("aten::implicit_core.out", CE),  # core composite: generated (2.6+ torchgen)
        ("aten::manual_", M),
        ("aten::gen_twice.List_out", CE),  # the same autogen listed twice
        ("aten::cpp_args", M),
        ("aten::linalg_svd", EF),  # the table beats the implicit composite
        ("aten::embedding_renorm_", EF),
        ("aten::sgn.out", EF),
        ("aten::sgn", EF),  # reaches the explicit registration through its delegate
        ("aten::bitwise_and.Tensor_out", N),  # hand-written kernel outside the yaml
        ("aten::bitwise_and.Tensor", N),
        ("aten::_slow_conv2d_forward", N),
    ],
)
def test_status(result: dict, op: str, status: OpStatus) -> None:
    assert result[op].status is status


def test_every_overload_is_listed_once(result: dict) -> None:
    funcs = [e["func"].split("(")[0] for e in _yaml.load(FIXTURE.read_text())]
    # not generated: manual.out (manual_cpp_binding), implicit_autogen.out (composite, not core)
    autogen = {"explicit_op.out", "fused", "fused.out", "gen_twice.List_out", "implicit_core.out"}
    assert set(result) == {"aten::" + name for name in [*funcs, *autogen]}
    assert all(entry.op == op for op, entry in result.items())
    assert not any(op.endswith(".default") for op in result)


def test_facts_behind_the_status(result: dict) -> None:
    assert result["aten::add.Tensor"].delegate == "aten::add.out"
    assert result["aten::upsample.vec"].delegate == "aten::upsample.out"
    assert result["aten::chain"].delegate == "aten::chain.mid"
    assert result["aten::reduce.dims"].delegate == "aten::reduce.dims_out"
    assert result["aten::add.Tensor"].sparse_keys == ("SparseMPS",)
    assert result["aten::add.out"].sparse_keys == ()
    assert result["aten::lookalike_keys"].sparse_keys == ("SparseMPS", "SparseCsrMPS")
    assert result["aten::_slow_conv2d_forward"].error_kernel
    assert not result["aten::native_op"].error_kernel
    assert result["aten::native_op"].delegate is None


def test_autogen_of_composites_before_2_6() -> None:
    entries = _rules.parse_entries(_yaml.load(FIXTURE.read_text()))
    old = _rules.classify(entries, TABLE, core_composites_autogen=False)
    assert "aten::implicit_core.out" not in old
    assert "aten::implicit_autogen.out" not in old
    assert "aten::explicit_op.out" in old


def test_autogen_rule_is_read_from_torchgen() -> None:
    new = "            if are_manual or has_view_ops or are_composite_implicit and not is_core:\n"
    old = "            if are_manual or has_view_ops or are_composite_implicit:\n"
    assert _rules.autogen_rule(new) is True
    assert _rules.autogen_rule(old) is False
    for changed in (None, "", "if are_manual or has_view_ops:\n"):
        with pytest.raises(_rules.RuleError, match="changed"):
            _rules.autogen_rule(changed)


def test_other_backend_key() -> None:
    entries = _rules.parse_entries(_yaml.load(FIXTURE.read_text()))
    cpu = _rules.classify(entries, key="CPU", sparse_keys=("SparseCPU",))
    assert cpu["aten::cpu_only"].status is N
    assert cpu["aten::upsample.vec"].status is N
    assert cpu["aten::lookalike_keys"].sparse_keys == ("SparseCPU",)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("- func: a(Tensor x) -> Tensor\n  structured_delegate: b.out\n", "not defined"),
        (
            "- func: a(Tensor x) -> Tensor\n  structured_delegate: b\n"
            "- func: b(Tensor x) -> Tensor\n  structured_delegate: a\n",
            "cycle",
        ),
        ("- func: a(Tensor x) -> Tensor\n- func: a(Tensor y) -> Tensor\n", "twice"),
        (
            "- func: a(Tensor x) -> Tensor\n  autogen: b\n- func: b(Tensor y) -> Tensor\n",
            "also a func",
        ),
    ],
)
def test_inconsistent_yaml_is_an_error(yaml_text: str, message: str) -> None:
    with pytest.raises(_rules.RuleError, match=message):
        _rules.classify(_rules.parse_entries(_yaml.load(yaml_text)))


def test_table_op_missing_from_release_is_an_error() -> None:
    entries = _rules.parse_entries(_yaml.load("- func: a(Tensor x) -> Tensor\n"))
    table = _rules.ReleaseTable(explicit_fallback=frozenset({"col2im"}))
    with pytest.raises(_rules.RuleError, match="col2im"):
        _rules.classify(entries, table)


# --- the yaml subset ---------------------------------------------------------------------


def test_yaml_subset() -> None:
    text = textwrap.dedent(
        """\
        # comment
        - func: f(str reduce="mean", int[1] dim=[]) -> Tensor  # trailing comment
          tags: [core, pointwise]
          cpp_no_default_args: ['dim', "x"]
          structured: True
          manual_cpp_binding: false
          dispatch: {}
          n: 3
          precomputed:
          - dim -> int dim
          ufunc_inner_loop:
            Generic: add (AllAndComplex, BFloat16)
        - func: g() -> ()
          empty:
        """
    )
    assert _yaml.load(text) == [
        {
            "func": 'f(str reduce="mean", int[1] dim=[]) -> Tensor',
            "tags": ["core", "pointwise"],
            "cpp_no_default_args": ["dim", "x"],
            "structured": True,
            "manual_cpp_binding": False,
            "dispatch": {},
            "n": 3,
            "precomputed": ["dim -> int dim"],
            "ufunc_inner_loop": {"Generic": "add (AllAndComplex, BFloat16)"},
        },
        {"func": "g() -> ()", "empty": None},
    ]


@pytest.mark.parametrize(
    "text",
    [
        "- a: 'unterminated\n",
        "- a: |\n    block\n",
        "- a: &anchor x\n",
        "- a: [x,\n   y]\n",
        "- a: 1\n  b: 2\n   c: 3\n",
        "- a: 1\n  a: 2\n",
        "\t- a: 1\n",
    ],
)
def test_yaml_outside_the_subset_fails_loudly(text: str) -> None:
    with pytest.raises(_yaml.YamlError):
        _yaml.load(text)


def test_yaml_matches_pyyaml_where_available() -> None:
    yaml = pytest.importorskip("yaml")  # a test extra, to cross-check: not a runtime dependency
    text = FIXTURE.read_text()
    assert _yaml.load(text) == yaml.safe_load(text)


# --- common_mps.py -----------------------------------------------------------------------

COMMON_MPS = """
import torch
if torch.backends.mps.is_available():
    def mps_ops_modifier(ops, sparse=False):
        SUPPORTED = {"add", "mul"}
        UNIMPLEMENTED_XFAILLIST: dict[str, list | None] = {
            "linalg.eig": None,
            "grid_sample": [torch.float32, torch.float16],
            "matmul": [torch.int64] if MACOS_VERSION < 14.0 else [],
        }
        if MACOS_VERSION < 14.0:
            UNIMPLEMENTED_XFAILLIST.update({"fft.fft": None})
        if sparse:
            UNIMPLEMENTED_XFAILLIST.update(OTHER)
        lower = {"not": None}
        return ops
else:
    def mps_ops_modifier(ops, sparse=False):
        STUB = {"x": None}
        return ops
"""


def test_common_mps_extraction() -> None:
    tables = _common_mps.extract(COMMON_MPS)
    assert tables == {
        "mps_ops_modifier.SUPPORTED": {"add": None, "mul": None},
        "mps_ops_modifier.UNIMPLEMENTED_XFAILLIST": {
            "grid_sample": ["float16", "float32"],
            "linalg.eig": None,
            "matmul": "[torch.int64] if MACOS_VERSION < 14.0 else []",
        },
        "mps_ops_modifier.UNIMPLEMENTED_XFAILLIST if MACOS_VERSION < 14.0": {"fft.fft": None},
    }
    assert list(tables) == sorted(tables)
