"""The binarization test on Keras 3 models: the Keras feature adapter and the native model.

The same trained digits MLP as in the torch tests (tests/digits_models.py),
loaded into Keras; the discrimination scenarios (a strong attack passes, a
non-attack fails, BPDA breaks input quantization) run per framework in
test_engine_discrimination.py. Here: the Keras feature adapter must find the
input of the final Dense layer of Sequential and functional models (checked
against the hand-computed hidden layer, values and gradients), use a named
layer, refuse to guess inside a subclassed model, and the binarized model must
be a Keras model that a hand-written TensorFlow attack can run on. CPU only;
16 to 32 samples, 20 to 30 attack steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from digits_models import HIDDEN, held_out, keras_mlp, mlp_weights

import attacks
from pytest_attacktest import binarization_test
from pytest_attacktest.engine.features import FeatureError, feature_extractor

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

pytestmark = pytest.mark.tensorflow

EPS = 0.1


def _data(n: int = 32) -> tuple[Any, np.ndarray]:
    x, y = held_out(n)
    return tf.constant(x), y


def _hidden(x: np.ndarray) -> np.ndarray:
    """The MLP's penultimate layer by hand: the features the readout must see."""
    w1, b1, _, _ = mlp_weights()
    return np.maximum(x @ w1 + b1, 0)


# ---------------------------------------------------------------------- models


def functional_mlp() -> Any:
    """The digits MLP as a functional model with named layers."""
    w1, b1, w2, b2 = mlp_weights()
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(HIDDEN, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(hidden))
    model.get_layer("hidden").set_weights([w1, b1])
    model.get_layer("head").set_weights([w2, b2])
    return model


def nested_mlp() -> Any:
    """The final Dense inside a nested Sequential 'block' of a functional model."""
    w1, b1, w2, b2 = mlp_weights()
    block = keras.Sequential(
        [keras.Input((HIDDEN,)), keras.layers.Dense(10, name="logits")], name="block"
    )
    block.layers[0].set_weights([w2, b2])
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(HIDDEN, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, block(hidden))
    model.get_layer("hidden").set_weights([w1, b1])
    return model


def unbuilt_sequential() -> Any:
    """A Sequential without keras.Input, never called: no graph to cut, layers in order."""
    w1, b1, w2, b2 = mlp_weights()
    body, head = keras.layers.Dense(HIDDEN, activation="relu"), keras.layers.Dense(10)
    body.build((None, 64))
    head.build((None, HIDDEN))
    body.set_weights([w1, b1])
    head.set_weights([w2, b2])
    return keras.Sequential([body, head])


class SubclassedMLP(keras.Model):  # type: ignore[misc]
    """The digits MLP as a subclassed model: its call order is Python code."""

    def __init__(self) -> None:
        super().__init__()
        self.body = keras.layers.Dense(HIDDEN, activation="relu", name="body")
        self.head = keras.layers.Dense(10, name="top")

    def call(self, x: Any, training: bool = False) -> Any:
        return self.head(self.body(x))


def subclassed_mlp() -> SubclassedMLP:
    w1, b1, w2, b2 = mlp_weights()
    model = SubclassedMLP()
    model(tf.zeros((1, 64)))
    model.body.set_weights([w1, b1])
    model.head.set_weights([w2, b2])
    return model


MAKERS = {
    "sequential": keras_mlp,
    "functional": functional_mlp,
    "nested": nested_mlp,
    "unbuilt-sequential": unbuilt_sequential,
}


# ---------------------------------------------------------------------- features


@pytest.mark.parametrize("kind", list(MAKERS))
def test_default_features_are_the_input_of_the_final_dense(kind: str) -> None:
    """Values and input gradients equal the hand-computed hidden layer's."""
    model = MAKERS[kind]()
    x_np, _ = held_out(16)
    x = tf.constant(x_np)
    extract = feature_extractor(model, None)
    with tf.GradientTape() as tape:
        tape.watch(x)
        features = extract(x)
        # A fixed weighting: its gradient is w1 @ (mask * weights) by hand.
        weights = tf.constant(np.linspace(-1, 1, HIDDEN, dtype=np.float32))
        total = tf.reduce_sum(features * weights)
    np.testing.assert_allclose(features.numpy(), _hidden(x_np), atol=1e-5)
    w1, b1, _, _ = mlp_weights()
    active = (x_np @ w1 + b1 > 0).astype(np.float32)
    expected = (active * weights.numpy()) @ w1.T
    np.testing.assert_allclose(tape.gradient(total, x).numpy(), expected, atol=1e-5)


