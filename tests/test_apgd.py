"""APGD on the digits MLP: stronger than PGD, as strong as torchattacks, correct edges.

Why these tests: APGD exists to be at least as strong as a tuned PGD without a
step size to tune, so its strength is tested against our PGD and against a
published implementation (torchattacks' port of AutoAttack), at budgets where
PGD leaves 30-70% robust accuracy so that differences can show. Robust
accuracies are averaged over a few seeds where the attacks tie on this nearly
linear model, so that a single lucky random start decides nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import numpy as np
import pytest
from digits_models import held_out, native_mlp
from framework_support import to_native, to_numpy
from helpers import torch_threads

from attacks.apgd import APGD, checkpoint_intervals
from attacks.gradient import PGD

N = 200  #: every held-out digit: one sample is half a point of robust accuracy
SEEDS = (0, 1, 2)
#: Budgets where PGD-20 leaves 30-70% robust accuracy on the digits MLP (clean: 92%).
BUDGETS = {"linf": 0.08, "l2": 0.4, "l1": 1.0}


def needs_torch() -> Any:
    """PyTorch, or skip: the TensorFlow test below must run where torch is absent."""
    return pytest.importorskip("torch")


def robust_accuracy(model: Any, x_adv: Any, y: np.ndarray) -> float:
    return float((to_numpy(model(x_adv)).argmax(axis=1) == y).mean())


def mean_robust_accuracy(attack: Any, model: Any, x: Any, y: np.ndarray, eps: float) -> float:
    return float(
        np.mean([robust_accuracy(model, attack(s)(model, x, y, epsilon=eps), y) for s in SEEDS])
    )


@pytest.fixture(scope="module")
def torch() -> Iterator[Any]:
    """PyTorch on one thread while this module's tests run.

    Why: the digits MLP is tiny, so torch's intra-op thread pool costs more than
    it saves, and on a loaded 2-core machine (pytest -n 2) it made this file
    4x slower. The previous setting is restored afterwards.
    """
    module = needs_torch()
    with torch_threads(1):
        yield module


@pytest.fixture(scope="module")
def digits(torch: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    x, y = held_out(N)
    return native_mlp("torch"), x, y


# ---------------------------------------------------------------------- strength


@pytest.mark.torch
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_at_least_as_strong_as_pgd_torch(norm: str, digits: Any, torch: Any) -> None:
    model, x, y = digits
    xt, eps = torch.from_numpy(x), BUDGETS[norm]
    pgd = mean_robust_accuracy(lambda s: PGD(norm, steps=20, seed=s), model, xt, y, eps)
    apgd = mean_robust_accuracy(lambda s: APGD(norm, steps=20, seed=s), model, xt, y, eps)
    assert 0.3 <= pgd <= 0.7, f"budget {eps} does not leave PGD a telling robust accuracy: {pgd}"
    assert apgd <= pgd, f"{norm}: APGD robust accuracy {apgd:.3f} > PGD {pgd:.3f}"
    if norm == "l1":  # adaptive sparse steps against PGD's fixed 1% of coordinates
        assert apgd <= pgd - 0.03, f"L1 APGD {apgd:.3f} should beat PGD {pgd:.3f} clearly"


@pytest.mark.tensorflow
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_at_least_as_strong_as_pgd_tensorflow(norm: str) -> None:
    pytest.importorskip("tensorflow")
    x, y = held_out(64)
    model = native_mlp("tensorflow")
    xt, eps = to_native("tensorflow", x), BUDGETS[norm]
    pgd = robust_accuracy(model, PGD(norm, steps=20)(model, xt, y, epsilon=eps), y)
    apgd = robust_accuracy(model, APGD(norm, steps=20)(model, xt, y, epsilon=eps), y)
    assert 0.3 <= pgd <= 0.7, f"budget {eps} does not leave PGD a telling robust accuracy: {pgd}"
    assert apgd <= pgd, f"{norm}: APGD robust accuracy {apgd:.3f} > PGD {pgd:.3f}"


@pytest.mark.torch
@pytest.mark.parametrize(("norm", "ta_norm", "eps"), [("linf", "Linf", 0.08), ("l2", "L2", 0.5)])
def test_as_strong_as_torchattacks_apgd(
    norm: str, ta_norm: str, eps: float, digits: Any, torch: Any
) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    # torchattacks' APGD assumes image batches (N, C, H, W): give it the 8x8 digits.
    net = torch.nn.Sequential(torch.nn.Flatten(), model).eval()
    xt, yt = torch.from_numpy(x).reshape(-1, 1, 8, 8), torch.from_numpy(y)

    def theirs(seed: int) -> Any:
        atk = torchattacks.APGD(
            net, norm=ta_norm, eps=eps, steps=100, n_restarts=1, loss="ce", seed=seed
        )
        return lambda m, x_, y_, epsilon: atk(x_, yt)

    ours = mean_robust_accuracy(lambda s: APGD(norm, steps=100, seed=s), net, xt, y, eps)
    reference = mean_robust_accuracy(theirs, net, xt, y, eps)
    assert ours <= reference + 0.01, f"{norm}: ours {ours:.4f}, torchattacks {reference:.4f}"


@pytest.mark.torch
def test_apgd_t_beats_untargeted_dlr(digits: Any, torch: Any) -> None:
    """AutoAttack's reason for APGD-T: cycling over the top classes finds more."""
    model, x, y = digits
    xt = torch.from_numpy(x)
    untargeted = robust_accuracy(model, APGD(steps=20, loss="dlr")(model, xt, y, epsilon=0.08), y)
    one = APGD(steps=20, loss="dlr", targeted=True, n_target_classes=1)
    nine = APGD(steps=20, loss="dlr", targeted=True)
    acc_one = robust_accuracy(model, one(model, xt, y, epsilon=0.08), y)
    acc_nine = robust_accuracy(model, nine(model, xt, y, epsilon=0.08), y)
    assert acc_nine <= acc_one
    assert acc_nine < untargeted, f"APGD-T {acc_nine:.3f} vs APGD-DLR {untargeted:.3f}"


