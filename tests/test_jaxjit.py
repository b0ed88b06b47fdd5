"""Compiled JAX gradients (attacks.jaxjit): same results as eager, and safe fallbacks.

The compiled path must be invisible except for speed: the same losses,
gradients and adversarial points as EagerPy's eager gradient; a model that
cannot be traced, or that draws hidden randomness, runs eagerly (decided once,
not retried every step); a model that keeps traced values in Python state
gets an error that says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import eagerpy as ep  # noqa: E402
from digits_models import held_out, jax_mlp, mlp_weights  # noqa: E402

import attacks  # noqa: E402
from attacks import jaxjit  # noqa: E402
from attacks.gradient import loss_and_logits  # noqa: E402
from attacks.losses import get_loss  # noqa: E402

pytestmark = pytest.mark.jax


def _closure(model: Any, n: int = 16) -> tuple[Any, ep.Tensor]:
    x, y = held_out(n)
    fn = loss_and_logits(attacks.Model(model), get_loss("ce"), ep.astensor(jnp.asarray(y)), None)
    return fn, ep.astensor(jnp.asarray(x))


def test_compiled_gradient_matches_eager() -> None:
    fn, x = _closure(jax_mlp())
    loss, logits, grad = jaxjit.value_and_grad(fn, x)
    assert jaxjit.fallback_reason(fn) == ""  # it was compiled
    e_loss, e_logits, e_grad = jaxjit.eager_value_and_grad(fn, x)
    np.testing.assert_allclose(np.asarray(loss.raw), np.asarray(e_loss.raw), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(logits.raw), np.asarray(e_logits.raw), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad.raw), np.asarray(e_grad.raw), rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(grad.raw)).max() > 0


@pytest.mark.parametrize(
    ("attack", "epsilon"),
    [
        (attacks.PGD("linf", steps=8), 0.1),
        (attacks.APGD("linf", steps=8), 0.1),
        (attacks.DDN(steps=8), None),
    ],
    ids=["PGD", "APGD", "DDN"],
)
def test_attacks_give_the_eager_result(
    attack: Any, epsilon: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole attacks, compiled and eager, agree to float rounding (same seed)."""
    x, y = held_out(16)
    model, xj, yj = jax_mlp(), jnp.asarray(x), jnp.asarray(y)
    compiled = np.asarray(attack(model, xj, yj, epsilon=epsilon))
    monkeypatch.setattr(jaxjit, "JAX_JIT", False)
    eager = np.asarray(attack(model, xj, yj, epsilon=epsilon))
    np.testing.assert_allclose(compiled, eager, atol=1e-6)
    assert np.abs(compiled - x).max() > 0.01  # the attack moved: the comparison means something


def test_untraceable_model_falls_back_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that reads its input into NumPy runs eagerly, and the trace is not retried."""
    mlp = jax_mlp()
    calls = []

    def host_reading(x: Any) -> Any:
        calls.append(1)
        if bool(jnp.any(x > 2.0)):  # Python control flow on values: fine eagerly, not traceable
            return mlp(x) * 0.0
        return mlp(x)

    fn, x = _closure(host_reading)
    traces = []
    original = jaxjit._compile
    monkeypatch.setattr(jaxjit, "_compile", lambda f, t: traces.append(1) or original(f, t))
    for _ in range(3):
        _, _, grad = jaxjit.value_and_grad(fn, x)
    assert len(traces) == 1
    assert "not traceable" in str(jaxjit.fallback_reason(fn))
    _, _, e_grad = jaxjit.eager_value_and_grad(fn, x)
    np.testing.assert_allclose(np.asarray(grad.raw), np.asarray(e_grad.raw), rtol=1e-6)
    assert len(calls) == 1 + 3 + 1  # one failed trace, three eager steps, one check


def test_hidden_randomness_is_not_frozen() -> None:
    """np.random inside the model: compiling would fix one draw, so it runs eagerly."""
    mlp = jax_mlp()
    rng = np.random.default_rng(0)

    def noisy(x: Any) -> Any:
        return mlp(x + jnp.asarray(rng.normal(0, 0.05, x.shape).astype(np.float32)))

    fn, x = _closure(noisy)
    _, first, _ = jaxjit.value_and_grad(fn, x)
    _, second, _ = jaxjit.value_and_grad(fn, x)
    assert "differ" in str(jaxjit.fallback_reason(fn))
    assert not np.allclose(np.asarray(first.raw), np.asarray(second.raw))


def test_randomized_model_under_eot_sees_fresh_noise() -> None:
    """EOT's passes stay independent when the inner JAX model draws with np.random."""
    mlp = jax_mlp()
    rng = np.random.default_rng(1)

    def noisy(x: Any) -> Any:
        return mlp(x + jnp.asarray(rng.normal(0, 0.05, x.shape).astype(np.float32)))

    eot = attacks.EOT(noisy, n=3)
    xs, ys = held_out(16)
    fn = loss_and_logits(eot, get_loss("ce"), ep.astensor(jnp.asarray(ys)), None)
    x = ep.astensor(jnp.asarray(xs))
    _, a, _ = jaxjit.value_and_grad(fn, x)
    _, b, _ = jaxjit.value_and_grad(fn, x)
    assert jaxjit.fallback_reason(fn)
    assert not np.allclose(np.asarray(a.raw), np.asarray(b.raw))


