"""Norm geometry of the threat models: norms, balls, projections, steepest steps, random points.

Why one module: every attack, the final projection of :class:`attacks.Attack`
and the binarization test's sampling measure, project and step in the same
Lp geometry, and a second copy of a projection is a second place for an
off-by-a-rounding bug that lets a point leave the ball. Everything here is
per sample over a batch ``(N, ...)``, with one epsilon (or step) per sample,
on any EagerPy backend.

Steps and random points whose length must be exact *after* clipping to the
bounds use the clipping-aware rescaling kernel (:mod:`attacks.rescaling`),
the one piece of geometry with a module of its own: it is a solver, not a
formula, and this module builds on it.
"""

from __future__ import annotations

import math

import eagerpy as ep

from attacks import backend, frameworks
from attacks.backend import RandomSource
from attacks.rescaling import clip_to_bounds, rescale_and_clip

#: Relative slack of the final projection: points end strictly inside the
#: ball so that float rounding of x + delta never pushes them outside.
PROJECTION_SLACK = 1e-6

#: For L1 steps: the share of coordinates (by gradient magnitude) left out, as in
#: sparse L1 descent (Tramer and Boneh, 2019); dense L1 steps are very weak.
L1_SPARSITY = 0.99


# ---------------------------------------------------------------------- norms and broadcasting


def lp_norms(delta: ep.Tensor, p: float) -> ep.Tensor:
    """Per-sample Lp norm of a batch ``(N, ...)``."""
    flat = delta.flatten(start=1).abs()
    if math.isinf(p):
        return flat.max(axis=1)
    if p == 1:
        return flat.sum(axis=1)
    if p == 2:
        return flat.square().sum(axis=1).sqrt()
    return (flat**p).sum(axis=1) ** (1.0 / p)


def atleast_kd(t: ep.Tensor, k: int) -> ep.Tensor:
    """Append singleton axes so a per-sample ``(N,)`` tensor broadcasts over ``k`` dims."""
    return t.reshape(t.shape + (1,) * (k - t.ndim))


def farthest_norm(x: ep.Tensor, p: float, bounds: tuple[float, float]) -> ep.Tensor:
    """The largest distance any point inside the bounds can have from x."""
    lo, hi = bounds
    return lp_norms(ep.maximum(x - lo, hi - x), p)


def unit_l2(grad: ep.Tensor) -> ep.Tensor:
    """The gradient scaled to unit L2 norm per sample (zero stays zero)."""
    norms = lp_norms(grad, 2.0)
    return grad / atleast_kd(ep.maximum(norms, 1e-12), grad.ndim)


# ---------------------------------------------------------------------- projections


def project(
    x: ep.Tensor, x_adv: ep.Tensor, epsilon: ep.Tensor | None, p: float, bounds: tuple[float, float]
) -> ep.Tensor:
    """Project ``x_adv`` into the bounds and the epsilon ball around ``x``.

    Linf clips per coordinate; other norms scale the perturbation down (a
    point between x and a point inside the bounds stays inside them). The ball
    projection for L1 and L2 is the radial one, which never increases the loss
    of feasibility and is what the final guarantee needs.
    """
    lo, hi = bounds
    x_adv = ep.clip(x_adv, lo, hi)
    if epsilon is None:
        return x_adv
    delta = x_adv - x
    if math.isinf(p):
        eps = atleast_kd(epsilon * (1 - PROJECTION_SLACK), x.ndim)
        delta = ep.minimum(ep.maximum(delta, -eps), eps)
        return clip_to_bounds(x + delta, lo, hi)
    norms = lp_norms(delta, p)
    factor = ep.minimum(1.0, epsilon * (1 - PROJECTION_SLACK) / ep.maximum(norms, 1e-30))
    return ep.clip(x + delta * atleast_kd(factor, x.ndim), lo, hi)


