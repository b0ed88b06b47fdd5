"""The binarization test on JAX models: the discrimination tests of the PyTorch engine.

A JAX model is a pure function, so its features are always given as a
callable (the network up to the input of its final linear layer). The same
verdicts must come out as for PyTorch (``tests/test_binarization.py``): a
strong attack passes, a non-attack fails, gradient masking by input
quantization makes plain PGD fail and PGD with BPDA pass. And the attack loop
must run on the device: nothing in it may read a value back to the host.
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
from pytest_attacktest import binarization as engine
from pytest_attacktest import binarization_test

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


def test_pgd_passes_on_a_jax_model() -> None:
    features, _ = _parts()
    x, y = _data()
    report = binarization_test(
        jax_mlp(),
        x,
        y,
        attack=attacks.PGD("linf", steps=STEPS),
        epsilon=EPS,
        features=features,
    )
    assert report.passed, report.summary()
    assert report.n_conclusive == 32
    assert all(s.distance <= EPS * (1 + 1e-5) for s in report.samples)


def test_identity_attack_fails_and_gets_a_jax_function() -> None:
    features, _ = _parts()
    x, y = _data()
    seen: list[Any] = []

    def spy(model: Any, x: Any, y: Any, epsilon: float) -> Any:
        seen.append(model(x))  # the binarized model, called natively on JAX arrays
        return identity(model, x, y, epsilon)

    report = binarization_test(jax_mlp(), x, y, attack=spy, epsilon=EPS, features=features)
    assert report.verdict == "failed", report.summary()
    assert report.asr == 0.0
    assert isinstance(seen[0], jax.Array)
    assert seen[0].shape == (32, 2)


# ---------------------------------------------------------------------- gradient masking


def _quantize(t: Any) -> Any:
    return jnp.round(t * 3) / 3


def _straight_through(t: Any) -> Any:
    return t + jax.lax.stop_gradient(_quantize(t) - t)


def test_quantized_input_plain_pgd_fails_and_bpda_passes() -> None:
    """jnp.round has zero gradient: plain PGD stands still; BPDA (two ways) breaks it."""
    features, head = _parts()
    x, y = _data()

    def defended(t: Any) -> Any:
        return head(features(_quantize(t)))

    plain = binarization_test(
        defended,
        x,
        y,
        attack=attacks.PGD(steps=STEPS),
        epsilon=0.2,
        features=lambda t: features(_quantize(t)),
    )
    assert plain.verdict == "failed", plain.summary()
    assert plain.asr < 0.5
    # The diagnosis saw the zero gradients through the rounding (issue 15 item 2).
    assert {s.clean_grad for s in plain.samples if s.conclusive and not s.success} == {"zero"}
    assert plain.causes()[0].startswith("gradients look masked"), plain.causes()

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
    assert adaptive.n_conclusive == plain.n_conclusive  # the same defense, the same setups

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
