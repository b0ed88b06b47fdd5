"""A small "defended" digits classifier in JAX: the model a defense paper would ship.

The same defense as ``examples/torch_defense``: the input is quantized to a
few grey levels before a 64-64-10 MLP, a preprocessing that was published (in
larger form) as a robustness mechanism. Quantization has zero gradient almost
everywhere, so a plain gradient attack sees no signal and reports high robust
accuracy: gradient masking, not robustness. The attack tests in
``test_jax_attacks.py`` show that the binarization test catches the weak
evaluation and passes the adaptive one.

A JAX model is a pure function, so nothing inside it can be found by name:
the binarization test needs ``features=``, the network up to the input of its
final linear layer (:meth:`QuantizedMLP.features`). The weights are trained on
scikit-learn's digits at first use (full-batch Adam written out below, a few
seconds on a CPU) and cached next to this file, so no download is needed.

The module is named ``jax_defense`` rather than ``defense``: pytest imports the
example folders' modules by their bare names, and one run over several
examples must not find another example's module in place of this one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

CACHE = Path(__file__).parent / ".cache" / "jax_defense.npz"
LEVELS = 4
HIDDEN = 64

Params = dict[str, Any]


def quantize(x: jax.Array) -> jax.Array:
    """Round each pixel to one of LEVELS grey levels (zero gradient almost everywhere)."""
    return jnp.round(x * (LEVELS - 1)) / (LEVELS - 1)


def straight_through(x: jax.Array) -> jax.Array:
    """BPDA (Athalye et al., 2018): quantize's value, the identity's gradient."""
    return x + jax.lax.stop_gradient(quantize(x) - x)


class QuantizedMLP:
    """Input quantization, then a 64-64-10 ReLU MLP. Inputs in [0, 1]; a pure function."""

    def __init__(self, params: Params, bpda: bool = False) -> None:
        self.params = params
        self.preprocess = straight_through if bpda else quantize

    def features(self, x: jax.Array) -> jax.Array:
        """The input of the final linear layer: what the binarization test's readout replaces."""
        return hidden(self.params, self.preprocess(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        return head(self.params, self.features(x))

    def with_bpda(self) -> QuantizedMLP:
        """The same defense (same weights, same outputs) with BPDA gradients."""
        return QuantizedMLP(self.params, bpda=True)


def hidden(params: Params, x: jax.Array) -> jax.Array:
    return jax.nn.relu(x @ params["w1"] + params["b1"])


def head(params: Params, h: jax.Array) -> jax.Array:
    return h @ params["w2"] + params["b2"]


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def load_model() -> QuantizedMLP:
    """The trained defense, from the cache or trained now (seeded)."""
    if CACHE.exists():
        with np.load(CACHE) as cached:
            return QuantizedMLP({k: jnp.asarray(cached[k]) for k in cached.files})
    params = train()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    # Written under another name, then renamed: a parallel run never reads half a file.
    partial = CACHE.with_name(f"{CACHE.stem}.{os.getpid()}.npz")
    np.savez(partial, **{k: np.asarray(v) for k, v in params.items()})
    partial.replace(CACHE)
    return QuantizedMLP(params)


def train(steps: int = 300, lr: float = 1e-2, seed: int = 0) -> Params:
    """Full-batch Adam on all but the last 200 digits, as the torch example trains."""
    rng = np.random.default_rng(seed)
    params: Params = {}
    for name, (fan_in, fan_out) in {"1": (64, HIDDEN), "2": (HIDDEN, 10)}.items():
        bound = 1 / np.sqrt(fan_in)  # PyTorch's default initialisation of nn.Linear
        params[f"w{name}"] = jnp.asarray(rng.uniform(-bound, bound, (fan_in, fan_out)), jnp.float32)
        params[f"b{name}"] = jnp.asarray(rng.uniform(-bound, bound, fan_out), jnp.float32)
    x, y = digits()
    xt, yt = jnp.asarray(x[:-200]), jnp.asarray(y[:-200])

    def loss(p: Params) -> jax.Array:
        logits = QuantizedMLP(p)(xt)
        picked = jnp.take_along_axis(logits, yt[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)

    @jax.jit  # one compiled program for the whole step
    def step(p: Params, m: Params, v: Params, t: jax.Array) -> tuple[Params, Params, Params]:
        grads = jax.grad(loss)(p)
        m = jax.tree.map(lambda a, g: 0.9 * a + 0.1 * g, m, grads)
        v = jax.tree.map(lambda a, g: 0.999 * a + 0.001 * g * g, v, grads)

        def update(w: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
            a_hat, b_hat = a / (1 - 0.9**t), b / (1 - 0.999**t)
            return w - lr * a_hat / (jnp.sqrt(b_hat) + 1e-8)

        return jax.tree.map(update, p, m, v), m, v

    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    for t in range(1, steps + 1):
        params, m, v = step(params, m, v, jnp.asarray(t, jnp.float32))
    return params
