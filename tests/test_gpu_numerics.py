"""The binarization test under GPU-like numerics, on a trained convnet, on the CPU.

On a GPU forward passes change with the batch (TF32 convolutions, cuDNN
algorithms chosen by batch size, autocast); ``gpu_numerics`` reproduces that on
a CPU, and ``r = 4e-3`` stands for TF32. Here the test must still set up (at
least 95% of samples conclusive, PGD passes) at every level up to that, say
why when it cannot (1e-2), and must not get easier: every weak attack still
fails under the same numerics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from convnets import held_out_images, keras_convnet, torch_convnet
from gpu_numerics import TF32_LIKE, keras_gpu_like, relative_noise, torch_gpu_like
from helpers import identity

import attacks
from pytest_attacktest import binarization_test
from pytest_attacktest.engine.readout import MIN_CLOSENESS

torch = pytest.importorskip("torch")

EPS = 8 / 255
SAMPLES = 64


def _data(n: int = SAMPLES) -> tuple[Any, Any]:
    x, y = held_out_images(n)
    return torch.from_numpy(x), torch.from_numpy(y)


def sign_noise(model: Any, x: Any, y: Any, epsilon: float) -> Any:
    """A corner of the ball chosen at random: no attack at all."""
    generator = torch.Generator().manual_seed(1)
    signs = torch.randint(0, 2, x.shape, generator=generator).to(x.dtype) * 2 - 1
    return (x + epsilon * signs).clamp(0, 1)


class Quantized(torch.nn.Module):
    """Input quantization in front of the convnet: zero gradients almost everywhere."""

    def __init__(self, net: Any, levels: int = 8) -> None:
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x: Any) -> Any:
        return self.net(torch.round(x * self.levels) / self.levels)


# ---------------------------------------------------------------------- the helper itself


def test_gpu_like_numerics_change_with_the_batch_and_leave_the_model_unchanged() -> None:
    net = torch_convnet()
    x, _ = _data()
    with torch.no_grad():
        exact = net(x)
        with torch_gpu_like(net, TF32_LIKE):
            first, again = net(x), net(x)
            half, reordered = net(x[:32]), net(x.flip(0)).flip(0)
        after = net(x)
    assert torch.equal(first, again), "the same batch must give the same outputs"
    for other in (half, reordered):
        noise = relative_noise(first[: len(other)].numpy(), other.numpy())
        assert 1e-3 < noise < 0.1, noise
    assert torch.equal(exact, after), "the hooks must be gone after the block"


@pytest.mark.tensorflow
def test_the_convnet_is_the_same_function_in_torch_and_keras() -> None:
    x, _ = held_out_images(16)
    with torch.no_grad():
        expected = torch_convnet()(torch.from_numpy(x)).numpy()
    got = np.asarray(keras_convnet()(x))
    assert relative_noise(expected, got) < 1e-5


# ---------------------------------------------------------------------- setup under noise


@pytest.mark.parametrize("r", [0.0, 1e-5, 1e-4, 1e-3, TF32_LIKE])
def test_pgd_passes_on_a_trained_convnet_under_gpu_like_numerics(r: float) -> None:
    net = torch_convnet()
    x, y = _data()
    with torch_gpu_like(net, r):
        report = binarization_test(net, x, y, attack=attacks.PGD("linf", steps=20), epsilon=EPS)
    assert report.n_inconclusive <= 0.05 * SAMPLES, report.summary()
    assert report.verdict == "passed", report.summary()
    assert report.settings["clean_accuracy"] > 0.9
    # The report states the noise it measured and the margins it kept.
    noise = report.settings["forward_noise_median"]
    assert (noise == 0.0) if r == 0.0 else (noise > 0.0)
    assert report.settings["closeness_applied_min"] >= MIN_CLOSENESS
    if r == 0.0:
        assert report.settings["closeness_applied_median"] == pytest.approx(0.999)
        assert report.random_success_rate == 0.0
    assert report.random_success_rate <= 0.1, report.summary()


def test_noise_too_large_for_any_readout_is_an_error_that_says_so() -> None:
    net = torch_convnet()
    x, y = _data()
    with torch_gpu_like(net, 1e-2):
        report = binarization_test(net, x, y, attack=attacks.PGD("linf", steps=20), epsilon=EPS)
    assert report.verdict != "passed" or report.n_inconclusive <= 0.1 * SAMPLES
    if report.n_inconclusive > 0.1 * SAMPLES:
        assert report.verdict == "error"
        reasons = {s.reason for s in report.samples if not s.conclusive}
        assert all("noise" in reason for reason in reasons), reasons
        assert "float32" in report.summary()


@pytest.mark.tensorflow
def test_pgd_passes_on_the_keras_convnet_under_gpu_like_numerics() -> None:
    x, y = held_out_images(SAMPLES)
    noisy = keras_gpu_like(keras_convnet(), TF32_LIKE)
    report = binarization_test(noisy, x, y, attack=attacks.PGD("linf", steps=20), epsilon=EPS)
    assert report.n_inconclusive <= 0.05 * SAMPLES, report.summary()
    assert report.verdict == "passed", report.summary()
    assert report.settings["forward_noise_median"] > 0


class Autocast(torch.nn.Module):
    """The model as users run it on GPUs: its forward under bf16 autocast."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x)


