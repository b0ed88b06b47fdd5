"""Training and validation points of the binarization test, for a whole chunk at once.

Why batched: the reference implementation draws each sample's points in a
Python loop. Here one call draws, for S clean samples, S x n_inner inner points
and S x n_boundary boundary points as one tensor on the data's device.

Geometry (Zimmermann et al., 2022):
- inner points (label 0) lie strictly inside the ball, within ``(1 - gap) * eps``
  of the clean point; the clean point itself is one of them;
- boundary points (label 1) lie *on* the epsilon sphere after clipping to the
  bounds (exact, by clipping-aware rescaling), or on its corners for Linf.
The gap keeps the readout's task well posed: no inner point can be arbitrarily
close to a boundary point.
"""

from __future__ import annotations

import math

import eagerpy as ep

from attacks import jaxjit
from attacks.backend import RandomSource
from attacks.geometry import atleast_kd, random_point_in_ball
from attacks.rescaling import rescale_and_clip


@jaxjit.for_jax
def repeat_each(x: ep.Tensor, k: int) -> ep.Tensor:
    """``(S, ...) -> (S * k, ...)``, each sample repeated k times consecutively."""
    s = x.shape[0]
    tiled = ep.tile(x.expand_dims(1), (1, k) + (1,) * (x.ndim - 1))
    return tiled.reshape((s * k, *tuple(x.shape[1:])))


def inner_points(
    x: ep.Tensor,
    n: int,
    epsilon: ep.Tensor,
    p: float,
    bounds: tuple[float, float],
    random: RandomSource,
    radius: float,
) -> ep.Tensor:
    """``n`` random points per sample within ``radius * eps`` of it: ``(S, n, ...)``.

    The same law as the attacks' random starts
    (:func:`attacks.geometry.random_point_in_ball`).
    """
    base = repeat_each(x, n)
    eps = repeat_each(epsilon, n) * radius
    points = random_point_in_ball(random, bounds, base, eps, p)
    return points.reshape((x.shape[0], n, *tuple(x.shape[1:])))


def boundary_points(
    x: ep.Tensor,
    n: int,
    epsilon: ep.Tensor,
    p: float,
    bounds: tuple[float, float],
    random: RandomSource,
    corners: bool = False,
) -> ep.Tensor:
    """``n`` points per sample on the epsilon sphere after clipping: ``(S, n, ...)``.

    ``corners`` (Linf only): every coordinate moves by +-eps, then is clipped;
    otherwise a random direction is rescaled so its clipped norm is exactly eps
    (a coordinate of Linf reaches eps exactly).
    """
    s = x.shape[0]
    base = repeat_each(x, n)
    eps = repeat_each(epsilon, n)
    shape = tuple(base.shape)
    lo, hi = bounds
    if corners:
        if not math.isinf(p):
            raise ValueError("corner boundary points exist only for norm='linf'")
        points = ep.clip(base + atleast_kd(eps, base.ndim) * random.sign(shape), lo, hi)
    else:
        direction = random.uniform(shape, -1.0, 1.0) if math.isinf(p) else random.normal(shape)
        points = rescale_and_clip(base, direction, eps, p=p, bounds=bounds)
    return points.reshape((s, n, *tuple(x.shape[1:])))
