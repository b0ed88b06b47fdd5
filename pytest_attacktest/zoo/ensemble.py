"""An ensemble with gradient masking: low-precision members hide the gradient.

Mixed-precision ensembles (EMPIR) combine a full-precision model with
low-precision ones. Here three members see the input quantized to eight
levels and one member sees it at full precision; the ensemble averages the
members' logits, which is one linear layer on their concatenated features
(the layer the binarization test replaces). The quantized members' gradients
are zero, so a gradient attack sees only the full-precision member, whose
features carry little of the decision: plain PGD fails. The members were
trained with a straight-through estimator (quantization forward, identity
backward); attacking through that same surrogate (the twin returned by
:meth:`EnsembleMLP.with_straight_through`: same weights, same outputs) passes.
"""

from __future__ import annotations

import numpy as np
import torch

import attacks
from pytest_attacktest.zoo import training
from pytest_attacktest.zoo.base import AttackSpec, Defense

LEVELS = 8
LOW_PRECISION = 3
FULL_HIDDEN = 16
LOW_HIDDEN = 32


def _member(hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU())


class EnsembleMLP(torch.nn.Module):
    """One full-precision and LOW_PRECISION quantized-input members, one shared head."""

    def __init__(self, straight_through: bool = False) -> None:
        super().__init__()
        self.straight_through = straight_through
        self.full = _member(FULL_HIDDEN)
        self.low = torch.nn.ModuleList(_member(LOW_HIDDEN) for _ in range(LOW_PRECISION))
        self.head = torch.nn.Linear(FULL_HIDDEN + LOW_PRECISION * LOW_HIDDEN, 10)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Input at LEVELS levels; the identity's gradient when training or straight-through."""
        q = torch.round(x * (LEVELS - 1)) / (LEVELS - 1)
        if self.training or self.straight_through:
            return x + (q - x).detach()
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantize(x)
        features = [self.full(x)] + [member(q) for member in self.low]
        return self.head(torch.cat(features, dim=1))  # type: ignore[no-any-return]

    def with_straight_through(self) -> EnsembleMLP:
        """The same ensemble (same weights and outputs) with straight-through gradients."""
        twin = EnsembleMLP(straight_through=True)
        twin.load_state_dict(self.state_dict())
        twin.eval()
        for parameter in twin.parameters():
            parameter.requires_grad_(False)
        return twin


def _quantize_numpy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.round(x * (LEVELS - 1)) / (LEVELS - 1)  # half to even, as torch.round


def _train(model: torch.nn.Module) -> None:
    """Members see the quantized input (what the straight-through estimator trains on)."""
    assert isinstance(model, EnsembleMLP)
    x, y = training.training_digits()
    branches = [training.Branch((FULL_HIDDEN,))] + [
        training.Branch((LOW_HIDDEN,), transform=_quantize_numpy) for _ in range(LOW_PRECISION)
    ]
    trained = training.train(branches, x, y, seed=training.seed(), epochs=300)
    members = [model.full, *model.low]
    linears = [member[0] for member in members] + [model.head]
    layers = [layer for branch in trained.branches for layer in branch] + [trained.head]
    training.load(linears, layers)


def _straight_through(model: torch.nn.Module) -> EnsembleMLP:
    assert isinstance(model, EnsembleMLP)
    return model.with_straight_through()


DEFENSE = Defense(
    name="ensemble",
    title="mixed-precision ensemble (masked members)",
    description=(
        f"A full-precision member ({FULL_HIDDEN} units) and {LOW_PRECISION} members on the "
        f"input quantized to {LEVELS} levels ({LOW_HIDDEN} units each), logits averaged by "
        "one linear head. Only the full-precision member passes gradients."
    ),
    references=(
        "Sen, Ravindran and Raghunathan, EMPIR: Ensembles of Mixed Precision Deep Networks "
        "for Increased Robustness against Adversarial Attacks, ICLR 2020.",
        "Tramer, Carlini, Brendel and Madry, On Adaptive Attacks to Adversarial Example "
        "Defenses, NeurIPS 2020.",
    ),
    epsilon=0.1,
    weak=AttackSpec(
        name="PGD-50 (CE)",
        description=(
            "Sees the gradient of the full-precision member only; the quantized members, "
            "which carry most of the decision, move unseen."
        ),
        attack=lambda model: attacks.PGD("linf", steps=50),
    ),
    adaptive=AttackSpec(
        name="PGD-50 on the straight-through twin",
        description=(
            "The surrogate the members were trained with: quantization forward, identity "
            "backward, for every member."
        ),
        attack=lambda model: attacks.PGD("linf", steps=50),
        model=_straight_through,
    ),
    build=EnsembleMLP,
    train=_train,
    version=2,
)
