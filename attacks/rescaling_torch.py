"""The clipping-aware rescaling kernel in a handful of PyTorch operations (forward only).

Why a second coding of :mod:`attacks.rescaling`'s math: on a GPU the kernel is
bound by how many operations it launches, and the EagerPy program launches 50
to 90. Here the solution is the largest root over the linear pieces of the
concave norm^p, in about 25 operations. :mod:`attacks.rescaling` sends PyTorch
inputs that need no gradient here (:func:`applies`); both are tested to agree.
Imported only for PyTorch inputs, so it imports torch at the top.
"""

from __future__ import annotations

import math
from typing import Any

import eagerpy as ep
import torch

from attacks.rescaling import BoundsLike, _bounds_as_tensors, _checked_epsilon


def rescale(
    x: ep.Tensor,
    delta: ep.Tensor,
    epsilon: Any,
    p: float,
    bounds: BoundsLike,
    need_reachable: bool,
) -> tuple[Any, Any]:
    """``(eta, reachable)`` as torch tensors; ``reachable`` is None unless asked for."""
    lo, hi = _raw_bounds(x, bounds)
    return solve(x.raw, delta.raw, _epsilon(x, epsilon), p, lo, hi, need_reachable)


def rescale_and_clip(
    x: ep.Tensor, delta: ep.Tensor, epsilon: Any, p: float, bounds: BoundsLike
) -> Any:
    """``clip(x + eta * delta)`` at the scale that reaches ``epsilon``, as a torch tensor."""
    lo, hi = _raw_bounds(x, bounds)
    eta, _ = solve(x.raw, delta.raw, _epsilon(x, epsilon), p, lo, hi, need_reachable=False)
    return _move_and_clip(x.raw, delta.raw, eta, lo, hi)


def _raw_bounds(x: ep.Tensor, bounds: BoundsLike) -> tuple[Any, Any]:
    """The bounds as floats, or as torch tensors of ``x``'s dtype."""
    lo, hi = _bounds_as_tensors(x, bounds)
    return lo.raw if isinstance(lo, ep.Tensor) else lo, hi.raw if isinstance(hi, ep.Tensor) else hi


def applies(x: ep.Tensor, delta: ep.Tensor, epsilon: Any, p: float, bounds: BoundsLike) -> bool:
    """Whether :func:`solve` computes this call (``x`` is a PyTorch tensor).

    Why the conditions: the PyTorch path is forward-only (it lets NaN and
    infinities arise in branches it discards, which would poison a backward
    pass), so any input that needs a gradient takes the EagerPy program, whose
    derivatives are exact. For finite p it sums in float64, which is exact in
    range as well as precision only for inputs of at most float32 (a float64
    direction of 1e-160 would underflow when squared) and needs a device with
    float64 (not MPS). Other p take the EagerPy program, which rescales against
    overflow.
    """
    raw = x.raw
    if not math.isinf(p):
        if p not in (1.0, 2.0) or raw.device.type not in ("cpu", "cuda"):
            return False
        if raw.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return False
    if torch.is_grad_enabled():
        values = (raw, delta.raw, epsilon, *(bounds if isinstance(bounds, tuple) else ()))
        for value in values:
            if isinstance(value, ep.Tensor):
                value = value.raw
            if isinstance(value, torch.Tensor) and value.requires_grad:
                return False
    return True


def _epsilon(x: ep.Tensor, epsilon: Any) -> Any:
    """Epsilon as a Python float (validated) or a ``(N, 1)``/``(1, 1)`` tensor of x's dtype."""
    eps = _checked_epsilon(x, epsilon)
    return eps if isinstance(eps, float) else eps.raw.reshape(-1, 1)


