"""The per-framework modules of :mod:`attacks.frameworks` agree with NumPy on every operation.

Each operation is the one place its framework's version lives, so each is
checked here on all four frameworks against a NumPy reference, plus the
properties the callers rely on: copies share no memory, generators
reproduce per seed, global seeding is undone, gradients leave no trace in
the model, and asking for a framework imports nothing it does not need.
"""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from framework_support import framework_params, to_native, to_numpy

from attacks import frameworks

pytestmark = pytest.mark.parametrize("name", framework_params())


def _fw(name: str) -> frameworks.Framework:
    fw = frameworks.named(name)
    assert fw.name == name
    return fw


def test_detection_and_conversion_round_trip(name: str) -> None:
    fw = _fw(name)
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw = fw.from_numpy(array)
    assert frameworks.name_of(raw) == name
    assert frameworks.name_of(ep.astensor(raw)) == name
    assert frameworks.of(raw) is fw
    np.testing.assert_array_equal(fw.to_numpy(raw), array)
    like = fw.from_numpy_like(array * 2, raw)
    np.testing.assert_array_equal(to_numpy(like), array * 2)
    assert fw.to_numpy(ep.astensor(raw).astype(fw.dtype("float64")).raw).dtype in (
        np.float64,
        np.float32,  # JAX without x64 computes in float32
    )
    assert np.issubdtype(fw.to_numpy(raw > 0).dtype, np.bool_)
    index = ep.astensor(raw).astype(fw.index_dtype())
    assert np.issubdtype(fw.to_numpy(index.raw).dtype, np.integer)


def test_private_copy_shares_no_memory(name: str) -> None:
    fw = _fw(name)
    raw = to_native(name, np.ones((2, 3), dtype=np.float32))
    copy = fw.private_copy(raw)
    np.testing.assert_array_equal(to_numpy(copy), np.ones((2, 3)))
    if name in ("numpy", "torch"):  # the mutable ones
        copy[0, 0] = 5.0
        assert to_numpy(raw)[0, 0] == 1.0


def test_generators_reproduce_per_seed_and_keep_dtype(name: str) -> None:
    fw = _fw(name)
    like = fw.from_numpy(np.zeros(2, dtype=np.float32))
    a, b, c = (fw.generator(seed, like) for seed in (7, 7, 8))
    dtype = fw.dtype("float32")
    draws_a = to_numpy(a.uniform((1000,), -2.0, 3.0, dtype))
    np.testing.assert_array_equal(draws_a, to_numpy(b.uniform((1000,), -2.0, 3.0, dtype)))
    assert not np.array_equal(draws_a, to_numpy(c.uniform((1000,), -2.0, 3.0, dtype)))
    assert draws_a.dtype == np.float32
    assert draws_a.min() >= -2.0
    assert draws_a.max() < 3.0
    assert abs(draws_a.mean() - 0.5) < 0.2
    normal = to_numpy(a.normal((4000,), dtype))
    assert abs(normal.mean()) < 0.1
    assert abs(normal.std() - 1.0) < 0.1


def test_linear_algebra_matches_numpy(name: str) -> None:
    fw = _fw(name)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 5)).astype(np.float32)
    b = rng.normal(size=(3, 4, 5)).astype(np.float32)
    got = to_numpy(fw.batched_matmul(fw.from_numpy(a), fw.from_numpy(b), transpose_b=True))
    np.testing.assert_allclose(got, a @ b.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)
    got = to_numpy(fw.batched_matmul(fw.from_numpy(a), fw.from_numpy(b), transpose_a=True))
    np.testing.assert_allclose(got, a.transpose(0, 2, 1) @ b, rtol=1e-5, atol=1e-5)
    square = a @ a.transpose(0, 2, 1) + 4 * np.eye(4, dtype=np.float32)
    np.testing.assert_allclose(
        to_numpy(fw.diagonal(fw.from_numpy(square))), np.diagonal(square, axis1=1, axis2=2)
    )
    rhs = rng.normal(size=(3, 4, 1)).astype(np.float32)
    solved = to_numpy(fw.solve(fw.from_numpy(square), fw.from_numpy(rhs)))
    np.testing.assert_allclose(square @ solved, rhs, rtol=1e-4, atol=1e-4)


