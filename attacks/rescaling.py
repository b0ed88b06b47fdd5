"""Analytic clipping-aware rescaling (Rauber and Bethge, 2020) for every p-norm.

Why this exists: an L1/L2 attack step, a random start on the epsilon sphere and
the binarization test's boundary points all need a perturbation whose norm is
exactly epsilon *after* the point is clipped to the input bounds. Rescaling
first and clipping afterwards undershoots (clipped coordinates lose length);
bisecting on the scale is exact but costs a clip-and-norm pass per iteration.
Rauber and Bethge observed that the clipped norm is, in a change of variable,
piecewise linear in the scale, so one sort and two cumulative sums give the
exact answer. The upstream code covers L2 with scalar bounds; this module
re-derives it for every p >= 1 and for L-infinity, with tensor bounds and one
epsilon per sample, on any EagerPy backend (NumPy, PyTorch, TensorFlow, JAX).

The derivation, per sample (all coordinates flattened):
    room_i  = hi_i - x_i if delta_i >= 0 else x_i - lo_i   (how far i can move)
    a_i     = |delta_i|
    the clipped change of coordinate i at scale eta is min(eta * a_i, room_i),
    so coordinate i saturates at r_i = room_i / a_i and
    N(eta)^p = sum_{r_i <= eta} room_i^p + eta^p * sum_{r_i > eta} a_i^p.
With u = eta^p this is linear in u between consecutive breakpoints r_i^p and
non-decreasing, so the solution lies on the first segment whose right end
reaches epsilon^p: sort r, locate that segment with cumulative sums, solve the
linear equation there. L-infinity needs no sort: eta = eps / max{a_i : room_i >= eps}.

Numerics: everything is measured in units of epsilon and of max_i a_i, so
a_i^p <= 1 and saturated terms are capped (a term above 1 already means the
crossing happened), which keeps large p from overflowing. The cumulative sums
only *locate* the segment; the final sums are recomputed as plain reductions
(pairwise summation on every backend), which keeps float32 results within a
few ulps of the float64 answer even for 224x224x3 inputs.

PyTorch inputs that need no gradient take a second coding of the same math
(:mod:`attacks.rescaling_torch`): on a GPU the kernel is bound by how many operations it
launches, and the EagerPy program above launches 50 to 90. That path finds the
solution as the largest root over the linear pieces of the concave norm^p
(no search, no recomputation: its sums are in float64) in about 25
operations. Both are tested to agree; gradients, float64 and other frameworks
use the EagerPy program.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, TypeVar, overload

import eagerpy as ep
import numpy as np

from attacks import eagerpy_fixes, jaxjit
from attacks.norms import parse_p

T = TypeVar("T")

Bound = Any  # a Python number, or a native tensor / NumPy array broadcastable to x
BoundsLike = tuple[Bound, Bound]


@overload
def clipping_aware_rescaling(
    x: T,
    delta: T,
    epsilon: Any,
    p: float | int | str = 2,
    bounds: BoundsLike = (0.0, 1.0),
    *,
    return_reachable: Literal[False] = False,
) -> T: ...


@overload
def clipping_aware_rescaling(
    x: T,
    delta: T,
    epsilon: Any,
    p: float | int | str = 2,
    bounds: BoundsLike = (0.0, 1.0),
    *,
    return_reachable: Literal[True],
) -> tuple[T, T]: ...


def clipping_aware_rescaling(
    x: T,
    delta: T,
    epsilon: Any,
    p: float | int | str = 2,
    bounds: BoundsLike = (0.0, 1.0),
    *,
    return_reachable: bool = False,
) -> T | tuple[T, T]:
    """Per-sample scale ``eta >= 0`` with ``||clip(x + eta*delta, bounds) - x||_p == epsilon``.

    Args:
        x: batch of points, shape ``(N, ...)``; a NumPy array or a PyTorch,
            TensorFlow or JAX tensor of a floating dtype. Points are assumed to
            lie inside ``bounds`` (a coordinate outside has no room to move).
        delta: directions, same shape and type as ``x``. Only the direction
            matters; ``delta = 0`` gives ``eta = 0``.
        epsilon: target norm: a positive number, or a tensor of shape ``(N,)``
            (one per sample) of the same framework. Tensor entries ``<= 0`` give
            ``eta = 0`` (checking them would need a device-to-host copy).
        p: the norm: ``1``, ``2``, any real ``p >= 1``, ``math.inf``, or the names
            ``"l1"``, ``"l2"``, ``"linf"``.
        bounds: ``(lo, hi)``, numbers or tensors broadcastable to ``x``.
        return_reachable: also return a boolean tensor of shape ``(N,)`` that is
            ``False`` for samples whose epsilon cannot be reached. For those,
            ``eta`` is the smallest scale that saturates every coordinate, i.e.
            ``clip(x + eta*delta)`` has the largest norm reachable along delta.

    Returns:
        ``eta`` of shape ``(N,)`` in the type, dtype and device of ``x`` (and the
        ``reachable`` mask when asked for). Differentiable with respect to
        ``x``, ``delta`` and ``epsilon`` wherever the solution is smooth (away
        from ties between saturation points).

    Raises:
        ValueError: shapes differ, ``x`` has no batch axis, ``epsilon`` is not
            positive, or the bounds are empty.
        TypeError: ``x`` is not of a floating dtype.
    """
    (x_, delta_), restore = ep.astensors_(x, delta)
    eta, reachable = _rescale(x_, delta_, epsilon, parse_p(p), bounds, return_reachable)
    if return_reachable:
        assert reachable is not None
        return restore(eta), restore(reachable)
    return restore(eta)


def rescale_and_clip(
    x: T,
    delta: T,
    epsilon: Any,
    p: float | int | str = 2,
    bounds: BoundsLike = (0.0, 1.0),
) -> T:
    """Return ``clip(x + eta*delta, bounds)`` with ``eta`` from :func:`clipping_aware_rescaling`.

    The point lies on the epsilon sphere of ``x`` (in the clipped sense) for
    every sample whose epsilon is reachable along ``delta``, and as far out as
    the bounds allow otherwise.
    """
    (x_, delta_), restore = ep.astensors_(x, delta)
    return restore(_rescale_and_clip(x_, delta_, epsilon, parse_p(p), bounds))


def clip_to_bounds(x: ep.Tensor, lo: ep.Tensor | float, hi: ep.Tensor | float) -> ep.Tensor:
    """Clip to bounds that may be tensors (``ep.clip`` takes only numbers)."""
    if isinstance(lo, float) and isinstance(hi, float):
        return ep.clip(x, lo, hi)
    return ep.minimum(ep.maximum(x, lo), hi)


# --------------------------------------------------------------------------- internals


def _rescale_and_clip(
    x: ep.Tensor, delta: ep.Tensor, epsilon: Any, p: float, bounds: BoundsLike
) -> ep.Tensor:
    """The body of :func:`rescale_and_clip`: checks, then one compiled program for JAX."""
    _check_inputs(x, delta)
    torch_path = _torch_path(x, delta, epsilon, p, bounds)
    if torch_path is not None:
        point: ep.Tensor = ep.astensor(torch_path.rescale_and_clip(x, delta, epsilon, p, bounds))
        return point
    return _solve_and_clip(x, delta, _epsilon_as_column(x, epsilon), p, bounds)


@jaxjit.for_jax
def _solve_and_clip(
    x: ep.Tensor, delta: ep.Tensor, eps: ep.Tensor, p: float, bounds: BoundsLike
) -> ep.Tensor:
    eta, _ = _solve(x, delta, eps, p, bounds)
    lo, hi = _bounds_as_tensors(x, bounds)
    eta_b = eta.reshape((-1,) + (1,) * (x.ndim - 1))
    return clip_to_bounds(x + eta_b * delta, lo, hi)


def _rescale(
    x: ep.Tensor,
    delta: ep.Tensor,
    epsilon: Any,
    p: float,
    bounds: BoundsLike,
    need_reachable: bool = True,
) -> tuple[ep.Tensor, ep.Tensor | None]:
    """Validate inputs (eagerly: a number epsilon is checked on the host) and solve.

    PyTorch inputs that need no gradient take :mod:`attacks.rescaling_torch` (a few
    fused operations instead of the EagerPy program; ``reachable`` is only
    computed when asked for); everything else takes :func:`_solve`.
    """
    _check_inputs(x, delta)
    torch_path = _torch_path(x, delta, epsilon, p, bounds)
    if torch_path is not None:
        eta, reachable = torch_path.rescale(x, delta, epsilon, p, bounds, need_reachable)
        return ep.astensor(eta), None if reachable is None else ep.astensor(reachable)
    return _solve(x, delta, _epsilon_as_column(x, epsilon), p, bounds)


@jaxjit.for_jax
def _solve(
    x: ep.Tensor, delta: ep.Tensor, eps: ep.Tensor, p: float, bounds: BoundsLike
) -> tuple[ep.Tensor, ep.Tensor]:
    """Dispatch to the finite-p or the L-infinity solver; ``eps`` is an (N, 1) column.

    Pure tensor code, so JAX inputs run it as one compiled program per shape,
    norm and bounds (epsilon is a tensor here, so its values never recompile).
    """
    lo, hi = _bounds_as_tensors(x, bounds)

    # Room each coordinate has in the direction it moves, flattened to (N, D).
    room = ep.where(delta >= 0, hi - x, x - lo)
    room = ep.maximum(room, 0.0).flatten(start=1)
    a = delta.abs().flatten(start=1)

    # Work in units of max_i a_i and of epsilon: a in [0, 1], sigma = room/eps.
    a_max = a.max(axis=1, keepdims=True)
    has_direction = a_max > 0
    a = a / ep.where(has_direction, a_max, ep.ones_like(a_max))
    eps_positive = eps > 0
    eps_safe = ep.where(eps_positive, eps, ep.ones_like(eps))
    sigma = room / eps_safe

    if math.isinf(p):
        theta, reachable = _solve_linf(a, sigma)
    else:
        theta, reachable = _solve_finite_p(a, sigma, p)

    # Back to the caller's units: eta = theta * eps / max|delta|.
    scale = eps_safe / ep.where(has_direction, a_max, ep.ones_like(a_max))
    eta = theta * scale[:, 0]
    usable = ep.logical_and(has_direction, eps_positive)[:, 0]
    eta = ep.where(usable, eta, ep.zeros_like(eta))
    # epsilon = 0 is trivially reached (by eta = 0); delta = 0 reaches nothing else.
    reachable = ep.logical_or(
        ep.logical_not(eps_positive[:, 0]), ep.logical_and(reachable, has_direction[:, 0])
    )
    return eta, reachable


def _solve_finite_p(a: ep.Tensor, sigma: ep.Tensor, p: float) -> tuple[ep.Tensor, ep.Tensor]:
    """Solve ``sum_i min(theta*a_i, sigma_i)^p == 1`` for theta, per row.

    ``a`` and ``sigma`` have shape ``(N, D)`` with ``a`` in ``[0, 1]``.
    """
    zero = ep.zeros_like(a)
    weight = a**p  # contribution per unit theta^p while unsaturated
    active = weight > 0  # coordinates that move at all (tiny a may underflow: treat as still)
    a_safe = ep.where(active, a, ep.ones_like(a))
    ratio = ep.where(active, sigma / a_safe, zero)  # theta at which coordinate i saturates
    # Saturated contribution sigma^p, capped: a term > 1 alone exceeds the target,
    # so the crossing is found at or before it and the cap never changes the answer.
    capped = ep.where(active, ep.minimum(sigma, 2.0) ** p, zero)

    # Locate the segment: G_k = norm^p at theta = r_(k) in sorted order.
    order = ratio.argsort(axis=1)
    r_sorted = ep.take_along_axis(ratio, order, axis=1)
    w_sorted = ep.take_along_axis(weight, order, axis=1)
    c_sorted = ep.take_along_axis(capped, order, axis=1)
    saturated_before = c_sorted.cumsum(axis=1) - c_sorted
    unsaturated_from = w_sorted.flip(axis=1).cumsum(axis=1).flip(axis=1)
    g = saturated_before + r_sorted**p * unsaturated_from

    crossed = g >= 1
    reachable = crossed.any(axis=1)
    # First breakpoint where the target is reached (g is non-decreasing along k).
    r_star = ep.where(crossed, r_sorted, r_sorted.max(axis=1, keepdims=True)).min(
        axis=1, keepdims=True
    )

    # Solve exactly on that segment with plain reductions (accurate in float32).
    is_saturated = ratio < r_star
    c_sum = ep.where(is_saturated, capped, zero).sum(axis=1)
    w_sum = ep.where(is_saturated, zero, weight).sum(axis=1)
    ok = w_sum > 0
    u = ep.maximum(1.0 - c_sum, 0.0) / ep.where(ok, w_sum, ep.ones_like(w_sum))
    ok = ep.logical_and(ok, u > 0)
    theta_reach = ep.where(ok, ep.where(ok, u, ep.ones_like(u)) ** (1.0 / p), ep.zeros_like(u))

    theta_saturate_all = ratio.max(axis=1)
    return ep.where(reachable, theta_reach, theta_saturate_all), reachable


def _solve_linf(a: ep.Tensor, sigma: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
    """L-infinity: the first coordinate with room >= eps to reach eps sets the scale."""
    zero = ep.zeros_like(a)
    moving = a > 0
    can_reach = ep.logical_and(moving, sigma >= 1)
    a_reach = ep.where(can_reach, a, zero).max(axis=1)
    reachable = a_reach > 0
    theta_reach = 1.0 / ep.where(reachable, a_reach, ep.ones_like(a_reach))
    ratio = ep.where(moving, sigma / ep.where(moving, a, ep.ones_like(a)), zero)
    return ep.where(reachable, theta_reach, ratio.max(axis=1)), reachable


# --------------------------------------------------------------------------- PyTorch path

#: Take the PyTorch path (:mod:`attacks.rescaling_torch`) for PyTorch inputs that need
#: no gradient (set to False to run every framework through the EagerPy program, e.g.
#: to compare the two).
TORCH_PATH = True


def _torch_path(x: ep.Tensor, delta: ep.Tensor, epsilon: Any, p: float, bounds: BoundsLike) -> Any:
    """:mod:`attacks.rescaling_torch` when it computes this call, else None (no torch import)."""
    if not TORCH_PATH or not isinstance(x, ep.PyTorchTensor):
        return None
    from attacks import rescaling_torch

    return rescaling_torch if rescaling_torch.applies(x, delta, epsilon, p, bounds) else None


def _check_inputs(x: ep.Tensor, delta: ep.Tensor) -> None:
    if x.ndim < 1:
        raise ValueError("x needs a batch axis: shape (N, ...), got a scalar")
    if tuple(x.shape) != tuple(delta.shape):
        raise ValueError(
            f"x and delta must have the same shape, got {tuple(x.shape)} and {tuple(delta.shape)}"
        )
    if "float" not in str(x.dtype) or "float" not in str(delta.dtype):
        raise TypeError(
            f"x and delta must be floating point, got {x.dtype} and {delta.dtype}; "
            "convert images with x.astype(float32) / 255 first"
        )


def _bounds_as_tensors(x: ep.Tensor, bounds: BoundsLike) -> tuple[Any, Any]:
    """Return (lo, hi) as Python floats when scalar, else as tensors of x's framework."""
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (lo, hi), got {bounds!r}") from None
    out: list[Any] = []
    for value in (lo, hi):
        if isinstance(value, int | float | np.floating | np.integer):
            out.append(float(value))
            continue
        t = _as_tensor_like(x, value)
        try:
            np.broadcast_shapes(tuple(t.shape), tuple(x.shape))
        except ValueError:
            raise ValueError(
                f"bounds of shape {tuple(t.shape)} do not broadcast to x of shape {tuple(x.shape)}"
            ) from None
        out.append(t.astype(x.dtype))
    if isinstance(out[0], float) and isinstance(out[1], float) and not out[0] < out[1]:
        raise ValueError(f"bounds must satisfy lo < hi, got {bounds!r}")
    return out[0], out[1]