@pytest.mark.torch
def test_explicit_target_is_reached(digits: Any, torch: Any) -> None:
    model, x, y = digits
    target = (y + 1) % 10
    x_adv = APGD(steps=20)(model, torch.from_numpy(x), y, epsilon=0.3, target=target)
    hit = float((to_numpy(model(x_adv)).argmax(axis=1) == target).mean())
    assert hit >= 0.95, f"only {hit:.2%} reach their target at a generous Linf budget"


# ---------------------------------------------------------------------- DLR class checks


class CountingModel:
    """The digits MLP (torch) cut to its first ``classes`` logits, counting forward passes."""

    def __init__(self, classes: int) -> None:
        self.net, self.classes, self.calls = native_mlp("torch"), classes, 0

    def __call__(self, x: Any) -> Any:
        self.calls += 1
        return self.net(x)[:, : self.classes]


@pytest.mark.torch
@pytest.mark.parametrize(
    ("classes", "targeted", "needed"), [(2, False, "at least 3"), (3, True, "at least 4")]
)
def test_dlr_with_too_few_classes_fails_before_the_loop(
    classes: int, targeted: bool, needed: str, torch: Any
) -> None:
    x, y = held_out(16)
    y = y % classes
    model = CountingModel(classes)
    attack = APGD(steps=20, loss="dlr", targeted=targeted)
    with pytest.raises(ValueError, match=f"DLR needs {needed} classes.*loss='margin'"):
        attack(model, torch.from_numpy(x), y, epsilon=0.1)
    assert model.calls == 1, "the error must come from the clean pass, before any step"


@pytest.mark.torch
def test_dlr_explicit_target_on_three_classes_raises(torch: Any) -> None:
    x, y = held_out(16)
    model = CountingModel(3)
    with pytest.raises(ValueError, match="targeted DLR needs at least 4 classes"):
        APGD(loss="dlr")(model, torch.from_numpy(x), y % 3, epsilon=0.1, target=(y + 1) % 3)


@pytest.mark.torch
def test_margin_works_on_two_classes(torch: Any) -> None:
    """The suggested alternative does attack a binary model."""
    x, _ = held_out(64)
    model = CountingModel(2)
    xt = torch.from_numpy(x)
    y2 = to_numpy(model(xt)).argmax(axis=1)  # the model's own labels: clean accuracy 100%
    x_adv = APGD(steps=20, loss="margin")(model, xt, y2, epsilon=0.3)
    assert robust_accuracy(model, x_adv, y2) < 0.5


@pytest.mark.torch
def test_loss_with_wrong_shape_is_rejected(digits: Any, torch: Any) -> None:
    model, x, y = digits
    with pytest.raises(ValueError, match="one value per sample"):
        APGD(loss=lambda z, y_, t: z.sum())(model, torch.from_numpy(x), y, epsilon=0.1)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="norm"):
        APGD("l3")
    with pytest.raises(ValueError, match="rho"):
        APGD(rho=1.5)
    with pytest.raises(ValueError, match="steps"):
        APGD(steps=0)
    with pytest.raises(ValueError, match="unknown loss"):
        APGD(loss="hinge")


# ---------------------------------------------------------------------- contract


def test_checkpoints_match_autoattack() -> None:
    """AutoAttack's schedule for 100 iterations: checks after 22, 41, 57, 70, 80, 87, 93, 99."""
    assert np.cumsum(checkpoint_intervals(100)).tolist() == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoint_intervals(1) == [1]


@pytest.mark.torch
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_seeded_unmutated_in_bounds_and_ball(norm: str, digits: Any, torch: Any) -> None:
    model, x, y = digits
    xt, x_copy, eps = torch.from_numpy(x.copy()), x.copy(), BUDGETS[norm]
    first = to_numpy(APGD(norm, steps=10, seed=3)(model, xt, y, epsilon=eps))
    second = to_numpy(APGD(norm, steps=10, seed=3)(model, xt, y, epsilon=eps))
    other = to_numpy(APGD(norm, steps=10, seed=4)(model, xt, y, epsilon=eps))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other), "the seed must drive the random start"
    np.testing.assert_array_equal(to_numpy(xt), x_copy)
    assert first.min() >= 0.0
    assert first.max() <= 1.0
    order = {"linf": np.inf, "l2": 2, "l1": 1}[norm]
    dist = np.linalg.norm(first - x, ord=order, axis=1)
    assert dist.max() <= eps * (1 + 1e-5)


@contextlib.contextmanager
def no_host_reads() -> Iterator[None]:
    """Make every torch device-to-host read raise (what ``.item()``/``.numpy()`` do)."""

    import torch

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("host read inside the attack loop")

    with contextlib.ExitStack() as stack:
        for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__"):
            stack.enter_context(mock.patch.object(torch.Tensor, name, refuse))
        yield


class GuardedAPGD(APGD):
    def run(self, ctx: Any, x: Any, y: Any, target: Any) -> Any:
        with no_host_reads():
            return super().run(ctx, x, y, target)


@pytest.mark.torch
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_no_host_reads_in_run(norm: str, digits: Any, torch: Any) -> None:
    model, x, y = digits
    xt = torch.from_numpy(x[:16])
    with no_host_reads(), pytest.raises(AssertionError, match="host read"):
        torch.ones(1).item()  # the guard itself works
    GuardedAPGD(norm, steps=10, targeted=True, n_target_classes=2)(
        model, xt, y[:16], epsilon=BUDGETS[norm]
    )