def test_clamp_and_add_product(name: str) -> None:
    fw = _fw(name)
    x = np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)
    lower = np.zeros_like(x)
    upper = np.full_like(x, 1.0)
    got = fw.clamp(fw.from_numpy(x), fw.from_numpy(lower), fw.from_numpy(upper))
    np.testing.assert_array_equal(to_numpy(got), np.clip(x, 0.0, 1.0))
    step = np.array([[0.5]], dtype=np.float32)
    got = fw.add_product(fw.from_numpy(x), fw.from_numpy(step), fw.from_numpy(np.sign(x)))
    np.testing.assert_array_equal(to_numpy(got), x + step * np.sign(x))


def test_gradients_are_exact_or_refused_for_numpy(name: str) -> None:
    fw = _fw(name)
    x = ep.astensor(fw.from_numpy(np.array([[1.0, -2.0, 3.0]], dtype=np.float32)))

    def loss_fn(t: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        return (t.square() * 0.5).sum(), t

    if name == "numpy":
        with pytest.raises(TypeError, match="NumPy has no autodiff"):
            fw.value_and_grad(loss_fn, x)
        return
    loss, aux, grad = fw.value_and_grad(loss_fn, x)
    assert float(to_numpy(loss.raw)) == pytest.approx(7.0)
    np.testing.assert_allclose(to_numpy(grad.raw), [[1.0, -2.0, 3.0]])
    np.testing.assert_allclose(to_numpy(aux.raw), [[1.0, -2.0, 3.0]])


def test_gradient_through_stop_gradient_is_zero(name: str) -> None:
    if name == "numpy":
        pytest.skip("NumPy has no autodiff")
    fw = _fw(name)
    x = ep.astensor(fw.from_numpy(np.array([2.0, 3.0], dtype=np.float32)))

    def loss_fn(t: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        frozen = ep.astensor(fw.stop_gradient(t.raw))
        return (t * frozen).sum(), t

    _, _, grad = fw.value_and_grad(loss_fn, x)
    np.testing.assert_allclose(to_numpy(grad.raw), [2.0, 3.0])  # d(x * const)/dx, not 2x


def test_global_seeding_is_undone(name: str) -> None:
    fw = _fw(name)

    def draw() -> Any:
        if name == "torch":
            import torch

            return torch.rand(3).numpy()
        if name == "numpy":
            return np.random.rand(3)
        return None

    state = random.getstate()
    restore = fw.seed_global(1234)
    if name in ("numpy", "torch"):
        assert restore is not None
        first = draw()
        restore()
        restore_again = fw.seed_global(1234)
        assert restore_again is not None
        np.testing.assert_array_equal(draw(), first)  # the seed decides the draws
        restore_again()
        after = draw()
        restore_again = fw.seed_global(1234)
        assert restore_again is not None
        assert not np.array_equal(after, first)  # the caller's stream went on unseeded
        restore_again()
    elif restore is not None:
        restore()
    assert random.getstate() == state


def test_native_model_runs_the_function(name: str) -> None:
    fw = _fw(name)

    def forward(x: Any) -> Any:
        return x * 2

    model = fw.native_model(forward, holds=None, name="doubled")
    x = fw.from_numpy(np.ones((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(to_numpy(model(x)), np.full((2, 3), 2.0))
    if name == "torch":
        assert repr(model).startswith("doubled(")


def test_unknown_tensors_and_names_are_refused(name: str) -> None:
    with pytest.raises(TypeError, match="expected a NumPy array or a PyTorch"):
        frameworks.name_of([1.0, 2.0])
    with pytest.raises(ValueError, match="unknown framework 'mxnet'"):
        frameworks.named("mxnet")


def test_asking_for_numpy_imports_no_other_framework(name: str) -> None:
    if name != "numpy":
        pytest.skip("one subprocess is enough")
    code = (
        "import sys, numpy as np\n"
        "from attacks import backend, frameworks\n"
        "frameworks.of(np.zeros(2)).generator(0, np.zeros(2)).uniform((2,), 0, 1, np.float32)\n"
        "backend.to_numpy(np.zeros(2)); backend.no_grad(np.zeros(2))\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'keras') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
