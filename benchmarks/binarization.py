"""Time the whole binarization test, phase by phase, on a realistic model.

Why: the engine is built to do each phase for a whole chunk of samples at once
(the reference implementation loops over samples, fits with scikit-learn on
the CPU and attacks at batch size 1). This benchmark measures where the time
goes (sampling, features, readout fit, attack, verification) so a regression
in any phase shows up, and records the figures in ``benchmarks/RESULTS.md``.

Model: a ResNet-18 for 32x32 inputs (CIFAR layout, 10 classes, written here so
no torchvision is needed) with random weights, which is fine for speed; or,
with ``--model mlp``, the small digits MLP used by the tests.

Usage (from the repository root)::

    python benchmarks/binarization.py [--device cpu|cuda] [--samples N]
        [--model resnet18|mlp] [--steps N] [--n-inner N] [--json PATH]

Defaults are CPU-safe (MLP on digits, 512 samples); on a GPU use
``--model resnet18 --samples 512``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from typing import Any

import numpy as np
import torch

import attacks
from pytest_attacktest import binarization_test


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


def digits_mlp() -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device)
    parser.add_argument("--model", choices=["mlp", "resnet18"], default="mlp")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--n-inner", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.model == "mlp":
        model, x_all, y_all = digits_mlp()
        reps = -(-args.samples // len(x_all))
        x = torch.from_numpy(np.tile(x_all, (reps, 1))[: args.samples])
        y = torch.from_numpy(np.tile(y_all, reps)[: args.samples])
        epsilon = 0.1
    else:
        torch.manual_seed(args.seed)
        model = ResNet18().eval()
        x = torch.rand(args.samples, 3, 32, 32)
        y = torch.randint(0, 10, (args.samples,))
        epsilon = 8 / 255
    model = model.to(device)
    x, y = x.to(device), y.to(device)
    attack = attacks.PGD("linf", steps=args.steps)

    start = time.perf_counter()
    report = binarization_test(
        model,
        x,
        y,
        attack=attack,
        epsilon=epsilon,
        norm="linf",
        n_inner=args.n_inner,
        chunk_size=args.chunk_size,
        seed=args.seed,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - start

    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "command": " ".join(sys.argv),
        "seed": args.seed,
    }
    result = {
        **meta,
        "model": args.model,
        "samples": args.samples,
        "steps": args.steps,
        "n_inner": report.settings["n_inner"],
        "verdict": report.verdict,
        "asr": report.asr,
        "inconclusive": report.n_inconclusive,
        "total_s": total,
        "per_sample_ms": 1000 * total / args.samples,
        "phases_s": report.timings,
    }
    print(f"device: {meta['device']}  torch {meta['torch']}  date {meta['date']}")
    print(
        f"{args.model}, {args.samples} samples, PGD-{args.steps}, n_inner={result['n_inner']}: "
        f"{total:.2f} s total ({result['per_sample_ms']:.2f} ms/sample), verdict "
        f"{report.verdict}, ASR {report.asr:.3f}, inconclusive {report.n_inconclusive}"
    )
    for phase, seconds in report.timings.items():
        print(f"  {phase:<13} {seconds:8.3f} s  {100 * seconds / total:5.1f}%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
