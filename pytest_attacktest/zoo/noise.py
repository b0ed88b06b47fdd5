"""Gaussian noise layer: every pass adds fresh N(0, sigma^2) noise to the input.

The defense adds Gaussian noise to each input before a 64-256-10 MLP trained
on the same noise, as the noise layers of Random Self-Ensemble (Liu et al.,
2018) and Parametric Noise Injection (He et al., 2019) do. Every forward pass
gives other logits, so a single pass says little about a point.

The binarization test averages features over passes wherever it decides
(``average_passes="auto"`` picks the passes from the measured noise,
:mod:`pytest_attacktest.engine.passes`): a point counts as adversarial only if the
readout on the mean features of those passes is adversarial in each of
``verify_passes`` fresh evaluations. The attack still sees one noisy pass per
call. PGD with early stopping (``keep="first"``) keeps the first point that
fooled one noisy pass, which the averaged verification rejects (ASR 0.68);
APGD on ``attacks.EOT`` (mean gradient of 16 passes) passes (1.00). The noise
is small (sigma 0.02 at epsilon 0.2) because averaging is the only remedy: a
sigma of 0.3 would need thousands of passes per point, and the test says so.
"""

from __future__ import annotations

import numpy as np
import torch

import attacks
from pytest_attacktest.zoo.attack_tools import OnModel
from pytest_attacktest.zoo.base import MLP, AttackSpec, Defense
from pytest_attacktest.zoo.training import fit_mlp

#: Standard deviation of the noise added to every pixel (pixels in [0, 1]).
SIGMA = 0.02


class NoiseLayer(torch.nn.Module):
    """Adds N(0, sigma^2) noise at inference too, drawn from torch's global generator."""

    def __init__(self, sigma: float = SIGMA) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sigma * torch.randn_like(x)


class NoisyMLP(torch.nn.Module):
    """``classifier(x + noise)``: a noise layer, then a 256-unit MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.noise = NoiseLayer()
        self.classifier = MLP(hidden=256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.noise(x))  # type: ignore[no-any-return]


def _gaussian_noise_numpy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The noise layer in NumPy, drawing from the training generator."""
    return x + SIGMA * rng.standard_normal(x.shape)


def _train(model: torch.nn.Module) -> None:
    assert isinstance(model, NoisyMLP)
    fit_mlp(model.classifier, epochs=250, transform=_gaussian_noise_numpy)


def _eot_apgd(model: torch.nn.Module) -> OnModel:
    return OnModel(
        attacks.APGD("linf", steps=50, loss="margin"),
        lambda inner: attacks.EOT(inner, n=16, batch_passes=True),
        label="EOT-16",
    )


DEFENSE = Defense(
    name="noise",
    title="Gaussian noise layer (randomness)",
    description=(
        f"Every pass adds N(0, {SIGMA}^2) noise to the input of a 64-256-10 MLP trained on the "
        "same noise. One pass's verdict and gradient are mostly noise."
    ),
    references=(
        "Liu, Cheng, Zhang and Hsieh, Towards Robust Neural Networks via Random Self-ensemble, "
        "ECCV 2018.",
        "Athalye, Carlini and Wagner, Obfuscated Gradients Give a False Sense of Security, "
        "ICML 2018 (EOT).",
    ),
    epsilon=0.2,
    weak=AttackSpec(
        name="PGD-50 (CE), first success",
        description=(
            "One noisy pass per step; it keeps the first point that fooled a single pass "
            "(keep='first'), which the averaged verification rejects."
        ),
        attack=lambda model: attacks.PGD("linf", steps=50, keep="first"),
    ),
    adaptive=AttackSpec(
        name="APGD-50 (margin) on EOT-16",
        description=(
            "attacks.EOT around the model the attack is given: the mean gradient of 16 passes, "
            "and a point counts only when all 16 passes are fooled. (PGD-30 on EOT-16 misses "
            "2 of 31 samples: 0.94.)"
        ),
        attack=_eot_apgd,
    ),
    build=NoisyMLP,
    train=_train,
    version=1,
    options=lambda model: {"verify_passes": 2},
)
