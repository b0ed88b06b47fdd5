"""TensorFlow: ``tf.GradientTape``, TF's generators and global seed, Keras models.

Imported only when a TensorFlow tensor or model is met (through
:func:`attacks.frameworks.of`), so importing it imports TensorFlow.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np
import tensorflow as tf

from attacks.frameworks.base import Framework, Generator, LossFn


class _TensorFlowGenerator(Generator):
    def __init__(self, seed: int) -> None:
        self._gen = tf.random.Generator.from_seed(seed)

    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype: Any) -> Any:
        return self._gen.uniform(shape, low, high, dtype=dtype)

    def normal(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self._gen.normal(shape, dtype=dtype)


class TensorFlow(Framework):
    name = "tensorflow"

    def dtype(self, name: str) -> Any:
        return getattr(tf, name)

    def from_numpy(self, array: np.ndarray, device: Any = None) -> Any:
        return tf.convert_to_tensor(array)

    def to_numpy(self, raw: Any) -> np.ndarray:
        return np.asarray(raw.numpy()) if hasattr(raw, "numpy") else np.asarray(raw)

    def value_and_grad(
        self, loss_fn: LossFn, x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
        """Zeros, not None, where the loss does not depend on ``x`` (``tf.round``).

        EagerPy passes TF's ``None`` gradient on and crashes on it.
        """
        x_ = x.raw
        with tf.GradientTape() as tape:
            tape.watch(x_)
            loss, aux = loss_fn(ep.astensor(x_))
        grad = tape.gradient(loss.raw, x_, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return loss, aux, ep.astensor(grad)

    def stop_gradient(self, raw: Any) -> Any:
        return tf.stop_gradient(raw)

    def generator(self, seed: int, like: Any) -> Generator:
        return _TensorFlowGenerator(seed)

    def seed_global(self, seed: int) -> Callable[[], None] | None:
        """TensorFlow's global (eager) seed, from which unseeded random ops draw their seeds.

        TensorFlow has no public getter: the eager context's seed and its
        op-seed generator are read, and put back, where ``tf.random.set_seed``
        keeps them.
        """
        try:
            from tensorflow.python.eager import context
        except ImportError:  # a TensorFlow without the eager context: seed only
            tf.random.set_seed(seed)
            return lambda: None
        eager = context.context()
        old_seed = getattr(eager, "_seed", None)
        old_rng = getattr(eager, "_rng", None)
        rng_state = old_rng.getstate() if isinstance(old_rng, random.Random) else None
        tf.random.set_seed(seed)

        def restore() -> None:
            eager._seed = old_seed
            eager._rng = old_rng
            if old_rng is not None and rng_state is not None:
                old_rng.setstate(rng_state)

        return restore

    def diagonal(self, raw: Any) -> Any:
        return tf.linalg.diag_part(raw)

    def batched_matmul(
        self, a: Any, b: Any, transpose_a: bool = False, transpose_b: bool = False
    ) -> Any:
        return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)

    def solve(self, a: Any, b: Any) -> Any:
        return tf.linalg.solve(a, b)

    def native_model(self, forward: Callable[[Any], Any], holds: Any, name: str) -> Any:
        """A ``keras.Model`` around ``forward``; a plain callable if Keras runs another backend.

        The Keras model supports ``model(x)``, ``model(x, training=False)``,
        ``tf.GradientTape`` and ``tf.function`` at a fixed batch size, and
        tracks ``holds`` when it is a Keras layer (``.variables``, ``.summary()``).
        """
        import keras

        if keras.backend.backend() != "tensorflow":
            return _TensorFlowCallable(forward)
        return _keras_class()(forward, holds, name)


@functools.cache
def _keras_class() -> Any:
    """The Keras model class, defined on first use (importing Keras costs seconds)."""
    import keras

    class FunctionKerasModel(keras.Model):  # type: ignore[misc]
        """A function of TF tensors as a Keras model.

        ``training`` is accepted and ignored: the function is a model at
        inference (a defense is tested as it is deployed).
        """

        def __init__(self, forward: Callable[[Any], Any], holds: Any, name: str) -> None:
            super().__init__(name=name)
            self._function = forward
            if isinstance(holds, keras.layers.Layer):
                self.defended = holds
            self.built = True  # nothing to build: no symbolic trial call

        def call(self, x: Any, training: bool | None = None) -> Any:
            return self._function(tf.convert_to_tensor(x))

    return FunctionKerasModel


class _TensorFlowCallable:
    """A model-like callable for TensorFlow code when Keras runs another backend."""

    def __init__(self, forward: Callable[[Any], Any]) -> None:
        self._function = forward

    def __call__(self, x: Any, training: bool | None = None) -> Any:
        return self._function(tf.convert_to_tensor(x))


FRAMEWORK = TensorFlow()
