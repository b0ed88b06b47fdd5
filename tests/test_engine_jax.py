"""The binarization test on JAX models: what only JAX has.

A JAX model is a pure function, so its features are always given as a
callable (the network up to the input of its final linear layer). The
discrimination scenarios shared with PyTorch and Keras (a strong attack
passes, a non-attack fails, BPDA breaks input quantization) run per framework
in test_engine_discrimination.py; here: a straight-through estimator breaks
the quantization as BPDA does, and the attack loop runs on the device (nothing
in it may read a value back to the host).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from digits_models import held_out, jax_mlp, mlp_weights
from helpers import identity

import attacks
from attacks import backend
from attacks.base import RunContext
from pytest_attacktest import binarization_test
from pytest_attacktest.engine import binarization as engine

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import eagerpy as ep  # noqa: E402

pytestmark = pytest.mark.jax

EPS = 0.1
STEPS = 30


def _data(n: int = 32) -> tuple[Any, Any]:
    x, y = held_out(n)
    return jnp.asarray(x), jnp.asarray(y)


def _parts() -> tuple[Any, Any]:
    """The digits MLP split at its final linear layer: ``features`` and ``head``."""
    w1, b1, w2, b2 = (jnp.asarray(w) for w in mlp_weights())

    def features(x: Any) -> Any:
        return jnp.maximum(x @ w1 + b1, 0)

    def head(h: Any) -> Any:
        return h @ w2 + b2

    return features, head


# ---------------------------------------------------------------------- gradient masking


def _quantize(t: Any) -> Any:
    return jnp.round(t * 3) / 3


def _straight_through(t: Any) -> Any:
    return t + jax.lax.stop_gradient(_quantize(t) - t)


def test_straight_through_quantization_breaks_like_bpda() -> None:
    """A straight-through estimator in JAX (stop_gradient) gets BPDA's per-sample results.

    The plain-PGD-fails and BPDA-passes halves of this scenario run on every
    framework in test_engine_discrimination.py.
    """
    features, head = _parts()
    x, y = _data()
    bpda = attacks.BPDA(lambda t: head(features(t)), _quantize)
    adaptive = binarization_test(
        bpda,
        x,
        y,
        attack=attacks.PGD(steps=STEPS),
        epsilon=0.2,
        features=lambda t: features(bpda.through(t)),
    )
    assert adaptive.passed, adaptive.summary()

    def through(t: Any) -> Any:
        return head(features(_straight_through(t)))

    st = binarization_test(
        through,
        x,
        y,
        attack=attacks.PGD(steps=STEPS),
        epsilon=0.2,
        features=lambda t: features(_straight_through(t)),
    )
    assert st.passed, st.summary()
    assert [s.success for s in st.samples] == [s.success for s in adaptive.samples]


# ---------------------------------------------------------------------- no host round trips


@pytest.fixture(scope="module")
def binarized() -> tuple[Any, Any, Any]:
    """The engine's binarized model for the digits MLP (the attack phase is skipped)."""
    features, _ = _parts()
    x, y = _data()
    captured: dict[str, Any] = {}

    def capture(self: Any, binarized: Any, x: Any, zeros: Any, eps: Any) -> Any:
        captured.update(model=binarized, x=x, zeros=zeros)
        return x

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine._Engine, "_run_attack", capture)
        binarization_test(jax_mlp(), x, y, attack=identity, epsilon=EPS, features=features)
    return captured["model"], captured["x"], captured["zeros"]


def _run_traced(attack: Any, model: Any, x: Any, y: Any, epsilon: float) -> Any:
    """``attack.run`` traced by JAX: any host read of a value in the loop raises.

    On the CPU backend arrays live in host memory, so
    ``jax.transfer_guard_device_to_host`` never fires there; a trace has no
    values at all, so ``.item()``, ``float()``, ``bool()`` and NumPy
    conversions of anything computed in the loop fail on every backend.
    """

    def run(raw: Any) -> Any:
        xt = ep.astensor(raw)
        eps = ep.astensor(jnp.full((raw.shape[0],), epsilon, raw.dtype))
        ctx = RunContext(model, eps, attack.p, backend.RandomSource(0, xt))
        return attack.run(ctx, xt, y, None).raw

    return jax.make_jaxpr(run)(x.raw)


@pytest.mark.parametrize(
    "attack", [attacks.PGD("linf", steps=3), attacks.APGD(steps=4)], ids=["PGD", "APGD"]
)
def test_attack_loop_on_the_binarized_model_reads_nothing_back(
    attack: Any, binarized: tuple[Any, Any, Any]
) -> None:
    """The engine's attack phase: routing, readouts, loss and steps all stay on the device."""
    model, x, zeros = binarized
    epsilon = EPS
    jaxpr = _run_traced(attack, model, x, zeros, epsilon)
    assert len(jaxpr.eqns) > 0
    # And for real, under JAX's guard (which fires on accelerators): same points as unguarded.
    with jax.transfer_guard_device_to_host("disallow"):
        xt = ep.astensor(x.raw)
        ctx = RunContext(
            model, ep.full_like(xt[:, 0], epsilon), attack.p, backend.RandomSource(0, xt)
        )
        guarded = np.asarray(attack.run(ctx, xt, zeros, None).raw)
    ctx = RunContext(model, ep.full_like(xt[:, 0], epsilon), attack.p, backend.RandomSource(0, xt))
    np.testing.assert_array_equal(guarded, np.asarray(attack.run(ctx, xt, zeros, None).raw))


def test_the_trace_check_catches_a_host_read() -> None:
    """The check above can fail: an attack that reads a value per step is caught."""

    class Reading(attacks.PGD):
        def run(self, ctx: RunContext, x: Any, y: Any, target: Any) -> Any:
            out = super().run(ctx, x, y, target)
            float(out.sum().item())  # a host read, as an early stop would do
            return out

    model = attacks.Model(jax_mlp())
    x, y = _data(4)
    with pytest.raises(jax.errors.ConcretizationTypeError):
        _run_traced(Reading(steps=2), model, ep.astensor(x), ep.astensor(y), EPS)
