"""Which module each recorded op is attributed to, forward and backward."""

from __future__ import annotations

import contextlib
import inspect
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules import module as nn_module

from fallback_probe.api import Probe
from fallback_probe.collect.modules import LegacyModules, ModuleStack
from fallback_probe.records import OpCall


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).sigmoid()


def _where(trace: list[OpCall], op: str) -> set[tuple[str, bool]]:
    return {(c.module, c.backward) for c in trace if c.op == op}


@pytest.mark.parametrize("emulate", [False, True])
def test_backward_ops_name_the_module_whose_forward_made_them(emulate: bool) -> None:
    with Probe(mode="predict", torch_version="2.13.0", emulate=emulate) as p:
        device = "mps" if torch.backends.mps.is_available() else "cpu"
        net = Net().to(device)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        loss = net(torch.randn(3, 4, device=device)).sum()
        loss.backward()
        opt.step()
    trace = p.trace
    assert _where(trace, "aten::relu") == {("body.1", False)}
    assert _where(trace, "aten::threshold_backward") == {("body.1", True)}
    assert _where(trace, "aten::sigmoid") == {("Net", False)}
    assert _where(trace, "aten::sigmoid_backward") == {("Net", True)}
    assert ("body.0", False) in _where(trace, "aten::addmm")
    assert ("body.2", True) in _where(trace, "aten::mm")  # the weight gradient of body.2
    assert _where(trace, "aten::sum") == {("", False)}  # outside every module
    assert ("", True) in _where(trace, "aten::expand")  # sum's backward: top level too


def test_a_module_that_raises_is_closed_and_nothing_is_left_behind() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.exp()
            raise ValueError("boom")

    hooks = (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks))
    with Probe(mode="predict", torch_version="2.13.0", emulate=False) as p:
        with pytest.raises(ValueError):
            Boom()(torch.randn(2))
        torch.randn(2).cos()
    assert _where(p.trace, "aten::exp") == {("Boom", False)}
    assert _where(p.trace, "aten::cos") == {("", False)}
    assert (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks)) == hooks


def test_a_graph_built_before_the_probe_is_attributed_to_no_module() -> None:
    lin = nn.Linear(2, 2)
    out = lin(torch.randn(1, 2)).sum()
    with Probe(mode="predict", torch_version="2.13.0", emulate=False) as p:
        out.backward()
    assert {c.module for c in p.trace} == {""}
    forward = [c.op for c in p.trace if not c.backward and c.parent is None]
    assert forward == ["aten::ones_like"]  # the seed gradient, made before the engine runs


def _line() -> int:
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def test_each_op_names_the_user_line_that_led_to_it() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, foreach=False)
    here = f"{os.path.relpath(__file__)}:"
    with Probe(mode="predict", torch_version="2.13.0", emulate=False) as p:
        forward = _line() + 1
        loss = net(torch.randn(2, 4)).sum()
        backward = _line() + 1
        loss.backward()
        step = _line() + 1
        opt.step()
        again = _line() + 1
        net(torch.randn(2, 4)).relu()
        first, second = _line() + 1, _line() + 2
        nn.functional.relu(loss)  # one torch Python function, called from two lines in a row
        nn.functional.relu(loss)
    lines: dict[str, set[str]] = {}
    for c in p.trace:
        if c.parent is None:
            lines.setdefault(c.source, set()).add(c.op)
    assert {"aten::addmm", "aten::relu", "aten::sum"} <= lines.pop(here + str(forward))
    assert "aten::threshold_backward" in lines.pop(here + str(backward))
    assert "aten::add_.Tensor" in lines.pop(here + str(step))  # SGD's loop, a torch frame
    assert {"aten::addmm", "aten::relu"} <= lines.pop(here + str(again))
    assert "aten::relu" in lines.pop(here + str(first))
    assert "aten::relu" in lines.pop(here + str(second))
    assert not lines  # nothing without a source, nothing elsewhere


@pytest.mark.parametrize("tracker", [ModuleStack, LegacyModules])
def test_both_trackers_name_modules_alike(tracker: type[ModuleStack | LegacyModules]) -> None:
    """LegacyModules (torch's own tracker) serves builds without sequence-number bindings."""
    seen: list[tuple[str, bool]] = []
    net = nn.Sequential(nn.Sequential(nn.Identity()), nn.Identity())
    t = tracker()
    for m in (net, net[0][0], net[1]):
        m.register_forward_pre_hook(lambda *_: seen.append(t.where()))
    with t:
        net(torch.randn(1))
    assert seen == [("Sequential", False), ("0.0", False), ("1", False)]
    assert t.where() == ("", False)


def test_a_caught_error_inside_a_module_leaves_the_stack_right() -> None:
    class Inner(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("inner")

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with contextlib.suppress(ValueError):
                self.inner(x)
            return x.neg()  # Outer's own op, after Inner failed

    with Probe(mode="predict", torch_version="2.13.0", emulate=False) as p:
        Outer()(torch.randn(2))
        torch.randn(2).abs()
    assert _where(p.trace, "aten::neg") == {("Outer", False)}
    assert _where(p.trace, "aten::abs") == {("", False)}


def test_without_always_call_a_returning_module_closes_the_ones_left_open_inside() -> None:
    outer, inner = nn.Sequential(nn.Identity()), nn.Identity()
    t = ModuleStack()
    t._fw_pre_hook(outer, ())
    t._fw_pre_hook(inner, ())  # raises: no post hook (torch without always_call)
    assert t.where() == ("Identity", False)
    t._fw_post_hook(outer, (), None)
    assert t.where() == ("", False)


def test_sources_stay_absolute_when_the_working_directory_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with Probe(mode="predict", torch_version="2.13.0", emulate=False) as p:
        line = _line() + 1
        torch.randn(4).exp()
    assert {c.source for c in p.trace if c.op == "aten::exp"} == {f"{__file__}:{line}"}
