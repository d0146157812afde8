"""The device surface a Mac gives a script exists under emulation (docs/emulation.md).

The surface is enumerated from torch itself (``torch.mps.__all__``,
``torch.accelerator.__all__``, ``torch.mps.profiler.__all__``, the functions of
``torch.backends.mps``), so a name a later torch adds fails ``test_every_public_name_is_checked``
until it is given a behaviour and a check here. Each check asserts what the name does, not
that it exists.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from fallback_probe.collect.emulate import Emulation, emulated_mps
from fallback_probe.collect.emulate.streams import NOT_RECORDED, NOT_TIMED


def _surface() -> set[str]:
    names = {f"torch.mps.{n}" for n in torch.mps.__all__}
    names |= {f"torch.mps.profiler.{n}" for n in torch.mps.profiler.__all__}
    names |= {f"torch.accelerator.{n}" for n in torch.accelerator.__all__}
    names |= {
        f"torch.backends.mps.{n}"
        for n, v in vars(torch.backends.mps).items()
        if not n.startswith("_") and callable(v) and v.__module__ == "torch.backends.mps"
    }
    return names


CHECKS: dict[str, Callable[[Emulation], None]] = {}


def check(*names: str) -> Callable[[Callable[[Emulation], None]], Callable[[Emulation], None]]:
    def register(fn: Callable[[Emulation], None]) -> Callable[[Emulation], None]:
        for name in names:
            CHECKS[name] = fn
        return fn

    return register


# -- torch.backends.mps -------------------------------------------------------------------------


@check("torch.backends.mps.is_available", "torch.backends.mps.is_built")
def _available(emu: Emulation) -> None:
    assert torch.backends.mps.is_available() is True and torch.backends.mps.is_built() is True


@check("torch.backends.mps.is_macos_or_newer", "torch.backends.mps.is_macos13_or_newer")
def _macos(emu: Emulation) -> None:
    assert torch.backends.mps.is_macos_or_newer(14, 0) and torch.backends.mps.is_macos13_or_newer(3)


@check("torch.backends.mps.get_name", "torch.backends.mps.get_core_count")
def _name(emu: Emulation) -> None:
    assert "Apple" in torch.backends.mps.get_name()
    assert torch.backends.mps.get_core_count() == (os.cpu_count() or 1)


def test_macos_checks_answer_for_the_target_macos() -> None:
    with emulated_mps(macos="13.5"):
        mps = torch.backends.mps
        assert mps.is_macos13_or_newer(5) and not mps.is_macos13_or_newer(6)
        assert not mps.is_macos_or_newer(14, 0) and mps.is_macos_or_newer(12, 3)
    with emulated_mps():
        assert torch.backends.mps.is_macos_or_newer(26, 0)  # the newest is assumed


# -- torch.mps ------------------------------------------------------------------------------------


@check("torch.mps.is_available", "torch.mps.device_count")
def _mps_count(emu: Emulation) -> None:
    assert torch.mps.is_available() is True and torch.mps.device_count() == 1


@check("torch.mps.synchronize", "torch.mps.empty_cache")
def _sync(emu: Emulation) -> None:
    x = torch.ones(3, device="mps") * 2
    assert torch.mps.synchronize() is None and torch.mps.empty_cache() is None
    assert x.sum().item() == 6.0


@check(
    "torch.mps.manual_seed", "torch.mps.seed", "torch.mps.get_rng_state", "torch.mps.set_rng_state"
)
def _rng(emu: Emulation) -> None:
    torch.mps.manual_seed(7)
    first = torch.randn(4, device="mps").cpu()
    state = torch.mps.get_rng_state()
    again = torch.randn(4, device="mps").cpu()
    torch.mps.set_rng_state(state)
    assert torch.equal(torch.randn(4, device="mps").cpu(), again)
    torch.mps.manual_seed(7)
    assert torch.equal(torch.randn(4, device="mps").cpu(), first)
    torch.mps.seed()
    assert not torch.equal(torch.mps.get_rng_state(), state)
    assert state.dtype == torch.uint8 and state.device.type == "cpu"


@check(
    "torch.mps.current_allocated_memory",
    "torch.mps.driver_allocated_memory",
    "torch.mps.recommended_max_memory",
    "torch.mps.set_per_process_memory_fraction",
)
def _memory(emu: Emulation) -> None:
    before = torch.mps.current_allocated_memory()
    held = torch.empty(1 << 20, dtype=torch.uint8, device="mps")
    assert torch.mps.current_allocated_memory() - before == 1 << 20
    assert torch.mps.driver_allocated_memory() >= 1 << 20
    assert torch.mps.recommended_max_memory() > 1 << 30
    torch.mps.set_per_process_memory_fraction(0.5)
    with pytest.raises(ValueError, match="Allowed range"):
        torch.mps.set_per_process_memory_fraction(3.0)
    with pytest.raises(TypeError, match="must be `float`"):
        torch.mps.set_per_process_memory_fraction(1)  # type: ignore[arg-type]
    del held


@check("torch.mps.compile_shader", "torch.mps.load_metallib")
def _metal(emu: Emulation) -> None:
    for call in (
        lambda: torch.mps.compile_shader("kernel void f() {}"),
        lambda: torch.mps.load_metallib(b""),
    ):
        with pytest.raises(RuntimeError, match="real Apple GPU"):
            call()


@check("torch.mps.Event")
def _mps_event(emu: Emulation) -> None:
    start, end = torch.mps.Event(enable_timing=True), torch.mps.Event(enable_timing=True)
    assert not start.query()  # not recorded yet, as MPSEvent::query says
    start.record()
    torch.ones(64, 64, device="mps").matmul(torch.ones(64, 64, device="mps"))
    end.record()
    end.wait()
    end.synchronize()
    assert start.query() and end.query() and start.elapsed_time(end) > 0
    with pytest.raises(RuntimeError, match=NOT_TIMED):
        torch.mps.Event().elapsed_time(torch.mps.Event())
    with pytest.raises(RuntimeError, match="was not recorded after start event"):
        end.elapsed_time(start)


@check(
    "torch.mps.profiler",
    "torch.mps.profiler.start",
    "torch.mps.profiler.stop",
    "torch.mps.profiler.profile",
    "torch.mps.profiler.metal_capture",
    "torch.mps.profiler.is_metal_capture_enabled",
    "torch.mps.profiler.is_capturing_metal",
)
def _profiler(emu: Emulation) -> None:
    prof = torch.mps.profiler
    with prof.profile(mode="interval", wait_until_completed=True):
        y = torch.ones(2, device="mps") + 1
    prof.start(mode="event")
    prof.stop()
    with prof.metal_capture("trace"):
        y = y * 2
    assert not prof.is_metal_capture_enabled() and not prof.is_capturing_metal()
    assert y.tolist() == [4.0, 4.0]


# -- torch.accelerator ------------------------------------------------------------------------------


@check(
    "torch.accelerator.is_available",
    "torch.accelerator.device_count",
    "torch.accelerator.current_accelerator",
)
def _acc(emu: Emulation) -> None:
    acc = torch.accelerator
    assert acc.is_available() and acc.device_count() == 1
    assert acc.current_accelerator() == torch.device("mps")  # torch gives no index
    assert acc.current_accelerator(check_available=True).type == "mps"
    assert torch.ones(1).to(acc.current_accelerator()).device.type == "mps"


@check(
    "torch.accelerator.current_device_index",
    "torch.accelerator.current_device_idx",
    "torch.accelerator.set_device_index",
    "torch.accelerator.set_device_idx",
    "torch.accelerator.device_index",
)
def _index(emu: Emulation) -> None:
    acc = torch.accelerator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert acc.current_device_index() == 0 and acc.current_device_idx() == 0
        acc.set_device_index(0)
        acc.set_device_idx("mps:0")
    with acc.device_index(0):
        assert acc.current_device_index() == 0
    with pytest.raises(RuntimeError, match="device count is 1"):
        acc.set_device_index(1)
    with pytest.raises(ValueError, match="doesn't match the current accelerator"):
        acc.set_device_index("cuda:0")


@check("torch.accelerator.get_device_capability")
def _capability(emu: Emulation) -> None:
    dtypes = torch.accelerator.get_device_capability()["supported_dtypes"]
    assert torch.float32 in dtypes and torch.bfloat16 in dtypes
    assert torch.float64 not in dtypes and torch.complex128 not in dtypes


@check(
    "torch.accelerator.current_stream",
    "torch.accelerator.set_stream",
    "torch.accelerator.synchronize",
)
def _streams(emu: Emulation) -> None:
    acc = torch.accelerator
    stream = acc.current_stream()
    assert isinstance(stream, torch.Stream) and stream.device == torch.device("mps", 0)
    assert acc.current_stream("mps") == stream
    acc.set_stream(stream)
    acc.synchronize()
    acc.synchronize(0)
    assert stream.query()


@check(
    "torch.accelerator.memory_allocated",
    "torch.accelerator.max_memory_allocated",
    "torch.accelerator.memory_reserved",
    "torch.accelerator.max_memory_reserved",
    "torch.accelerator.memory_stats",
    "torch.accelerator.reset_peak_memory_stats",
    "torch.accelerator.reset_accumulated_memory_stats",
    "torch.accelerator.get_memory_info",
    "torch.accelerator.empty_cache",
    "torch.accelerator.empty_host_cache",
)
def _acc_memory(emu: Emulation) -> None:
    acc = torch.accelerator
    acc.reset_peak_memory_stats()
    base = acc.memory_allocated()
    big = torch.empty(1 << 20, dtype=torch.uint8, device="mps")
    assert acc.memory_allocated() - base == 1 << 20 == acc.memory_reserved() - base
    del big
    assert acc.memory_allocated() == base
    assert acc.max_memory_allocated() >= base + (1 << 20) <= acc.max_memory_reserved()
    acc.reset_peak_memory_stats()
    assert acc.max_memory_allocated() == base
    stats = acc.memory_stats()
    assert stats["allocated_bytes.all.current"] == base
    acc.reset_accumulated_memory_stats()
    free, total = acc.get_memory_info()
    assert 0 < free <= total
    assert acc.empty_cache() is None and acc.empty_host_cache() is None


@check("torch.accelerator.Graph")
def _graph(emu: Emulation) -> None:
    with pytest.raises(RuntimeError, match="cannot capture or replay graphs"):
        torch.accelerator.Graph()


def test_every_public_name_is_checked() -> None:
    missing = sorted(_surface() - set(CHECKS))
    assert not missing, f"give these an emulated behaviour and a check: {missing}"


@pytest.mark.parametrize("name", sorted(_surface()))
def test_each_name_behaves_like_a_mac(name: str) -> None:
    if name not in CHECKS:
        pytest.fail(f"{name} has no check")
    with emulated_mps() as emu:
        CHECKS[name](emu)


# -- torch.Event / torch.Stream / torch.Generator ----------------------------------------------------


def test_generic_event_on_mps_records_waits_and_times() -> None:
    with emulated_mps():
        ids = torch.ones(1, 4, dtype=torch.long, device="mps")
        event = torch.Event(device=ids.device, blocking=True)  # what generate() builds
        assert isinstance(event, torch.Event) and event.device == torch.device("mps", 0)
        assert event.query()  # a generic event that was never recorded is complete
        event.record()
        event.wait()
        event.synchronize()
        assert event.query()
        start, end = torch.Event(enable_timing=True), torch.Event("mps", enable_timing=True)
        stream = torch.Stream("mps")
        start.record(stream)
        (ids * 2).sum()
        end.record(stream)
        assert start.elapsed_time(end) > 0
        with pytest.raises(RuntimeError, match=NOT_RECORDED):
            start.elapsed_time(torch.Event(enable_timing=True))
        with pytest.raises(RuntimeError, match=NOT_TIMED):
            event.elapsed_time(end)
        assert "device_type=mps" in repr(event)
        cpu_event = torch.Event("cpu")
        assert type(cpu_event).__name__ == "Event" and isinstance(cpu_event, torch.Event)
    assert torch.Event is type(cpu_event)  # restored


def test_stream_on_mps_is_a_context_and_queue() -> None:
    with emulated_mps():
        stream = torch.Stream(device="mps")
        assert isinstance(stream, torch.Stream) and stream.device.type == "mps"
        assert (stream.device_index, stream.stream_id, stream.device_type) == (0, 0, 13)
        with stream:
            y = torch.ones(2, device="mps") + 1
        event = stream.record_event()
        stream.wait_event(event)
        stream.wait_stream(torch.accelerator.current_stream())
        stream.synchronize()
        assert stream.query() and event.query() and y.tolist() == [2.0, 2.0]
        assert "device_type=mps" in repr(stream)


def test_generator_on_mps_draws_what_the_cpu_run_draws() -> None:
    expected = torch.randn(3, generator=torch.Generator().manual_seed(5))
    with emulated_mps() as emu:
        g = torch.Generator(device="mps").manual_seed(5)
        assert g.device == torch.device("mps", 0) and isinstance(g, torch.Generator)
        drawn = torch.randn(3, generator=g, device="mps")
        assert emu.is_emulated(drawn) and torch.equal(drawn.cpu(), expected)
        assert isinstance(torch.Generator(), torch.Generator)
        assert torch.Generator().device.type == "cpu"
        state = g.get_state()
        g.set_state(state)
    assert torch.Generator is type(torch.Generator())  # restored


def test_get_device_module_is_torch_mps() -> None:
    with emulated_mps():
        assert torch.get_device_module("mps") is torch.mps
        assert torch.get_device_module() is torch.mps  # the current accelerator
        assert torch.get_device_module(torch.device("mps", 0)) is torch.mps
        assert torch.get_device_module("cpu") is torch.cpu


# -- pinned memory and DataLoader ---------------------------------------------------------------------


def test_pin_memory_and_a_dataloader_pinning_for_mps() -> None:
    data = torch.arange(12.0).reshape(6, 2)
    with emulated_mps() as emu:
        pinned = data.pin_memory()
        assert pinned.is_pinned() and not data.is_pinned() and pinned.pin_memory() is pinned
        assert torch.equal(pinned, data)
        with pytest.raises(RuntimeError, match="only dense CPU tensors can be pinned"):
            data.to("mps").pin_memory()
        for kwargs in ({}, {"pin_memory_device": "mps"}):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch: "not supported on MPS"
                loader = DataLoader(TensorDataset(data), batch_size=2, pin_memory=True, **kwargs)
                batches = [b.to("mps", non_blocking=True) for (b,) in loader]
            assert all(emu.is_emulated(b) for b in batches)
            assert torch.equal(torch.cat([b.cpu() for b in batches]), data)


# -- torch.compile ------------------------------------------------------------------------------------


def test_torch_compile_of_a_model_on_mps_gives_the_eager_numbers() -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)), torch.randn(3, 4)
    with torch.no_grad():  # a live graph holding the weights would block moving them
        expected = model(x)
    with emulated_mps() as emu, pytest.warns(UserWarning, match="running eagerly"):
        compiled = torch.compile(model.to("mps"), mode="reduce-overhead")
        fn = torch.compile(fullgraph=True)(lambda a: a.sin() + 1)
        out = compiled(x.to("mps"))
        assert emu.is_emulated(out) and torch.allclose(out.cpu(), expected)
        assert torch.equal(fn(x.to("mps")).cpu(), x.sin() + 1)


# -- nn.Module.to / _apply with tied, shared and already-moved parameters ---------------------------


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.block = nn.Linear(8, 8)
        self.twice = nn.Sequential(self.block, nn.Tanh(), self.block)  # a shared module
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight  # tied, as GPT-2 / BERT / T5 tie them

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.twice(self.embed(ids)))


def test_tied_shared_and_already_moved_parameters_move_as_on_a_mac() -> None:
    torch.manual_seed(0)
    model, ids = _Tied(), torch.tensor([[1, 2, 3]])
    reference = copy.deepcopy(model)
    ref_loss = F.cross_entropy(reference(ids)[0], ids[0])
    ref_loss.backward()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with emulated_mps() as emu:
        model.to("mps")
        model.to("mps")  # already there: nothing changes
        model.block.to(torch.device("mps"))
        assert model.head.weight is model.embed.weight and list(model.parameters()) == params
        assert all(emu.is_emulated(p) for p in params) and len(params) == 3
        loss = F.cross_entropy(model(ids.to("mps"))[0], ids[0].to("mps"))
        loss.backward()
        assert torch.allclose(loss.cpu(), ref_loss)
        assert torch.allclose(model.embed.weight.grad.cpu(), reference.embed.weight.grad)
        optimizer.step()
        assert [p for g in optimizer.param_groups for p in g["params"]] == params
        model.half().float()
        model.cpu()  # back: same objects, ties kept, gradients moved too
        assert model.head.weight is model.embed.weight and list(model.parameters()) == params
        assert all(type(p) is nn.Parameter and p.device.type == "cpu" for p in params)
        assert params[0].grad is not None and params[0].grad.device.type == "cpu"
        model.to("mps")
        assert model.head.weight is model.embed.weight and emu.is_emulated(model.head.weight)


# -- autocast ------------------------------------------------------------------------------------------


def test_autocast_mps_casts_as_the_mps_policy_says() -> None:
    torch.manual_seed(0)
    layer, norm, x = nn.Linear(4, 4), nn.LayerNorm(4), torch.randn(3, 4)
    with emulated_mps():
        layer.to("mps"), norm.to("mps")
        xm = x.to("mps")
        target = torch.tensor([0, 1, 2]).to("mps")
        with torch.autocast("mps", dtype=torch.float16):
            y = layer(xm)  # lower precision
            dtypes = {
                "linear": y.dtype,
                "matmul": (xm @ xm.T).dtype,
                "bmm": torch.bmm(xm[None], xm.T[None]).dtype,
                "layer_norm": norm(y).dtype,  # fp32
                "exp": y.exp().dtype,  # fp32
                "softmax": y.softmax(-1).dtype,  # fp32 through its dtype argument
                "sum": y.sum().dtype,
                "relu": y.relu().dtype,  # not listed: stays in its dtype
                "cross_entropy": F.cross_entropy(y, target).dtype,
                "dot": torch.dot(y[0], xm[0]).dtype,  # promote
                "cpu matmul": (x @ x.T).dtype,  # the CPU is not autocast by mps
            }
            with torch.autocast("mps", enabled=False):
                dtypes["disabled"] = layer(xm).dtype
            loss = F.cross_entropy(layer(xm), target)
        after = layer(xm).dtype
        loss.backward()
        assert layer.weight.grad.dtype == torch.float32
    f16, f32 = torch.float16, torch.float32
    assert dtypes == {
        "linear": f16, "matmul": f16, "bmm": f16, "layer_norm": f32, "exp": f32,
        "softmax": f32, "sum": f32, "relu": f16, "cross_entropy": f32, "dot": f32,
        "cpu matmul": f32, "disabled": f32,
    }  # fmt: skip
    assert after == f32


def test_autocast_as_a_decorator_and_torch_amp() -> None:
    layer = nn.Linear(2, 2)
    with emulated_mps():
        layer.to("mps")

        @torch.amp.autocast("mps", dtype=torch.bfloat16)
        def run(a: torch.Tensor) -> torch.Tensor:
            return layer(a)

        assert run(torch.ones(1, 2, device="mps")).dtype == torch.bfloat16
        assert layer(torch.ones(1, 2, device="mps")).dtype == torch.float32


def test_everything_is_restored() -> None:
    names = ("Event", "Stream", "Generator", "get_device_module", "compile")
    before = {n: getattr(torch, n) for n in names}
    acc = {n: getattr(torch.accelerator, n) for n in torch.accelerator.__all__}
    mps = {n: getattr(torch.mps, n) for n in torch.mps.__all__}
    enter = torch.amp.autocast_mode.autocast.__enter__
    with contextlib.suppress(ValueError), emulated_mps():
        raise ValueError
    assert {n: getattr(torch, n) for n in names} == before
    assert {n: getattr(torch.accelerator, n) for n in torch.accelerator.__all__} == acc
    assert {n: getattr(torch.mps, n) for n in torch.mps.__all__} == mps
    assert torch.amp.autocast_mode.autocast.__enter__ is enter
    with pytest.raises(RuntimeError):
        torch.Generator("mps")
    with pytest.raises(RuntimeError):
        torch.ones(2).pin_memory()
