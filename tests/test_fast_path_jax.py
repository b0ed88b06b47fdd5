"""The JAX fast path: PGD and APGD steps compiled whole by ``jax.jit`` (``compile=True``).

Why these tests: a compiled step that differed from the eager one would report
adversarial examples the eager attack does not find (or miss them), and a model
with hidden randomness compiled once would be attacked at one frozen draw, which
makes an attack look stronger than it is. So: the compiled loop must give the
eager examples, and a model whose traces differ must run eagerly, with a reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from digits_models import held_out, native_mlp

import attacks
from attacks import jaxjit

pytestmark = pytest.mark.jax

jnp = pytest.importorskip("jax.numpy")

N, EPS = 32, 0.08

ATTACKS: dict[str, Callable[[Any], attacks.Attack]] = {
    "pgd-linf": lambda c: attacks.PGD("linf", steps=8, compile=c),
    "pgd-l2-restarts": lambda c: attacks.PGD("l2", steps=5, restarts=2, loss="margin", compile=c),
    "apgd-linf": lambda c: attacks.APGD("linf", steps=12, compile=c),
    "apgd-t": lambda c: attacks.APGD(
        "linf", steps=8, targeted=True, n_target_classes=2, loss="dlr", compile=c
    ),
}


def _data() -> tuple[Any, np.ndarray]:
    x, y = held_out(N)
    return jnp.asarray(x), y


@pytest.mark.parametrize("name", list(ATTACKS))
def test_compiled_steps_give_the_eager_examples(name: str) -> None:
    model = native_mlp("jax")
    x, y = _data()
    eps = 1.0 if "l2" in name else EPS
    eager = np.asarray(ATTACKS[name](False)(model, x, y, epsilon=eps))
    attack = ATTACKS[name](True)
    fast = np.asarray(attack(model, x, y, epsilon=eps))
    status = attack.last_fast_path  # type: ignore[attr-defined]
    assert status.kind == "jax.jit", status.reason
    assert status.captured
    np.testing.assert_allclose(fast, eager, atol=1e-5)
    logits = np.asarray(model(jnp.asarray(fast)))
    eager_logits = np.asarray(model(jnp.asarray(eager)))
    assert ((logits.argmax(1) != y) == (eager_logits.argmax(1) != y)).all()
    assert (logits.argmax(1) != y).mean() > 0.2  # the attack does something here


def test_auto_keeps_jax_steps_eager_without_a_warning() -> None:
    model = native_mlp("jax")
    x, y = _data()
    attack = attacks.PGD(steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attack(model, x, y, epsilon=EPS)
    assert attack.last_fast_path is not None
    assert attack.last_fast_path.kind == "eager"
    assert "compile=True" in attack.last_fast_path.reason


def test_a_model_with_hidden_randomness_runs_eagerly() -> None:
    """np.random in the model: two traces bake different noise, so nothing is compiled."""
    mlp = native_mlp("jax")
    rng = np.random.default_rng(0)

    def noisy(x: Any) -> Any:
        return mlp(x + jnp.asarray(rng.normal(0, 0.01, x.shape[1:]), dtype=x.dtype))

    x, y = _data()
    attack = attacks.PGD(steps=4, compile=True)
    with pytest.warns(RuntimeWarning, match="two traces of the step differ"):
        attack(noisy, x, y, epsilon=EPS)
    assert attack.last_fast_path is not None
    assert attack.last_fast_path.kind == "eager"
    assert not attack.last_fast_path.captured


def test_torch_compile_options_and_the_jit_switch_keep_jax_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = native_mlp("jax")
    x, y = _data()
    attack = attacks.PGD(steps=3, compile={"backend": "eager"})
    with pytest.warns(RuntimeWarning, match="torch.compile arguments is for PyTorch"):
        attack(model, x, y, epsilon=EPS)
    assert attack.last_fast_path is not None
    assert attack.last_fast_path.kind == "eager"
    monkeypatch.setattr(jaxjit, "JAX_JIT", False)
    attack = attacks.PGD(steps=3, compile=True)
    with pytest.warns(RuntimeWarning, match="JAX_JIT is False"):
        attack(model, x, y, epsilon=EPS)
    assert attack.last_fast_path is not None
    assert attack.last_fast_path.kind == "eager"


def test_the_engine_passes_with_a_compiled_attack() -> None:
    """The binarization test with a jitted PGD on the JAX MLP (features: its hidden layer)."""
    from digits_models import mlp_weights

    from pytest_attacktest import binarization_test

    w1, b1, _, _ = (jnp.asarray(w) for w in mlp_weights(0))

    def features(x: Any) -> Any:
        return jnp.maximum(x @ w1 + b1, 0)

    x, y = _data()
    attack = attacks.PGD("linf", steps=20, compile=True)
    report = binarization_test(
        native_mlp("jax"), x, y, attack=attack, epsilon=0.1, features=features, n_inner=8
    )
    assert attack.last_fast_path is not None
    assert attack.last_fast_path.kind == "jax.jit", attack.last_fast_path.reason
    assert report.verdict == "passed", report.summary()