def _checked_epsilon(x: ep.Tensor, epsilon: Any) -> float | ep.Tensor:
    """Epsilon validated: a positive finite float, or a ``(N,)``/``(1,)`` tensor of x's dtype.

    One rule for both codings of the kernel (the EagerPy program and
    :mod:`attacks.rescaling_torch`); a number is checked on the host.
    """
    if isinstance(epsilon, int | float | np.floating | np.integer):
        eps_f = float(epsilon)
        if not math.isfinite(eps_f) or eps_f <= 0:
            raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")
        return eps_f
    n = x.shape[0]
    t = _as_tensor_like(x, epsilon)
    if t.ndim == 0:
        t = t.reshape((1,))
    if t.ndim != 1 or t.shape[0] not in (1, n):
        raise ValueError(
            f"epsilon must be a number or have shape ({n},) (one per sample), "
            f"got shape {tuple(t.shape)}"
        )
    return t.astype(x.dtype)


def _epsilon_as_column(x: ep.Tensor, epsilon: Any) -> ep.Tensor:
    """Epsilon as an (N, 1) tensor of x's dtype; scalars are validated on the host."""
    n = x.shape[0]
    eps = _checked_epsilon(x, epsilon)
    if isinstance(eps, float):
        return eagerpy_fixes.full(x, (n, 1), eps)
    t = eps.reshape((-1, 1))
    if t.shape[0] == 1 and n != 1:
        t = ep.zeros(x, (n, 1)).astype(x.dtype) + t
    return t


def _as_tensor_like(x: ep.Tensor, value: Any) -> ep.Tensor:
    """Wrap ``value`` as a tensor of ``x``'s framework (NumPy and sequences are converted)."""
    if isinstance(value, np.ndarray | Sequence):
        return ep.from_numpy(x, np.asarray(value))
    t = ep.astensor(value)
    if type(t) is not type(x):
        raise TypeError(
            f"expected a {type(x.raw).__module__} tensor or a NumPy array, got {type(value)!r}"
        )
    return t
