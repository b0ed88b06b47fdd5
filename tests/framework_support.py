"""Move test data between NumPy and each framework, and skip frameworks that are absent.

Why: every numeric property of the library must hold on NumPy, PyTorch,
TensorFlow and JAX alike, so tests are written once against NumPy arrays and
run per framework through these converters. A tox env that installs one
framework runs that framework's tests and skips the others by import.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

FRAMEWORKS = ("numpy", "torch", "tensorflow", "jax")


def framework_params() -> list[Any]:
    """``pytest.param`` per framework, marked and skipped when it is not installed."""
    params = []
    for name in FRAMEWORKS:
        marks = [] if name == "numpy" else [getattr(pytest.mark, name)]
        if name != "numpy" and importlib.util.find_spec(name) is None:
            marks.append(pytest.mark.skip(reason=f"{name} is not installed"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def enable_jax_float64() -> None:
    """JAX silently downcasts float64 unless x64 is enabled; tests need real float64."""
    import jax

    jax.config.update("jax_enable_x64", True)


def to_native(framework: str, array: Any) -> Any:
    """Convert a NumPy array (dtype kept) to ``framework``'s tensor type."""
    array = np.asarray(array)
    if framework == "numpy":
        return array.copy()
    if framework == "torch":
        import torch

        return torch.from_numpy(array.copy())
    if framework == "tensorflow":
        import tensorflow as tf

        return tf.constant(array)
    if framework == "jax":
        enable_jax_float64()
        import jax.numpy as jnp

        return jnp.asarray(array)
    raise ValueError(framework)


def to_numpy(tensor: Any) -> np.ndarray:
    """Convert any framework's tensor back to NumPy (detached, on the host)."""
    if hasattr(tensor, "detach"):
        return np.asarray(tensor.detach().cpu().numpy())
    if hasattr(tensor, "numpy"):
        return np.asarray(tensor.numpy())
    return np.asarray(tensor)


def native_module(tensor: Any) -> str:
    """Top-level module of a tensor's type: 'torch', 'tensorflow', 'jax'/'jaxlib', 'numpy'."""
    return type(tensor).__module__.split(".")[0]


def same_framework(framework: str, tensor: Any) -> bool:
    """Whether ``tensor`` is of ``framework``'s native tensor type."""
    module = native_module(tensor)
    if framework == "jax":
        return module in ("jax", "jaxlib")
    return module == framework


def native_sum(tensor: Any) -> Any:
    """Sum of all entries, in the tensor's own framework (keeps autodiff intact)."""
    import eagerpy as ep

    return ep.astensor(tensor).sum().raw


def gradient(framework: str, fn: Any, *arrays: np.ndarray) -> list[np.ndarray]:
    """Gradients of the scalar ``fn(*tensors)`` with respect to every argument.

    Uses the framework's own autodiff (NumPy has none and raises), so the test
    checks the library's differentiability in each framework separately.
    """
    if framework == "torch":
        import torch

        ts = [torch.from_numpy(a.copy()).requires_grad_(True) for a in arrays]
        out = fn(*ts)
        grads = torch.autograd.grad(out, ts, allow_unused=True)
        return [
            np.zeros_like(a) if g is None else g.detach().numpy()
            for a, g in zip(arrays, grads, strict=True)
        ]
    if framework == "tensorflow":
        import tensorflow as tf

        vs = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            for v in vs:
                tape.watch(v)
            out = fn(*vs)
        grads = tape.gradient(out, vs)
        return [
            np.zeros_like(a) if g is None else g.numpy() for a, g in zip(arrays, grads, strict=True)
        ]
    if framework == "jax":
        enable_jax_float64()
        import jax
        import jax.numpy as jnp

        grads = jax.grad(fn, argnums=tuple(range(len(arrays))))(*[jnp.asarray(a) for a in arrays])
        return [np.asarray(g) for g in grads]
    raise ValueError(f"{framework} has no autodiff")
