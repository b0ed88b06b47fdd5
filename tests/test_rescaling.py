"""Properties of the analytic clipping-aware rescaling kernel, on every framework.

The oracle is a float64 bisection written here in plain NumPy and sharing no
code with the kernel: it only evaluates ||clip(x + eta*delta) - x||_p, which is
the definition the kernel must satisfy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from framework_support import (
    framework_params,
    gradient,
    native_sum,
    same_framework,
    to_native,
    to_numpy,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import attacks

FRAMEWORK = pytest.mark.parametrize("framework", framework_params())
P_VALUES = [1.0, 1.5, 2.0, 3.0, math.inf]
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ oracle (float64 NumPy)


def clipped_norm(x: np.ndarray, delta: np.ndarray, eta: np.ndarray, p: float, lo: Any, hi: Any):
    """||clip(x + eta*delta, lo, hi) - x||_p per sample, in float64."""
    x = x.astype(np.float64)
    delta = delta.astype(np.float64)
    eta = np.asarray(eta, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
    moved = np.clip(x + eta * delta, lo, hi) - x
    flat = np.abs(moved.reshape(len(x), -1))
    if math.isinf(p):
        return flat.max(axis=1)
    return (flat**p).sum(axis=1) ** (1.0 / p)


def saturating_eta(x: np.ndarray, delta: np.ndarray, lo: Any, hi: Any) -> np.ndarray:
    """Smallest eta at which every moving coordinate is clipped."""
    room = np.where(delta >= 0, hi - x, x - lo).reshape(len(x), -1)
    a = np.abs(delta).reshape(len(x), -1)
    ratio = np.where(a > 0, room / np.where(a > 0, a, 1.0), 0.0)
    return ratio.max(axis=1)


def bisection_oracle(x, delta, eps, p, lo, hi, steps: int = 200) -> np.ndarray:
    """eta with clipped norm == eps, by bisection on the definition (float64)."""
    x = x.astype(np.float64)
    delta = delta.astype(np.float64)
    eps = np.broadcast_to(np.asarray(eps, dtype=np.float64), (len(x),))
    low = np.zeros(len(x))
    high = saturating_eta(x, delta, lo, hi)
    for _ in range(steps):
        mid = (low + high) / 2
        too_short = clipped_norm(x, delta, mid, p, lo, hi) < eps
        low = np.where(too_short, mid, low)
        high = np.where(too_short, high, mid)
    return (low + high) / 2


# ------------------------------------------------------------------ data strategies


@st.composite
def problems(draw: Any, dtype: Any = np.float64) -> dict[str, Any]:
    """A batch with coordinates at the bounds, zero directions and a reachable epsilon."""
    n = draw(st.integers(1, 4))
    d = draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**32 - 1))
    p = draw(st.sampled_from(P_VALUES))
    lo, hi = draw(st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (-2.5, 0.5)]))
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, (n, d))
    at_bound = rng.random((n, d)) < draw(st.sampled_from([0.0, 0.2, 0.6]))
    x = np.where(at_bound, np.where(rng.random((n, d)) < 0.5, lo, hi), x)
    delta = rng.normal(size=(n, d))
    delta = np.where(rng.random((n, d)) < draw(st.sampled_from([0.0, 0.3])), 0.0, delta)
    x, delta = x.astype(dtype), delta.astype(dtype)
    max_norm = clipped_norm(x, delta, saturating_eta(x, delta, lo, hi), p, lo, hi)
    assume(bool(np.all(max_norm > 1e-3)))
    fraction = draw(st.floats(0.05, 0.95))
    eps = float(fraction * max_norm.min())
    return {"x": x, "delta": delta, "eps": eps, "p": p, "lo": lo, "hi": hi}


# ------------------------------------------------------------------ properties


@FRAMEWORK
@HYPOTHESIS
@given(data=problems(np.float64))
def test_float64_norm_and_eta_match_the_oracle(framework: str, data: dict[str, Any]) -> None:
    x, delta, eps, p, lo, hi = (data[k] for k in ("x", "delta", "eps", "p", "lo", "hi"))
    eta, reachable = attacks.clipping_aware_rescaling(
        to_native(framework, x),
        to_native(framework, delta),
        eps,
        p=p,
        bounds=(lo, hi),
        return_reachable=True,
    )
    assert same_framework(framework, eta)
    eta_np = to_numpy(eta)
    assert eta_np.shape == (len(x),)
    assert eta_np.dtype == np.float64
    assert to_numpy(reachable).all()
    norm = clipped_norm(x, delta, eta_np, p, lo, hi)
    np.testing.assert_allclose(norm, eps, rtol=1e-9)
    np.testing.assert_allclose(eta_np, bisection_oracle(x, delta, eps, p, lo, hi), rtol=1e-8)


@FRAMEWORK
@HYPOTHESIS
@given(data=problems(np.float32))
def test_float32_norm_within_1e5(framework: str, data: dict[str, Any]) -> None:
    x, delta, eps, p, lo, hi = (data[k] for k in ("x", "delta", "eps", "p", "lo", "hi"))
    eta = to_numpy(
        attacks.clipping_aware_rescaling(
            to_native(framework, x), to_native(framework, delta), eps, p=p, bounds=(lo, hi)
        )
    )
    assert eta.dtype == np.float32
    # The kernel's eta, evaluated exactly: the kernel's own error.
    np.testing.assert_allclose(clipped_norm(x, delta, eta, p, lo, hi), eps, rtol=1e-5)
    # The float32 point itself: rounding x + eta*delta costs half an ulp per coordinate.
    point = to_numpy(
        attacks.rescale_and_clip(
            to_native(framework, x), to_native(framework, delta), eps, p=p, bounds=(lo, hi)
        )
    )
    assert point.dtype == np.float32
    assert point.min() >= lo
    assert point.max() <= hi
    moved = np.abs(point.astype(np.float64) - x).reshape(len(x), -1)
    norm = moved.max(axis=1) if math.isinf(p) else (moved**p).sum(axis=1) ** (1 / p)
    d = moved.shape[1]
    rounding = (d if math.isinf(p) else d ** (1 / p)) * 6e-8 * max(abs(lo), abs(hi))
    np.testing.assert_allclose(norm, eps, rtol=1e-5, atol=rounding)


@FRAMEWORK
@pytest.mark.parametrize("p", P_VALUES)
def test_unreachable_epsilon_saturates_every_coordinate(framework: str, p: float) -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (3, 10))
    delta = rng.normal(size=(3, 10))
    delta[1, :4] = 0.0
    max_norm = clipped_norm(x, delta, saturating_eta(x, delta, 0, 1), p, 0, 1)
    eps = np.array([0.5 * max_norm[0], 2.0 * max_norm[1], max_norm[2] * 1.0001])
    eta, reachable = attacks.clipping_aware_rescaling(
        to_native(framework, x),
        to_native(framework, delta),
        to_native(framework, eps),
        p=p,
        return_reachable=True,
    )
    eta, reachable = to_numpy(eta), to_numpy(reachable)
    assert reachable.tolist() == [True, False, False]
    np.testing.assert_allclose(eta[1:], saturating_eta(x, delta, 0, 1)[1:], rtol=1e-12)
    np.testing.assert_allclose(clipped_norm(x, delta, eta, p, 0, 1)[1:], max_norm[1:], rtol=1e-12)
    np.testing.assert_allclose(clipped_norm(x, delta, eta, p, 0, 1)[0], eps[0], rtol=1e-9)


@FRAMEWORK
@pytest.mark.parametrize("p", P_VALUES)
def test_zero_delta_gives_zero_eta_and_finite_gradients(framework: str, p: float) -> None:
    x = np.array([[0.0, 0.5, 1.0], [0.2, 0.3, 0.4]])
    delta = np.zeros_like(x)
    eta, reachable = attacks.clipping_aware_rescaling(
        to_native(framework, x), to_native(framework, delta), 0.3, p=p, return_reachable=True
    )
    assert to_numpy(eta).tolist() == [0.0, 0.0]
    assert not to_numpy(reachable).any()
    if framework != "numpy":
        grads = gradient(
            framework,
            lambda xs, ds: native_sum(attacks.clipping_aware_rescaling(xs, ds, 0.3, p=p)),
            x,
            delta,
        )
        assert all(np.isfinite(g).all() for g in grads)


@FRAMEWORK
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_no_room_in_the_direction_of_delta(framework: str, p: float) -> None:
    """Points on the upper bound pushed upwards cannot move: unreachable, no NaN."""
    x = np.ones((2, 5))
    delta = np.abs(np.random.default_rng(0).normal(size=(2, 5)))
    eta, reachable = attacks.clipping_aware_rescaling(
        to_native(framework, x), to_native(framework, delta), 0.1, p=p, return_reachable=True
    )
    assert np.isfinite(to_numpy(eta)).all()
    assert not to_numpy(reachable).any()
    assert (clipped_norm(x, delta, to_numpy(eta), p, 0, 1) == 0).all()


@FRAMEWORK
@pytest.mark.parametrize("p", P_VALUES)
def test_tensor_bounds_and_per_sample_epsilon(framework: str, p: float) -> None:
    """Per-channel bounds, as for normalised images, and one epsilon per sample."""
    rng = np.random.default_rng(1)
    lo = np.array([-2.0, -1.5, -1.0]).reshape(1, 3, 1, 1)
    hi = np.array([2.2, 2.4, 2.6]).reshape(1, 3, 1, 1)
    x = rng.uniform(lo, hi, (4, 3, 5, 5))
    delta = rng.normal(size=x.shape)
    eps = np.array([0.1, 0.5, 1.0, 2.0]) if not math.isinf(p) else np.array([0.1, 0.2, 0.3, 0.4])
    eta = attacks.clipping_aware_rescaling(
        to_native(framework, x),
        to_native(framework, delta),
        to_native(framework, eps),
        p=p,
        bounds=(to_native(framework, lo), to_native(framework, hi)),
    )
    np.testing.assert_allclose(clipped_norm(x, delta, to_numpy(eta), p, lo, hi), eps, rtol=1e-9)
    # A NumPy epsilon and NumPy bounds are accepted for any framework's x.
    eta2 = attacks.clipping_aware_rescaling(
        to_native(framework, x), to_native(framework, delta), eps, p=p, bounds=(lo, hi)
    )
    np.testing.assert_allclose(to_numpy(eta2), to_numpy(eta), rtol=1e-12)


@FRAMEWORK
def test_linf_corners_and_names(framework: str) -> None:
    """'linf', 'Linf', math.inf and 'inf' are the same norm; sign directions hit corners."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0.1, 0.9, (3, 7))
    delta = np.sign(rng.normal(size=(3, 7)))
    results = [
        to_numpy(
            attacks.rescale_and_clip(
                to_native(framework, x), to_native(framework, delta), 0.05, p=p
            )
        )
        for p in ("linf", "Linf", math.inf, "inf")
    ]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    np.testing.assert_allclose(np.abs(results[0] - x), 0.05, rtol=1e-9)


