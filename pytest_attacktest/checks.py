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

__all__ = ["boolean_mask", "private_copy", "same_values"]


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


def boolean_mask(mask: object, n: int, like: ep.Tensor | None = None) -> ep.Tensor:
    """The detector's answer as a boolean ``(n,)`` tensor, or an error saying what it was.

    With ``like``, a mask of another framework (a NumPy mask for torch inputs)
    is moved to ``like``'s framework and device.

    Why booleans only: scores (``0.2`` meaning "reject") cast to bool are all
    ``True``, so a detector would silently accept every adversarial and a
    weak attack pass. Torch, NumPy, TensorFlow and JAX boolean arrays are
    accepted; anything else is refused.
    """
    if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
        raise TypeError(
            f"valid_input must return a boolean array of shape ({n},), got "
            f"{type(mask).__name__}: return e.g. scores < threshold"
        )
    if "bool" not in str(mask.dtype):
        raise TypeError(
            f"valid_input must return a boolean mask (True: valid), got dtype {mask.dtype}: "
            "scores or 0/1 numbers are not read as a mask; return a comparison such as "
            "score < threshold"
        )
    if tuple(mask.shape) != (n,):
        raise ValueError(
            f"valid_input must return a boolean mask of shape ({n},), got shape {tuple(mask.shape)}"
        )
    out = backend.wrap(mask)
    if like is not None and backend.tensor_framework(out) != backend.tensor_framework(like):
        target = backend.tensor_framework(like)
        device = like.raw.device if target == "torch" else None
        out = backend.wrap(backend.from_numpy(target, backend.to_numpy(out), device))
    return out
