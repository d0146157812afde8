"""The models the benchmarks run, each written the way users write a script.

A workload is a callable with no arguments that picks its device as scripts do
(``mps`` when ``torch.backends.mps.is_available()``, else the CPU): run plainly it trains on
the CPU, inside a predict-mode probe it finds the emulated ``mps`` device.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[2]
SEED_CNN = REPO / "docs" / "examples" / "simple_cnn.py"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
DECODER_7B = SCRIPTS / "decoder_7b.py"

Workload = Callable[[], None]


def pick_device() -> str:
    return "mps" if torch.backends.mps.is_available() else "cpu"


def seed_cnn() -> Workload:
    """docs/examples/simple_cnn.py's ``main()``: build, move, one Adam step on 64x3x32x32."""
    spec = importlib.util.spec_from_file_location("simple_cnn_example", SEED_CNN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run() -> None:
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the loss
            module.main()

    return run


# -- a ResNet-18-sized CNN (He et al. 2016: BasicBlock, [2, 2, 2, 2], 11.7 M parameters) -----


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.down(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        layers: list[nn.Module] = []
        cin = width
        for i, cout in enumerate((width, width * 2, width * 4, width * 8)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@dataclass(frozen=True)
class ResNetConfig:
    batch: int = 4
    size: int = 64
    width: int = 64  # 64: the real ResNet-18 widths


def resnet18(cfg: ResNetConfig = ResNetConfig()) -> Workload:
    """Build, move, one Adam step with cross-entropy on ``batch`` x 3 x ``size``^2 images."""

    def run() -> None:
        torch.manual_seed(0)
        device = pick_device()
        model = ResNet18(width=cfg.width).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        images = torch.randn(cfg.batch, 3, cfg.size, cfg.size, device=device)
        labels = torch.randint(0, 1000, (cfg.batch,), device=device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    return run


# -- an op-bound micro-model: hundreds of tiny ops per step ------------------------------------


class MicroBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.norm(self.fc(x)))


@dataclass(frozen=True)
class MicroConfig:
    blocks: int = 24
    dim: int = 16
    batch: int = 4


def micro(cfg: MicroConfig = MicroConfig()) -> Workload:
    """``blocks`` x (Linear, LayerNorm, GELU, residual) on a 4 x 16 batch, one SGD step:
    about 40 ATen ops per block, each on a few hundred bytes."""

    def run() -> None:
        torch.manual_seed(0)
        device = pick_device()
        model = nn.Sequential(*(MicroBlock(cfg.dim) for _ in range(cfg.blocks))).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        x = torch.randn(cfg.batch, cfg.dim, device=device)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    return run
