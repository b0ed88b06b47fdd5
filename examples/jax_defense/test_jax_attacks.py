"""Attack tests of the example JAX defense: is its robustness evaluation strong enough?

Run with ``pytest --attack-test examples/jax_defense``. Without the flag both
tests are skipped. A JAX model is a function, so each test names its feature
function (the network up to its final linear layer).
"""

from __future__ import annotations

import pytest

import attacks
from pytest_attacktest import AttackTestFailed

EPSILON = 0.2  # Linf, inputs in [0, 1]


@pytest.mark.attack_test(epsilon=EPSILON, norm="linf")
@pytest.mark.xfail(
    strict=True,
    raises=AttackTestFailed,  # only a weak attack; a setup error still fails
    reason="plain PGD sees zero gradients through the input quantization (gradient "
    "masking): the binarization test shows this evaluation is too weak",
)
def test_plain_pgd_evaluation_is_too_weak(attack_test, model, data):
    attack_test(model, *data, attack=attacks.PGD("linf", steps=50), features=model.features)


@pytest.mark.attack_test(epsilon=EPSILON, norm="linf")
def test_pgd_with_bpda_evaluation_is_strong(attack_test, model, data):
    # Same forward pass as the defense, identity gradient through quantization.
    bpda = model.with_bpda()
    attack_test(bpda, *data, attack=attacks.PGD("linf", steps=50), features=bpda.features)
