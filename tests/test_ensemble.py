"""The attack cascade: per-sample worst case, members see only what remains.

On the digits MLP two deterministic, batch-independent attacks (FGSM and PGD
without random start) fool overlapping but different sets of digits, so the
cascade's result can be checked sample by sample against the members run on
their own.
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from digits_models import held_out, native_mlp, numpy_mlp
from framework_support import to_native, to_numpy

import attacks
from attacks import backend
from attacks.adaptive import BPDA, EOT
from attacks.base import Attack, RunContext
from attacks.ensemble import Ensemble

EPS = 0.1


def members() -> list[Attack]:
    """Measured at eps 0.1 on 64 digits: FGSM fools 44, PGD-5 (margin) 45, together 46."""
    return [attacks.FGSM(), attacks.PGD(steps=5, random_start=False, loss="margin")]


def fooled(model: Any, x_adv: Any, y: np.ndarray) -> np.ndarray:
    """Fresh forward pass of the native model, in NumPy."""
    return np.asarray(to_numpy(model(x_adv)).argmax(axis=1) != y)


class Recording(Attack):
    """Runs ``inner`` through its public call and records the inputs it was given."""

    def __init__(self, inner: Attack) -> None:
        self.inner = inner
        self.p = inner.p
        self.seen: list[np.ndarray] = []

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        self.seen.append(to_numpy(x.raw))
        assert ctx.epsilon is not None
        t = None if target is None else target.raw
        out = self.inner(ctx.model, x.raw, y.raw, epsilon=ctx.epsilon.raw, target=t)
        return backend.wrap(out)


class RandomCorners(Attack):
    """A gradient-free attack: one random corner of the Linf ball (enough to test routing)."""

    uses_gradient = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        assert ctx.epsilon is not None
        eps = ctx.epsilon.reshape((-1,) + (1,) * (x.ndim - 1))
        return x + eps * ctx.random.sign(tuple(x.shape))


class NoisyInput:
    """Gaussian noise (sigma 0.1) on the input of every pass: a randomized defense."""

    def __init__(self) -> None:
        self.net = native_mlp("torch")

    def __call__(self, x: Any) -> Any:
        import torch

        return self.net(x + 0.1 * torch.randn_like(x))


@pytest.mark.parametrize(
    "framework",
    [
        pytest.param("torch", marks=pytest.mark.torch),
        pytest.param("tensorflow", marks=pytest.mark.tensorflow),
    ],
)
def test_ensemble_is_the_per_sample_worst_case_of_its_members(framework: str) -> None:
    pytest.importorskip(framework)
    x, y = held_out(64)
    net = native_mlp(framework)
    xt = to_native(framework, x)
    alone = [fooled(net, attack(net, xt, y, epsilon=EPS), y) for attack in members()]
    x_adv = Ensemble(members())(net, xt, y, epsilon=EPS)
    together = fooled(net, x_adv, y)

    assert type(x_adv) is type(xt)
    np.testing.assert_array_equal(together, alone[0] | alone[1])  # the union, sample by sample
    robust = 1 - together.mean()
    assert robust <= min(1 - a.mean() for a in alone)
    assert together.sum() > max(a.sum() for a in alone), (
        "each member fools a digit the other misses"
    )
    adv = to_numpy(x_adv).astype(np.float64)
    assert np.abs(adv - x).max() <= EPS
    assert adv.min() >= 0.0
    assert adv.max() <= 1.0


@pytest.mark.torch
def test_members_only_see_the_samples_not_fooled_yet() -> None:
    pytest.importorskip("torch")
    x, y = held_out(64)
    net = native_mlp("torch")
    xt = to_native("torch", x)
    clean_wrong = fooled(net, xt, y)
    fgsm_fools = fooled(net, attacks.FGSM()(net, xt, y, epsilon=EPS), y)
    first, second = (Recording(a) for a in members())
    x_adv = Ensemble([first, second])(net, xt, y, epsilon=EPS)

    assert len(first.seen) == 1
    assert len(second.seen) == 1
    np.testing.assert_array_equal(first.seen[0], x[~clean_wrong])
    np.testing.assert_array_equal(second.seen[0], x[~clean_wrong & ~fgsm_fools])
    # Already misclassified digits keep their clean point.
    np.testing.assert_array_equal(to_numpy(x_adv)[clean_wrong], x[clean_wrong])


@pytest.mark.torch
def test_members_are_skipped_once_everything_is_fooled() -> None:
    x, y = held_out(32)
    net = native_mlp("torch")
    strong, idle = Recording(attacks.PGD(steps=20)), Recording(attacks.FGSM())
    x_adv = Ensemble([strong, idle])(net, to_native("torch", x), y, epsilon=0.3)
    assert fooled(net, x_adv, y).all()
    assert idle.seen == []


def test_mixed_norms_and_bad_members_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match=r"share one norm.*FGSM \(linf\), PGD \(l2\)"):
        Ensemble([attacks.FGSM(), attacks.PGD("l2")])
    with pytest.raises(ValueError, match="at least one attack"):
        Ensemble([])
    with pytest.raises(TypeError, match=r"must be attacks\.Attack instances"):
        Ensemble([attacks.FGSM(), lambda m, x, y: x])  # type: ignore[list-item]


def test_uses_gradient_if_any_member_does() -> None:
    """Gradient-free members run on a NumPy model; one gradient member makes it an error."""
    x, y = held_out(32)
    free = Ensemble([RandomCorners(0), RandomCorners(1)])
    assert not free.uses_gradient
    x_adv = free(numpy_mlp(), x, y, epsilon=0.3)
    assert isinstance(x_adv, np.ndarray)
    assert np.abs(x_adv - x).max() <= 0.3
    mixed = Ensemble([RandomCorners(0), attacks.FGSM()])
    assert mixed.uses_gradient
    with pytest.raises(TypeError, match="needs gradients"):
        mixed(numpy_mlp(), x, y, epsilon=0.3)


@pytest.mark.torch
def test_per_sample_epsilon_and_target_reach_the_members() -> None:
    x, y = held_out(32)
    net = native_mlp("torch")
    xt = to_native("torch", x)
    eps = np.where(np.arange(32) % 2 == 0, 0.02, 0.3).astype(np.float32)
    target = (y + 1) % 10
    x_adv = Ensemble(members())(net, xt, y, epsilon=eps, target=target)
    adv = to_numpy(x_adv)
    assert np.all(np.abs(adv - x).max(axis=1) <= eps)
    hit = to_numpy(net(x_adv)).argmax(axis=1) == target
    assert hit[1::2].mean() > 0.8  # eps 0.3 reaches the next digit's class
    assert hit[0::2].mean() < hit[1::2].mean()


@pytest.mark.torch
def test_ensemble_runs_are_reproducible() -> None:
    x, y = held_out(16)
    net = native_mlp("torch")
    xt = to_native("torch", x)
    attack = Ensemble([attacks.FGSM(), attacks.PGD(steps=5)])
    np.testing.assert_array_equal(
        to_numpy(attack(net, xt, y, epsilon=EPS)), to_numpy(attack(net, xt, y, epsilon=EPS))
    )


@pytest.mark.torch
def test_ensemble_judges_randomized_models_in_every_pass() -> None:
    """On EOT, success means "fooled in all passes", inside the ensemble and out.

    ``Attack.__call__`` binds the labels for every attack, so PGD on the EOT
    model and the same PGD inside an Ensemble both keep only points that fool
    every pass; early-stopping PGD (``keep="first"``) on the raw randomized
    model keeps points that fooled one lucky pass. Measured (64 digits, noise
    sigma 0.1, eps 0.15, 10 fresh verifying passes): raw 0.97 robust, on EOT
    about 0.45, ensemble about 0.5.
    """
    import torch

    x, y = held_out(64)
    xt, yt = to_native("torch", x), to_native("torch", y)
    defended = NoisyInput()
    torch.manual_seed(0)
    eot = EOT(defended, n=10)
    pgd = attacks.PGD(steps=20, keep="first")
    verifier = EOT(defended, n=10)

    def robust(x_adv: Any) -> float:
        return 1.0 - float(to_numpy(verifier.is_adversarial_all(x_adv, yt)).mean())

    raw = robust(pgd(attacks.Model(defended), xt, yt, epsilon=0.15))
    on_eot = robust(pgd(eot, xt, yt, epsilon=0.15))
    cascaded = robust(Ensemble([pgd])(eot, xt, yt, epsilon=0.15))
    assert on_eot < raw - 0.25, f"{raw} vs {on_eot}"
    assert cascaded < raw - 0.25, f"{raw} vs {cascaded}"


@pytest.mark.torch
def test_ensemble_verifies_on_the_real_defended_model_behind_bpda() -> None:
    """Success is judged by ``model.logits``: for BPDA the real quantized model."""
    import torch

    x, y = held_out(64)
    net = native_mlp("torch")
    quantize = lambda t: torch.round(t * 3) / 3  # noqa: E731
    xt = to_native("torch", x)
    x_adv = Ensemble([attacks.FGSM(), attacks.PGD(steps=10)])(
        BPDA(net, quantize), xt, y, epsilon=0.2
    )
    defended = fooled(lambda t: net(quantize(t)), x_adv, y)
    assert defended.mean() >= 0.75  # measured: 1.0 (FGSM alone); plain PGD on the defense: 0.05
    assert np.abs(to_numpy(x_adv) - x).max() <= 0.2
