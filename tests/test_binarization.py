"""The binarization engine can pass and can fail, and its guarantees hold.

The discrimination scenarios run on every framework (a strong attack passes, a
non-attack fails, BPDA breaks input quantization) are in
test_engine_discrimination.py.

All on the digits MLP trained in the tests (PyTorch and NumPy), CPU only.
"""

from __future__ import annotations

import json
import math
from typing import Any
from unittest import mock

import eagerpy as ep
import numpy as np
import pytest
from digits_models import held_out, numpy_mlp, torch_mlp
from helpers import identity

import attacks
from attacks.base import Attack, RunContext
from pytest_attacktest import Report, binarization_test
from pytest_attacktest.engine.features import FeatureError

torch = pytest.importorskip("torch")

EPS = 0.1


def _data(n: int = 32) -> tuple[Any, Any]:
    x, y = held_out(n)
    return torch.from_numpy(x), torch.from_numpy(y)


class Oracle(Attack):
    """Returns the boundary training point the test guarantees: must always pass."""

    def run(self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None) -> Any:
        guaranteed = getattr(ctx.model, "guaranteed", None)
        assert guaranteed is not None
        return guaranteed


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_the_guaranteed_adversarial_exists_for_every_conclusive_sample(norm: str) -> None:
    """The oracle returns the boundary training point: ASR 1 on conclusive samples.

    The identity attack (the clean point) must score 0: the clean point is
    never adversarial. Both are verified by the engine's own checks.
    """
    x, y = _data()
    eps = {"linf": EPS, "l2": 1.0, "l1": 4.0}[norm]
    oracle = Oracle()
    oracle.p = attacks.parse_p(norm)
    report = binarization_test(torch_mlp(), x, y, attack=oracle, epsilon=eps, norm=norm)
    assert report.n_conclusive >= 30
    assert report.asr == 1.0, report.summary()
    for sample in report.samples:
        assert sample.distance <= eps * (1 + 1e-5)
    clean = binarization_test(torch_mlp(), x, y, attack=identity, epsilon=eps, norm=norm)
    assert clean.n_success == 0


def test_points_outside_the_ball_get_no_credit_and_a_warning() -> None:
    def too_far(model: Any, x: Any, y: Any, epsilon: float) -> Any:
        guaranteed_direction = torch.sign(torch.randn_like(x))
        return (x + 3 * epsilon * guaranteed_direction).clamp(0, 1)

    x, y = _data(16)
    with pytest.warns(UserWarning, match="outside the linf ball"):
        report = binarization_test(torch_mlp(), x, y, attack=too_far, epsilon=EPS)
    assert report.n_success == 0
    assert all(s.outside_ball for s in report.samples)
    assert "outside the epsilon ball" in report.summary()


