"""Whether a returned point may count at all: inside the bounds, inside the ball, finite.

Why one module: the binarization test and the claim gate both judge points an
attack returned, and a point the test would refuse (outside the ball by more
than rounding, outside the bounds, NaN) must never count for the claim either.
With one implementation the two cannot drift apart. What makes a point
*adversarial* differs (the binarized readout's sign there, the real model's
argmax here) and stays with each caller, as does the detector's verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import eagerpy as ep
import numpy as np

from attacks import backend
from attacks.geometry import lp_norms

__all__ = ["BALL_TOLERANCE", "ROUNDING", "Admissibility", "admissibility", "ball_tolerance"]

#: Relative tolerance when checking that an attack stayed inside the ball.
BALL_TOLERANCE = 1e-5
#: Absolute slack for float32 rounding of x + delta (half an ulp near 1, doubled).
ROUNDING = 2.4e-7


def ball_tolerance(dtype: Any) -> tuple[float, float]:
    """(relative, absolute) slack of the ball check for inputs of ``dtype``.

    Float32's (:data:`BALL_TOLERANCE`, :data:`ROUNDING`) for float32 and
    float64; for half-precision inputs two of their ulps near 1, so that a
    correct attack's ``x + delta``, rounded in float16 (0.200195 at 0.2), is
    not read as outside the ball.
    """
    ulp = backend.half_precision_ulp(dtype)
    if ulp is None:
        return BALL_TOLERANCE, ROUNDING
    return max(BALL_TOLERANCE, 2 * ulp), 2 * ulp


@dataclass(frozen=True)
class Admissibility:
    """Per returned point: its distance and which admissibility check it fails."""

    #: Lp distance from the clean point, float64 (NaN or inf for non-finite points).
    distance: np.ndarray
    #: Farther than epsilon by more than the dtype's rounding.
    outside_ball: np.ndarray
    #: Some coordinate below the lower or above the upper bound.
    outside_bounds: np.ndarray
    #: The distance is not finite (NaN or infinite coordinates).
    nonfinite: np.ndarray
    #: The rounding slack of the ball check, in units of the norm.
    slack: float

    @property
    def inside(self) -> np.ndarray:
        """May count: inside the ball and the bounds, and finite."""
        inside: np.ndarray = ~self.outside_ball & ~self.outside_bounds & ~self.nonfinite
        return inside

    @property
    def moved(self) -> np.ndarray:
        """Differs from the clean point beyond rounding (a non-finite point moved too)."""
        moved: np.ndarray = ~(self.distance <= self.slack)
        return moved


def admissibility(
    x: ep.Tensor, x_adv: ep.Tensor, p: float, epsilon: float, bounds: tuple[float, float]
) -> Admissibility:
    """Check returned points ``x_adv`` against the clean points ``x`` (both ``(N, ...)``)."""
    lo, hi = bounds
    distance = backend.to_numpy(lp_norms(x_adv - x, p)).astype(np.float64)
    flat = x_adv.flatten(start=1)
    relative, rounding = ball_tolerance(x.dtype)
    slack = rounding * (1 if math.isinf(p) else flat.shape[1] ** (1 / p))
    outside_bounds = backend.to_numpy(ep.logical_or(flat.min(axis=1) < lo, flat.max(axis=1) > hi))
    return Admissibility(
        distance=distance,
        outside_ball=distance > epsilon * (1 + relative) + slack,
        outside_bounds=np.asarray(outside_bounds).astype(bool),
        nonfinite=~np.isfinite(distance),
        slack=float(slack),
    )
