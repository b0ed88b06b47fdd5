"""Each EagerPy 0.30.0 workaround, next to the upstream behaviour it corrects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def _index_cases(framework: str) -> list[tuple[str, Any, Any]]:
    rows = ep.astensor(to_native(framework, np.array([0, 2])))
    cols = ep.astensor(to_native(framework, np.array([1, 3])))
    values = ep.astensor(to_native(framework, np.array([-1.0, -2.0], dtype=np.float32)))
    return [
        ("column", ep.index[:, 0], 0.0),
        ("row", 1, 0.0),
        ("pairs", (rows, cols), values),
    ]


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("case", ["column", "row", "pairs"])
def test_index_update_on_every_framework(framework: str, case: str) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = data.copy()
    expected[{"column": (slice(None), 0), "row": 1, "pairs": ([0, 2], [1, 3])}[case]] = (
        [-1.0, -2.0] if case == "pairs" else 0.0
    )
    t = ep.astensor(to_native(framework, data))
    _, index, values = next(c for c in _index_cases(framework) if c[0] == case)
    out = eagerpy_fixes.index_update(t, index, values)
    assert type(out) is type(t)
    np.testing.assert_array_equal(to_numpy(out.raw), expected)
    np.testing.assert_array_equal(to_numpy(t.raw), data)  # a new tensor, the input unchanged


def test_upstream_index_update_fails_on_jax() -> None:
    """The bug worked around above: EagerPy calls jax.ops.index_update, gone since JAX 0.3.2."""
    jnp = pytest.importorskip("jax.numpy")
    t = ep.astensor(jnp.zeros((2, 3)))
    with pytest.raises(AttributeError, match="index_update"):
        t.index_update(ep.index[:, 0], 1.0)


#: The EagerPy operations the attacks and the engine use, each on a small input;
#: JAX must agree with NumPy (EagerPy's JAX backend is the least maintained).
_OPS: dict[str, Callable[[ep.Tensor, ep.Tensor], Any]] = {
    "abs-sign-sqrt": lambda t, i: t.abs().sign() * t.abs().sqrt(),
    "log-exp-tanh-arctanh": lambda t, i: t.exp().log() + (t * 0.5).tanh().arctanh(),
    "square-pow": lambda t, i: t.square() + t.abs() ** 1.5,
    "sum-mean-max-min": lambda t, i: t.sum(axis=1) + t.mean(axis=1) + t.max(axis=1) - t.min(1),
    "argmax-argmin": lambda t, i: t.argmax(axis=1) + t.argmin(axis=1),
    "sort-argsort-flip": lambda t, i: t.sort(axis=1).flip(axis=1) + t.argsort(axis=1),
    "cumsum": lambda t, i: t.cumsum(axis=1),
    "take_along_axis": lambda t, i: ep.take_along_axis(t, t.argsort(axis=1), axis=1),
    "getitem-pairs": lambda t, i: t[range(t.shape[0]), i],
    "getitem-tensor": lambda t, i: t[i],
    "onehot_like": lambda t, i: t - ep.onehot_like(t, i, value=1e9),
    "crossentropy": lambda t, i: ep.crossentropy(t, i),
    "where-logical": lambda t, i: ep.where(
        ep.logical_or(ep.logical_and(t > 0.2, t < 0.8), ep.logical_not(t > 0.5)), t, 0.0
    ),
    "clip-minimum-maximum": lambda t, i: ep.clip(t, 0.2, 0.7) + ep.minimum(ep.maximum(t, 0.3), 0.6),
    "concatenate-stack-tile": lambda t, i: (
        ep.concatenate([t, ep.tile(t, (1, 2))], axis=1).sum() + ep.stack([t, t], axis=0).sum(axis=0)
    ),
    "reshape-flatten-transpose": lambda t, i: t.reshape((4, 3)).transpose().flatten(start=1),
    "expand_dims-squeeze": lambda t, i: t.expand_dims(0).squeeze(0),
    "matmul": lambda t, i: ep.matmul(t, t.transpose()),
    "arange-zeros-ones": lambda t, i: (
        ep.arange(t, 4).astype(t.dtype) + ep.zeros(t, (4,)) + ep.ones_like(t[0])
    ),
    "full_like-zeros_like": lambda t, i: ep.full_like(t, 0.5) + ep.zeros_like(t),
    "isnan-isinf": lambda t, i: ep.logical_or(ep.isnan(t / t), ep.isinf(1 / (t - t[0, 0]))),
    "any-all": lambda t, i: ep.stack([(t > 0.5).any(axis=1), (t > 0.01).all(axis=1)]),
    "from_numpy": lambda t, i: ep.from_numpy(t, np.ones(3, dtype=np.float32)) + t[0, :3],
    "bool-astype": lambda t, i: (t > 0.5).astype(t.dtype),
}


@pytest.mark.parametrize("name", list(_OPS))
def test_eagerpy_ops_the_library_uses_agree_on_jax(name: str) -> None:
    """Any op EagerPy breaks on a new JAX shows up here, before an attack gives odd results."""
    pytest.importorskip("jax")
    data = np.random.default_rng(0).uniform(0.05, 0.95, (3, 4)).astype(np.float32)
    labels = np.array([1, 0, 2])
    outs = []
    for framework in ("numpy", "jax"):
        t = ep.astensor(to_native(framework, data))
        i = ep.astensor(to_native(framework, labels))
        with np.errstate(all="ignore"):  # isnan-isinf divides by zero on purpose
            outs.append(to_numpy(_OPS[name](t, i).raw))
    assert outs[1].shape == outs[0].shape
    np.testing.assert_allclose(outs[1].astype(np.float64), outs[0].astype(np.float64), rtol=1e-5)
