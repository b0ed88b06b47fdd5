"""k-winners-take-all activations: a discontinuous network, broken by restarts.

k-WTA keeps the k largest activations of a layer and zeroes the rest. A tiny
input change swaps which units win, so the network jumps between linear
pieces: the local gradient says little about the function a step away, and a
single PGD run stalls at the jump near its start. Tramer, Carlini, Brendel and
Madry (2020) broke k-WTA by attacks that do not trust one local gradient;
here PGD with 20 random restarts (shorter runs from many starting points)
passes where one 50-step run fails.
"""

from __future__ import annotations

import torch

import attacks
from pytest_attacktest.zoo.base import AttackSpec, Defense, fit

HIDDEN = 128
WINNERS = 12


class KWinners(torch.nn.Module):
    """Keep the ``k`` largest entries per sample (ties at the k-th value kept), zero the rest."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kth = x.topk(self.k, dim=1).values[:, -1:]
        return x * (x >= kth).to(x.dtype)


class KWTANet(torch.nn.Module):
    """64-128-128-10 with k-WTA (12 of 128 units) after each hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(64, HIDDEN),
            KWinners(WINNERS),
            torch.nn.Linear(HIDDEN, HIDDEN),
            KWinners(WINNERS),
        )
        self.head = torch.nn.Linear(HIDDEN, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # type: ignore[no-any-return]


DEFENSE = Defense(
    name="kwta",
    title="k-winners-take-all (discontinuous activations)",
    description=(
        f"Two hidden layers of {HIDDEN} units, each followed by k-WTA keeping {WINNERS} units. "
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
        name="PGD-20 x 20 restarts",
        description=(
            "Twenty short runs from random starts: some start on a piece from which the "
            "gradient leads to the adversarial region."
        ),
        attack=lambda model: attacks.PGD("linf", steps=20, restarts=20),
    ),
    build=KWTANet,
    train=lambda model: fit(model, epochs=150),
    # Sparse features: inner points share most winners, so few of them are separable.
    options=lambda model: {"n_inner": 10},
)