def test_traced_state_gets_a_clear_error() -> None:
    """A PRNG key kept on the model leaks out of any trace: say so instead of a JAX internal."""
    mlp = jax_mlp()

    class KeyOnSelf:
        def __init__(self) -> None:
            self.key = jax.random.key(0)

        def __call__(self, x: Any) -> Any:
            self.key, sub = jax.random.split(self.key)
            return mlp(x + 0.01 * jax.random.normal(sub, x.shape))

    fn, x = _closure(KeyOnSelf())
    with pytest.raises(RuntimeError, match="Python state"):
        jaxjit.value_and_grad(fn, x)


def test_switch_off_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jaxjit, "JAX_JIT", False)
    fn, x = _closure(jax_mlp())
    jaxjit.value_and_grad(fn, x)
    assert jaxjit.fallback_reason(fn) is None  # never looked at


def test_compiled_gradients_do_not_keep_a_run_alive() -> None:
    """Entries refer to the model and data weakly and go with them (no growing GPU memory)."""
    import gc
    import weakref

    x, y = held_out(16)
    model = attacks.Model(jax_mlp())
    fn = loss_and_logits(model, get_loss("ce"), ep.astensor(jnp.asarray(y)), None)
    jaxjit.value_and_grad(fn, ep.astensor(jnp.asarray(x)))
    assert jaxjit.fallback_reason(fn) == ""
    before = len(jaxjit._ENTRIES)
    ref = weakref.ref(model)
    del fn, model
    gc.collect()
    assert ref() is None
    assert len(jaxjit._ENTRIES) < before