def test_a_third_party_attack_on_the_native_module_that_reorders_and_subsets() -> None:
    """A hand-written torch PGD that attacks the batch reversed, half at a time."""

    def reversed_halves(module: Any, x: Any, y: Any, epsilon: float) -> Any:
        assert isinstance(module, torch.nn.Module)
        order = torch.arange(len(x) - 1, -1, -1)
        out = torch.empty_like(x)
        for part in (order[: len(x) // 2], order[len(x) // 2 :]):
            xa = x[part].clone()
            for _ in range(30):
                xa.requires_grad_(True)
                loss = torch.nn.functional.cross_entropy(module(xa), y[part])
                (grad,) = torch.autograd.grad(loss, xa)
                xa = xa.detach() + epsilon / 10 * grad.sign()
                xa = torch.min(torch.max(xa, x[part] - epsilon), x[part] + epsilon).clamp(0, 1)
            out[part] = xa.detach()
        return out

    x, y = _data()
    report = binarization_test(torch_mlp(), x, y, attack=reversed_halves, epsilon=EPS)
    assert report.passed, report.summary()


def test_numpy_model_needs_a_features_callable_and_a_gradient_free_attack() -> None:
    x, y = held_out(10)  # a verdict needs 10 conclusive samples
    with pytest.raises(FeatureError, match="features=callable"):
        binarization_test(numpy_mlp(), x, y, attack=identity, epsilon=EPS)
    from digits_models import mlp_weights

    w1, b1, _, _ = mlp_weights()

    def features(inputs: np.ndarray) -> np.ndarray:
        return np.maximum(inputs @ w1 + b1, 0)

    with pytest.raises(TypeError, match="Square"):
        binarization_test(
            numpy_mlp(), x, y, attack=attacks.PGD(steps=2), epsilon=EPS, features=features
        )
    report = binarization_test(numpy_mlp(), x, y, attack=identity, epsilon=EPS, features=features)
    assert report.verdict == "failed"


def test_model_without_a_linear_layer_gets_a_clear_error() -> None:
    class NoLinear(torch.nn.Module):
        def forward(self, t: Any) -> Any:
            return t[:, :10]

    x, y = _data(4)
    with pytest.raises(FeatureError, match=r"no torch\.nn\.Linear"):
        binarization_test(NoLinear(), x, y, attack=identity, epsilon=EPS)
    with pytest.raises(FeatureError, match="no submodule 'nope'"):
        binarization_test(torch_mlp(), x, y, attack=identity, epsilon=EPS, features="nope")


def test_named_layer_features() -> None:
    x, y = _data(16)
    report = binarization_test(
        torch_mlp(), x, y, attack=attacks.PGD(steps=30), epsilon=EPS, features="1"
    )
    assert report.passed, report.summary()


def test_too_many_inconclusive_samples_is_an_error_not_a_pass() -> None:
    """Constant features cannot separate anything: every sample is inconclusive."""

    class ConstantFeatures(torch.nn.Module):
        # A features callable must explain the logits (an affine check), so the
        # constant features come from the model itself.
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 10)

        def forward(self, t: Any) -> Any:
            return self.fc(torch.ones(len(t), 4))

    x, y = _data(8)
    report = binarization_test(ConstantFeatures(), x, y, attack=identity, epsilon=EPS)
    assert report.n_inconclusive == 8
    assert report.verdict == "error"
    assert not report.passed
    assert math.isnan(report.asr)
    assert "could not separate" in report.summary()


def test_detector_rejections_count_as_misses() -> None:
    """A detector that rejects every point far from the data: the attack's points fail."""
    x, y = _data(16)
    clean = x.clone()

    def valid_input(points: Any) -> Any:
        # Accept training points (they are generated near x) but reject anything
        # the attack returns: here, points that differ from every clean point by
        # more than 0.05 in the first coordinate are "detected".
        return (points[:, :1] - clean[:1, :1]).abs().squeeze(1) < 10  # accepts all

    accepted = binarization_test(
        torch_mlp(), x, y, attack=attacks.PGD(steps=30), epsilon=EPS, valid_input=valid_input
    )
    assert accepted.passed, accepted.summary()

    calls = {"n": 0}

    def reject_attack_points(points: Any) -> Any:
        calls["n"] += 1
        keep = torch.ones(len(points), dtype=torch.bool)
        if len(points) == len(x):  # the verification call on the attack's output
            keep[:] = False
        return keep

    rejected = binarization_test(
        torch_mlp(),
        x,
        y,
        attack=attacks.PGD(steps=30),
        epsilon=EPS,
        valid_input=reject_attack_points,
        n_boundary=2,  # training batches are never 16 points long: only the attack's are
    )
    assert calls["n"] > 0
    assert rejected.n_conclusive >= 10, rejected.summary()  # set up, attacked, rejected
    assert rejected.n_success == 0
    assert all(s.rejected for s in rejected.samples)


def test_seeded_runs_reproduce_and_json_round_trips() -> None:
    x, y = _data(16)
    kwargs: dict[str, Any] = {"attack": attacks.PGD(steps=10), "epsilon": EPS, "seed": 3}
    first = binarization_test(torch_mlp(), x, y, **kwargs)
    second = binarization_test(torch_mlp(), x, y, **kwargs)
    a, b = first.to_dict(), second.to_dict()
    a.pop("timings")
    b.pop("timings")
    assert a == b
    data = json.loads(first.to_json())
    assert data["verdict"] == first.verdict
    assert data["n_samples"] == 16
    assert len(data["samples"]) == 16
    assert {"success", "distance", "logit_difference", "random_success"} <= set(data["samples"][0])
    assert isinstance(first, Report)


def test_chunks_cover_every_sample_once() -> None:
    x, y = _data(20)
    report = binarization_test(
        torch_mlp(), x, y, attack=attacks.PGD(steps=20), epsilon=EPS, chunk_size=7
    )
    assert [s.index for s in report.samples] == list(range(20))
    assert report.passed, report.summary()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": 0.0}, "epsilon must be a positive"),
        ({"epsilon": -1.0}, "epsilon must be a positive"),
        ({"threshold": 0.0}, "threshold must be a number in"),
        ({"norm": "l0"}, "p must be >= 1"),
        ({"norm": "euclid"}, "unknown norm"),
        ({"attack": attacks.PGD("l2")}, "differs from the test's"),
    ],
)
def test_bad_settings_get_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    x, y = _data(4)
    args: dict[str, Any] = {"attack": attacks.PGD(steps=1), "epsilon": EPS, "norm": "linf"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        binarization_test(torch_mlp(), x, y, **args)


def test_inputs_outside_the_bounds_are_rejected() -> None:
    x, y = _data(4)
    with pytest.raises(ValueError, match="outside the model's bounds"):
        binarization_test(torch_mlp(), x * 2 - 1, y, attack=identity, epsilon=EPS)


# ---------------------------------------------------------------------- adaptive evaluations
# (input quantization, plain PGD against BPDA: test_engine_discrimination.py)


def test_torchattacks_pgd_on_the_native_module_also_on_a_subset() -> None:
    torchattacks = pytest.importorskip("torchattacks")

    def with_torchattacks(module: Any, x: Any, y: Any, epsilon: float) -> Any:
        assert isinstance(module, torch.nn.Module)
        attack = torchattacks.PGD(module, eps=epsilon, alpha=epsilon / 8, steps=30)
        out = x.clone()
        half = torch.arange(0, len(x), 2)  # every other sample, as a subset batch
        rest = torch.arange(1, len(x), 2)
        out[half] = attack(x[half], y[half])
        out[rest] = attack(x[rest], y[rest])
        return out

    x, y = _data()
    torch.manual_seed(0)
    report = binarization_test(torch_mlp(), x, y, attack=with_torchattacks, epsilon=EPS)
    assert report.passed, report.summary()


class NoisyFeatures(torch.nn.Module):
    """A randomized defense: Gaussian noise on the input at inference time."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma
        self.net = torch_mlp()
        self.eval()

    def forward(self, t: Any) -> Any:
        return self.net(t + self.sigma * torch.randn_like(t))


def test_randomized_defense_success_must_hold_in_every_verification_pass() -> None:
    """An oracle point fools the training draw; under fresh noise only some passes.

    Per pass (``average_passes=1``; averaged passes are in test_zoo.py and test_passes.py).

    With many verification passes, a point counts only if every pass is fooled,
    so the oracle's successes drop as verify_passes grows. Noise that no
    readout margin can stand makes the samples inconclusive, with the reason,
    rather than leaving the verdict to chance.
    """
    x, y = _data(24)
    oracle = Oracle()
    torch.manual_seed(0)
    one = binarization_test(
        NoisyFeatures(0.005),
        x,
        y,
        attack=oracle,
        epsilon=EPS,
        max_inconclusive=0.99,
        average_passes=1,
    )
    torch.manual_seed(0)
    many = binarization_test(
        NoisyFeatures(0.005),
        x,
        y,
        attack=oracle,
        epsilon=EPS,
        verify_passes=8,
        max_inconclusive=0.99,
        average_passes=1,
    )
    assert one.settings["forward_noise_median"] > 0
    assert many.n_success < one.n_success, (one.summary(), many.summary())
    torch.manual_seed(0)
    loud = binarization_test(
        NoisyFeatures(0.05), x, y, attack=oracle, epsilon=EPS, average_passes=1
    )
    assert loud.verdict == "error"
    assert all("forward-pass noise" in s.reason for s in loud.samples), loud.summary()


@pytest.mark.parametrize(
    ("norm", "epsilon", "largest"), [("linf", 8.0, 1.0), ("linf", 1.0, 1.0), ("l2", 8.0, 8.0)]
)
def test_epsilon_on_another_scale_than_the_inputs_is_refused(
    norm: str, epsilon: float, largest: float
) -> None:
    x, y = _data(16)  # 64 values in [0, 1]: largest Linf distance 1, L2 distance 8
    with pytest.raises(ValueError, match=r"every input would be in every ball.*bounds="):
        binarization_test(
            torch_mlp(), x, y, attack=attacks.PGD(norm, steps=2), epsilon=epsilon, norm=norm
        )
    report = binarization_test(
        torch_mlp(), x, y, attack=attacks.PGD(norm, steps=2), epsilon=0.99 * largest, norm=norm
    )
    assert report.n_samples == 16


def test_the_attack_is_not_run_when_no_sample_could_be_set_up() -> None:
    """Noise no readout can stand: every sample is inconclusive before the attack."""
    calls: list[int] = []

    def counting(model: Any, x: Any, y: Any, epsilon: float) -> Any:
        calls.append(len(x))
        return x

    x, y = _data(16)
    torch.manual_seed(0)
    report = binarization_test(
        NoisyFeatures(0.05), x, y, attack=counting, epsilon=EPS, average_passes=1
    )
    assert report.verdict == "error"
    assert report.n_conclusive == 0
    assert calls == []
    assert any("the attack was not run" in w for w in report.warnings), report.warnings
    torch.manual_seed(0)
    binarization_test(NoisyFeatures(0.0), x, y, attack=counting, epsilon=EPS)
    assert calls == [16]


@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_logit_rescaling_keeps_decisions_and_sets_the_scale(mode: str) -> None:
    """Rescaling multiplies each readout by a positive factor: same verdicts, new scale."""
    x, y = _data(16)
    base = binarization_test(torch_mlp(), x, y, attack=identity, epsilon=EPS, seed=1)
    scaled = binarization_test(
        torch_mlp(), x, y, attack=identity, epsilon=EPS, seed=1, rescale_logits=mode
    )
    assert [s.conclusive for s in scaled.samples] == [s.conclusive for s in base.samples]
    assert [s.random_success for s in scaled.samples] == [s.random_success for s in base.samples]
    ratio = np.array([s.logit_difference for s in scaled.samples]) / np.array(
        [s.logit_difference for s in base.samples]
    )
    assert (ratio > 0).all()
    if mode == "fixed":
        # Clean point (the lowest inner logit) to the guaranteed point: the span, 1.
        spans = np.abs([s.logit_difference for s in scaled.samples])
        np.testing.assert_allclose(spans, 1.0, atol=1e-5)
    else:
        assert ratio.mean() > 1.5  # the digits MLP's logits span far more than the raw readout
    with pytest.raises(ValueError, match="rescale_logits"):
        binarization_test(torch_mlp(), x, y, attack=identity, epsilon=EPS, rescale_logits="max")


def test_automatic_chunk_size_respects_the_memory_budget(monkeypatch: Any) -> None:
    from pytest_attacktest.engine import binarization as engine

    x = ep.astensor(torch.zeros(100, 3, 32, 32))
    assert engine.auto_chunk_size(x, 10) == 100
    monkeypatch.setattr(engine, "CPU_CHUNK_BYTES", 3 * 10 * 3 * 32 * 32 * 4 * 7)
    assert engine.auto_chunk_size(x, 10) == 7
    xs, ys = _data(20)
    report = binarization_test(torch_mlp(), xs, ys, attack=attacks.PGD(steps=20), epsilon=EPS)
    assert report.settings["chunk_size"] == 20


def test_automatic_chunk_size_uses_a_jax_accelerators_free_memory(monkeypatch: Any) -> None:
    """On a JAX GPU the budget is half of the allocator's free memory, not the CPU's 1 GiB."""
    jnp = pytest.importorskip("jax.numpy")
    from pytest_attacktest.engine import binarization as engine

    points = 10_000  # points per sample: 369 MB of 3x32x32 inputs per sample (x3)
    per_sample = 3 * points * 3 * 32 * 32 * 4
    x = ep.astensor(jnp.zeros((100, 3, 32, 32), dtype=jnp.float32))
    assert engine.auto_chunk_size(x, points) == engine.CPU_CHUNK_BYTES // per_sample == 2

    class FakeGpu:
        platform = "gpu"

        def memory_stats(self) -> dict[str, int]:
            return {"bytes_limit": 60 * 2**30, "bytes_in_use": 20 * 2**30}

    class OnGpu:
        def devices(self) -> set[Any]:
            return {FakeGpu()}

    fake = mock.Mock(wraps=x)
    fake.raw, fake.shape, fake.dtype = OnGpu(), x.shape, x.dtype
    from attacks import frameworks

    monkeypatch.setattr(frameworks, "name_of", lambda t: "jax")
    assert engine.auto_chunk_size(fake, points) == (20 * 2**30) // per_sample == 58
