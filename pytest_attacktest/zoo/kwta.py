"""k-winners-take-all activations: a discontinuous network, broken by restarts.

k-WTA keeps the k largest activations of a layer and zeroes the rest. A tiny
input change swaps which units win, so the network jumps between linear
pieces: the local gradient says little about the function a step away, and a
single PGD run stalls at the jump near its start. Tramer, Carlini, Brendel and
Madry (2020) broke k-WTA by attacks that do not trust one local gradient;
here PGD with 40 random restarts of 10 steps passes where one 50-step run
fails (100 steps do no better than 50: more steps do not help, more starting
points do).

Caveat, measured: the discontinuities also make the binarization test's
readout generalize poorly, so for most samples some random point of the ball
is already adversarial (``random_success_rate`` 0.9 on average). This entry
therefore separates attacks that follow one gradient path from attacks that
explore; it is the least tight entry of the zoo: over 3 trainings x 2 engine
seeds PGD-50 scored 0.74-0.88 and the restarts 1.0 (0.74 for training and
engine seed 0). Four k-WTA layers and 400 epochs: three layers, or fewer
epochs, gave PGD-50 0.81-0.91 at seed 0.
"""

from __future__ import annotations

import torch

import attacks
from pytest_attacktest.zoo import training
from pytest_attacktest.zoo.base import AttackSpec, Defense

HIDDEN = 128
WINNERS = 12
LAYERS = 4


class KWinners(torch.nn.Module):
    """Keep the ``k`` largest entries per sample (ties at the k-th value kept), zero the rest."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kth = x.topk(self.k, dim=1).values[:, -1:]
        return x * (x >= kth).to(x.dtype)


class KWTANet(torch.nn.Module):
    """64-128-128-128-128-10 with k-WTA (12 of 128 units) after each hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        for inputs in (64,) + (HIDDEN,) * (LAYERS - 1):
            layers += [torch.nn.Linear(inputs, HIDDEN), KWinners(WINNERS)]
        self.body = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(HIDDEN, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # type: ignore[no-any-return]


def _train(model: torch.nn.Module) -> None:
    assert isinstance(model, KWTANet)
    x, y = training.training_digits()
    branch = training.Branch((HIDDEN,) * LAYERS, mask=training.k_winners_mask(WINNERS))
    trained = training.train([branch], x, y, seed=training.seed(), epochs=400)
    linears = [m for m in model.body if isinstance(m, torch.nn.Linear)] + [model.head]
    training.load(linears, [*trained.branches[0], trained.head])


DEFENSE = Defense(
    name="kwta",
    title="k-winners-take-all (discontinuous activations)",
    description=(
        f"{LAYERS} hidden layers of {HIDDEN} units, each followed by k-WTA keeping {WINNERS} "
        "units. "
        "The function is piecewise linear with jumps wherever the winning set changes, so "
        "local gradients mislead a single PGD run."
    ),
    references=(
        "Xiao, Zhong and Zheng, Enhancing Adversarial Defense by k-Winners-Take-All, ICLR 2020.",
        "Tramer, Carlini, Brendel and Madry, On Adaptive Attacks to Adversarial Example "
        "Defenses, NeurIPS 2020.",
    ),
    epsilon=0.1,
    weak=AttackSpec(
        name="PGD-50 (CE)",
        description="One run from one random start stalls at the discontinuities.",
        attack=lambda model: attacks.PGD("linf", steps=50),
    ),
    adaptive=AttackSpec(
        name="PGD-10 x 40 restarts",
        description=(
            "Forty short runs from random starts (400 gradient steps): some start on a piece "
            "from which the gradient leads to the adversarial region."
        ),
        attack=lambda model: attacks.PGD("linf", steps=10, restarts=40),
    ),
    build=KWTANet,
    version=3,
    train=_train,
    # Sparse features: inner points share most winners, so few of them are separable.
    options=lambda model: {"n_inner": 10},
)
