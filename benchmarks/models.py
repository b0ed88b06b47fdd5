"""Models and data of the benchmarks, written here so that no torchvision is needed.

Why these: the GPU targets are stated for a ResNet-18 at 32x32 (CIFAR
layout) and a ResNet-50 at 224x224 (ImageNet layout). Every model is trained:
the time of a pass does not depend on the weights, but whether a sample can
be set up does (a random-weight ResNet's features are nearly constant inside
a small ball, a degenerate case no user has), and a timing of a run whose
samples were inconclusive measures a test that never attacked.

- ``mlp``: 64-256-10 on scikit-learn's digits (inputs ``(N, 64)`` in [0, 1]);
  Linf 0.1; 256-d features; trained in about a second.
- ``resnet18``: CIFAR ResNet-18, 10 classes, on the digits bilinearly upscaled
  to ``(N, 3, 32, 32)``; Linf 8/255; 512-d features.
- ``resnet50``: ImageNet ResNet-50 (bottlenecks 3-4-6-3), 10 classes, on the
  digits upscaled to ``(N, 3, 224, 224)``; Linf 4/255; 2048-d features.

The ResNets are trained by :func:`trained_resnet`: seeded, a fixed number of
Adam steps (``--train-steps``; the defaults take about 20 s on an H200, hours
on a CPU, so CPU runs pass a few steps), on all digits but the last
:data:`HELD_OUT`; the benchmark samples are the held-out digits (repeated
when more are asked for). Trained weights are cached under
``benchmarks/out/weights/`` keyed by model, size, seed, steps and device
kind, so that the parts of ``gpu_session.sh`` do not retrain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODELS = ("mlp", "resnet18", "resnet50")
#: Digits never trained on; the ResNets' benchmark samples (the MLP's are all digits).
HELD_OUT = 512
#: Adam steps and batch size of each ResNet's training (see the module docstring).
TRAIN_STEPS = {"resnet18": 400, "resnet50": 300}
TRAIN_BATCH = {"resnet18": 128, "resnet50": 64}
SIDE = {"resnet18": 32, "resnet50": 224}
CACHE = Path(__file__).resolve().parent / "out" / "weights"


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


def digits_images(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as float32 ``(N, 3, side, side)`` in [0, 1], and their labels.

    Bilinear upscaling with half-pixel centres (``align_corners=False``, as
    ``tests/convnets.py``), clipped to [0, 1], the grey channel repeated three times.
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    small = torch.from_numpy((x / 16.0).reshape(-1, 1, 8, 8)).double()
    up = torch.nn.functional.interpolate(small, size=(side, side), mode="bilinear")
    up = up.clamp(0.0, 1.0).float().repeat(1, 3, 1, 1)
    return up.contiguous(), torch.from_numpy(y.astype(np.int64))


def _resnet(name: str) -> torch.nn.Module:
    return ResNet18(10) if name == "resnet18" else ResNet50(10)


def trained_resnet(
    name: str,
    seed: int = 0,
    device: str = "cpu",
    steps: int | None = None,
    cache: Path | None = CACHE,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The ResNet ``name`` trained on the upscaled digits (from the cache when there).

    Seeded Adam with a one-cycle schedule, ``steps`` steps of
    :data:`TRAIN_BATCH` images, random shifts of up to 1/16 of the side as
    augmentation; BatchNorm in train mode while training, eval after. Returns
    the model in eval mode on ``device`` and a record: the held-out accuracy,
    the steps, the training time (0 when cached) and the cache file. The
    global RNG and the model's train/eval state are the caller's again after.
    """
    if name not in SIDE:
        raise ValueError(f"no training for {name!r}; choose resnet18 or resnet50")
    steps = TRAIN_STEPS[name] if steps is None else steps
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    side = SIDE[name]
    kind = torch.device(device).type
    path = None if cache is None else cache / f"{name}-{side}px-seed{seed}-steps{steps}-{kind}.pt"
    if path is not None and path.exists():
        with torch.random.fork_rng(devices=[]):  # initialising the layers draws
            model = _resnet(name)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state"])
        record = {k: v for k, v in saved.items() if k != "state"}
        record.update(cached=True, train_s=0.0, cache_file=str(path))
        return model.to(device).eval(), record

    x, y = digits_images(side)
    x_train, y_train = x[:-HELD_OUT].to(device), y[:-HELD_OUT].to(device)
    with torch.random.fork_rng(devices=[torch.device(device)] if kind == "cuda" else []):
        torch.manual_seed(seed)
        model = _resnet(name).to(device)
        generator = torch.Generator().manual_seed(seed)
        batch = TRAIN_BATCH[name]
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=max(steps, 1))
        shift = max(1, side // 16)
        model.train()
        start = time.perf_counter()
        for _ in range(steps):
            index = torch.randint(0, len(x_train), (batch,), generator=generator)
            dx, dy = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
            inputs = torch.roll(x_train[index.to(device)], shifts=(dx, dy), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(inputs), y_train[index.to(device)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if kind == "cuda":
            torch.cuda.synchronize(device)
        train_s = time.perf_counter() - start
    model.eval()
    accuracy = _accuracy(model, x[-HELD_OUT:].to(device), y[-HELD_OUT:].to(device))
    record: dict[str, Any] = {
        "model": name,
        "side": side,
        "seed": seed,
        "steps": steps,
        "batch": TRAIN_BATCH[name],
        "device_kind": kind,
        "test_accuracy": accuracy,
        "held_out": HELD_OUT,
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({**record, "state": state}, path)
    record.update(cached=False, train_s=train_s, cache_file=None if path is None else str(path))
    return model, record


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        predicted = torch.cat([model(x[i : i + 64]).argmax(1) for i in range(0, len(x), 64)])
    return float((predicted == y).float().mean())


@dataclass
class Problem:
    """A model and samples to test it on, with the threat model's radius (Linf)."""

    name: str
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    epsilon: float
    description: str
    #: How the model was trained: held-out accuracy, steps, time, cache file.
    training: dict[str, Any] = field(default_factory=dict)


def make_problem(
    name: str, samples: int, seed: int, device: str, train_steps: int | None = None
) -> Problem:
    """The trained model ``name`` (see :data:`MODELS`) and ``samples`` inputs on ``device``.

    ``train_steps`` applies to the ResNets (default :data:`TRAIN_STEPS`).
    """
    if name == "mlp":
        model, x_all, y_all = digits_mlp()
        reps = -(-samples // len(x_all))
        x = torch.from_numpy(np.tile(x_all, (reps, 1))[:samples])
        y = torch.from_numpy(np.tile(y_all, reps)[:samples])
        with torch.no_grad():
            accuracy = float((model(torch.from_numpy(x_all)).argmax(1).numpy() == y_all).mean())
        training: dict[str, Any] = {"model": name, "train_accuracy": accuracy, "cached": False}
        epsilon, what = 0.1, "digits MLP 64-256-10 (trained), scikit-learn digits, Linf 0.1"
    elif name in SIDE:
        model, training = trained_resnet(name, seed, device, train_steps)
        x_all, y_all = digits_images(SIDE[name])
        x_held, y_held = x_all[-HELD_OUT:], y_all[-HELD_OUT:]
        reps = -(-samples // HELD_OUT)
        x = x_held.repeat(reps, 1, 1, 1)[:samples]
        y = y_held.repeat(reps)[:samples]
        epsilon = 8 / 255 if name == "resnet18" else 4 / 255
        side = SIDE[name]
        what = (
            f"{'ResNet-18' if name == 'resnet18' else 'ResNet-50'} trained "
            f"{training['steps']} steps on digits upscaled to 3x{side}x{side} (held-out "
            f"accuracy {training['test_accuracy']:.3f}), held-out digits, Linf {epsilon:.5f}"
            + (f", {HELD_OUT} held-out digits repeated" if samples > HELD_OUT else "")
        )
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return Problem(name, model.to(device), x.to(device), y.to(device), epsilon, what, training)
