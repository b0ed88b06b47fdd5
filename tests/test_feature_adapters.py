"""Models whose inside cannot be seen (JAX and NumPy functions): clear errors, native models.

A function has no layers to find, so the engine must say what to pass
(``features=callable``; for JAX, the function up to the final linear layer;
for NumPy, also a gradient-free attack; the error of a gradient attack on a
NumPy model, in the engine and the plugin, is tested in test_engine_numpy.py).
The JAX binarized model handed to third-party attacks must be a pure function
that ``jax.jit`` and ``jax.grad`` accept.
"""

from __future__ import annotations

import math
from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from digits_models import HIDDEN, held_out, jax_mlp, mlp_weights, numpy_mlp
from helpers import identity

import attacks
from pytest_attacktest import binarization_test
from pytest_attacktest.engine.features import FeatureError
from pytest_attacktest.engine.readout import Readouts
from pytest_attacktest.engine.routing import BinarizedModel

EPS = 0.1


def test_numpy_model_errors_name_the_callable_and_gradient_free_attacks() -> None:
    x, y = held_out(4)
    with pytest.raises(FeatureError, match=r"numpy model.*features=callable.*attacks\.Square"):
        binarization_test(numpy_mlp(), x, y, attack=identity, epsilon=EPS)
    with pytest.raises(FeatureError, match=r"names a layer, which works for PyTorch.*Keras"):
        binarization_test(numpy_mlp(), x, y, attack=identity, epsilon=EPS, features="hidden")


jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


@pytest.mark.jax
def test_jax_function_needs_a_features_callable_with_advice() -> None:
    x, y = held_out(4)
    with pytest.raises(FeatureError, match=r"jax model.*features=callable.*model\(x\) = head"):
        binarization_test(jax_mlp(), jnp.asarray(x), y, attack=identity, epsilon=EPS)


@pytest.mark.jax
def test_the_native_jax_binarized_model_is_pure_jittable_and_differentiable() -> None:
    """``as_native()`` under ``jax.jit`` and ``jax.grad``, on a reversed batch, against hand values.

    Built from known readouts (not fitted) so that every number is computed
    here by hand: logits ``[-z, z]`` with ``z = w_i . relu(x W1 + b1) + b_i``
    for the sample ``i`` whose ball holds the point.
    """
    w1, b1, _, _ = mlp_weights()
    x_np, _ = held_out(4)
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, HIDDEN)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    readouts = Readouts(
        weight=ep.astensor(jnp.asarray(weight)),
        bias=ep.astensor(jnp.asarray(bias)),
        fitted=np.ones(4, dtype=bool),
        train_margin=np.ones(4),
        boundary_logit=np.ones(4),
        noise=np.zeros(4),
        closeness=np.full(4, 0.999),
        robust=np.ones(4, dtype=bool),
    )
    binarized = BinarizedModel(
        attacks.Model(jax_mlp(), framework="jax"),
        lambda t: jnp.maximum(t @ jnp.asarray(w1) + jnp.asarray(b1), 0),
        ep.astensor(jnp.asarray(x_np)),
        ep.astensor(jnp.full((4,), EPS, dtype=jnp.float32)),
        math.inf,
        readouts,
    )
    native = binarized.as_native()
    order = np.array([3, 2, 1, 0])  # an attack that reorders: routing must follow the balls
    points_np = np.clip(x_np[order] + 0.05 * rng.choice([-1, 1], size=(4, 64)), 0, 1)
    points_np = points_np.astype(np.float32)
    pre = points_np @ w1 + b1
    z = (np.maximum(pre, 0) * weight[order]).sum(axis=1) + bias[order]
    points = jnp.asarray(points_np)
    np.testing.assert_allclose(np.asarray(jax.jit(native)(points)), np.stack([-z, z], 1), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(native(points)), np.stack([-z, z], 1), rtol=1e-4)
    grad = jax.jit(jax.grad(lambda t: native(t)[:, 1].sum()))(points)
    expected = ((pre > 0) * weight[order]) @ w1.T
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-5)


def test_a_subclassed_keras_model_is_recognised_as_tensorflow() -> None:
    """Its class lives in the test module, not in keras: the framework comes from Keras."""
    keras = pytest.importorskip("keras")
    from attacks import backend

    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x: Any) -> Any:
            return self.dense(x)

    assert type(Net()).__module__ == __name__
    assert backend.model_framework(Net()) == keras.backend.backend() == "tensorflow"
