"""Function and third-party attacks are seeded from the test's seed; the caller's RNGs are kept.

Such attacks draw from the frameworks' global RNGs (``torch.rand``,
``np.random``, Foolbox's random start), so without seeding the same test gave
another ASR, and sometimes another verdict, on every run. The engine seeds
those RNGs with its seed around the attack (:mod:`attacks.seeding`) and puts
the caller's states back afterwards.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from digits_models import held_out, torch_mlp

import attacks
from attacks import seeding
from attacks.external import FromFoolbox, FromFunction
from pytest_attacktest import binarization_test

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

EPS = 0.1


def _data(n: int = 32) -> tuple[Any, Any]:
    x, y = held_out(n)
    return torch.from_numpy(x), torch.from_numpy(y)


def _rng_states() -> tuple[Any, Any, Any]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _assert_same_states(before: tuple[Any, Any, Any], after: tuple[Any, Any, Any]) -> None:
    assert torch.equal(before[0], after[0])
    assert before[1][0] == after[1][0]
    np.testing.assert_array_equal(before[1][1], after[1][1])
    assert before[1][2:] == after[1][2:]
    assert before[2] == after[2]


def _noise_from_every_global_rng(points: list[Any]) -> Any:
    """A random 'attack' drawing from torch's, NumPy's and Python's global RNGs; it records."""

    def attack(model: Any, x: Any, y: Any, epsilon: float) -> Any:
        noise = torch.rand(x.shape) * 2 - 1
        noise *= float(np.random.uniform(0.5, 1.0)) * random.uniform(0.5, 1.0)
        out = (x + epsilon * noise).clamp(0, 1)
        points.append(out.clone())
        return out

    return attack


def test_function_attack_is_seeded_from_the_test_seed() -> None:
    x, y = _data()
    points: list[Any] = []
    attack = _noise_from_every_global_rng(points)
    model = torch_mlp()  # building it draws torch's initialization: before the snapshot
    before = _rng_states()
    first = binarization_test(model, x, y, attack=attack, epsilon=EPS, seed=3)
    _assert_same_states(before, _rng_states())  # the caller's streams are untouched
    torch.rand(5), np.random.rand(5), random.random()  # the caller moves on
    again = binarization_test(model, x, y, attack=attack, epsilon=EPS, seed=3)
    binarization_test(model, x, y, attack=attack, epsilon=EPS, seed=4)
    assert torch.equal(points[0], points[1])  # same seed: the same random draws
    assert not torch.equal(points[0], points[2])  # another seed: other draws
    assert (first.verdict, first.asr) == (again.verdict, again.asr)
    assert [s.distance for s in first.samples] == [s.distance for s in again.samples]
    assert first.verdict != "passed", first.summary()  # noise is no attack


def test_function_attack_outside_the_test_keeps_its_own_randomness() -> None:
    """FromFunction with the default seed None does not seed; with a seed it does."""
    x, _ = held_out(8)
    points: list[Any] = []
    model, labels = torch_mlp(), torch.zeros(8, dtype=torch.int64)
    unseeded = FromFunction(_noise_from_every_global_rng(points))
    unseeded(model, torch.from_numpy(x), labels, epsilon=EPS)
    unseeded(model, torch.from_numpy(x), labels, epsilon=EPS)
    assert not torch.equal(points[0], points[1])
    seeded = FromFunction(_noise_from_every_global_rng(points))
    seeded.seed = 7
    before = _rng_states()
    seeded(model, torch.from_numpy(x), labels, epsilon=EPS)
    seeded(model, torch.from_numpy(x), labels, epsilon=EPS)
    assert torch.equal(points[2], points[3])
    _assert_same_states(before, _rng_states())


def test_third_party_attack_verdict_is_reproducible_under_the_test_seed() -> None:
    """Foolbox's PGD draws its random start from torch's global RNG."""
    foolbox = pytest.importorskip("foolbox")
    x, y = _data()
    reports = []
    for _ in range(2):
        torch.rand(3)  # a different global state before each run
        model = torch_mlp()
        before = _rng_states()
        attack = FromFoolbox(foolbox.attacks.LinfPGD(steps=5, rel_stepsize=0.5))
        reports.append(binarization_test(model, x, y, attack=attack, epsilon=EPS, seed=1))
        _assert_same_states(before, _rng_states())
    first, again = reports
    assert (first.verdict, first.asr) == (again.verdict, again.asr)
    assert [s.distance for s in first.samples] == [s.distance for s in again.samples]
    margins = [s.logit_difference for s in first.samples]
    assert margins == [s.logit_difference for s in again.samples]


def test_seeded_restores_the_states_even_when_the_block_raises() -> None:
    before = _rng_states()
    inside: list[Any] = []

    def draw_then_fail() -> None:
        with seeding.seeded(11):
            inside.extend([torch.rand(3), np.random.rand(3), random.random()])
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        draw_then_fail()
    _assert_same_states(before, _rng_states())
    with seeding.seeded(11):
        assert torch.equal(torch.rand(3), inside[0])
        np.testing.assert_array_equal(np.random.rand(3), inside[1])
        assert random.random() == inside[2]
    with seeding.seeded(None):  # no seed: nothing is touched
        after_none = torch.rand(3)
    assert not torch.equal(after_none, inside[0])


def test_seeded_seeds_and_restores_tensorflow_when_it_is_imported() -> None:
    tf = pytest.importorskip("tensorflow")
    from tensorflow.python.eager import context

    tf.random.set_seed(5)
    tf.random.uniform((2,))  # the op-seed generator has moved
    old = context.context()._rng.getstate()
    with seeding.seeded(2):
        first = tf.random.uniform((3,)).numpy()
    with seeding.seeded(2):
        second = tf.random.uniform((3,)).numpy()
    np.testing.assert_array_equal(first, second)
    assert context.global_seed() == 5
    assert context.context()._rng.getstate() == old


def test_which_attacks_draw_from_global_rngs() -> None:
    assert seeding.draws_from_global_rngs(lambda m, x, y, e: x)
    assert seeding.draws_from_global_rngs(FromFunction(lambda m, x, y, e: x))
    assert not seeding.draws_from_global_rngs(attacks.PGD("linf", steps=5))


def test_a_randomized_defense_gives_the_same_report_whatever_the_callers_rng_state() -> None:
    """The engine's own forward passes of a noise defense draw from torch's global RNG.

    Seeded from the test's seed around the whole test, the report does not
    depend on what the caller (or an earlier test of the worker) drew before,
    and the caller's stream continues as if the test had not run.
    """
    mlp = torch_mlp()

    class NoisyInput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp

        def forward(self, x: Any) -> Any:
            return self.net(x + 0.01 * torch.randn_like(x))

    model = NoisyInput().eval()
    x, y = _data(16)

    def run() -> dict[str, Any]:
        before = _rng_states()
        report = binarization_test(
            model, x, y, attack=attacks.PGD("linf", steps=10), epsilon=EPS, average_passes=4
        )
        _assert_same_states(before, _rng_states())
        assert report.settings["randomized"] is None  # fixed passes: not probed
        return report.to_dict()

    torch.manual_seed(1)
    first = run()
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    torch.rand(100)  # another caller state
    second = run()
    assert first["verdict"] == second["verdict"]
    assert [s["success"] for s in first["samples"]] == [s["success"] for s in second["samples"]]
    assert first["settings"]["forward_noise_max"] == second["settings"]["forward_noise_max"]
    assert first["settings"]["forward_noise_max"] > 0  # the model is randomized indeed
