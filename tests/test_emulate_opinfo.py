"""PyTorch's own OpInfo samples, run plain and on the emulated device: same values, and a
refusal only where a Mac refuses (code the emulation's authors did not write).

Found by this sweep and fixed: composites that compute in double only on their CPU route
(``renorm`` backward, ``linalg.matrix_rank``) were reported as float64 refusals; conj/neg
views (``fft.hfft``, ``fft.ifft``, ``polar``, ``linalg.eig``) crashed or gave wrong values;
``tensor_split`` with an index tensor on mps read unallocated memory.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch.utils._pytree import tree_leaves, tree_map

from fallback_probe.collect.emulate import emulated_mps

pytest.importorskip("expecttest")  # torch's OpInfo database imports it
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

# (OpInfo name, variant) -> the refusal kinds a Mac raises for its first float32 sample.
CASES: dict[tuple[str, str], set[str]] = {
    ("renorm", ""): set(),
    ("linalg.matrix_rank", ""): set(),
    ("linalg.matrix_rank", "hermitian"): set(),
    ("fft.hfft", ""): set(),
    ("fft.ifft", ""): set(),
    ("fft.ihfft", ""): set(),
    ("polar", ""): set(),
    ("linalg.eig", ""): set(),
    ("linalg.eigvals", ""): set(),
    ("tensor_split", ""): {"cpu argument"},  # its index tensor was moved to mps too
    ("float_power", ""): {"dtype"},  # computes in float64 on every device
    ("softmax", "with_dtype"): {"dtype"},  # asks for float64
    ("nn.functional.conv2d", ""): set(),
    ("nn.functional.layer_norm", ""): set(),
    ("cumsum", ""): set(),
}


def _to_device(t: Any) -> Any:
    if not isinstance(t, torch.Tensor):
        return t
    moved = t.detach().clone().to("mps")
    return moved.requires_grad_(t.requires_grad) if moved.is_floating_point() else moved


def _plain(t: Any) -> Any:
    if not isinstance(t, torch.Tensor):
        return t
    return t.detach().clone().requires_grad_(t.requires_grad)


def _run(op: Any, sample: Any, place: Any) -> list[torch.Tensor]:
    inp, args, kwargs = tree_map(place, (sample.input, sample.args, sample.kwargs))
    leaves = [t for t in tree_leaves(op(inp, *args, **kwargs)) if isinstance(t, torch.Tensor)]
    results = [t.detach().cpu() for t in leaves]
    wrt = [
        t
        for t in tree_leaves((inp, args, kwargs))
        if isinstance(t, torch.Tensor) and t.requires_grad
    ]
    diff = [t for t in leaves if t.requires_grad]
    if op.supports_autograd and diff and wrt:
        total = sum(t.abs().sum() if t.is_complex() else t.float().sum() for t in diff)
        grads = torch.autograd.grad(total, wrt, allow_unused=True)
        results += [g.detach().cpu() for g in grads if g is not None]
    return results


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return torch.allclose(a, b, equal_nan=True, atol=1e-5)
    return torch.equal(a, b)


def _check(op: Any) -> tuple[bool, set[str]]:
    sample = next(iter(op.sample_inputs("cpu", torch.float32, requires_grad=op.supports_autograd)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        expected = _run(op, sample, _plain)
        with emulated_mps() as emu:
            torch.manual_seed(0)
            got = _run(op, sample, _to_device)
    same = len(expected) == len(got) and all(map(_same, expected, got))
    return same, {r.kind for r in emu.refusals}


def _op(name: str, variant: str) -> Any:
    return next(o for o in op_db if o.name == name and o.variant_test_name == variant)


@pytest.mark.parametrize(("name", "variant"), sorted(CASES))
def test_opinfo_sample_gives_the_cpu_values_and_only_the_refusals_a_mac_makes(
    name: str, variant: str
) -> None:
    same, kinds = _check(_op(name, variant))
    assert same
    assert kinds == CASES[(name, variant)]


# Ops this sweep cannot compare (sparse layouts are not emulated; random ops differ by draw).
_SKIP = ("sparse", "to_sparse", "empty", "new_empty", "rand", "normal", "uniform", "bernoulli",
         "multinomial", "dropout")  # fmt: skip


@pytest.mark.slow
def test_every_opinfo_first_sample_matches_the_cpu_run() -> None:
    """All of torch's OpInfos (about 700, a few minutes): no error, no wrong value, and a
    refusal only of a dtype the sample itself asks for."""
    problems = []
    for op in op_db:
        if any(s in op.name for s in _SKIP) or torch.float32 not in op.supported_dtypes("cpu"):
            continue
        try:
            sample = next(iter(op.sample_inputs("cpu", torch.float32, requires_grad=False)))
            expected = _run(op, sample, _plain)
        except Exception:  # noqa: BLE001 - the plain run fails too: nothing to compare
            continue
        try:
            same, kinds = _check(op)
        except Exception as err:  # noqa: BLE001 - collected, reported together
            problems.append(f"{op.name}.{op.variant_test_name}: {type(err).__name__}: {err}")
            continue
        if not same:
            problems.append(f"{op.name}.{op.variant_test_name}: values differ")
        elif kinds - {"dtype", "cpu argument"}:
            problems.append(f"{op.name}.{op.variant_test_name}: refused {kinds}")
        del expected
    assert not problems, "\n".join(problems)
