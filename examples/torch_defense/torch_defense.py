"""A small "defended" digits classifier: the model a defense paper would ship.

The defense quantizes its input to a few grey levels before an MLP, a
preprocessing that was published (in larger form) as a robustness
mechanism. Quantization has zero gradient almost everywhere, so a plain
gradient attack sees no signal and reports high robust accuracy: gradient
masking, not robustness. The attack tests in ``test_torch_attacks.py`` show that the
binarization test catches the weak evaluation and passes the adaptive one.

The weights are trained on scikit-learn's digits at first use (a few seconds
on a CPU) and cached next to this file, so no download is ever needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

CACHE = Path(__file__).parent / ".cache" / "defense.pt"
LEVELS = 4


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round each pixel to one of LEVELS grey levels (non-differentiable)."""
    return torch.round(x * (LEVELS - 1)) / (LEVELS - 1)


class QuantizedMLP(torch.nn.Module):
    """Input quantization, then a 64-64-10 ReLU MLP. Inputs in [0, 1]."""

    def __init__(self, straight_through: bool = False) -> None:
        super().__init__()
        self.straight_through = straight_through
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
        self.head = torch.nn.Linear(64, 10)

    def classifier(self, x: torch.Tensor) -> torch.Tensor:
        """The network without the preprocessing (what an adaptive attacker differentiates)."""
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.straight_through:
            # BPDA (Athalye et al., 2018): the same forward pass, but the
            # backward pass treats quantization as the identity.
            return self.classifier(x + (quantize(x) - x).detach())
        return self.classifier(quantize(x))

    def with_bpda(self) -> QuantizedMLP:
        """The same defense (same weights, same outputs) with BPDA gradients."""
        twin = QuantizedMLP(straight_through=True)
        twin.load_state_dict(self.state_dict())
        return twin.eval()


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def load_model() -> QuantizedMLP:
    """The trained defense, from the cache or trained now (seeded)."""
    model = QuantizedMLP()
    if CACHE.exists():
        model.load_state_dict(torch.load(CACHE, weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    x, y = digits()
    xt, yt = torch.from_numpy(x[:-200]), torch.from_numpy(y[:-200])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), CACHE)
    return model.eval()
