"""Each EagerPy 0.30.0 workaround, next to the upstream behaviour it corrects."""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest
from framework_support import framework_params, to_native, to_numpy

from attacks import eagerpy_fixes


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_full_keeps_the_dtype(framework: str, dtype: type) -> None:
    like = ep.astensor(to_native(framework, np.zeros((2, 3), dtype=dtype)))
    out = eagerpy_fixes.full(like, (4, 1), 0.25)
    assert out.dtype == like.dtype
    assert to_numpy(out.raw).tolist() == [[0.25]] * 4


def test_upstream_full_loses_float64_on_tensorflow() -> None:
    """The bug worked around above; when this fails, upstream is fixed."""
    tf = pytest.importorskip("tensorflow")
    like = ep.astensor(tf.zeros((2,), dtype=tf.float64))
    assert ep.full(like, (2,), 1.0).dtype != like.dtype
