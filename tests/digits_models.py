"""Tiny classifiers trained on scikit-learn's digits, in every framework, for tests.

Why: attack tests must run on real models with real data and no downloads.
``load_digits`` ships with scikit-learn (1797 8x8 images, 10 classes). One
small MLP is trained in plain NumPy (well under a second on a CPU, no ML
framework needed) and the *same weights* are loaded into NumPy, PyTorch, Keras
and JAX models, so results can be compared across frameworks. Everything is
cached per process.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import numpy as np
import pytest

HIDDEN = 32


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Digits as float32 in [0, 1], shape (1797, 64), and int64 labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def held_out(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The last ``n`` digits, held out from training, correctly classified or not."""
    x, y = digits()
    return x[-n:], y[-n:]


@functools.cache
def mlp_weights(seed: int = 0, epochs: int = 200) -> tuple[np.ndarray, ...]:
    """Train a 64-32-10 ReLU MLP in NumPy on all but the last 200 digits; return its weights.

    Returns float32 ``(w1, b1, w2, b2)`` with ``logits = relu(x @ w1 + b1) @ w2 + b2``.
    Training is framework-free on purpose: every framework's tests (the
    ``numpy`` tox env included, where no ML framework is installed) get the
    same weights. Full-batch Adam on the mean cross-entropy in float64 from a
    seeded uniform init (PyTorch's ``nn.Linear`` law), deterministic, well
    under a second on a CPU.
    """
    x, y = digits()
    inputs, labels = x[:-200].astype(np.float64), y[:-200]
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in ((64, HIDDEN), (HIDDEN, 10)):
        bound = 1 / fan_in**0.5
        params += [
            rng.uniform(-bound, bound, (fan_in, fan_out)),
            rng.uniform(-bound, bound, fan_out),
        ]
    adam = _Adam(params, lr=1e-2)
    target = np.eye(10)[labels]
    for _ in range(epochs):
        adam.step(_cross_entropy_grads(params, inputs, target))
    return tuple(p.astype(np.float32) for p in params)


def _cross_entropy_grads(
    params: list[np.ndarray], x: np.ndarray, target: np.ndarray
) -> list[np.ndarray]:
    """Gradients of the mean cross-entropy of ``relu(x @ w1 + b1) @ w2 + b2`` (backprop by hand)."""
    w1, b1, w2, b2 = params
    pre = x @ w1 + b1
    hidden = np.maximum(pre, 0)
    logits = hidden @ w2 + b2
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    d_logits = (probs - target) / len(x)
    d_pre = (d_logits @ w2.T) * (pre > 0)
    return [x.T @ d_pre, d_pre.sum(axis=0), hidden.T @ d_logits, d_logits.sum(axis=0)]


@functools.cache
def deep_mlp_weights(sizes: tuple[int, ...] = (64, 128, 64, 10), seed: int = 0) -> list[np.ndarray]:
    """Train a deeper ReLU MLP in NumPy (float64, full-batch Adam, 300 steps); float32 weights.

    ``[w1, b1, w2, b2, ...]`` with ``h = relu(h @ w + b)`` between layers. Its
    64-d last hidden layer makes a feature cloud that is nearly degenerate in a
    small ball, where a float32 readout fit loses separability.
    """
    x, y = digits()
    inputs, target = x[:-200].astype(np.float64), np.eye(10)[y[:-200]]
    rng = np.random.default_rng(seed)
    params: list[np.ndarray] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = 1 / fan_in**0.5
        params += [
            rng.uniform(-bound, bound, (fan_in, fan_out)),
            rng.uniform(-bound, bound, fan_out),
        ]
    adam = _Adam(params, lr=1e-2)
    for _ in range(300):
        activations = [inputs]
        for i in range(0, len(params), 2):
            pre = activations[-1] @ params[i] + params[i + 1]
            activations.append(pre if i == len(params) - 2 else np.maximum(pre, 0))
        logits = activations[-1]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        delta = (probs - target) / len(inputs)
        grads: list[np.ndarray] = [np.empty(0)] * len(params)
        for i in range(len(params) - 2, -1, -2):
            grads[i], grads[i + 1] = activations[i // 2].T @ delta, delta.sum(axis=0)
            if i:
                delta = (delta @ params[i].T) * (activations[i // 2] > 0)
        adam.step(grads)
    return [p.astype(np.float32) for p in params]


class _Adam:
    """Adam (Kingma and Ba, 2015) with the usual defaults, updating ``params`` in place."""

    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray], b1: float = 0.9, b2: float = 0.999) -> None:
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= self.lr * (m / (1 - b1**self.t)) / (np.sqrt(v / (1 - b2**self.t)) + 1e-8)


def torch_mlp(seed: int = 0) -> Any:
    """The trained MLP as a ``torch.nn.Sequential`` in eval mode (fresh module, no grads).

    Skips the calling test when PyTorch is not installed (the ``numpy`` tox env).
    """
    torch = pytest.importorskip("torch")

    w1, b1, w2, b2 = mlp_weights(seed)
    l1, l2 = torch.nn.Linear(64, HIDDEN), torch.nn.Linear(HIDDEN, 10)
    with torch.no_grad():
        l1.weight.copy_(torch.from_numpy(w1.T))
        l1.bias.copy_(torch.from_numpy(b1))
        l2.weight.copy_(torch.from_numpy(w2.T))
        l2.bias.copy_(torch.from_numpy(b2))
    return torch.nn.Sequential(l1, torch.nn.ReLU(), l2).eval()


def numpy_mlp(seed: int = 0) -> Any:
    """The trained MLP as a NumPy function (no autodiff: gradient-free attacks only)."""
    w1, b1, w2, b2 = mlp_weights(seed)

    def model(x: np.ndarray) -> np.ndarray:
        return np.asarray(np.maximum(x @ w1 + b1, 0) @ w2 + b2, dtype=x.dtype)

    return model


def jax_mlp(seed: int = 0) -> Any:
    """The trained MLP as a pure JAX function (skips the calling test without JAX)."""
    jnp = pytest.importorskip("jax.numpy")

    w1, b1, w2, b2 = (jnp.asarray(w) for w in mlp_weights(seed))

    def model(x: Any) -> Any:
        return jnp.maximum(x @ w1 + b1, 0) @ w2 + b2

    return model


def keras_mlp(seed: int = 0) -> Any:
    """The trained MLP as a Keras 3 model with the same weights (skips without Keras)."""
    keras = pytest.importorskip("keras")

    w1, b1, w2, b2 = mlp_weights(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(HIDDEN, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.layers[0].set_weights([w1, b1])
    model.layers[1].set_weights([w2, b2])
    return model


def native_mlp(framework: str, seed: int = 0) -> Any:
    """The trained MLP in ``framework`` ('numpy', 'torch', 'tensorflow', 'jax')."""
    makers = {"numpy": numpy_mlp, "torch": torch_mlp, "tensorflow": keras_mlp, "jax": jax_mlp}
    return makers[framework](seed)


def accuracy(model: Any, x: Any, y: np.ndarray) -> float:
    """Accuracy of a native model on native (or NumPy) inputs, computed in NumPy."""
    from framework_support import to_numpy

    return float((to_numpy(model(x)).argmax(axis=1) == y).mean())
