"""Models and data of the benchmarks, written here so that no torchvision is needed.

Why these: the issue's figures are stated for a ResNet-18 at 32x32 (CIFAR
layout) and a ResNet-50 at 224x224 (ImageNet layout); random weights are fine
for speed, since the time of a forward and backward pass does not depend on
the weights' values. The digits MLP is what a CPU can afford, and is trained
(about a second) so that its verdicts mean something.

- ``mlp``: 64-256-10 on scikit-learn's digits (inputs ``(N, 64)`` in [0, 1]);
  Linf 0.1; 256-d features.
- ``resnet18``: CIFAR ResNet-18, 10 classes, uniform ``(N, 3, 32, 32)``
  inputs; Linf 8/255; 512-d features.
- ``resnet50``: ImageNet ResNet-50 (bottlenecks 3-4-6-3), 1000 classes,
  uniform ``(N, 3, 224, 224)`` inputs; Linf 4/255; 2048-d features. Weights
  initialised as torchvision does (He normal, fan out), BatchNorm in eval
  mode with its initial statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MODELS = ("mlp", "resnet18", "resnet50")


class BasicBlock(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.shortcut = torch.nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(torch.nn.Module):
    """ResNet-18 for 32x32 inputs: 512-d penultimate features, then a linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(64), torch.nn.ReLU()
        )
        layers: list[torch.nn.Module] = []
        cin = 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


class Bottleneck(torch.nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's v1.5), 1x1 expand by 4, residual."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(cin, width, 1, bias=False),
            torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, stride, 1, bias=False),
            torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, cout, 1, bias=False),
            torch.nn.BatchNorm2d(cout),
        )
        self.shortcut = torch.nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet50(torch.nn.Module):
    """ResNet-50 for 224x224 inputs: 2048-d penultimate features, then a linear head."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            torch.nn.BatchNorm2d(64),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(3, 2, 1),
        )
        blocks: list[torch.nn.Module] = []
        cin = 64
        for width, count, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
            for i in range(count):
                blocks.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = 4 * width
        self.layers = torch.nn.Sequential(*blocks)
        self.head = torch.nn.Linear(2048, classes)
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


def digits_mlp() -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    """The digits MLP 64-256-10, trained for 200 full-batch Adam steps (about a second)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return net.eval(), x, y.astype(np.int64)


@dataclass
class Problem:
    """A model and samples to test it on, with the threat model's radius (Linf)."""

    name: str
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    epsilon: float
    description: str


def make_problem(name: str, samples: int, seed: int, device: str) -> Problem:
    """The model ``name`` (see :data:`MODELS`) and ``samples`` inputs on ``device``."""
    if name == "mlp":
        model, x_all, y_all = digits_mlp()
        reps = -(-samples // len(x_all))
        x = torch.from_numpy(np.tile(x_all, (reps, 1))[:samples])
        y = torch.from_numpy(np.tile(y_all, reps)[:samples])
        epsilon, what = 0.1, "digits MLP 64-256-10 (trained), scikit-learn digits, Linf 0.1"
    elif name in ("resnet18", "resnet50"):
        torch.manual_seed(seed)
        side, classes = (32, 10) if name == "resnet18" else (224, 1000)
        model = (ResNet18 if name == "resnet18" else ResNet50)(classes).eval()
        generator = torch.Generator().manual_seed(seed)
        x = torch.rand(samples, 3, side, side, generator=generator)
        y = torch.randint(0, classes, (samples,), generator=generator)
        epsilon = 8 / 255 if name == "resnet18" else 4 / 255
        what = (
            f"{'ResNet-18' if name == 'resnet18' else 'ResNet-50'} (random weights, eval), "
            f"uniform 3x{side}x{side} inputs, Linf {epsilon:.5f}"
        )
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return Problem(name, model.to(device), x.to(device), y.to(device), epsilon, what)