def project_ball(
    x: ep.Tensor, x_adv: ep.Tensor, epsilon: ep.Tensor, p: float, bounds: tuple[float, float]
) -> ep.Tensor:
    """Into the bounds and the ball: Linf clip, L2 radial, L1 exact (then clipped)."""
    lo, hi = bounds
    delta = x_adv - x
    if math.isinf(p):
        eps = atleast_kd(epsilon, x.ndim)
        delta = ep.minimum(ep.maximum(delta, -eps), eps)
    elif p == 1:
        delta = project_l1_ball(delta, epsilon)
    else:
        factor = ep.minimum(1.0, epsilon / ep.maximum(lp_norms(delta, p), 1e-30))
        delta = delta * atleast_kd(factor, x.ndim)
    return ep.clip(x + delta, lo, hi)


def project_l1_ball(delta: ep.Tensor, epsilon: ep.Tensor) -> ep.Tensor:
    """Euclidean projection of each sample's ``delta`` onto the L1 ball of radius epsilon.

    Sort-based (Duchi et al., 2008), batched, without gathers: the condition
    that selects the support is a prefix of the sorted magnitudes, so its
    cumulative sum is a masked sum.
    """
    shape = delta.shape
    v = delta.flatten(start=1)
    u = v.abs().sort(axis=1).flip(axis=1)  # descending
    css = u.cumsum(axis=1)
    eps = epsilon.reshape((-1, 1))
    ranks = ep.arange(v, 1, v.shape[1] + 1).astype(v.dtype).reshape((1, -1))
    support = u - (css - eps) / ranks > 0
    rho = ep.maximum(ep.where(support, ep.ones_like(u), ep.zeros_like(u)).sum(axis=1), 1.0)
    theta = (ep.where(support, u, ep.zeros_like(u)).sum(axis=1) - eps[:, 0]) / rho
    theta = ep.maximum(theta, 0.0).reshape((-1, 1))
    projected = v.sign() * ep.maximum(v.abs() - theta, 0.0)
    inside = (v.abs().sum(axis=1) <= eps[:, 0]).reshape((-1, 1))
    return ep.where(inside, v, projected).reshape(shape)


def linf_limits(
    x: ep.Tensor, epsilon: ep.Tensor, bounds: tuple[float, float]
) -> tuple[ep.Tensor, ep.Tensor]:
    """Per coordinate, the Linf ball around ``x`` intersected with the bounds: (lower, upper)."""
    eps = atleast_kd(epsilon, x.ndim)
    return ep.clip(x - eps, *bounds), ep.clip(x + eps, *bounds)


def clamp(t: ep.Tensor, lower: ep.Tensor, upper: ep.Tensor) -> ep.Tensor:
    """Elementwise ``min(max(t, lower), upper)`` with tensor limits (one kernel on torch)."""
    return backend.wrap(frameworks.of(t).clamp(t.raw, lower.raw, upper.raw))


# ---------------------------------------------------------------------- steepest steps


def steepest_step(
    x_adv: ep.Tensor, grad: ep.Tensor, step: ep.Tensor, p: float, bounds: tuple[float, float]
) -> ep.Tensor:
    """Move ``x_adv`` by ``step`` (per sample) along the steepest ascent direction of ``p``.

    Linf: the sign of the gradient. L2: the gradient, with the step's length
    exact after clipping. L1: the sign of the largest-magnitude coordinates
    that can still move (sparse), likewise exact after clipping.
    """
    lo, hi = bounds
    if math.isinf(p):
        return ep.clip(x_adv + atleast_kd(step, x_adv.ndim) * grad.sign(), lo, hi)
    if p == 1:
        g = _movable_magnitudes(x_adv, grad, bounds)
        d = g.shape[1]
        k = max(1, math.ceil(d * (1 - L1_SPARSITY)))
        threshold = g.sort(axis=1)[:, d - k : d - k + 1]
        keep = ep.logical_and(g >= threshold, g > 0).reshape(grad.shape)
        direction = ep.where(keep, grad.sign(), ep.zeros_like(grad))
        return rescale_and_clip(x_adv, direction, step, p=1, bounds=bounds)
    return rescale_and_clip(x_adv, grad, step, p=2, bounds=bounds)


