"""Saturated softmax: logits scaled so far that cross-entropy gradients vanish.

Defensive distillation trained at a high softmax temperature and deployed at
temperature 1, which multiplies the logits by the temperature. Cross-entropy
then saturates: in float32 the softmax of the true class is exactly 1, and its
gradient exactly 0, so CE-based PGD does not move. The margin (C&W) loss works
on the logits themselves and is not affected (Carlini and Wagner, 2016).

The binarization test sees the logit scale only with
``rescale_logits="adaptive"`` (each readout spans what the defended model's
logits span around the sample); without it the readout has its own scale and
the obfuscation is gone. The defense's engine options set it.
"""

from __future__ import annotations

import torch

import attacks
from pytest_attacktest.zoo.base import MLP, AttackSpec, Defense
from pytest_attacktest.zoo.training import fit_mlp

TEMPERATURE = 1000.0


class TemperatureMLP(torch.nn.Module):
    """``TEMPERATURE * classifier(x)``: same decisions as the classifier, saturated softmax."""

    temperature: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.classifier = MLP()
        self.register_buffer("temperature", torch.tensor(TEMPERATURE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x) * self.temperature  # type: ignore[no-any-return]


def _train(model: torch.nn.Module) -> None:
    assert isinstance(model, TemperatureMLP)
    fit_mlp(model.classifier, epochs=300)  # trained at temperature 1, deployed at 1000


DEFENSE = Defense(
    name="saturated",
    title="logits x1000 (saturated softmax)",
    description=(
        f"A 64-64-10 MLP whose logits are multiplied by {TEMPERATURE:g}, as defensive "
        "distillation deployed: the softmax is one-hot in float32 and the cross-entropy "
        "gradient is exactly zero almost everywhere."
    ),
    references=(
        "Papernot, McDaniel, Wu, Jha and Swami, Distillation as a Defense to Adversarial "
        "Perturbations against Deep Neural Networks, IEEE S&P 2016.",
        "Carlini and Wagner, Defensive Distillation is Not Robust to Adversarial Examples, "
        "arXiv:1607.04311, 2016.",
    ),
    epsilon=0.1,
    weak=AttackSpec(
        name="PGD-50 (CE)",
        description="Cross-entropy of a one-hot softmax has a zero gradient: PGD stands still.",
        attack=lambda model: attacks.PGD("linf", steps=50),
    ),
    adaptive=AttackSpec(
        name="PGD-50 (margin)",
        description="The margin loss differentiates the logits, whatever their scale.",
        attack=lambda model: attacks.PGD("linf", steps=50, loss="margin"),
    ),
    build=TemperatureMLP,
    train=_train,
    version=2,
    options=lambda model: {"rescale_logits": "adaptive"},
)
