"""A small "defended" digits classifier in pure NumPy: the model a defense paper would ship.

The same defense as ``examples/torch_defense``: the input is quantized to a
few grey levels before a 64-64-10 ReLU MLP, a preprocessing that was published
(in larger form) as a robustness mechanism. A NumPy model has no gradients at
all, so its robustness can only be evaluated by gradient-free attacks (Square,
HopSkipJump); the attack tests in ``test_numpy_attacks.py`` show that the
binarization test fails an evaluation that only adds random noise and passes
the Square attack.

NumPy offers no layer to find, so the test is given the features explicitly:
:meth:`QuantizedMLP.features` is the input of the final linear layer.

The weights are trained here in NumPy (full-batch Adam, hand-written
backpropagation, seeded) at first use, a second or two on a CPU, and cached
next to this file, so no download and no ML framework is ever needed.

The module is named ``numpy_defense`` rather than ``defense``: pytest imports
the example folders' modules by their bare names, and one run over several
examples (``pytest examples/torch_defense examples/numpy_defense``) must not
find the torch example's ``defense`` in place of this one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

CACHE = Path(__file__).parent / ".cache" / "numpy_defense.npz"
LEVELS = 4
HIDDEN = 64


def quantize(x: np.ndarray) -> np.ndarray:
    """Round each pixel to one of LEVELS grey levels."""
    return np.round(x * (LEVELS - 1)) / (LEVELS - 1)


class QuantizedMLP:
    """Input quantization, then a 64-64-10 ReLU MLP. Inputs ``(N, 64)`` in [0, 1]."""

    def __init__(self, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> None:
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2

    def features(self, x: np.ndarray) -> np.ndarray:
        """The penultimate representation: what the binarization test's readout replaces."""
        return np.maximum(quantize(x) @ self.w1 + self.b1, 0).astype(x.dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (self.features(x) @ self.w2 + self.b2).astype(x.dtype)


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def load_model() -> QuantizedMLP:
    """The trained defense, from the cache or trained now (seeded)."""
    if CACHE.exists():
        with np.load(CACHE) as saved:
            return QuantizedMLP(*(saved[k] for k in ("w1", "b1", "w2", "b2")))
    x, y = digits()
    weights = train(quantize(x[:-200]), y[:-200])
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, **dict(zip(("w1", "b1", "w2", "b2"), weights, strict=True)))
    return QuantizedMLP(*weights)


def train(
    x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 1e-2, seed: int = 0
) -> list[np.ndarray]:
    """Full-batch Adam on the mean cross-entropy; float64 inside, float32 weights out."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in ((x.shape[1], HIDDEN), (HIDDEN, 10)):
        bound = 1 / fan_in**0.5  # PyTorch's nn.Linear init
        params += [
            rng.uniform(-bound, bound, (fan_in, fan_out)),
            rng.uniform(-bound, bound, fan_out),
        ]
    inputs, target = x.astype(np.float64), np.eye(10)[y]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    for t in range(1, steps + 1):
        w1, b1, w2, b2 = params
        pre = inputs @ w1 + b1
        hidden = np.maximum(pre, 0)
        logits = hidden @ w2 + b2
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        d_logits = (probs - target) / len(inputs)
        d_pre = (d_logits @ w2.T) * (pre > 0)
        grads = [inputs.T @ d_pre, d_pre.sum(axis=0), hidden.T @ d_logits, d_logits.sum(axis=0)]
        for p, g, (m, v) in zip(params, grads, moments, strict=True):
            m[...] = 0.9 * m + 0.1 * g
            v[...] = 0.999 * v + 0.001 * g * g
            p -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return [p.astype(np.float32) for p in params]