def test_named_layer_features_and_a_clear_error_for_a_missing_name() -> None:
    x, y = _data(16)
    extract = feature_extractor(functional_mlp(), "hidden")
    np.testing.assert_allclose(extract(x).numpy(), _hidden(x.numpy()), atol=1e-5)
    nested = nested_mlp()
    logits = feature_extractor(nested, "block.logits")  # a nested layer, dotted
    np.testing.assert_allclose(logits(x).numpy(), nested(x).numpy(), atol=1e-6)
    report = binarization_test(
        functional_mlp(), x, y, attack=attacks.PGD(steps=20), epsilon=EPS, features="hidden"
    )
    assert report.passed, report.summary()
    with pytest.raises(FeatureError, match=r"no layer 'nope'.*'hidden', 'head'"):
        feature_extractor(functional_mlp(), "nope")


def test_subclassed_model_needs_a_named_layer_or_a_callable() -> None:
    model = subclassed_mlp()
    with pytest.raises(FeatureError, match=r"subclassed.*features='attribute.path'.*callable"):
        feature_extractor(model, None)
    x, y = _data(16)
    extract = feature_extractor(model, "body")
    np.testing.assert_allclose(extract(x).numpy(), _hidden(x.numpy()), atol=1e-5)
    assert "call" not in model.body.__dict__  # the layer is left as it was
    np.testing.assert_allclose(model(x).numpy(), keras_mlp()(x).numpy(), atol=1e-5)
    report = binarization_test(
        model, x, y, attack=attacks.PGD(steps=20), epsilon=EPS, features="body"
    )
    assert report.passed, report.summary()


def test_model_without_a_dense_layer_gets_a_clear_error() -> None:
    model = keras.Sequential([keras.Input((64,)), keras.layers.Lambda(lambda t: t[:, :10])])
    with pytest.raises(FeatureError, match=r"no keras\.layers\.Dense"):
        feature_extractor(model, None)


class Head(keras.layers.Layer):  # type: ignore[misc]
    """A custom layer holding the final Dense: Keras does not know when it is called."""

    def __init__(self) -> None:
        super().__init__(name="head_block")
        self.inner = keras.layers.Dense(10, name="inner")

    def call(self, t: Any) -> Any:
        return self.inner(t)


def test_final_dense_inside_a_custom_layer_must_be_named() -> None:
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(HIDDEN, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, Head()(hidden))
    with pytest.raises(FeatureError, match=r"inside Head 'head_block'.*features='outer.inner'"):
        feature_extractor(model, None)
    x = tf.random.uniform((5, 64), seed=0)
    out = feature_extractor(model, "head_block.inner")(x)
    np.testing.assert_allclose(out.numpy(), model(x).numpy(), atol=1e-6)


def test_conv_features_are_flattened() -> None:
    """A named convolution's (N, 4, 4, 2) output becomes (N, 32) features; a callable's too."""
    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(2, 3, strides=2, padding="same", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(conv)))
    x = tf.random.uniform((5, 8, 8, 1), seed=0)
    out = feature_extractor(model, "conv")(x)
    assert tuple(out.shape) == (5, 32)
    sub = keras.Model(model.inputs, model.get_layer("conv").output)
    np.testing.assert_allclose(out.numpy(), sub(x).numpy().reshape(5, -1), atol=1e-6)
    from_callable = feature_extractor(model, lambda t: sub(t, training=False))(x)
    np.testing.assert_allclose(from_callable.numpy(), out.numpy())


# ---------------------------------------------------------------------- native model


