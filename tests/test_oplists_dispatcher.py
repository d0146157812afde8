"""The yaml rules (``_rules.py``) against what the installed dispatcher really runs.

``from_dispatcher`` reads the computed dispatch table, not the yaml's keys, so the two are
independent: the generator's rules applied to the installed torch's own yaml must give the
statuses the installed dispatcher resolves, for a key no yaml entry names (PrivateUse1: every
status then comes from composites, delegates and autogen) and for CPU.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from fallback_probe import oplists
from fallback_probe.oplists import OpList, _dispatcher, _rules, _yaml
from fallback_probe.records import OpStatus

torchgen = pytest.importorskip("torchgen")
YAML = Path(
    os.path.dirname(torchgen.__file__), "packaged", "ATen", "native", "native_functions.yaml"
)
pytestmark = pytest.mark.skipif(not YAML.is_file(), reason="torch without its packaged yaml")


@functools.cache
def _doc() -> list:
    return _yaml.load(YAML.read_text(encoding="utf-8"))


@functools.cache
def _live(key: str) -> OpList:
    return oplists.from_dispatcher(key)


def _predicted(key: str) -> dict[str, oplists.OpEntry]:
    return _rules.classify(_rules.parse_entries(_doc()), key=key, sparse_keys=())


def _disagreements(key: str, exempt: frozenset[str] = frozenset()) -> dict[str, tuple[str, str]]:
    live = _live(key)
    out = {}
    for op, entry in _predicted(key).items():
        got = live.get(op)
        assert got is not None, f"{op} is in the installed yaml but not in the dispatcher"
        if got.status is not entry.status and op not in exempt:
            out[op] = (entry.status.value, got.status.value)
    return out


def test_rules_give_what_the_dispatcher_runs_for_a_key_no_yaml_entry_names() -> None:
    assert _disagreements("PrivateUse1") == {}


def test_rules_give_what_the_dispatcher_runs_for_cpu() -> None:
    # ufunc codegen (``ufunc_inner_loop:``) writes CPU and CUDA kernels the ``dispatch:``
    # line does not name; it never writes MPS ones, so the MPS rules need not know it.
    ufunc = frozenset(
        op
        for raw in _doc()
        if "ufunc_inner_loop" in raw
        for op in (_rules.op_id(raw["func"].split("(", 1)[0]),)
    )
    ufunc_family = frozenset(
        op for op, e in _predicted("CPU").items() if op in ufunc or e.delegate in ufunc
    )
    assert ufunc_family, "no ufunc ops found: the exemption below would hide nothing"
    assert _disagreements("CPU", ufunc_family) == {}


def test_a_structured_op_whose_delegate_is_composite_runs_the_composite_body() -> None:
    # all.dims: the generated wrapper outranks its own composite kernel and calls all.dims_out,
    # whose composite kernel reduces with all.dim (mps-facts §11).
    assert _dispatcher.computed_source("aten::all.dims", "PrivateUse1") == _dispatcher.NONFUNCTIONAL
    assert _dispatcher.computed_source("aten::all.dims_out", "PrivateUse1") == _dispatcher.EXPLICIT
    live = _live("PrivateUse1")
    for op in ("aten::all.dims", "aten::any.dims"):
        entry = live.get(op)
        assert entry.status is OpStatus.COMPOSITE_EXPLICIT
        assert entry.delegate == op + "_out"
    add = live.get("aten::add.Tensor")  # a delegate with no kernel: the fallback, as add.out
    assert add.status is OpStatus.MISSING and add.delegate == "aten::add.out"


def test_what_the_dispatcher_runs_is_read_not_assumed() -> None:
    assert _dispatcher.computed_source("aten::relu", "CPU") == _dispatcher.OWN
    assert _dispatcher.computed_source("aten::relu", "PrivateUse1") == _dispatcher.FALLBACK
    assert _dispatcher.computed_source("aten::dropout", "CPU") == _dispatcher.IMPLICIT
    assert _dispatcher.computed_source("aten::kthvalue", "PrivateUse1") == _dispatcher.EXPLICIT


@pytest.mark.parametrize("release", oplists.releases())
def test_no_shipped_list_names_a_fallback_through_a_composite_delegate(release: str) -> None:
    """A "missing, delegate X" entry is a fallback only when X reaches the fallback itself."""
    ol = oplists.load(release)
    wrong = []
    for entry in ol.entries():
        if entry.delegate is None:
            continue
        reached = ol.get(entry.delegate)
        if entry.status is OpStatus.MISSING and reached.status is not OpStatus.MISSING:
            wrong.append((entry.op, reached.status.value))
    assert wrong == []
