"""Checks of what the user hands the engine: inputs, model outputs, masks, attack results.

Why a module of its own: "never a false pass" fails quietly when a hostile or
careless input is read as something it is not: an attack that writes into
the clean points it was given (distances then measured from the moved
points), a detector returning scores read as "all valid", NaN logits, labels
outside the classes. Each check here turns such a case into either a clear
error naming the fix or a warning the report keeps, and the engine
(:mod:`pytest_attacktest.binarization`) only calls them.
"""

from __future__ import annotations

import eagerpy as ep
import numpy as np

from attacks import backend

__all__ = ["private_copy", "same_values"]


def private_copy(x: ep.Tensor) -> ep.Tensor:
    """A copy of ``x`` that shares no memory with it (and no autograd history).

    The engine keeps its own copy of the clean points and gives the attack
    another one, so that neither the user's data nor the points distances are
    measured from can be changed by an attack (or a model) writing in place.
    TensorFlow and JAX arrays are immutable: they are returned as they are.
    """
    framework = backend.tensor_framework(x)
    if framework == "torch":
        return backend.wrap(x.raw.detach().clone())
    if framework == "numpy":
        return backend.wrap(np.array(x.raw, copy=True))
    return x


def same_values(a: ep.Tensor, b: ep.Tensor) -> bool:
    """Whether two tensors hold the same values (NaN equal to NaN)."""
    left = np.asarray(backend.to_numpy(a))
    right = np.asarray(backend.to_numpy(b))
    return left.shape == right.shape and bool(np.array_equal(left, right, equal_nan=True))
