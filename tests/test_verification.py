"""One admissibility check for returned points: the binarization test's and the claim gate's."""

from __future__ import annotations

import math

import eagerpy as ep
import numpy as np
import pytest

from pytest_attacktest.engine import binarization, claims
from pytest_attacktest.engine.verification import BALL_TOLERANCE, admissibility, ball_tolerance


@pytest.mark.parametrize("p", [2.0, math.inf])
def test_admissibility_judges_ball_bounds_finiteness_and_movement(p: float) -> None:
    x = np.full((6, 8), 0.5, dtype=np.float32)
    eps = 0.1
    step = np.zeros_like(x)
    step[:, 0] = 1.0  # one coordinate moves: every p-norm is |delta_0|
    adv = x.copy()
    adv[0] += eps * step[0]  # on the sphere: inside
    adv[1] += eps * (1 + BALL_TOLERANCE / 2) * step[1]  # within the tolerance: inside
    adv[2] += eps * 1.001 * step[2]  # a clear overshoot: outside the ball
    adv[3, 1] = 1.5  # outside the bounds (and the ball)
    adv[4, 0] = np.nan  # not finite
    # adv[5] is the clean point: inside, not moved
    checked = admissibility(ep.astensor(x), ep.astensor(adv), p, eps, (0.0, 1.0))
    assert checked.inside.tolist() == [True, True, False, False, False, True]
    assert checked.outside_ball.tolist() == [False, False, True, True, False, False]
    assert checked.outside_bounds.tolist() == [False, False, False, True, False, False]
    assert checked.nonfinite.tolist() == [False, False, False, False, True, False]
    assert checked.moved.tolist() == [True, True, True, True, True, False]


def test_half_precision_gets_its_own_rounding_slack() -> None:
    assert ball_tolerance(np.float32) == ball_tolerance(np.float64)
    assert ball_tolerance(np.float16)[1] > ball_tolerance(np.float32)[1]


def test_the_engine_and_the_claim_gate_use_the_same_check() -> None:
    """Neither computes its own ball or bounds check any more: they cannot drift apart."""
    import inspect

    for module in (binarization, claims):
        source = inspect.getsource(module)
        assert "admissibility(" in source
        assert "ball_tolerance(" not in source