def test_a_tensorflow_attack_on_the_keras_native_binarized_model() -> None:
    """A hand-written tf.GradientTape PGD, on the batch reversed and half at a time."""
    seen: dict[str, Any] = {}

    def tf_pgd(native: Any, x: Any, y: Any, epsilon: float) -> Any:
        seen["keras"] = isinstance(native, keras.Model)
        seen["training"] = native(x, training=False).numpy()
        seen["graph"] = tf.function(native)(x).numpy()
        order = tf.range(len(x) - 1, -1, -1)
        parts = []
        for part in (order[: len(x) // 2], order[len(x) // 2 :]):
            clean, labels = tf.gather(x, part), tf.gather(y, part)
            xa = clean
            for _ in range(30):
                with tf.GradientTape() as tape:
                    tape.watch(xa)
                    loss = tf.reduce_sum(
                        keras.losses.sparse_categorical_crossentropy(
                            labels, native(xa), from_logits=True
                        )
                    )
                xa = xa + epsilon / 10 * tf.sign(tape.gradient(loss, xa))
                xa = tf.clip_by_value(
                    tf.clip_by_value(xa, clean - epsilon, clean + epsilon), 0.0, 1.0
                )
            parts.append(xa)
        return tf.gather(tf.concat(parts, axis=0), tf.argsort(order))

    x, y = _data()
    report = binarization_test(keras_mlp(), x, y, attack=tf_pgd, epsilon=EPS)
    assert report.passed, report.summary()
    assert seen["keras"]
    logits = seen["training"]
    assert logits.shape == (32, 2)
    np.testing.assert_allclose(logits[:, 0], -logits[:, 1])
    assert (logits[:, 1] < 0).all()  # clean points are class 0
    np.testing.assert_allclose(seen["graph"], logits, atol=1e-5)


def test_no_host_round_trip_per_attack_step() -> None:
    """PGD on a Keras model: floating tensors read back to the host do not grow with steps.

    Every host read of a TensorFlow tensor goes through ``_EagerTensorBase._numpy``.
    TensorFlow's own gradient code reads small integer shape tensors there; a
    float read (a loss, logits, the iterate) in the step would grow with steps.
    """
    from tensorflow.python.framework import ops

    x, y = _data(16)
    original = ops._EagerTensorBase._numpy
    reads: list[int] = []

    def counting(self: Any) -> Any:
        if self.dtype.is_floating:
            reads[-1] += 1
        return original(self)

    for steps in (2, 12):
        reads.append(0)
        ops._EagerTensorBase._numpy = counting
        try:
            report = binarization_test(
                keras_mlp(), x, y, attack=attacks.PGD(steps=steps), epsilon=EPS
            )
        finally:
            ops._EagerTensorBase._numpy = original
        assert report.n_samples == 16
    assert reads[0] > 0  # the counter sees the engine's own reads (verification)
    assert reads[0] == reads[1], reads


def test_with_keras_on_another_backend_the_native_model_is_a_plain_tf_callable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keras on JAX cannot host a TensorFlow model: a callable with the same signature instead."""
    import eagerpy as ep

    from pytest_attacktest.engine.readout import Readouts
    from pytest_attacktest.engine.routing import BinarizedModel

    x_np, _ = held_out(4)
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, HIDDEN)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    readouts = Readouts(
        weight=ep.astensor(tf.constant(weight)),
        bias=ep.astensor(tf.constant(bias)),
        fitted=np.ones(4, dtype=bool),
        train_margin=np.ones(4),
        boundary_logit=np.ones(4),
        noise=np.zeros(4),
        closeness=np.full(4, 0.999),
        robust=np.ones(4, dtype=bool),
    )
    model = attacks.Model(keras_mlp())
    binarized = BinarizedModel(
        model,
        feature_extractor(model, None),
        ep.astensor(tf.constant(x_np)),
        ep.astensor(tf.fill((4,), EPS)),
        float("inf"),
        readouts,
    )
    as_keras = binarized.as_native()
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    plain = binarized.as_native()
    assert isinstance(as_keras, keras.Model)
    assert not isinstance(plain, keras.Model)
    z = (_hidden(x_np) * weight).sum(axis=1) + bias  # clean points route to their own sample
    for native in (as_keras, plain):
        out = native(tf.constant(x_np), training=False).numpy()
        np.testing.assert_allclose(out, np.stack([-z, z], axis=1), rtol=1e-5, atol=1e-5)
