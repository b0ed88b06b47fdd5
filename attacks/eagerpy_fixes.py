"""Workarounds for EagerPy 0.30.0, the last release, in one place.

Why: EagerPy is the portability layer but unmaintained since 2022, and some of
its backends are wrong on current frameworks. Every workaround the library
needs lives here, each with a test in ``tests/test_eagerpy_fixes.py`` that shows
the upstream behaviour it corrects, so it can be dropped when upstream is fixed.
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep


def full(like: ep.Tensor, shape: tuple[int, ...], value: float) -> ep.Tensor:
    """A tensor of ``shape`` filled with ``value``, in ``like``'s dtype and device.

    ``ep.full`` on TensorFlow calls ``tf.fill`` without a dtype, so a float64
    input gets a float32 tensor and the next arithmetic op fails.
    """
    return ep.zeros(like, shape) + value


def index_update(t: ep.Tensor, index: Any, values: ep.Tensor | float) -> ep.Tensor:
    """``t`` with ``t[index] = values``, as a new tensor (``t`` is unchanged), on every framework.

    EagerPy 0.30.0's JAX backend calls ``jax.ops.index_update``, which JAX
    removed in 0.3.2 (an AttributeError on any current JAX); JAX now spells it
    ``x.at[index].set(values)``. Other frameworks keep EagerPy's version.
    ``index`` is what EagerPy accepts: ``ep.index[...]`` slices, an int, a
    tensor, or a tuple of them.
    """
    if not isinstance(t, ep.JAXTensor):
        return t.index_update(index, values)
    raw_index = tuple(_raw(i) for i in index) if isinstance(index, tuple) else _raw(index)
    return ep.astensor(t.raw.at[raw_index].set(_raw(values)))


def _raw(value: Any) -> Any:
    return value.raw if isinstance(value, ep.Tensor) else value