# ------------------------------------------------------------------ differentiability


def _smooth_problem(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A generic problem (no ties, some coordinates clipped) where eta is smooth."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 0.95, (3, 12))
    delta = rng.normal(size=(3, 12))
    eps = np.array([0.4, 0.6, 0.8])
    return x, delta, eps


@pytest.mark.parametrize("framework", [f for f in framework_params() if f.id != "numpy"])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_agree_with_finite_differences(framework: str, p: float, seed: int) -> None:
    x, delta, eps = _smooth_problem(seed)
    if math.isinf(p):
        eps = eps / 2
    weights = np.random.default_rng(seed + 100).normal(size=len(x))

    def objective(xs: Any, ds: Any, es: Any) -> Any:
        eta = attacks.clipping_aware_rescaling(xs, ds, es, p=p)
        return native_sum(eta * to_native(framework, weights))

    grads = gradient(framework, objective, x, delta, eps)
    _, reachable = attacks.clipping_aware_rescaling(x, delta, eps, p=p, return_reachable=True)
    assert reachable.all()
    # At least one coordinate is clipped, so the clipping branch is exercised.
    eta_np = attacks.clipping_aware_rescaling(x, delta, eps, p=p)
    assert ((x + eta_np[:, None] * delta > 1) | (x + eta_np[:, None] * delta < 0)).any()

    def numeric(index: int) -> np.ndarray:
        args = [x, delta, eps]
        out = np.zeros_like(args[index])
        h = 1e-6
        for pos in np.ndindex(*args[index].shape):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[index][pos] += h
            minus[index][pos] -= h
            f_plus = (attacks.clipping_aware_rescaling(*plus, p=p) * weights).sum()
            f_minus = (attacks.clipping_aware_rescaling(*minus, p=p) * weights).sum()
            out[pos] = (f_plus - f_minus) / (2 * h)
        return out

    for index, grad in enumerate(grads):
        assert np.isfinite(grad).all()
        np.testing.assert_allclose(grad, numeric(index), rtol=1e-5, atol=1e-7)
    assert np.abs(grads[2]).min() > 0  # eta grows with epsilon


# ------------------------------------------------------------------ no host round trips


def test_jax_kernel_compiles_under_jit() -> None:
    """Under jax.jit any device-to-host read would fail to trace: proof of none."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (4, 3, 6, 6)), dtype=jnp.float32)
    delta = jnp.asarray(rng.normal(size=(4, 3, 6, 6)), dtype=jnp.float32)
    for p in P_VALUES:
        fn = jax.jit(lambda a, b, e, p=p: attacks.clipping_aware_rescaling(a, b, e, p=p))
        eta = fn(x, delta, jnp.full((4,), 0.3, dtype=jnp.float32))
        eager = attacks.clipping_aware_rescaling(x, delta, 0.3, p=p)
        np.testing.assert_allclose(np.asarray(eta), np.asarray(eager), rtol=1e-5)


def test_tensorflow_kernel_runs_in_a_graph() -> None:
    """Inside tf.function there is no .numpy(): the kernel must be pure graph ops."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 1, (4, 20)), dtype=tf.float32)
    delta = tf.constant(rng.normal(size=(4, 20)), dtype=tf.float32)
    fn = tf.function(lambda a, b: attacks.clipping_aware_rescaling(a, b, 0.5, p=2))
    np.testing.assert_allclose(
        fn(x, delta).numpy(),
        attacks.clipping_aware_rescaling(x, delta, 0.5, p=2).numpy(),
        rtol=1e-6,
    )


# ------------------------------------------------------------------ inputs are left alone


@FRAMEWORK
def test_inputs_are_not_mutated(framework: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (2, 9))
    delta = rng.normal(size=(2, 9))
    xn, dn = to_native(framework, x), to_native(framework, delta)
    attacks.rescale_and_clip(xn, dn, 0.5, p=1)
    np.testing.assert_array_equal(to_numpy(xn), x)
    np.testing.assert_array_equal(to_numpy(dn), delta)


# ------------------------------------------------------------------ clear errors


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"epsilon": 0.0}, ValueError, "epsilon must be a positive"),
        ({"epsilon": -1.0}, ValueError, "epsilon must be a positive"),
        ({"epsilon": float("nan")}, ValueError, "epsilon must be a positive"),
        ({"p": 0.5}, ValueError, "p must be >= 1"),
        ({"p": "l7x"}, ValueError, "unknown norm"),
        ({"bounds": (1.0, 0.0)}, ValueError, "lo < hi"),
        ({"bounds": (0.0,)}, ValueError, "pair"),
        ({"delta": np.zeros((2, 4))}, ValueError, "same shape"),
        ({"epsilon": np.ones(3)}, ValueError, r"shape \(2,\)"),
        ({"bounds": (np.zeros(5), 1.0)}, ValueError, "do not broadcast"),
        ({"x": np.zeros((2, 3), dtype=np.int64)}, TypeError, "floating point"),
    ],
)
def test_bad_input_gets_a_clear_error(kwargs: dict[str, Any], error: type, message: str) -> None:
    args: dict[str, Any] = {
        "x": np.full((2, 3), 0.5),
        "delta": np.ones((2, 3)),
        "epsilon": 0.1,
        "p": 2,
        "bounds": (0.0, 1.0),
    }
    args.update(kwargs)
    if args["x"].dtype.kind == "i":
        args["delta"] = args["delta"].astype(np.int64)
    with pytest.raises(error, match=message):
        attacks.clipping_aware_rescaling(**args)