def test_an_equal_closure_built_every_step_compiles_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacks may rebuild the loss closure per step; the same captured values reuse the program."""
    x, y = held_out(16)
    model, labels = attacks.Model(jax_mlp()), ep.astensor(jnp.asarray(y))
    compiles = []
    original = jaxjit._compile
    monkeypatch.setattr(jaxjit, "_compile", lambda k, t: compiles.append(1) or original(k, t))
    for _ in range(4):
        fn = loss_and_logits(model, get_loss("ce"), labels, None)
        jaxjit.value_and_grad(fn, ep.astensor(jnp.asarray(x)))
    assert len(compiles) == 1
    other = loss_and_logits(model, get_loss("margin"), labels, None)  # another loss: compiled anew
    jaxjit.value_and_grad(other, ep.astensor(jnp.asarray(x)))
    assert len(compiles) == 2


def _assert_scaled_mlp_gradient(grad: np.ndarray, x: np.ndarray, scale: float) -> None:
    """``grad`` is the input gradient of ``scale * jax_mlp()(x)`` summed, to float32's accuracy.

    Why not a ratio between two float32 gradients at rtol 1e-4: each entry is a
    sum over hidden units of terms of both signs, and where they nearly cancel
    the entry's rounding error is large next to the entry itself (a fresh
    machine saw one of 1024 ratios off by 3e-4). The reference here is exact
    arithmetic in float64, and the tolerance is float32's error bound for such
    a sum: a multiple of its unit roundoff times the sum of the terms'
    magnitudes. Samples with a hidden pre-activation within rounding of 0
    (where ReLU's derivative is ambiguous) are left out.
    """
    w1, b1, w2, _ = (w.astype(np.float64) for w in mlp_weights(0))
    pre = x.astype(np.float64) @ w1 + b1
    back = scale * (pre > 0) * w2.sum(axis=1)  # d(sum of logits) / d(hidden pre-activation)
    expected = back @ w1.T
    magnitude = (scale * (pre > 0) * np.abs(w2).sum(axis=1)) @ np.abs(w1.T)  # sum of |terms|
    clear = (np.abs(pre) > 1e-5).all(axis=1)
    assert clear.sum() >= len(x) - 1
    error = np.abs(grad - expected)[clear]
    bound = 64 * np.finfo(np.float32).eps * magnitude[clear]
    assert np.all(error <= bound), (
        f"not the gradient of step scale {scale:g}: worst error "
        f"{float((error / bound).max()):.3g} x float32's bound"
    )


def test_a_closure_with_new_values_every_step_stops_compiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recompiling every step would be slower than eager: after three unused programs, eager."""
    x, _ = held_out(16)
    mlp = jax_mlp()
    compiles = []
    original = jaxjit._compile
    monkeypatch.setattr(jaxjit, "_compile", lambda k, t: compiles.append(1) or original(k, t))
    results = []
    for step in range(6):
        scale = jnp.asarray(1.0 + step, dtype=jnp.float32)  # a new array captured every step

        def fn(t: ep.Tensor, scale: Any = scale) -> tuple[ep.Tensor, ep.Tensor]:
            logits = ep.astensor(mlp(t.raw) * scale)
            return logits.sum(), logits

        results.append(jaxjit.value_and_grad(fn, ep.astensor(jnp.asarray(x)))[2])
    assert len(compiles) == jaxjit._MAX_MISSES
    for step, grad in enumerate(results):  # compiled and eager steps use their own scale
        _assert_scaled_mlp_gradient(np.asarray(grad.raw), x, 1.0 + step)
    with pytest.raises(AssertionError, match="gradient of step scale 6"):
        _assert_scaled_mlp_gradient(np.asarray(results[4].raw), x, 6.0)  # a stale scale fails

    # A later closure of the same code that is reused gets compiled again after a while.
    stable = jnp.asarray(2.0, dtype=jnp.float32)

    def again(t: ep.Tensor, scale: Any = stable) -> tuple[ep.Tensor, ep.Tensor]:
        logits = ep.astensor(mlp(t.raw) * scale)
        return logits.sum(), logits

    again.__code__ = fn.__code__  # the same code object, as a rebuilt closure would have
    for _ in range(jaxjit._RETRY_AFTER + 3):
        jaxjit.value_and_grad(again, ep.astensor(jnp.asarray(x)))
    assert len(compiles) == jaxjit._MAX_MISSES + 1
    assert jaxjit.fallback_reason(again) == ""


# ---------------------------------------------------------------------- for_jax


@jaxjit.for_jax
def _scaled_clip(x: ep.Tensor, scale: ep.Tensor, bounds: Any) -> ep.Tensor:
    return ep.clip(x * scale.reshape((-1, 1)), *bounds)


def test_for_jax_matches_the_undecorated_function() -> None:
    x = ep.astensor(jnp.linspace(-1, 2, 12, dtype=jnp.float32).reshape((3, 4)))
    s = ep.astensor(jnp.asarray([0.5, 1.0, 2.0], dtype=jnp.float32))
    plain = _scaled_clip.__wrapped__(x, s, (0.0, 1.0))  # type: ignore[attr-defined]
    out = _scaled_clip(x, s, (0.0, 1.0))
    assert isinstance(out, ep.JAXTensor)
    np.testing.assert_array_equal(np.asarray(out.raw), np.asarray(plain.raw))
    other = _scaled_clip(x, s, (0.0, 0.5))  # another static value: another program
    assert float(np.asarray(other.raw).max()) == 0.5


def test_for_jax_leaves_other_frameworks_and_unhashable_statics_alone() -> None:
    x = ep.astensor(np.linspace(-1, 2, 12, dtype=np.float32).reshape((3, 4)))
    s = ep.astensor(np.ones(3, dtype=np.float32))
    assert isinstance(_scaled_clip(x, s, (0.0, 1.0)), ep.NumPyTensor)
    xj, sj = ep.astensor(jnp.asarray(x.raw)), ep.astensor(jnp.asarray(s.raw))
    bounds = [np.zeros(4, np.float32), np.ones(4, np.float32)]  # arrays: unhashable, eager
    out = _scaled_clip(xj, sj, bounds)
    np.testing.assert_array_equal(np.asarray(out.raw), np.clip(x.raw, 0, 1))


@pytest.mark.parametrize("p", [1.0, 2.0, float("inf")])
def test_compiled_rescaling_matches_eager(p: float, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (5, 64)).astype(np.float32))
    delta = jnp.asarray(rng.normal(size=(5, 64)).astype(np.float32))
    eps = ep.astensor(jnp.asarray([0.1, 0.5, 1.0, 2.0, 4.0], dtype=jnp.float32))
    compiled = np.asarray(attacks.rescale_and_clip(x, delta, eps, p=p))
    monkeypatch.setattr(jaxjit, "JAX_JIT", False)
    eager = np.asarray(attacks.rescale_and_clip(x, delta, eps, p=p))
    np.testing.assert_allclose(compiled, eager, rtol=1e-6, atol=1e-7)


def test_compiled_readout_fit_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_attacktest.engine.readout import fit_readouts

    rng = np.random.default_rng(1)
    features = ep.astensor(jnp.asarray(rng.normal(size=(4, 9, 32)).astype(np.float32)))
    labels = np.array([0] * 8 + [1])
    compiled = fit_readouts(features, labels, 0.9)
    monkeypatch.setattr(jaxjit, "JAX_JIT", False)
    eager = fit_readouts(features, labels, 0.9)
    assert compiled.fitted.all()
    np.testing.assert_array_equal(compiled.fitted, eager.fitted)
    for name in ("weight", "bias"):
        a, b = getattr(compiled, name).raw, getattr(eager, name).raw
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(compiled.train_margin, eager.train_margin, rtol=1e-4)
