"""Iterative purification: a differentiable preprocessor whose gradient vanishes.

The defense "purifies" each input before the MLP: it projects it onto the top
40 principal components of the digits (a linear denoiser), then applies six
steps of a smooth map that pulls every pixel towards the nearest of five grey
levels, ``u - sin(2 pi L u) / (2 pi L)``. Every operation is differentiable,
but the map converges so fast that the product of its derivatives over the
steps underflows: the derivative is exactly zero for most pixels (93% on
held-out digits) and up to 64 for the few near a level boundary, so the
input gradient is dominated by a handful of pixels and barely aligned with
the useful direction (cosine about 0.15 with the BPDA gradient). Iterated
purifiers (PixelDefend, Defense-GAN) failed in the same way. BPDA
differentiates the identity instead of the purifier (the purifier's output is
close to its input) and passes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import attacks
from pytest_attacktest.zoo import training
from pytest_attacktest.zoo.base import MLP, AttackSpec, Defense

COMPONENTS = 40
#: Grey levels are multiples of 1 / LEVEL_STEPS (five levels in [0, 1]).
LEVEL_STEPS = 4
ITERATIONS = 6


class PurifiedMLP(torch.nn.Module):
    """``classifier(purify(x))``; ``purify`` is a differentiable iterative denoiser."""

    mean: torch.Tensor
    basis: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.classifier = MLP()
        self.register_buffer("mean", torch.zeros(64))
        self.register_buffer("basis", torch.zeros(COMPONENTS, 64))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The linear denoiser: onto the principal subspace, clipped to [0, 1]."""
        centred = x - self.mean
        return (self.mean + (centred @ self.basis.T) @ self.basis).clamp(0, 1)

    @staticmethod
    def settle(u: torch.Tensor) -> torch.Tensor:
        """ITERATIONS smooth steps of every pixel towards the nearest grey level.

        Each step's derivative, ``1 - cos(2 pi L u)``, is 0 at a level and 2
        half-way between: converged pixels pass no gradient at all, the few
        near a boundary pass up to ``2 ** ITERATIONS`` times too much.
        """
        scale = 2 * math.pi * LEVEL_STEPS
        for _ in range(ITERATIONS):
            u = u - torch.sin(scale * u) / scale
        return u

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """Project, then settle towards the grey levels."""
        return self.settle(self.project(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purify(x))  # type: ignore[no-any-return]


def _train(model: torch.nn.Module) -> None:
    assert isinstance(model, PurifiedMLP)
    x, _ = training.training_digits()
    mean, basis = training.principal_subspace(x, COMPONENTS)
    model.mean.copy_(torch.from_numpy(mean))
    model.basis.copy_(torch.from_numpy(basis))

    def purify(u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """:meth:`PurifiedMLP.purify` in float64 (the classifier trains on purified digits)."""
        wide = basis.astype(np.float64)
        centred = u - mean.astype(np.float64)
        v = np.clip(mean + (centred @ wide.T) @ wide, 0, 1)
        scale = 2 * math.pi * LEVEL_STEPS
        for _ in range(ITERATIONS):
            v = v - np.sin(scale * v) / scale
        return np.asarray(v)

    training.fit_mlp(model.classifier, epochs=300, transform=purify)


def _with_bpda(model: torch.nn.Module) -> attacks.BPDA:
    assert isinstance(model, PurifiedMLP)
    return attacks.BPDA(model.classifier, model.purify)


DEFENSE = Defense(
    name="purifier",
    title="iterative purification (vanishing gradients)",
    description=(
        f"Inputs projected onto {COMPONENTS} principal components, then {ITERATIONS} smooth "
        f"steps towards {LEVEL_STEPS + 1} grey levels, before a 64-64-10 MLP. Differentiable, "
        "but the gradient through the iterations underflows to zero for most pixels."
    ),
    references=(
        "Song, Kim, Nowozin, Ermon and Kushman, PixelDefend, ICLR 2018; Samangouei, Kabkab "
        "and Chellappa, Defense-GAN, ICLR 2018.",
        "Athalye, Carlini and Wagner, Obfuscated Gradients Give a False Sense of Security, "
        "ICML 2018 (BPDA for purifiers).",
    ),
    epsilon=0.2,
    weak=AttackSpec(
        name="PGD-50 (CE)",
        description=(
            "The exact gradient through the purifier is zero for most pixels and explodes "
            "for a few: PGD follows those few pixels, not a useful direction."
        ),
        attack=lambda model: attacks.PGD("linf", steps=50),
    ),
    adaptive=AttackSpec(
        name="PGD-50 on BPDA",
        description=(
            "attacks.BPDA(model.classifier, model.purify): purified forward pass, identity "
            "gradient backward."
        ),
        attack=lambda model: attacks.PGD("linf", steps=50),
        model=_with_bpda,
    ),
    build=PurifiedMLP,
    train=_train,
    version=2,
)
