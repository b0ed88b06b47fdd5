"""The binarization test discriminates on every framework with autodiff.

The same trained digits MLP (tests/digits_models.py) in PyTorch, Keras and
JAX: a strong attack passes, a non-attack fails, and on an input-quantization
defense plain PGD fails (its gradients are zero) while PGD with BPDA passes.
One scenario, one test, run per framework, so the frameworks cannot drift
apart. NumPy models (gradient-free attacks only) are in test_engine_numpy.py;
what only one framework has (Keras feature adapters, JAX traces, torch modules)
stays in that framework's module. CPU only; 32 samples, 30 to 40 attack steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import eagerpy as ep
import pytest
from digits_models import HIDDEN, held_out, jax_mlp, keras_mlp, mlp_weights, torch_mlp
from framework_support import framework_params, same_framework
from helpers import identity

import attacks
from attacks.base import Attack, RunContext
from pytest_attacktest import Report, binarization_test

EPS = 0.1
FRAMEWORKS = [p for p in framework_params() if p.id != "numpy"]


class RandomNoise(Attack):
    """One uniform random point of the Linf ball: a non-attack."""

    uses_gradient = False

    def run(self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None) -> Any:
        assert ctx.epsilon is not None
        noise = ctx.random.uniform(tuple(x.shape), -1.0, 1.0)
        return x + noise * ctx.epsilon.reshape((-1, 1))


@dataclass
class Case:
    """One framework's digits MLP, data, and input-quantization defense.

    ``test`` runs the binarization test on the undefended MLP, ``plain`` on the
    quantized defense, ``bpda`` on the same defense wrapped in BPDA.
    """

    test: Callable[..., Report]
    plain: Callable[..., Report]
    bpda: Callable[..., Report]
    pgd_steps: int


def _torch() -> Case:
    import torch

    x_np, y_np = held_out(32)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)

    def quantize(t: Any) -> Any:
        return torch.round(t * 3) / 3

    def plain(**kw: Any) -> Report:
        classifier = torch_mlp()
        defended = torch.nn.Sequential()
        defended.forward = lambda t: classifier(quantize(t))  # type: ignore[method-assign]
        defended.add_module("classifier", classifier)
        defended.eval()
        return binarization_test(defended, x, y, **kw)

    return Case(
        test=lambda **kw: binarization_test(torch_mlp(), x, y, **kw),
        plain=plain,
        bpda=lambda **kw: binarization_test(attacks.BPDA(torch_mlp(), quantize), x, y, **kw),
        pgd_steps=40,
    )


def _tensorflow() -> Case:
    import keras
    import tensorflow as tf

    x_np, y = held_out(32)
    x = tf.constant(x_np)

    def quantize(t: Any) -> Any:
        return tf.round(t * 3) / 3

    def plain(**kw: Any) -> Report:
        classifier = keras_mlp()
        inputs = keras.Input((64,))
        defended = keras.Model(inputs, classifier(keras.layers.Lambda(quantize)(inputs)))
        return binarization_test(defended, x, y, **kw)

    return Case(
        test=lambda **kw: binarization_test(keras_mlp(), x, y, **kw),
        plain=plain,
        bpda=lambda **kw: binarization_test(attacks.BPDA(keras_mlp(), quantize), x, y, **kw),
        pgd_steps=30,
    )


def _jax() -> Case:
    import jax.numpy as jnp

    x_np, y_np = held_out(32)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    w1, b1, w2, b2 = (jnp.asarray(w) for w in mlp_weights())

    def features(t: Any) -> Any:
        return jnp.maximum(t @ w1 + b1, 0)

    def head(h: Any) -> Any:
        return h @ w2 + b2

    def quantize(t: Any) -> Any:
        return jnp.round(t * 3) / 3

    def plain(**kw: Any) -> Report:
        def defended(t: Any) -> Any:
            return head(features(quantize(t)))

        return binarization_test(defended, x, y, features=lambda t: features(quantize(t)), **kw)

    def bpda(**kw: Any) -> Report:
        model = attacks.BPDA(lambda t: head(features(t)), quantize)
        return binarization_test(model, x, y, features=lambda t: features(model.through(t)), **kw)

    return Case(
        test=lambda **kw: binarization_test(jax_mlp(), x, y, features=features, **kw),
        plain=plain,
        bpda=bpda,
        pgd_steps=30,
    )


CASES = {"torch": _torch, "tensorflow": _tensorflow, "jax": _jax}


@pytest.fixture(params=FRAMEWORKS)
def case(request: pytest.FixtureRequest) -> Case:
    pytest.importorskip(request.param)
    return CASES[request.param]()


def test_pgd_passes_and_the_report_says_why(case: Case) -> None:
    report = case.test(attack=attacks.PGD("linf", steps=case.pgd_steps), epsilon=EPS, norm="linf")
    assert report.verdict == "passed", report.summary()
    assert report.passed
    assert report.asr >= 0.95
    assert report.n_inconclusive == 0
    assert report.n_samples == report.n_conclusive == 32
    assert all(s.distance <= EPS * (1 + 1e-5) for s in report.samples)
    assert set(report.timings) == {"sampling", "features", "fit", "attack", "verification"}
    assert report.settings["clean_accuracy"] > 0.85
    assert report.settings["n_inner"] == HIDDEN // 2 - 1  # from the 32 found features


@pytest.mark.parametrize("name", ["identity", "random-noise"])
def test_non_attacks_fail(case: Case, request: pytest.FixtureRequest, name: str) -> None:
    framework = request.node.callspec.params["case"]
    seen: list[Any] = []

    def spy(model: Any, x: Any, y: Any, epsilon: float) -> Any:
        seen.append(model(x))  # the binarized model, called natively on the framework's tensors
        return identity(model, x, y, epsilon)

    report = case.test(attack=spy if name == "identity" else RandomNoise(), epsilon=EPS)
    assert report.verdict == "failed", report.summary()
    assert not report.passed
    assert report.asr < 0.5
    if name == "identity":
        assert report.asr == 0.0
        assert report.n_success == 0
        assert same_framework(framework, seen[0]), type(seen[0])
        assert tuple(seen[0].shape) == (32, 2)


def test_quantized_input_plain_pgd_fails_and_pgd_with_bpda_passes(case: Case) -> None:
    """Gradient masking by input quantization: the test catches the weak evaluation."""
    plain = case.plain(attack=attacks.PGD(steps=30), epsilon=0.2)
    assert plain.verdict == "failed", plain.summary()
    assert plain.asr < 0.5
    # The diagnosis saw the zero gradients through the rounding (issue 15 item 2).
    assert {s.clean_grad for s in plain.samples if s.conclusive and not s.success} == {"zero"}
    assert plain.causes()[0].startswith("gradients look masked"), plain.causes()
    adaptive = case.bpda(attack=attacks.PGD(steps=30), epsilon=0.2)
    assert adaptive.passed, adaptive.summary()
    # Same defense, same verdict machinery: the conclusive samples agree.
    assert adaptive.n_conclusive == plain.n_conclusive
