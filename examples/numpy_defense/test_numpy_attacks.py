"""Attack tests of the NumPy example defense: is its robustness evaluation strong enough?

Run with ``pytest --attack-test examples/numpy_defense``. Without the flag both
tests are skipped. A NumPy model has no gradients, so only gradient-free
attacks apply (a gradient attack is refused with an error naming them), and
the feature layer is passed explicitly as ``features=model.features``.
"""

from __future__ import annotations

import numpy as np
import pytest

import attacks
from pytest_attacktest import AttackTestFailed

EPSILON = 0.2  # Linf, inputs in [0, 1]


def random_noise(model, x, y, epsilon):
    """An "evaluation" that only tries one random point of the ball per sample."""
    noise = np.random.default_rng(0).uniform(-epsilon, epsilon, x.shape).astype(x.dtype)
    return np.clip(x + noise, 0, 1)


@pytest.mark.attack_test(epsilon=EPSILON, norm="linf")
@pytest.mark.xfail(
    strict=True,
    raises=AttackTestFailed,  # only a weak attack; a setup error still fails
    reason="random noise is no attack: the binarization test shows this evaluation is too weak",
)
def test_random_noise_evaluation_is_too_weak(attack_test, model, data):
    attack_test(model, *data, attack=random_noise, features=model.features)


@pytest.mark.attack_test(epsilon=EPSILON, norm="linf")
def test_square_evaluation_is_strong(attack_test, model, data):
    # Score-based random search: needs only the model's outputs, never gradients.
    attack = attacks.Square("linf", queries=1000, image_shape=(1, 8, 8))
    attack_test(model, *data, attack=attack, features=model.features)
