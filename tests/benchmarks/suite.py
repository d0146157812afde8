"""A generated test suite of small model tests, for the pytest plugin's overhead.

Each test creates its model and tensors on the device it finds inside the test function
(docs/pytest-plugin.md: "create models and tensors on mps inside the test function"), so
without the plugin it runs on the CPU and with ``--fallback-probe`` on the emulated mps.
"""

from __future__ import annotations

from pathlib import Path

HEADER = """\
import pytest
import torch
from torch import nn
from torch.nn import functional as F


def device() -> str:
    return "mps" if torch.backends.mps.is_available() else "cpu"
"""

# Five kinds of test; each is parametrized over ``{n}`` seeds.
FAMILIES = """

@pytest.mark.parametrize("seed", range({n}))
def test_mlp_forward(seed: int) -> None:
    torch.manual_seed(seed)
    dev = device()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(dev)
    with torch.no_grad():
        out = model(torch.randn(32, 64, device=dev))
    assert out.shape == (32, 10)


@pytest.mark.parametrize("seed", range({n}))
def test_cnn_train_step(seed: int) -> None:
    torch.manual_seed(seed)
    dev = device()
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 16 * 16, 10),
    ).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (16,), device=dev)
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("seed", range({n}))
def test_attention_shapes(seed: int) -> None:
    torch.manual_seed(seed)
    dev = device()
    attn = nn.MultiheadAttention(32, 4, batch_first=True).to(dev)
    x = torch.randn(4, 16, 32, device=dev)
    out, weights = attn(x, x, x)
    assert out.shape == x.shape and weights.shape == (4, 16, 16)


@pytest.mark.parametrize("seed", range({n}))
def test_layer_norm_stats(seed: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn(256, 256, device=device()) * 3 + 1
    y = F.layer_norm(x, (256,))
    assert y.mean(-1).abs().max().item() < 1e-4
    assert (y.std(-1, unbiased=False) - 1).abs().max().item() < 1e-3


@pytest.mark.parametrize("seed", range({n}))
def test_text_classifier_grad(seed: int) -> None:
    torch.manual_seed(seed)
    dev = device()
    embed = nn.Embedding(1000, 32).to(dev)
    head = nn.Linear(32, 2).to(dev)
    tokens = torch.randint(0, 1000, (8, 24), device=dev)
    logits = head(embed(tokens).mean(1))
    F.cross_entropy(logits, torch.zeros(8, dtype=torch.long, device=dev)).backward()
    assert embed.weight.grad is not None and head.weight.grad.shape == (2, 32)
"""

KINDS = 5


def write_suite(root: Path, tests: int = 50) -> int:
    """Write ``tests`` tests (a multiple of 5) under ``root``; returns how many."""
    per_kind = max(1, tests // KINDS)
    root.mkdir(parents=True, exist_ok=True)
    root.joinpath("pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    root.joinpath("test_models.py").write_text(HEADER + FAMILIES.format(n=per_kind))
    return per_kind * KINDS
