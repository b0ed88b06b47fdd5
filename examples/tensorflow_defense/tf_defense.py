"""A small "defended" digits classifier in Keras 3: the model a defense paper would ship.

The same defense as ``examples/torch_defense``: the input is quantized to a
few grey levels before a 64-64-10 MLP, a preprocessing that was published (in
larger form) as a robustness mechanism. Quantization has zero gradient almost
everywhere, so a plain gradient attack sees no signal and reports high robust
accuracy: gradient masking, not robustness. The attack tests in
``test_tf_attacks.py`` show that the binarization test catches the weak
evaluation and passes the adaptive one.

The model is a ``keras.Sequential``, so the binarization test finds its
feature layer (the input of the final ``Dense``) by itself. The weights are
trained on scikit-learn's digits at first use (a few seconds on a CPU) and
cached next to this file, so no download is ever needed.

The module is named ``tf_defense`` rather than ``defense``: pytest imports the
example folders' modules by their bare names, and one run over several
examples (``pytest examples/torch_defense examples/tensorflow_defense``) must
not find the torch example's ``defense`` in place of this one.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

CACHE = Path(__file__).parent / ".cache" / "tf_defense.npz"
LEVELS = 4


def quantize(x: tf.Tensor) -> tf.Tensor:
    """Round each pixel to one of LEVELS grey levels (non-differentiable)."""
    return tf.round(x * (LEVELS - 1)) / (LEVELS - 1)


class Quantize(keras.layers.Layer):
    """The defense's preprocessing layer; with ``straight_through``, BPDA gradients."""

    def __init__(self, straight_through: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.straight_through = straight_through

    def call(self, x: tf.Tensor) -> tf.Tensor:
        if self.straight_through:
            # BPDA (Athalye et al., 2018): the same forward pass, but the
            # backward pass treats quantization as the identity.
            return x + tf.stop_gradient(quantize(x) - x)
        return quantize(x)


def build_model(straight_through: bool = False) -> keras.Sequential:
    """Input quantization, then a 64-64-10 ReLU MLP. Inputs in [0, 1]."""
    return keras.Sequential(
        [
            keras.Input((64,)),
            Quantize(straight_through, name="quantize"),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="head"),
        ],
        name="quantized_mlp",
    )


def with_bpda(model: keras.Model) -> keras.Sequential:
    """The same defense (same weights, same outputs) with BPDA gradients."""
    twin = build_model(straight_through=True)
    twin.set_weights(model.get_weights())
    return twin


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def load_model() -> keras.Sequential:
    """The trained defense, from the cache or trained now (seeded)."""
    model = build_model()
    if CACHE.exists():
        with np.load(CACHE) as cached:
            model.set_weights([cached[f"w{i}"] for i in range(len(cached.files))])
        return model
    keras.utils.set_random_seed(0)
    x, y = digits()
    xt, yt = tf.constant(x[:-200]), tf.constant(y[:-200])
    optimizer = keras.optimizers.Adam(1e-2)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function  # one graph for the step: eager Keras would take ten times longer
    def step() -> None:
        with tf.GradientTape() as tape:
            loss = cross_entropy(yt, model(xt, training=True))
        weights = model.trainable_variables
        optimizer.apply(tape.gradient(loss, weights), weights)

    for _ in range(300):  # full-batch Adam, as the torch example
        step()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    # Written under another name, then renamed: a parallel run never reads half a file.
    partial = CACHE.with_name(f"{CACHE.stem}.{os.getpid()}.npz")
    np.savez(partial, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    partial.replace(CACHE)
    return model
