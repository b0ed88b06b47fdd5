"""One module per framework for the plumbing EagerPy does not cover.

:mod:`attacks.frameworks.base` defines the operations (conversion, devices,
autodiff, random numbers, batched linear algebra, memory, native models);
``numpy``, ``pytorch``, ``tensorflow`` and ``jax`` implement them. Code
asks :func:`of` for a tensor's framework and calls the operation, instead of
branching on the framework's name. A framework's module is imported the
first time one of its tensors is met, so NumPy users never import torch.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import eagerpy as ep

from attacks.frameworks.base import Framework, Generator, LossFn

__all__ = [
    "FRAMEWORKS",
    "Framework",
    "Generator",
    "LossFn",
    "model_name_of",
    "name_of",
    "named",
    "of",
]

#: The frameworks' names, as ``attacks.Model(framework=...)`` takes them.
FRAMEWORKS = ("numpy", "torch", "tensorflow", "jax")

#: The module implementing each framework, under ``attacks.frameworks``.
_MODULES = {"numpy": "numpy", "torch": "pytorch", "tensorflow": "tensorflow", "jax": "jax"}

#: The frameworks imported so far, by name.
_LOADED: dict[str, Framework] = {}


def name_of(t: Any) -> str:
    """``'numpy'``, ``'torch'``, ``'tensorflow'`` or ``'jax'`` for a native or EagerPy tensor.

    Read from the type's module, so asking imports no framework.
    """
    if isinstance(t, ep.Tensor):
        t = t.raw
    module = type(t).__module__.split(".")[0]
    if module in ("jax", "jaxlib"):
        return "jax"
    if module in ("torch", "tensorflow", "numpy"):
        return module
    raise TypeError(
        f"expected a NumPy array or a PyTorch, TensorFlow or JAX tensor, got {type(t).__name__}"
    )


def model_name_of(model: Any) -> str | None:
    """The framework a native model belongs to, or None for a plain callable.

    A plain Python function could be NumPy, JAX or anything else; its framework
    is then taken from the inputs it is called with, or given explicitly.
    """
    if "torch" in sys.modules:
        import torch

        if isinstance(model, torch.nn.Module):
            return "torch"
    if "keras" in sys.modules:
        # A subclassed Keras model's class lives in the user's module: ask Keras.
        import keras

        if isinstance(model, keras.layers.Layer):
            name = str(keras.backend.backend())
            return name if name in FRAMEWORKS else None
    module = type(model).__module__.split(".")[0]
    if module in ("keras", "tf_keras") or (module == "tensorflow" and hasattr(model, "layers")):
        return "tensorflow"
    if module == "flax":
        return "jax"
    return None


def named(name: str) -> Framework:
    """The framework called ``name`` (one of :data:`FRAMEWORKS`); imports it on first use."""
    loaded = _LOADED.get(name)
    if loaded is not None:  # the hot path: attack steps ask for every operation
        return loaded
    if name not in _MODULES:
        raise ValueError(f"unknown framework {name!r}: expected one of {FRAMEWORKS}")
    module = importlib.import_module(f"attacks.frameworks.{_MODULES[name]}")
    framework: Framework = module.FRAMEWORK
    _LOADED[name] = framework
    return framework


def of(t: Any) -> Framework:
    """The framework of a native or EagerPy tensor."""
    return named(name_of(t))
