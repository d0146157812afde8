"""The emulated mps device (fallback_probe/collect/emulate/, docs/emulation.md)."""

from __future__ import annotations

import copy
import io
import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fallback_probe.collect.emulate import (
    FLOAT64_MESSAGE,
    MIXED_DEVICE_MESSAGE,
    NUMPY_MESSAGE,
    Emulation,
    emulated_mps,
)

SCRIPTS = Path(__file__).parent / "fixtures" / "emulate"
_REL = os.path.relpath(__file__)
HERE = _REL if not _REL.startswith("..") else os.path.abspath(__file__)  # as refusals.py writes


class Recording(TorchDispatchMode):
    """The probe's recorder in miniature: each op, and which tensor arguments are on mps."""

    def __init__(self, emu: Emulation) -> None:
        super().__init__()
        self.emu = emu
        self.calls: list[tuple[str, list[bool]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        leaves = tree_leaves((args, kwargs))
        self.calls.append(
            (func.name(), [self.emu.is_emulated(t) for t in leaves if isinstance(t, torch.Tensor)])
        )
        return func(*args, **(kwargs or {}))

    def args_of(self, op: str) -> list[list[bool]]:
        return [flags for name, flags in self.calls if name == op]


def run_script(name: str, **init_globals: Any) -> dict[str, Any]:
    return runpy.run_path(str(SCRIPTS / name), init_globals=init_globals, run_name="__main__")


def line_of(text: str) -> str:
    """'test_emulate.py:N' of the line in this file that contains ``text``."""
    for number, line in enumerate(Path(__file__).read_text().splitlines(), start=1):
        if text in line:
            return f"{HERE}:{number}"
    raise AssertionError(text)


# -- scripts as users write them ---------------------------------------------------------------


def test_cpu_preprocessing_is_cpu_work_and_the_model_runs_on_mps() -> None:
    with emulated_mps() as emu, Recording(emu) as rec:
        g = run_script("preprocess_then_model.py")
    assert g["DEVICE"] == "mps:0"
    assert isinstance(g["RESULT"], float)
    svd = rec.args_of("aten::_linalg_svd")
    assert svd and all(flags == [False] for flags in svd)  # the CPU side is not judged
    addmm = rec.args_of("aten::addmm")
    assert len(addmm) == 2 and all(flags == [True, True, True] for flags in addmm)
    # Nothing the script did before the model reached the device.
    first_on_device = next(i for i, (_, flags) in enumerate(rec.calls) if any(flags))
    assert "aten::_linalg_svd" in [name for name, _ in rec.calls[:first_on_device]]


def test_script_takes_the_mps_path_when_it_asks_is_available() -> None:
    assert not torch.backends.mps.is_available()
    with emulated_mps():
        g = run_script("choose_device.py")
    assert (g["TAKEN"], g["X_DEVICE"]) == ("mps", "mps:0")
    assert run_script("choose_device.py")["TAKEN"] == "cpu"


def test_module_to_mps_adam_training_and_item() -> None:
    with emulated_mps() as emu:
        g = run_script("train_step.py")
        model, optimizer = g["model"], g["optimizer"]
        params = list(model.parameters())
        assert all(emu.is_emulated(p) and isinstance(p, nn.Parameter) for p in params)
        assert all(emu.is_emulated(p.grad) for p in params)
        # The optimizer was built before model.to(): it still holds the model's parameters.
        assert [p for group in optimizer.param_groups for p in group["params"]] == params
        state = optimizer.state[params[0]]
        assert emu.is_emulated(state["exp_avg"]) and emu.is_emulated(state["exp_avg_sq"])
    losses = g["LOSSES"]
    assert all(isinstance(v, float) for v in losses)
    assert losses[-1] < losses[0]


def test_set_default_device_and_device_contexts() -> None:
    with emulated_mps() as emu:
        g = run_script("default_device.py")
        assert g["PLACES"] == {"mps:0"}
        assert torch.get_default_device() == torch.device("mps", 0)
        torch.set_default_device(None)
        with torch.device("mps"):
            layer = nn.Linear(2, 2)
            assert emu.is_emulated(layer.weight) and emu.is_emulated(torch.zeros(1))
        assert not emu.is_emulated(torch.zeros(1))
        made = [
            torch.zeros(2, device="mps"),
            torch.arange(5, device="mps"),
            torch.full((2,), 3.0, device=torch.device("mps")),
            torch.tensor([1.0], device="mps"),
            torch.ones(2).to("mps"),
            torch.zeros_like(torch.ones(2), device="mps"),
            nn.Linear(2, 2, device="mps").weight,
        ]
        assert all(emu.is_emulated(t) and t.device.type == "mps" for t in made)
        assert torch.arange(5, device="mps").tolist() == [0, 1, 2, 3, 4]
    assert torch.get_default_device() == torch.device("cpu")  # the script left it on mps


def test_whole_7b_decoder_traces_on_meta_without_its_weights() -> None:
    code = textwrap.dedent(
        f"""
        import json, resource, runpy, time
        from fallback_probe.collect.emulate import emulated_mps

        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        before, start = peak(), time.perf_counter()
        with emulated_mps("meta") as emu:
            g = runpy.run_path({str(SCRIPTS / "decoder_7b.py")!r}, run_name="__main__")
            on_mps = emu.is_emulated(g["logits"]) and emu.is_emulated(g["model"].embed.weight)
        print(json.dumps(dict(
            seconds=time.perf_counter() - start, grew=peak() - before, on_mps=on_mps,
            params=g["PARAMS"], shape=g["LOGITS_SHAPE"], placeholders=emu.placeholders,
        )))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["params"] > 6.7e9 and out["on_mps"]
    assert out["shape"] == [1, 16, 32000]
    assert out["grew"] < 300 * 2**20, out  # the weights alone would be 27 GB
    assert out["seconds"] < 60, out
    assert [op for op, _ in out["placeholders"]] == ["aten::_local_scalar_dense"]  # .item()
    lines = (SCRIPTS / "decoder_7b.py").read_text().splitlines()
    item_line = next(i for i, line in enumerate(lines, 1) if line.startswith("NEXT_TOKEN"))
    assert out["placeholders"][0][1].endswith(f"decoder_7b.py:{item_line}")


def test_small_copy_of_the_decoder_runs_with_cpu_backing() -> None:
    small = dict(vocab=50, dim=16, layers=2, hidden=24, heads=2)
    with emulated_mps() as emu:
        g = run_script("decoder_7b.py", CONFIG=small)
        assert emu.is_emulated(g["logits"])
    assert g["LOGITS_SHAPE"] == (1, 16, 50) and 0 <= g["NEXT_TOKEN"] < 50
    assert emu.placeholders == []


# -- the device rules a Mac enforces ----------------------------------------------------------------


def test_mixing_mps_and_cpu_raises_like_a_mac_when_stopping_at_refusals() -> None:
    with emulated_mps(stop_at_refusal=True) as emu:
        x = torch.randn(4, 3, device="mps")
        with pytest.raises(RuntimeError) as info:
            x + torch.ones(4, 3)  # mixed add
        assert str(info.value) == MIXED_DEVICE_MESSAGE
        layer = nn.Linear(3, 2).to("mps")
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            layer(torch.ones(1, 3))  # mixed linear
        with pytest.raises(RuntimeError, match="same device"):
            torch.cat([x, torch.zeros(1, 3)])
        # What a real device accepts: 0-dim CPU tensors as scalars, copies, CPU indices.
        assert emu.is_emulated(x * torch.tensor(2.0))
        assert emu.is_emulated(x[torch.tensor([0, 2])])
        x[0] = torch.zeros(3)
        assert x[0].abs().sum().item() == 0
        assert emu.is_emulated(x.expand_as(torch.empty(4, 3)))
    assert [where for _, where in emu.rejections] == [
        line_of("# mixed add"),
        line_of("# mixed linear"),
        line_of("torch.cat([x, torch.zeros(1, 3)])"),
    ]


def test_float64_and_complex128_are_refused_where_the_script_asks_for_them() -> None:
    with emulated_mps(stop_at_refusal=True) as emu:
        with pytest.raises(TypeError) as info:
            torch.ones(3, dtype=torch.float64).to("mps")  # move f64
        assert str(info.value) == FLOAT64_MESSAGE
        with pytest.raises(TypeError, match="float64"):
            torch.zeros(2, dtype=torch.float64, device="mps")  # create f64
        x = torch.ones(2, device="mps")
        with pytest.raises(TypeError, match="float64"):
            x.double()  # convert f64
        with pytest.raises(TypeError, match="ComplexDouble"):
            torch.zeros(2, dtype=torch.complex128).to("mps")
        assert x.to(torch.float16).dtype == torch.float16
        assert x.cpu().double().dtype == torch.float64  # fine on the CPU
    assert [where for _, where in emu.rejections[:3]] == [
        line_of("# move f64"),
        line_of("# create f64"),
        line_of("# convert f64"),
    ]
    assert info.value.__notes__ and line_of("# move f64") in info.value.__notes__[0]


def test_moving_back_gives_plain_tensors_and_values() -> None:
    with emulated_mps(stop_at_refusal=True):
        x = torch.arange(6.0).reshape(2, 3).to("mps")
        for back in (x.cpu(), x.to("cpu"), x.to(torch.device("cpu"), torch.float16)):
            assert type(back) is torch.Tensor and back.device.type == "cpu"
        assert x.sum().item() == 15.0 and x.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        assert x.cpu().numpy().sum() == 15.0
        with pytest.raises(TypeError) as info:
            x.numpy()
        assert str(info.value) == NUMPY_MESSAGE
        assert f"{x.sum():.1f}" == "15.0" and int(x[1, 2]) == 5 and bool(x.any())
        assert repr(x) == "tensor([[0., 1., 2.],\n        [3., 4., 5.]], device='mps:0')"
        back = x.cpu()
        back += 1  # a copy, as on a Mac
        assert x.sum().item() == 15.0
        assert x.is_mps and not x.is_cpu and x.get_device() == 0


def test_data_assignment_and_module_cpu_move_like_on_a_mac() -> None:
    with emulated_mps() as emu:
        param = nn.Parameter(torch.ones(2))
        same = param
        param.data = param.data.to("mps")  # the old idiom: the same object moves
        assert param is same and emu.is_emulated(param) and isinstance(param, nn.Parameter)
        assert param.tolist() == [1.0, 1.0] and param.requires_grad
        x = torch.ones(3, device="mps")
        x.data = torch.zeros(3, device="mps")
        assert x.tolist() == [0.0, 0.0, 0.0]
        model = nn.Linear(2, 2).to("mps")
        model.cpu()
        assert type(model.weight) is nn.Parameter and model.weight.device.type == "cpu"
        assert model(torch.ones(1, 2)).shape == (1, 2)


def test_autograd_crosses_the_device_boundary() -> None:
    with emulated_mps() as emu:
        w = torch.randn(3, requires_grad=True)
        (w.to("mps") * 2).sum().backward()
        assert type(w.grad) is torch.Tensor and w.grad.tolist() == [2.0, 2.0, 2.0]
        v = torch.randn(3, device="mps", requires_grad=True)
        (v.cpu() * 3).sum().backward()
        assert emu.is_emulated(v.grad) and v.grad.tolist() == [3.0, 3.0, 3.0]


def test_torch_mps_functions_behave() -> None:
    with emulated_mps():
        torch.mps.manual_seed(1)
        a = torch.randn(3, device="mps")
        torch.mps.manual_seed(1)
        assert torch.equal(a.cpu(), torch.randn(3, device="mps").cpu())
        torch.mps.synchronize()
        torch.mps.empty_cache()
        assert torch.mps.device_count() == 1 and torch.mps.is_available()
        before = torch.mps.current_allocated_memory()
        keep = torch.empty(1 << 20, device="mps")
        assert torch.mps.current_allocated_memory() - before >= keep.nbytes
        assert torch.mps.recommended_max_memory() > 0
        torch.mps.set_per_process_memory_fraction(0.5)
        event = torch.mps.Event(enable_timing=True)
        event.record()
        event.synchronize()
        with torch.mps.profiler.profile():
            pass
        assert torch.accelerator.is_available()
        assert torch.accelerator.current_accelerator().type == "mps"
        state = torch.mps.get_rng_state()
        torch.mps.set_rng_state(state)


# -- the module's life: state_dict, save/load, deepcopy ----------------------------------------------


def test_state_dict_save_load_and_deepcopy_stay_on_mps() -> None:
    with emulated_mps() as emu:
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to("mps")
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert all(emu.is_emulated(t) for t in [*loaded.parameters(), *loaded.buffers()])
        assert isinstance(loaded[0].weight, nn.Parameter)

        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        buf.seek(0)
        state = torch.load(buf)  # weights_only, the default
        assert all(emu.is_emulated(t) for t in state.values())
        buf.seek(0)
        assert not any(emu.is_emulated(t) for t in torch.load(buf, map_location="cpu").values())

        cpu_state = {k: v.cpu() + 1 for k, v in state.items()}
        model.load_state_dict(cpu_state)
        assert emu.is_emulated(model[0].weight)
        assert torch.equal(model[0].weight.cpu(), cpu_state["0.weight"])
        buf = io.BytesIO()
        torch.save(cpu_state, buf)
        buf.seek(0)
        assert all(emu.is_emulated(t) for t in torch.load(buf, map_location="mps").values())

        twin = copy.deepcopy(model)
        assert emu.is_emulated(twin[0].weight) and twin[0].weight is not model[0].weight
        assert torch.equal(twin[0].weight.cpu(), model[0].weight.cpu())


# -- meta backing -----------------------------------------------------------------------------------


def test_meta_backing_makes_up_data_dependent_results_and_says_where() -> None:
    with emulated_mps("meta") as emu:
        data = torch.randn(100, 8)  # a dataset: real CPU data
        assert data.device.type == "cpu" and data.std().item() > 0.5

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("scale", torch.full((8,), 2.0))  # small: stays real
                self.body = nn.Linear(8, 10_000)  # large: built on meta

        net = Net()
        assert net.scale.tolist() == [2.0] * 8 and net.body.weight.device.type == "meta"
        net.to("mps")
        assert emu.is_emulated(net.body.weight) and net.body.weight.device.type == "mps"
        out = net.body(data[:4].to("mps") * net.scale)
        assert out.shape == (4, 10_000)
        value = out.sum().item()  # item on meta
        hits = torch.nonzero(out > 0)  # nonzero on meta
        text = repr(out)  # print on meta
        assert value == 0.0 and hits.shape == (0, 2) and emu.is_emulated(hits)
        assert text.startswith("tensor(..., device='mps:0', size=(4, 10000)")
        assert out.cpu().device.type == "cpu"
        # A C++ device check (meta backing) refuses a CPU window: listed, and run as if the
        # window were on mps.
        spec = torch.stft(out[0], 64, window=torch.hann_window(64), return_complex=True)  # stft
        assert emu.is_emulated(spec) and spec.shape == (33, 626)
    [refusal] = emu.refusals
    assert (refusal.kind, refusal.where) == ("mixed devices", line_of("# stft"))
    assert "got self on mps:0 and window on cpu" in refusal.error
    assert emu.placeholders == [
        ("aten::_local_scalar_dense", line_of("# item on meta")),
        ("aten::nonzero", line_of("# nonzero on meta")),
        ("Tensor.__repr__", line_of("# print on meta")),
        ("aten::_to_copy", line_of("assert out.cpu().device.type")),
    ]


# -- composition and clean-up ---------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["mode_outside", "mode_inside"])
def test_an_outer_dispatch_mode_sees_emulated_tensors(order: str) -> None:
    seen: list[tuple[str, list[bool]]] = []

    class PassThrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            flags = [emu.is_emulated(t) for t in tree_leaves(args) if isinstance(t, torch.Tensor)]
            seen.append((func.name(), flags))
            return func(*args, **(kwargs or {}))

    def body() -> torch.Tensor:
        x = torch.randn(4, 4, device="mps", requires_grad=True)
        loss = (x @ x).relu().sum()
        loss.backward()
        return x

    if order == "mode_outside":
        with PassThrough(), emulated_mps() as emu:
            x = body()
    else:
        with emulated_mps() as emu, PassThrough():
            x = body()
    assert emu.is_emulated(x.grad)
    mm = [flags for name, flags in seen if name == "aten::mm"]
    assert len(mm) == 3 and all(flags == [True, True] for flags in mm)  # forward + backward
    assert ("aten::threshold_backward", [True, True]) in seen


def _patched_state() -> dict[str, object]:
    """What emulation patches, as seen from outside."""
    return {
        "to": "to" in vars(torch.Tensor),
        "data": "data" in vars(torch.Tensor),
        "tensor": torch.tensor,
        "load": torch.load,
        "available": torch.backends.mps.is_available,
        "modes": torch._C._len_torch_function_stack(),
        "registry": list(torch.serialization._package_registry),
    }


def test_everything_is_restored_even_when_the_body_raises() -> None:
    before = _patched_state()
    for backing in ("cpu", "meta"):
        with pytest.raises(ValueError), emulated_mps(backing):
            torch.set_default_device("mps")
            with torch.device("mps"):
                raise ValueError("the user's script failed")
        assert _patched_state() == before
        assert torch.get_default_device() == torch.device("cpu")
        assert not torch.backends.mps.is_available()
        with pytest.raises((RuntimeError, NotImplementedError)):
            torch.zeros(1, device="mps")


def test_a_second_emulation_is_unaffected_by_the_first() -> None:
    with emulated_mps("meta", stop_at_refusal=True) as first:
        old = torch.ones(2, device="mps")
        with pytest.raises(TypeError):
            torch.ones(1, dtype=torch.float64, device="mps")
        old.sum().item()
    with emulated_mps() as second:
        assert second.rejections == [] and second.placeholders == []
        assert not second.is_emulated(old) and first.is_emulated(old)
        fresh = torch.ones(2, device="mps")
        assert second.is_emulated(fresh) and not first.is_emulated(fresh)
        assert fresh.sum().item() == 2.0  # cpu backing: real data again
    assert len(first.rejections) == 1 and len(first.placeholders) == 1


def test_emulations_do_not_nest_and_backing_is_checked() -> None:
    with emulated_mps(), pytest.raises(RuntimeError, match="nested"), emulated_mps():
        pass
    with pytest.raises(ValueError), emulated_mps("cuda"):  # type: ignore[arg-type]
        pass


def test_torch_compile_runs_eagerly() -> None:
    with emulated_mps() as emu, pytest.warns(UserWarning, match="torch.compile"):
        model = torch.compile(nn.Linear(2, 2).to("mps"))
        assert emu.is_emulated(model(torch.ones(1, 2, device="mps")))


def test_functional_code_inside_torch_uses_the_device_too() -> None:
    with emulated_mps() as emu:
        attn = nn.MultiheadAttention(8, 2, batch_first=True).to("mps")
        q = torch.randn(2, 5, 8, device="mps")
        out, _ = attn(q, q, q, need_weights=False)
        lstm = nn.LSTM(8, 4, batch_first=True).to("mps")
        seq, _ = lstm(q)
        sdpa = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        assert all(emu.is_emulated(t) for t in (out, seq, sdpa))
        nn.utils.clip_grad_norm_(attn.parameters(), 1.0)