def test_pgd_passes_under_bf16_autocast_channels_last_and_gpu_like_numerics() -> None:
    """bf16 logits (which NumPy cannot hold) and features; readouts stay float32."""
    net = torch_convnet().to(memory_format=torch.channels_last)
    x, y = _data()
    x = x.contiguous(memory_format=torch.channels_last)
    with torch_gpu_like(net, 1e-3):
        report = binarization_test(
            Autocast(net).eval(), x, y, attack=attacks.PGD("linf", steps=20), epsilon=EPS
        )
    assert report.n_inconclusive <= 0.05 * SAMPLES, report.summary()
    assert report.verdict == "passed", report.summary()
    assert report.settings["forward_noise_median"] > 0


def test_features_callable_check_stands_bf16_and_gpu_like_numerics_but_not_a_wrong_callable() -> (
    None
):
    """A correct callable is accepted despite half-precision rounding and batch noise."""
    from pytest_attacktest.engine.features import FeatureError

    net = torch_convnet()
    x, y = _data(16)

    def features(t: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net.blocks(net.stem(t)).mean(dim=(2, 3))

    def skips_the_stem(t: Any) -> Any:  # another model: its features ignore the stem's BN
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net.blocks(net.stem[0](t)).mean(dim=(2, 3))

    attack = attacks.PGD("linf", steps=5)
    with torch_gpu_like(net, 1e-3):
        report = binarization_test(
            Autocast(net).eval(), x, y, attack=attack, epsilon=EPS, features=features
        )
        assert report.settings["features_residual"] > 1e-4  # the rounding was there
        with pytest.raises(FeatureError, match="not an affine function"):
            binarization_test(
                Autocast(net).eval(), x, y, attack=attack, epsilon=EPS, features=skips_the_stem
            )


# ---------------------------------------------------------------------- no easier


@pytest.mark.parametrize("attack", [identity, sign_noise], ids=["identity", "sign-noise"])
def test_weak_attacks_still_fail_under_gpu_like_numerics(attack: Any) -> None:
    net = torch_convnet()
    x, y = _data()
    with torch_gpu_like(net, TF32_LIKE):
        report = binarization_test(net, x, y, attack=attack, epsilon=EPS)
    assert report.verdict == "failed", report.summary()
    assert report.asr < 0.5, report.summary()


def test_plain_pgd_fails_a_quantized_input_convnet_under_gpu_like_numerics() -> None:
    net = torch_convnet()
    defended = Quantized(net).eval()
    x, y = _data()
    with torch_gpu_like(net, TF32_LIKE):
        plain = binarization_test(defended, x, y, attack=attacks.PGD("linf", steps=20), epsilon=EPS)
        bpda = binarization_test(
            attacks.BPDA(defended.net, lambda t: torch.round(t * 8) / 8),
            x,
            y,
            attack=attacks.PGD("linf", steps=20),
            epsilon=EPS,
        )
    assert plain.verdict != "passed", plain.summary()
    assert bpda.verdict == "passed", bpda.summary()
    # The diagnosis sees the zero gradients through the rounding under these numerics too.
    assert {s.clean_grad for s in plain.samples if s.conclusive and not s.success} == {"zero"}
    assert any(c.startswith("gradients look masked: try BPDA") for c in plain.causes())