def test_tensor_of_another_framework_is_rejected() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="expected a numpy tensor"):
        attacks.clipping_aware_rescaling(
            np.full((2, 3), 0.5), np.ones((2, 3)), torch.tensor([0.1, 0.2], dtype=torch.float64)
        )


# ------------------------------------------------------------------ the PyTorch path


def _count_torch_ops(fn: Any) -> int:
    """Number of aten operations ``fn()`` dispatches (views and scalar wrappers included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    with Counter() as counter:
        fn()
    return counter.count


@pytest.mark.torch
@pytest.mark.parametrize(("p", "eps"), [(1.0, 10.0), (2.0, 1.0), (math.inf, 8 / 255)])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 1.0)])
def test_torch_kernel_launches_at_most_25_operations(
    p: float, eps: float, bounds: tuple[float, float]
) -> None:
    """Issue 16: on a GPU the kernel is bound by launches; one call needs at most 25 ops.

    Counted at the dispatcher on the CPU (every aten op, views included), on the
    benchmark's input. The EagerPy program, counted the same way, needs 50 to 90:
    the count is a property of the code, not of the device.
    """
    torch = pytest.importorskip("torch")
    from attacks import rescaling

    gen = torch.Generator().manual_seed(0)
    lo, hi = bounds
    x = lo + (hi - lo) * torch.rand((256, 3, 32, 32), generator=gen)
    delta = torch.randn((256, 3, 32, 32), generator=gen)
    call = lambda: attacks.clipping_aware_rescaling(x, delta, eps, p=p, bounds=bounds)  # noqa: E731
    call()
    assert _count_torch_ops(call) <= 25
    # Per-sample epsilons (what attacks pass), the reachable mask, and the clipped point.
    eps_t = torch.full((256,), eps)
    assert (
        _count_torch_ops(lambda: attacks.clipping_aware_rescaling(x, delta, eps_t, p, bounds)) <= 27
    )
    assert _count_torch_ops(lambda: attacks.rescale_and_clip(x, delta, eps_t, p, bounds)) <= 30
    assert (
        _count_torch_ops(
            lambda: attacks.clipping_aware_rescaling(
                x, delta, eps, p, bounds, return_reachable=True
            )
        )
        <= 27
    )
    # The counter sees the EagerPy program's operations (so it would see a regression).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rescaling, "TORCH_PATH", False)
        assert _count_torch_ops(call) > 40


def _edge_cases(dtype: Any) -> list[tuple[np.ndarray, np.ndarray, Any, float, tuple[Any, Any]]]:
    """Random and degenerate problems: zero and -0.0 directions, points on the bounds,
    tiny and subnormal directions, epsilons out of reach or <= 0, tensor bounds."""
    rng = np.random.default_rng(7)
    cases: list[tuple[np.ndarray, np.ndarray, Any, float, tuple[Any, Any]]] = []
    for i in range(60):
        n, d = int(rng.integers(1, 5)), int(rng.integers(1, 40))
        lo, hi = [(0.0, 1.0), (-1.0, 1.0), (-2.5, 0.5)][i % 3]
        x = rng.uniform(lo, hi, (n, d))
        x = np.where(rng.random((n, d)) < 0.3, np.where(rng.random((n, d)) < 0.5, lo, hi), x)
        delta = rng.normal(size=(n, d)) * 10.0 ** float(rng.choice([-35, -20, 0, 0, 0, 3]))
        delta = np.where(rng.random((n, d)) < 0.3, 0.0, delta)
        if i % 5 == 0:
            delta[0] = 0.0  # a row that cannot move
        if i % 9 == 0:
            delta = np.where(delta == 0, -0.0, delta)
        if i % 13 == 0:
            x[-1] = np.where(delta[-1] >= 0, hi, lo)  # no room in the direction of delta
        x, delta = x.astype(dtype), delta.astype(dtype)
        for p in (1.0, 2.0, math.inf):
            top = clipped_norm(x, delta, saturating_eta(x, delta, lo, hi), p, lo, hi)
            # Reachable, out of reach, and per-sample epsilons including 0 and negatives.
            per_sample = np.where(rng.random(n) < 0.2, rng.choice([0.0, -0.5]), 0.7 * top)
            for eps in (float(0.5 * top.max() + 1e-3), float(2 * top.max() + 1e-3), per_sample):
                cases.append((x, delta, eps, p, (lo, hi)))
    x = rng.uniform(0, 1, (3, 3, 4, 4)).astype(dtype)
    delta = rng.normal(size=x.shape).astype(dtype)
    lo_t, hi_t = np.zeros((1, 3, 1, 1), dtype), np.array([0.5, 0.8, 1.0], dtype).reshape(1, 3, 1, 1)
    x = np.minimum(x, hi_t)
    for p in (1.0, 2.0, math.inf):
        cases.append((x, delta, 0.2, p, (lo_t, hi_t)))
    return cases


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_path_agrees_with_the_eagerpy_program(dtype: Any) -> None:
    """The PyTorch path and the EagerPy program are two codings of one kernel: same answers."""
    torch = pytest.importorskip("torch")
    from attacks import rescaling

    for x, delta, eps, p, (lo, hi) in _edge_cases(dtype):
        if dtype == np.float64 and not math.isinf(p):
            continue  # float64 with finite p takes the EagerPy program on both sides
        args = [torch.from_numpy(x), torch.from_numpy(delta)]
        eps_in = torch.from_numpy(np.asarray(eps, dtype)) if isinstance(eps, np.ndarray) else eps
        bounds = tuple(torch.from_numpy(b) if isinstance(b, np.ndarray) else b for b in (lo, hi))
        fast_eta, fast_reach = attacks.clipping_aware_rescaling(
            *args, eps_in, p=p, bounds=bounds, return_reachable=True
        )
        fast_point = attacks.rescale_and_clip(*args, eps_in, p=p, bounds=bounds)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rescaling, "TORCH_PATH", False)
            slow_eta, slow_reach = attacks.clipping_aware_rescaling(
                *args, eps_in, p=p, bounds=bounds, return_reachable=True
            )
            slow_point = attacks.rescale_and_clip(*args, eps_in, p=p, bounds=bounds)
        where = f"p={p}, eps={eps}, bounds={lo, hi}, delta max {np.abs(delta).max():.1e}"
        assert fast_eta.dtype == slow_eta.dtype == torch.from_numpy(x).dtype, where
        assert torch.isfinite(fast_eta).all(), where
        assert fast_reach.tolist() == slow_reach.tolist(), where
        rtol = 1e-12 if dtype == np.float64 else 3e-6
        np.testing.assert_allclose(to_numpy(fast_eta), to_numpy(slow_eta), rtol=rtol, err_msg=where)
        np.testing.assert_allclose(
            to_numpy(fast_point), to_numpy(slow_point), rtol=rtol, atol=1e-6, err_msg=where
        )
        # Both meet the definition: the clipped norm is epsilon where it is reachable.
        eps_arr = np.broadcast_to(np.asarray(eps, np.float64), (len(x),))
        ok = to_numpy(fast_reach) & (eps_arr > 0)
        norm = clipped_norm(x, delta, to_numpy(fast_eta), p, to_numpy(lo), to_numpy(hi))
        np.testing.assert_allclose(norm[ok], eps_arr[ok], rtol=rtol, err_msg=where)
        assert (to_numpy(fast_eta)[eps_arr <= 0] == 0).all(), where


@pytest.mark.torch
@pytest.mark.parametrize("framework", [f for f in framework_params() if f.id != "torch"])
def test_other_frameworks_agree_with_the_torch_path(framework: str) -> None:
    """NumPy, TensorFlow and JAX run the EagerPy program; PyTorch its own path: same eta."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x = rng.uniform(0, 1, (6, 3, 8, 8)).astype(np.float32)
    x[x > 0.85] = 1.0
    delta = rng.normal(size=x.shape).astype(np.float32)
    delta[0] = 0.0
    for p, eps in [(1.0, 8.0), (2.0, 0.7), (math.inf, 0.05)]:
        eps_per_sample = np.array([eps, eps, 0.0, eps / 2, 1e4, eps], dtype=np.float32)
        for e in (eps, eps_per_sample):
            reference, reference_reach = attacks.clipping_aware_rescaling(
                torch.from_numpy(x),
                torch.from_numpy(delta),
                torch.from_numpy(e) if isinstance(e, np.ndarray) else e,
                p=p,
                return_reachable=True,
            )
            eta, reach = attacks.clipping_aware_rescaling(
                to_native(framework, x),
                to_native(framework, delta),
                to_native(framework, e) if isinstance(e, np.ndarray) else e,
                p=p,
                return_reachable=True,
            )
            assert to_numpy(reach).tolist() == reference_reach.tolist()
            np.testing.assert_allclose(to_numpy(eta), to_numpy(reference), rtol=3e-6)


@pytest.mark.torch
def test_torch_path_is_float32_exact_on_imagenet_sized_inputs() -> None:
    """150528 coordinates, saturated pixels, a direction of magnitude 1e-25 (its squares
    underflow float32): the clipped norm misses epsilon by at most about one float32 ulp,
    the cost of rounding eta itself, because the sums are in float64."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (4, 3, 224, 224))
    x[x > 0.9] = 1.0
    x[x < 0.05] = 0.0
    x = x.astype(np.float32)
    delta = (rng.normal(size=x.shape) * 1e-25).astype(np.float32)
    for p, eps in [(1.0, 490.0), (1.0, 5.0), (2.0, 7.0), (2.0, 150.0), (math.inf, 8 / 255)]:
        eta = attacks.clipping_aware_rescaling(torch.from_numpy(x), torch.from_numpy(delta), eps, p)
        error = np.abs(clipped_norm(x, delta, to_numpy(eta), p, 0, 1) / eps - 1).max()
        assert error <= 1.2e-7, (p, eps, error)
