"""NumPy models in the binarization test: gradient-free attacks pass, weak ones fail.

A NumPy model has no autodiff, so only the gradient-free attacks (Square,
HopSkipJump) can evaluate it, its feature layer must be given as a callable,
and a gradient attack must be refused with an error that names the attacks
that do work, both in :func:`binarization_test` and through ``pytest
--attack-test``. Nothing here imports an ML framework: this module runs in
the ``numpy`` tox env, where none is installed. Each test takes well under a
second except the one pytest subprocess.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from digits_models import held_out, mlp_weights, numpy_mlp
from helpers import identity, run, write

import attacks
from pytest_attacktest import binarization_test

EPS = 0.1
GRADIENT_FREE = "gradient-free attack (attacks.Square, attacks.HopSkipJump)"


def features(x: np.ndarray) -> np.ndarray:
    """The digits MLP's penultimate layer (the input of its final linear layer)."""
    w1, b1, _, _ = mlp_weights()
    return np.maximum(x @ w1 + b1, 0).astype(x.dtype)


def quantize(x: np.ndarray) -> np.ndarray:
    """Four grey levels: zero gradient almost everywhere (a gradient-masking defense)."""
    return np.round(x * 3) / 3


def quantized_model(x: np.ndarray) -> np.ndarray:
    return np.asarray(numpy_mlp()(quantize(x)))


def quantized_features(x: np.ndarray) -> np.ndarray:
    return features(quantize(x))


def square(queries: int) -> attacks.Square:
    return attacks.Square("linf", queries=queries, image_shape=(1, 8, 8))


def test_square_and_hopskipjump_pass_on_a_numpy_model() -> None:
    x, y = held_out(32)
    for attack in (square(1000), attacks.HopSkipJump("linf")):
        report = binarization_test(numpy_mlp(), x, y, attack=attack, epsilon=EPS, features=features)
        assert report.passed, report.summary()
        assert report.n_inconclusive == 0
        assert report.settings["clean_accuracy"] > 0.9


# A Square run of 5 queries reaches an ASR of about 0.25 on either model: the
# test tells a strong run of the same attack from a truncated one.
@pytest.mark.parametrize("attack", [identity, square(5)], ids=["identity", "square-5-queries"])
@pytest.mark.parametrize("quantized", [False, True], ids=["plain", "quantized"])
def test_weak_attacks_fail_on_a_numpy_model(attack: Any, quantized: bool) -> None:
    x, y = held_out(32)
    model, feats = (quantized_model, quantized_features) if quantized else (numpy_mlp(), features)
    report = binarization_test(model, x, y, attack=attack, epsilon=EPS, features=feats)
    assert report.verdict == "failed", report.summary()
    assert report.asr < 0.5


def test_square_passes_on_a_quantized_numpy_defense() -> None:
    # Square never looks at gradients, so masking them does not weaken it.
    x, y = held_out(32)
    report = binarization_test(
        quantized_model, x, y, attack=square(1000), epsilon=EPS, features=quantized_features
    )
    assert report.passed, report.summary()
    assert report.asr == 1.0


@pytest.mark.parametrize(
    "attack",
    [attacks.PGD("linf", steps=2), attacks.FGSM(), attacks.APGD("linf", steps=2)],
    ids=["PGD", "FGSM", "APGD"],
)
def test_gradient_attack_on_a_numpy_model_names_the_gradient_free_ones(
    attack: attacks.Attack,
) -> None:
    x, y = held_out(4)
    name = type(attack).__name__
    calls = []

    def counted_features(points: np.ndarray) -> np.ndarray:
        calls.append(len(points))
        return features(points)

    with pytest.raises(TypeError, match=f"{name} needs gradients") as info:
        binarization_test(numpy_mlp(), x, y, attack=attack, epsilon=EPS, features=counted_features)
    assert GRADIENT_FREE in str(info.value)
    assert calls == []  # refused up front, before any sampling, feature pass or fit


# The generated project uses the digits MLP of this directory and no ML framework.
CONFTEST = """
    import sys

    import pytest

    sys.path.insert(0, {tests!r})

    from digits_models import held_out, numpy_mlp
    from test_engine_numpy import features


    @pytest.fixture
    def model():
        return numpy_mlp()


    @pytest.fixture
    def data():
        return held_out(32)


    @pytest.fixture
    def penultimate():
        return features
"""

TESTS = """
    import sys

    import pytest

    import attacks

    pytestmark = pytest.mark.attack_test(epsilon=0.1, norm="linf")


    def test_square(attack_test, model, data, penultimate):
        attack = attacks.Square("linf", queries=1000, image_shape=(1, 8, 8))
        report = attack_test(model, *data, attack=attack, features=penultimate)
        assert report.passed and report.n_samples == 32
        # A NumPy user's attack test never loads an ML framework.
        assert not {{"torch", "tensorflow", "jax"}} & set(sys.modules)


    def test_pgd(attack_test, model, data, penultimate):
        attack_test(model, *data, attack=attacks.PGD("linf", steps=2), features=penultimate)
"""


@pytest.mark.usefixtures("plugin_autoload")
def test_plugin_runs_square_and_refuses_pgd_on_a_numpy_model(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(textwrap.dedent(CONFTEST).format(tests=str(Path(__file__).parent)))
    write(pytester, TESTS.format())
    result = run(pytester, "--attack-test", "-rf")
    result.assert_outcomes(passed=1, failed=1)
    for line in (
        "*test_attack.py::test_square * passed * 1.000 *",
        "E * TypeError: PGD needs gradients, but the model is a NumPy model; use a "
        f"{GRADIENT_FREE}*",
        "FAILED test_attack.py::test_pgd - TypeError: PGD needs gradients*",
    ):
        result.stdout.fnmatch_lines([line])
