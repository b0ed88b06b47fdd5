"""A detector that rejects inputs: broken by attacking classifier and detector jointly.

The detector measures how far an input lies from the digits' principal
subspace (the residual after projecting onto the top 50 principal
components, as the PCA detector of Hendrycks and Gimpel and MagNet's
reconstruction error do) and rejects inputs beyond a threshold calibrated so
that random points of the epsilon ball are accepted.

A classifier-only attack that runs to the end of its budget (fixed-step PGD
returning its last iterate, as most evaluation code does) pushes every pixel
to the corner of the ball, far off the subspace: its points are rejected, and a
rejected adversarial counts as a miss (engine option ``valid_input``). The
same PGD with the detector's excess score in its loss (Carlini and Wagner,
2017) finds accepted adversarials and passes.

Note: ``attacks.PGD`` and ``attacks.APGD`` return the *first* adversarial
iterate, which lies barely past the decision boundary and is usually
accepted, so they pass here even though they ignore the detector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pytest_attacktest.zoo import training
from pytest_attacktest.zoo.attack_tools import LastIteratePGD
from pytest_attacktest.zoo.base import MLP, AttackSpec, Defense

EPSILON = 0.2
COMPONENTS = 50
#: Share of random points of the ball (around training digits) the detector accepts.
ACCEPTED = 0.99
#: The joint attack keeps the score below this share of the threshold.
SAFETY = 0.9


class DetectedMLP(torch.nn.Module):
    """A 64-64-10 MLP plus a subspace-residual detector (:meth:`accepts`)."""

    mean: torch.Tensor
    basis: torch.Tensor
    threshold: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.classifier = MLP()
        self.register_buffer("mean", torch.zeros(64))
        self.register_buffer("basis", torch.zeros(COMPONENTS, 64))
        self.register_buffer("threshold", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)  # type: ignore[no-any-return]

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` distance of each input from the principal subspace of the digits."""
        centred = x - self.mean
        residual = centred - (centred @ self.basis.T) @ self.basis
        norms: torch.Tensor = torch.linalg.vector_norm(residual, dim=1)
        return norms

    def accepts(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean ``(N,)``: True for inputs the detector lets through."""
        return self.score(x) <= self.threshold

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` how far the score exceeds a safe share of the threshold (0 when below)."""
        return torch.relu(self.score(x) - SAFETY * self.threshold)


def _train(model: torch.nn.Module) -> None:
    assert isinstance(model, DetectedMLP)
    training.fit_mlp(model.classifier, epochs=300)
    x, _ = training.training_digits()
    mean, basis = training.principal_subspace(x, COMPONENTS)
    model.mean.copy_(torch.from_numpy(mean))
    model.basis.copy_(torch.from_numpy(basis))
    # Calibrate on points like the test's boundary points: uniform in the ball,
    # scaled onto its surface, clipped to the bounds (in float64, like training).
    noise = np.random.default_rng(1).uniform(-1.0, 1.0, x.shape)
    noise /= np.abs(noise).max(axis=1, keepdims=True)
    noisy = np.clip(x + EPSILON * noise, 0, 1)
    centred = noisy - mean.astype(np.float64)
    wide = basis.astype(np.float64)
    scores = np.linalg.norm(centred - (centred @ wide.T) @ wide, axis=1)
    model.threshold.fill_(float(np.quantile(scores, ACCEPTED)))


def _valid_input(model: torch.nn.Module) -> dict[str, Any]:
    assert isinstance(model, DetectedMLP)
    return {"valid_input": model.accepts}


def _joint(model: torch.nn.Module) -> LastIteratePGD:
    assert isinstance(model, DetectedMLP)
    return LastIteratePGD(40, penalty=model.penalty)


DEFENSE = Defense(
    name="detector",
    title="subspace-residual detector (rejects inputs)",
    description=(
        f"A 64-64-10 MLP with a detector rejecting inputs whose residual off the top "
        f"{COMPONENTS} principal components of the digits exceeds a threshold (calibrated to "
        f"accept {ACCEPTED:.0%} of random points at epsilon {EPSILON}). Test with "
        "valid_input=model.accepts: a rejected adversarial is a miss."
    ),
    references=(
        "Hendrycks and Gimpel, Early Methods for Detecting Adversarial Images, ICLR 2017 "
        "workshop; Meng and Chen, MagNet, CCS 2017.",
        "Carlini and Wagner, Adversarial Examples Are Not Easily Detected: Bypassing Ten "
        "Detection Methods, AISec 2017; Carlini and Wagner, MagNet and 'Efficient Defenses "
        "Against Adversarial Attacks' are Not Robust, arXiv:1711.08478, 2017.",
    ),
    epsilon=EPSILON,
    weak=AttackSpec(
        name="PGD-40 last iterate (classifier only)",
        description=(
            "Fixed-step PGD returning its final iterate ignores the detector and ends at a "
            "corner of the ball, which the detector rejects."
        ),
        attack=lambda model: LastIteratePGD(40),
    ),
    adaptive=AttackSpec(
        name="PGD-40 last iterate (classifier + detector)",
        description=(
            "The same PGD minus 1000 x the detector's excess score in its loss: the iterates "
            "stay where the detector accepts them."
        ),
        attack=_joint,
    ),
    build=DetectedMLP,
    train=_train,
    version=2,
    options=_valid_input,
)