def linf_ascent(
    x_adv: ep.Tensor, grad: ep.Tensor, step: ep.Tensor, lower: ep.Tensor, upper: ep.Tensor
) -> ep.Tensor:
    """A sign step of ``step`` (per sample), projected into ``[lower, upper]`` by one clamp.

    The same point as :func:`steepest_step` followed by :func:`project_ball`
    (up to the rounding of ``x + (x_adv - x)``, which this avoids), in three
    kernels instead of about nine.
    """
    fw = frameworks.of(x_adv)
    moved = fw.add_product(x_adv.raw, atleast_kd(step, x_adv.ndim).raw, grad.sign().raw)
    return backend.wrap(fw.clamp(moved, lower.raw, upper.raw))


def sparse_l1_step(
    x_adv: ep.Tensor,
    grad: ep.Tensor,
    step: ep.Tensor,
    share: ep.Tensor,
    bounds: tuple[float, float],
) -> ep.Tensor:
    """An L1 step of length ``step`` on the ``share`` (per sample) of largest-gradient coordinates.

    Like ``steepest_step(p=1)`` but with a per-sample share instead of a fixed
    one (AutoAttack adapts it to the sparsity of the best point). Only
    coordinates that can move in the gradient's direction count, and the step
    has its exact L1 length after clipping. The k-th largest magnitude is read
    by a mask over ranks, not a gather, so it works on every backend.
    """
    g = _movable_magnitudes(x_adv, grad, bounds)
    d = g.shape[1]
    ordered = g.sort(axis=1).flip(axis=1)  # descending
    ranks = ep.arange(g, 1, d + 1).astype(g.dtype).reshape((1, -1))
    k = ep.maximum(share * d, 1.0).reshape((-1, 1))
    threshold = ep.where(ranks <= k, ordered, ep.zeros_like(ordered) + math.inf).min(axis=1)
    keep = ep.logical_and(g >= threshold.reshape((-1, 1)), g > 0).reshape(grad.shape)
    direction = ep.where(keep, grad.sign(), ep.zeros_like(grad))
    return rescale_and_clip(x_adv, direction, step, p=1, bounds=bounds)


def _movable_magnitudes(
    x_adv: ep.Tensor, grad: ep.Tensor, bounds: tuple[float, float]
) -> ep.Tensor:
    """``|grad|`` as ``(N, D)``, zero where the coordinate sits at the bound it ascends to.

    The candidates of a sparse L1 step: a coordinate that cannot move in its
    gradient's direction would waste the step's length on clipping.
    """
    lo, hi = bounds
    movable = ep.logical_or(
        ep.logical_and(grad > 0, x_adv < hi), ep.logical_and(grad < 0, x_adv > lo)
    )
    return ep.where(movable, grad, ep.zeros_like(grad)).flatten(start=1).abs()


# ---------------------------------------------------------------------- random points


def random_point_in_ball(
    random: RandomSource,
    bounds: tuple[float, float],
    x: ep.Tensor,
    epsilon: ep.Tensor,
    p: float,
) -> ep.Tensor:
    """A uniform point of the Linf ball, or a point of the Lp ball at a random radius.

    For finite p the direction is Gaussian (Laplace for L1, the direction law
    of a uniform point of the L1 ball) and the radius ``epsilon * u**(1/D)``
    (the radial law of a uniform point in D dimensions), exact after clipping.
    Attacks start here; the binarization test draws its inner points here.
    """
    lo, hi = bounds
    if math.isinf(p):
        noise = random.uniform(tuple(x.shape), -1.0, 1.0)
        return ep.clip(x + atleast_kd(epsilon, x.ndim) * noise, lo, hi)
    direction = random.normal(tuple(x.shape))
    if p == 1:
        direction = direction.sign() * random.uniform(tuple(x.shape)).log().abs()  # Laplace
    d = math.prod(x.shape[1:])
    radius = epsilon * random.uniform((x.shape[0],)) ** (1.0 / d)
    return rescale_and_clip(x, direction, radius, p=p, bounds=bounds)
