"""The batched readout fit against an independent float64 pseudo-inverse, per framework.

The engine never builds the augmented feature matrix ``[F, scale * 1]``: it adds
``scale**2`` to the Gram matrix and reads the training logits off ``Gram @ alpha``.
Here the minimum-norm interpolator is computed the plain way, with NumPy's
pseudo-inverse of the augmented matrix, and both must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
from framework_support import FRAMEWORKS, to_native

from attacks import backend
from pytest_attacktest.readout import fit_readouts


def _oracle(features: np.ndarray, labels: np.ndarray, closeness: float) -> tuple[np.ndarray, ...]:
    """Weight, bias and training logits of the min-norm interpolator, shifted by closeness."""
    weights, biases, logits = [], [], []
    targets = np.where(labels == 1, 1.0, -1.0)
    for f in features.astype(np.float64):
        scale = np.sqrt((f**2).sum(axis=1).mean())
        aug = np.concatenate([f, np.full((f.shape[0], 1), scale)], axis=1)
        w_aug = np.linalg.pinv(aug) @ targets
        w, b = w_aug[:-1], w_aug[-1] * scale
        z = f @ w + b
        b -= closeness * z[labels == 1].max()
        weights.append(w)
        biases.append(b)
        logits.append(f @ w + b)
    return np.stack(weights), np.array(biases), np.stack(logits)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fit_equals_the_pseudo_inverse_interpolator(framework: str) -> None:
    rng = np.random.default_rng(0)
    s, n, d = 3, 24, 40
    features = rng.normal(size=(s, n, d)).astype(np.float32) + 2.0  # an offset: bias matters
    labels = np.array([0] * (n - 3) + [1] * 3)
    closeness = 0.8
    readouts = fit_readouts(
        backend.wrap(to_native(framework, features)), labels, closeness=closeness
    )
    weight, bias, logits = _oracle(features, labels, closeness)
    got_w = backend.to_numpy(readouts.weight).astype(np.float64)
    got_b = backend.to_numpy(readouts.bias).astype(np.float64)
    # float32 results (JAX without x64 fits in float32 throughout)
    rtol = 1e-3 if framework == "jax" else 1e-5
    np.testing.assert_allclose(got_w, weight, rtol=rtol, atol=rtol * np.abs(weight).max())
    np.testing.assert_allclose(got_b, bias, rtol=rtol, atol=rtol * np.abs(bias).max())
    assert readouts.fitted.all()
    # Training margin before the shift is 1 (interpolation); boundary logit after it is 1 - c.
    np.testing.assert_allclose(readouts.train_margin, 1.0, rtol=10 * rtol)
    np.testing.assert_allclose(
        readouts.boundary_logit, logits[:, labels == 1].max(axis=1), rtol=rtol
    )
    np.testing.assert_allclose(readouts.boundary_logit, 1 - closeness, rtol=10 * rtol)


def test_unseparable_points_are_not_fitted() -> None:
    """Two copies of one point with different labels cannot be interpolated."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 6, 10)).astype(np.float32)
    features[1, 5] = features[1, 0]  # sample 1: its boundary point equals an inner point
    labels = np.array([0, 0, 0, 0, 0, 1])
    readouts = fit_readouts(backend.wrap(features), labels, closeness=0.0)
    assert readouts.fitted.tolist() == [True, False]
    assert readouts.train_margin[1] <= 0
