"""Workarounds for EagerPy 0.30.0, the last release, in one place.

Why: EagerPy is the portability layer but unmaintained since 2022, and some of
its backends are wrong on current frameworks. Every workaround the library
needs lives here, each with a test in ``tests/test_eagerpy_fixes.py`` that shows
the upstream behaviour it corrects, so it can be dropped when upstream is fixed.
"""

from __future__ import annotations

import eagerpy as ep


def full(like: ep.Tensor, shape: tuple[int, ...], value: float) -> ep.Tensor:
    """A tensor of ``shape`` filled with ``value``, in ``like``'s dtype and device.

    ``ep.full`` on TensorFlow calls ``tf.fill`` without a dtype, so a float64
    input gets a float32 tensor and the next arithmetic op fails.
    """
    return ep.zeros(like, shape) + value
