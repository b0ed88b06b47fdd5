"""Tiny classifiers trained on scikit-learn's digits, in every framework, for tests.

Why: attack tests must run on real models with real data and no downloads.
``load_digits`` ships with scikit-learn (1797 8x8 images, 10 classes). One
small MLP is trained in PyTorch (a second or two on a CPU) and the *same
weights* are loaded into NumPy, Keras and JAX functions, so results can be
compared across frameworks. Everything is cached per process.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

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
    """Train a 64-32-10 ReLU MLP in PyTorch on all but the last 200 digits; return its weights.

    Returns ``(w1, b1, w2, b2)`` with ``logits = relu(x @ w1 + b1) @ w2 + b2``.
    """
    import torch

    x, y = digits()
    xt, yt = torch.from_numpy(x[:-200]), torch.from_numpy(y[:-200])
    gen = torch.Generator().manual_seed(seed)
    l1, l2 = torch.nn.Linear(64, HIDDEN), torch.nn.Linear(HIDDEN, 10)
    with torch.no_grad():
        for layer in (l1, l2):
            bound = 1 / layer.in_features**0.5
            layer.weight.uniform_(-bound, bound, generator=gen)
            layer.bias.uniform_(-bound, bound, generator=gen)
    net = torch.nn.Sequential(l1, torch.nn.ReLU(), l2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return tuple(
        p.detach().numpy().copy()
        for p in (l1.weight.T, l1.bias, l2.weight.T, l2.bias)  # (in, out) layout
    )


def torch_mlp(seed: int = 0) -> Any:
    """The trained MLP as a ``torch.nn.Sequential`` in eval mode (fresh module, no grads)."""
    import torch

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
    """The trained MLP as a pure JAX function."""
    import jax.numpy as jnp

    w1, b1, w2, b2 = (jnp.asarray(w) for w in mlp_weights(seed))

    def model(x: Any) -> Any:
        return jnp.maximum(x @ w1 + b1, 0) @ w2 + b2

    return model


def keras_mlp(seed: int = 0) -> Any:
    """The trained MLP as a Keras 3 model with the same weights."""
    import keras

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
