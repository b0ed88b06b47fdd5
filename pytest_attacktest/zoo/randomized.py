"""Randomized input transformation: a different model in every pass, broken by EOT.

The defense shifts each image by a random 0 or 1 pixel up and left (zero
padding) before the MLP, a small version of the random resizing and padding
of Xie et al. (2018). Each pass is one of four shifts, drawn per sample.

Plain PGD follows the gradient of one random pass per step and keeps the first
point that fooled one pass; the binarization test counts a point only if it is
adversarial in each of ``verify_passes`` fresh passes, so PGD's lucky points
fail. PGD on ``attacks.EOT`` (mean gradient of 16 passes, success only if all
16 are fooled) passes. The engine settings follow from the randomness: the
readout is fitted on ``feature_passes`` passes per training point (24 cover
all four shifts with high probability), which leaves room for only a few
inner points in the 256 features. Each pass is judged on its own
(``average_passes=1``): with four outcomes a readout can classify every one,
unlike the Gaussian noise of :mod:`pytest_attacktest.zoo.noise`, which needs
averaged passes.
"""

from __future__ import annotations

import numpy as np
import torch

import attacks
from pytest_attacktest.zoo.attack_tools import OnModel
from pytest_attacktest.zoo.base import MLP, AttackSpec, Defense
from pytest_attacktest.zoo.training import fit_mlp

#: Largest shift in pixels (each axis draws 0..MAX_SHIFT).
MAX_SHIFT = 1
SIDE = 8


def random_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift each 8x8 image up and left by its own random 0..MAX_SHIFT pixels, zero padded."""
    n = x.shape[0]
    images = torch.nn.functional.pad(x.reshape(n, SIDE, SIDE), (0, MAX_SHIFT, 0, MAX_SHIFT))
    dy = torch.randint(0, MAX_SHIFT + 1, (n,), device=x.device)
    dx = torch.randint(0, MAX_SHIFT + 1, (n,), device=x.device)
    steps = torch.arange(SIDE, device=x.device)
    rows = (dy[:, None] + steps[None]).reshape(n, SIDE, 1)
    cols = (dx[:, None] + steps[None]).reshape(n, 1, SIDE)
    batch = torch.arange(n, device=x.device).reshape(n, 1, 1)
    return images[batch, rows, cols].reshape(n, SIDE * SIDE)


def _random_shift_numpy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:func:`random_shift` in NumPy, drawing from the training generator."""
    n = x.shape[0]
    images = np.pad(x.reshape(n, SIDE, SIDE), ((0, 0), (0, MAX_SHIFT), (0, MAX_SHIFT)))
    dy = rng.integers(0, MAX_SHIFT + 1, size=(n,))
    dx = rng.integers(0, MAX_SHIFT + 1, size=(n,))
    steps = np.arange(SIDE)
    rows = (dy[:, None] + steps[None]).reshape(n, SIDE, 1)
    cols = (dx[:, None] + steps[None]).reshape(n, 1, SIDE)
    shifted: np.ndarray = images[np.arange(n).reshape(n, 1, 1), rows, cols]
    return shifted.reshape(n, SIDE * SIDE)


def _train(model: torch.nn.Module) -> None:
    assert isinstance(model, RandomShiftMLP)
    fit_mlp(model.classifier, epochs=250, transform=_random_shift_numpy)


class RandomShiftMLP(torch.nn.Module):
    """``classifier(random_shift(x))`` with a 256-unit hidden layer, fresh randomness per call."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = MLP(hidden=256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(random_shift(x))  # type: ignore[no-any-return]


def _eot_pgd(model: torch.nn.Module) -> OnModel:
    return OnModel(
        attacks.PGD("linf", steps=30),
        lambda inner: attacks.EOT(inner, n=16, batch_passes=True),
        label="EOT-16",
    )


DEFENSE = Defense(
    name="randomized",
    title="random shift of the input (randomness)",
    description=(
        "Each image is shifted by a random 0 or 1 pixel up and left before a 64-256-10 MLP "
        "(trained on the same random shifts). Gradients and verdicts change from pass to "
        "pass; one pass that is fooled says little."
    ),
    references=(
        "Xie, Wang, Zhang, Ren and Yuille, Mitigating Adversarial Effects Through "
        "Randomization, ICLR 2018.",
        "Athalye, Carlini and Wagner, Obfuscated Gradients Give a False Sense of Security, "
        "ICML 2018 (EOT).",
    ),
    epsilon=0.2,
    weak=AttackSpec(
        name="PGD-50 (CE), first success",
        description=(
            "One random pass per step; it keeps the first point that fooled a single pass "
            "(early stopping, keep='first'), which fresh verification passes reject."
        ),
        attack=lambda model: attacks.PGD("linf", steps=50, keep="first"),
    ),
    adaptive=AttackSpec(
        name="PGD-30 on EOT-16",
        description=(
            "attacks.EOT around the model the attack is given: the mean gradient of 16 passes, "
            "and a point counts only when all 16 passes are fooled."
        ),
        attack=_eot_pgd,
    ),
    build=RandomShiftMLP,
    train=_train,
    version=3,
    options=lambda model: {
        "feature_passes": 24,
        "average_passes": 1,
        "verify_passes": 8,
        "n_inner": 8,
    },
)