def solve(
    x: Any, delta: Any, eps: Any, p: float, lo: Any, hi: Any, need_reachable: bool
) -> tuple[Any, Any]:
    """The kernel in a handful of PyTorch operations (forward only): ``(eta, reachable)``.

    ``x``, ``delta`` are torch tensors, ``eps`` a positive float or an ``(N, 1)``
    tensor, ``lo``/``hi`` floats or tensors broadcastable to ``x``. ``reachable``
    is None unless ``need_reachable``.

    Why it is shaped like this: on a GPU the kernel is bound by the number of
    operations it launches, not by the data, so the math is arranged to need
    as few as possible (about 25 for L1 and L2, counted in
    tests/test_rescaling.py). Finite p (1 or 2), per sample:

    * ``s_i = (bound_i - x_i) / delta_i`` is where coordinate i saturates
      (bound_i is hi when delta_i >= 0, else lo), computed in float64 so that
      neither tiny directions nor squares over- or underflow; coordinates that
      do not move (delta_i = 0) get s_i = 0, as do points outside the bounds.
    * With u = eta^p, the clipped norm^p is ``G(u) = sum_i min(u*w_i, c_i)``,
      with ``w_i = |delta_i|^p`` and ``c_i = (s_i*|delta_i|)^p = room_i^p``:
      a sum of concave pieces, so G is concave and non-decreasing in u. Every
      partition of the coordinates into "unsaturated" U and "saturated" S gives
      a line ``L(u) = sum_S c_i + u * sum_U w_i >= G(u)``, whose root of
      ``L(u) = eps^p`` lies at or below the solution u*; the line of the
      segment that contains u* has its root exactly at u*. So u* is the
      largest root over the D partitions "the k largest s_i unsaturated",
      which one descending sort and two cumulative sums give, with no search.
    * If epsilon is out of reach (``sum_i c_i < eps^p``), the target is lowered
      to ``sum_i c_i``; the largest root is then ``max_i s_i^p`` (the roots are
      running weighted means of the sorted s^p), the smallest scale that
      saturates every coordinate. A row that cannot move at all gives 0/0,
      mapped to 0.

    Numerics: the float64 cumulative sums err by about D * 1e-16 relative, far
    below float32 resolution, so no recomputation of the sums is needed.
    L-infinity needs no sort: ``eta = eps / max{|delta_i| : room_i >= eps}``.
    """

    n = x.shape[0]
    ge = delta >= 0
    if isinstance(lo, float) and isinstance(hi, float):
        if lo == 0.0 and hi == 1.0:
            diff = torch.add(ge, x, alpha=-1)  # (1 or 0) - x: the signed room, exactly
        else:
            diff = torch.add(torch.rsub(x, lo), ge, alpha=hi - lo)
    else:
        diff = torch.where(ge, hi, lo) - x
    if math.isinf(p):
        return _solve_linf(x, delta, diff, eps, need_reachable)

    d64 = delta.to(torch.float64)
    # delta_i = 0 gives +-inf or 0/0: such a coordinate never moves, s_i = 0.
    s = torch.nan_to_num(diff / d64, nan=0.0, posinf=0.0, neginf=0.0).clamp_min_(0.0)
    s_sorted, order = torch.sort(s.reshape(n, -1), dim=1, descending=True)
    d_sorted = torch.gather(d64.reshape(n, -1), 1, order)
    if p == 1:
        w = d_sorted.abs_()
        c = s_sorted.mul_(w)
    else:
        w = d_sorted.square()
        c = s_sorted.mul_(d_sorted).square_()
    c_cum = c.cumsum_(1)  # saturated part of the lines, seen from the other end
    w_cum = w.cumsum_(1)  # slope of line k: the k+1 largest s unsaturated
    c_total = c_cum[:, -1:]
    if isinstance(eps, float):
        shortfall = c_total - eps**p  # sum c - eps^p: negative when out of reach
    else:
        eps = eps.clamp_min(0.0)  # entries <= 0 give eta = 0
        shortfall = (
            torch.addcmul(c_total, eps, eps, value=-1) if p == 2 else torch.sub(c_total, eps)
        )
    reachable = (shortfall >= 0).reshape(-1) if need_reachable else None
    # Line k: sum_{j>k} c_j + u * w_cum_k = target, with sum_{j>k} c_j = c_total - c_cum_k
    # and target = c_total - max(shortfall, 0); so u_k = (c_cum_k - max(shortfall, 0)) / w_cum_k.
    roots = c_cum.sub_(shortfall.clamp_min(0.0)).div_(w_cum)
    u = roots.amax(dim=1)
    eta = u.sqrt_() if p == 2 else u
    return eta.nan_to_num_(nan=0.0).to(x.dtype), reachable


def _solve_linf(x: Any, delta: Any, diff: Any, eps: Any, need_reachable: bool) -> tuple[Any, Any]:
    """L-infinity for :func:`solve`: no sort, reductions over the sample axes."""

    dims = tuple(range(1, x.ndim))
    a = delta.abs()
    # Where each coordinate saturates; 0 for still coordinates and points outside the bounds.
    s = torch.nan_to_num(diff / delta, nan=0.0, posinf=0.0, neginf=0.0).clamp_min_(0.0)
    if not isinstance(eps, float):
        eps = eps.reshape((-1,) + (1,) * (x.ndim - 1))
    # The coordinate that reaches eps first is the fastest one with room >= eps.
    a_reach = (a * (s * a >= eps)).amax(dim=dims) if dims else a * (s * a >= eps)
    s_max = s.amax(dim=dims) if dims else s
    if isinstance(eps, float):
        eta_reach = a_reach.reciprocal().mul_(eps)
    else:
        eps = eps.reshape(-1)
        eta_reach = eps / a_reach
    # Out of reach (no coordinate has room eps, a_reach = 0): saturate every coordinate.
    eta = torch.minimum(eta_reach, s_max)
    reachable = None
    if not isinstance(eps, float):
        # Entries <= 0 give eta = 0 (a row that cannot move gives 0 / 0 there).
        eta = eta.nan_to_num_(nan=0.0).clamp_min_(0.0)
        if need_reachable:
            reachable = (a_reach > 0) | (eps <= 0)
    elif need_reachable:
        reachable = a_reach > 0
    return eta, reachable


def _move_and_clip(x: Any, delta: Any, eta: Any, lo: Any, hi: Any) -> Any:
    """``clip(x + eta*delta, lo, hi)`` in three operations."""

    point = torch.addcmul(x, eta.reshape((-1,) + (1,) * (x.ndim - 1)), delta)
    if isinstance(lo, float) and isinstance(hi, float):
        return point.clamp_(lo, hi)
    point = point.clamp_min_(lo) if isinstance(lo, float) else torch.maximum(point, lo)
    return point.clamp_max_(hi) if isinstance(hi, float) else torch.minimum(point, hi)
