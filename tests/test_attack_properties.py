"""Property tests for every attack of the library: the threat-model contract.

For random batches, budgets and seeds (hypothesis), on PyTorch, TensorFlow and
JAX for gradient attacks and on NumPy, PyTorch and JAX for the others: results
keep shape, dtype and type; lie inside the bounds and the epsilon ball; inputs
are not mutated; the same seed gives the same result.
Each registry entry uses a small step budget: these are contract tests, the
strength tests live beside each attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from digits_models import digits, native_mlp
from framework_support import to_native, to_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attacks


def _overshooting(model: Any, x: Any, y: Any, epsilon: Any) -> Any:
    """A user attack that ignores the budget and the bounds: the adapter must project it."""
    return x * 3 - 1


#: (id, factory(seed) -> attack, budgets to draw epsilon from, frameworks)
Entry = tuple[str, Callable[[int], Any], tuple[float, float], tuple[str, ...]]

GRADIENT = ("torch", "tensorflow", "jax")
ALL = ("numpy", "torch", "jax")

REGISTRY: list[Entry] = [
    ("FGSM", lambda s: attacks.FGSM(seed=s), (0.01, 0.3), GRADIENT),
    ("PGD-linf", lambda s: attacks.PGD("linf", steps=3, seed=s), (0.01, 0.3), GRADIENT),
    ("PGD-l2", lambda s: attacks.PGD("l2", steps=3, seed=s), (0.1, 3.0), GRADIENT),
    ("PGD-l1", lambda s: attacks.PGD("l1", steps=3, seed=s), (0.5, 10.0), GRADIENT),
    ("APGD-linf", lambda s: attacks.APGD("linf", steps=4, seed=s), (0.01, 0.3), GRADIENT),
    ("APGD-l2", lambda s: attacks.APGD("l2", steps=4, seed=s), (0.1, 3.0), GRADIENT),
    ("APGD-l1", lambda s: attacks.APGD("l1", steps=4, seed=s), (0.5, 10.0), GRADIENT),
    ("FMN-l2", lambda s: attacks.FMN("l2", steps=4, seed=s), (0.1, 3.0), GRADIENT),
    ("FMN-linf", lambda s: attacks.FMN("linf", steps=4, seed=s), (0.01, 0.3), GRADIENT),
    ("DDN", lambda s: attacks.DDN(steps=4, seed=s), (0.1, 3.0), GRADIENT),
    (
        "CW",
        lambda s: attacks.CarliniWagnerL2(binary_search_steps=2, steps=4, seed=s),
        (0.1, 3.0),
        GRADIENT,
    ),
    ("Square-linf", lambda s: attacks.Square("linf", queries=20, seed=s), (0.01, 0.3), ALL),
    ("Square-l2", lambda s: attacks.Square("l2", queries=20, seed=s), (0.1, 3.0), ALL),
    ("HSJ-l2", lambda s: attacks.HopSkipJump("l2", steps=2, seed=s), (0.1, 3.0), ALL),
    (
        "FromFunction",
        lambda s: attacks.FromFunction(_overshooting, norm="l2", uses_gradient=False),
        (0.1, 3.0),
        ALL,
    ),
]

FLOAT32_ROUNDING = 1.2e-7


def _installed() -> set[str]:
    import importlib.util

    return {"numpy"} | {f for f in ("torch", "tensorflow", "jax") if importlib.util.find_spec(f)}


INSTALLED = _installed()


def _cases(jax: bool) -> list[Any]:
    cases = []
    for name, factory, budget, frameworks in REGISTRY:
        for framework in frameworks:
            if (framework == "jax") != jax:
                continue
            marks = [] if framework in INSTALLED else [pytest.mark.skip(f"{framework} missing")]
            cases.append(
                pytest.param(factory, budget, framework, id=f"{name}-{framework}", marks=marks)
            )
    return cases


_DRAWS = {
    "n": st.integers(1, 6),
    "start": st.integers(0, 1700),
    "fraction": st.floats(0.0, 1.0),
    "seed": st.integers(0, 2**16),
    "per_sample": st.booleans(),
}


@pytest.mark.parametrize(("factory", "budget", "framework"), _cases(jax=False))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_DRAWS)
def test_attack_contract(
    factory: Callable[[int], Any],
    budget: tuple[float, float],
    framework: str,
    n: int,
    start: int,
    fraction: float,
    seed: int,
    per_sample: bool,
) -> None:
    model = native_mlp(framework)
    _check_contract(factory, budget, model, framework, n, start, fraction, seed, per_sample)


@pytest.mark.parametrize(("factory", "budget", "framework"), _cases(jax=True))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**{**_DRAWS, "n": st.sampled_from([1, 5])})
def test_attack_contract_jax(
    factory: Callable[[int], Any],
    budget: tuple[float, float],
    framework: str,
    n: int,
    start: int,
    fraction: float,
    seed: int,
    per_sample: bool,
) -> None:
    """The same contract on JAX, with fewer examples.

    XLA:CPU compiles every new shape of every operation (about 50 ms each) and
    each attack run's gradient (about half a second), so a JAX example costs
    ten times a PyTorch one: two batch sizes (one and several samples) and
    three examples per attack. One ``attacks.Model`` per example lets the
    reproducibility run reuse the first run's compiled gradient, as a user
    attacking one model twice would.
    """
    model = attacks.Model(native_mlp(framework))
    _check_contract(factory, budget, model, framework, n, start, fraction, seed, per_sample)


def _check_contract(
    factory: Callable[[int], Any],
    budget: tuple[float, float],
    model: Any,
    framework: str,
    n: int,
    start: int,
    fraction: float,
    seed: int,
    per_sample: bool,
) -> None:
    """Type, dtype, shape, bounds, ball, no mutation and reproducibility of one attack run."""
    x_all, y_all = digits()
    x, y = x_all[start : start + n], y_all[start : start + n]
    low, high = budget
    eps_value = low + fraction * (high - low)
    epsilon: Any = eps_value
    if per_sample:
        epsilon = np.linspace(low, eps_value, len(x))
        epsilon[0] = max(epsilon[0], low)
    xn, yn = to_native(framework, x), to_native(framework, y)
    attack = factory(seed)

    result = attack(model, xn, yn, epsilon=epsilon)

    assert type(result) is type(xn)
    adv = to_numpy(result)
    assert adv.shape == x.shape
    assert adv.dtype == x.dtype
    assert adv.min() >= 0.0
    assert adv.max() <= 1.0
    moved = np.abs(adv.astype(np.float64) - x).reshape(len(x), -1)
    p = attack.p
    norms = moved.max(axis=1) if math.isinf(p) else (moved**p).sum(axis=1) ** (1 / p)
    slack = FLOAT32_ROUNDING * (1 if math.isinf(p) else moved.shape[1] ** (1 / p))
    assert (norms <= np.broadcast_to(epsilon, (len(x),)) + slack).all(), (norms, epsilon)
    np.testing.assert_array_equal(to_numpy(xn), x)
    np.testing.assert_array_equal(to_numpy(yn), y)
    again = to_numpy(factory(seed)(model, xn, yn, epsilon=epsilon))
    np.testing.assert_array_equal(again, adv)
