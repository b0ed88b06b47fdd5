"""Issue 13, engine side, JAX: a features callable must be the defended model's.

A JAX model is a function, so its features are always a user callable; one
that forgets the defense's preprocessing tested another model, and plain PGD
passed against a gradient-masked defense.
"""

from __future__ import annotations

from typing import Any

import pytest
from digits_models import held_out, mlp_weights

import attacks
from pytest_attacktest import binarization_test
from pytest_attacktest.engine.features import FeatureError

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

pytestmark = pytest.mark.jax


def _quantized() -> tuple[Any, Any, Any]:
    """(model, honest features, features that forget the quantization)."""
    w1, b1, w2, b2 = (jnp.asarray(w) for w in mlp_weights())

    def quantize(x: Any) -> Any:
        return jnp.round(x * 3) / 3

    def hidden(x: Any) -> Any:
        return jnp.maximum(x @ w1 + b1, 0)

    def model(x: Any) -> Any:
        return hidden(quantize(x)) @ w2 + b2

    return model, lambda x: hidden(quantize(x)), hidden


def test_jax_features_forgetting_the_preprocessing_is_not_a_false_pass() -> None:
    model, honest, forgetful = _quantized()
    x, y = held_out(32)
    pgd = attacks.PGD("linf", steps=20)
    with pytest.raises(FeatureError, match="not an affine function"):
        binarization_test(model, jnp.asarray(x), y, attack=pgd, epsilon=0.2, features=forgetful)
    report = binarization_test(model, jnp.asarray(x), y, attack=pgd, epsilon=0.2, features=honest)
    assert report.settings["features_residual"] < 1e-4
    assert report.verdict != "passed", report.summary()
