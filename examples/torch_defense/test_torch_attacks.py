"""Attack tests of the example defense: is its robustness evaluation strong enough?

Run with ``pytest --attack-test examples/torch_defense``. Without the flag both
tests are skipped.
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
    attack_test(model, *data, attack=attacks.PGD("linf", steps=50))


@pytest.mark.attack_test(epsilon=EPSILON, norm="linf")
def test_pgd_with_bpda_evaluation_is_strong(attack_test, model, data):
    # Same forward pass as the defense, identity gradient through quantization.
    attack_test(model.with_bpda(), *data, attack=attacks.PGD("linf", steps=50))
