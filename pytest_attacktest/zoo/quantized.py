"""Input quantization: shattered (zero) gradients, broken by BPDA.

The defense rounds every pixel to one of four grey levels before the MLP, as
thermometer encoding and bit-depth reduction did. ``torch.round`` has a zero
gradient almost everywhere, so plain PGD never moves from its random start.
BPDA (Athalye, Carlini and Wagner, 2018) keeps the forward pass and
differentiates the identity instead of the rounding.
"""

from __future__ import annotations

import numpy as np
import torch

import attacks
from pytest_attacktest.zoo.base import MLP, AttackSpec, Defense
from pytest_attacktest.zoo.training import fit_mlp

LEVELS = 4


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Each pixel to the nearest of LEVELS grey levels (gradient zero almost everywhere)."""
    return torch.round(x * (LEVELS - 1)) / (LEVELS - 1)


def _quantize_numpy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.round(x * (LEVELS - 1)) / (LEVELS - 1)  # half to even, as torch.round


def _train(model: torch.nn.Module) -> None:
    assert isinstance(model, QuantizedMLP)
    fit_mlp(model.classifier, epochs=300, transform=_quantize_numpy)


class QuantizedMLP(torch.nn.Module):
    """``classifier(quantize(x))``; ``classifier`` is what an adaptive attack differentiates."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(quantize(x))  # type: ignore[no-any-return]


def _with_bpda(model: torch.nn.Module) -> attacks.BPDA:
    assert isinstance(model, QuantizedMLP)
    return attacks.BPDA(model.classifier, quantize)


DEFENSE = Defense(
    name="quantized",
    title="input quantization (shattered gradients)",
    description=(
        f"Pixels rounded to {LEVELS} grey levels before a 64-64-10 MLP. The rounding has "
        "zero gradient, so gradient attacks see no signal and the defense looks robust."
    ),
    references=(
        "Guo, Rana, Cisse and van der Maaten, Countering Adversarial Images using Input "
        "Transformations, ICLR 2018 (bit-depth reduction); Buckman, Roy, Raffel and "
        "Goodfellow, Thermometer Encoding, ICLR 2018.",
        "Athalye, Carlini and Wagner, Obfuscated Gradients Give a False Sense of Security, "
        "ICML 2018 (BPDA).",
    ),
    epsilon=0.2,
    weak=AttackSpec(
        name="PGD-50 (CE)",
        description="The gradient through torch.round is zero: PGD stays at its random start.",
        attack=lambda model: attacks.PGD("linf", steps=50),
    ),
    adaptive=AttackSpec(
        name="PGD-50 on BPDA",
        description=(
            "attacks.BPDA(model.classifier, quantize): the real quantized forward pass, the "
            "identity's gradient backward."
        ),
        attack=lambda model: attacks.PGD("linf", steps=50),
        model=_with_bpda,
    ),
    build=QuantizedMLP,
    train=_train,
    version=2,
)
