"""Forward passes at the model's speed: blocks from free device memory, channels_last, bf16.

A GPU is not needed: the device's free memory is faked (the engine asks it at
every pass), a channels_last model is the trained convnet converted by the
test, and bf16 autocast runs on the CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from convnets import held_out_images, torch_convnet
from digits_models import held_out, torch_mlp
from helpers import identity

import attacks
from pytest_attacktest import binarization_test
from pytest_attacktest.engine import blocks as blocks_module
from pytest_attacktest.engine.blocks import (
    ACTIVATION_FACTOR,
    MAX_BLOCK,
    Blocks,
    device_block_size,
)
from pytest_attacktest.engine.forward import channels_last_inputs, uses_channels_last
from pytest_attacktest.engine.options import SettingsError

torch = pytest.importorskip("torch")

EPS = 8 / 255
SAMPLES = 16

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread, restored after


def _images(n: int = SAMPLES) -> tuple[Any, Any]:
    x, y = held_out_images(n)
    return torch.from_numpy(x), torch.from_numpy(y)


class Recorder(torch.nn.Module):
    """The wrapped network, recording every batch's size, layout and autocast state."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net
        self.sizes: list[int] = []
        self.channels_last: list[bool] = []
        self.autocast: list[bool] = []

    def forward(self, x: Any) -> Any:
        self.sizes.append(int(x.shape[0]))
        if x.ndim == 4:
            self.channels_last.append(bool(x.is_contiguous(memory_format=torch.channels_last)))
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.net(x)


def _convnet_test(net: Any, attack: Any = None, **settings: Any) -> Any:
    x, y = _images()
    attack = attack or attacks.PGD("linf", steps=10)
    return binarization_test(net, x, y, attack=attack, epsilon=EPS, n_validation=8, **settings)


# ---------------------------------------------------------------------- blocks from free memory


def test_device_block_size_counts_inputs_and_activations_of_half_the_free_memory() -> None:
    image = 3 * 224 * 224 * 4
    free = 100 * 2**30
    expected = int(free * 0.5 // (image * (1 + ACTIVATION_FACTOR)))
    assert device_block_size((3, 224, 224), 4, free) == expected
    assert 500 < expected < MAX_BLOCK  # far above the 111 of the 64 MiB input budget
    assert device_block_size((3, 32, 32), 4, free) == MAX_BLOCK
    assert device_block_size((3, 224, 224), 4, 0) == 1  # never zero
    assert device_block_size((3, 224, 224), 4, -5) == 1


def test_blocks_ask_the_memory_at_every_pass_and_keep_a_halving() -> None:
    free = {"block": 50}
    blocks = Blocks(MAX_BLOCK, fit=lambda: free["block"])
    seen: list[int] = []

    def record(i: int, j: int) -> int:
        seen.append(j - i)
        return j - i

    assert sum(blocks.run(record, 120)) == 120
    assert max(seen) == 50
    assert blocks.size == 50
    free["block"] = 10  # the chunk's points took memory since
    seen.clear()
    blocks.run(record, 30)
    assert max(seen) == 10
    assert blocks.size == 10

    def refuse_above_6(i: int, j: int) -> int:
        if j - i > 6:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return j - i

    free["block"] = 1000
    assert sum(blocks.run(refuse_above_6, 40)) == 40
    assert blocks.halvings > 0
    seen.clear()
    blocks.run(record, 40)  # more memory free again, but the halving stands
    assert max(seen) <= 6


def test_engine_sizes_blocks_from_a_faked_gpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every engine pass follows the device's free memory; results equal the fixed budget's."""
    x_np, y_np = held_out(24)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    attack = attacks.PGD("linf", steps=20, random_start=False)
    plain = Recorder(torch_mlp()).eval()
    full = binarization_test(plain, x, y, attack=attack, epsilon=0.1, n_validation=8, seed=3)
    assert max(plain.sizes) > 37
    assert full.settings["forward_block"] == MAX_BLOCK  # CPU: the 64 MiB input budget

    point = 64 * 4 * (1 + ACTIVATION_FACTOR)
    asked: list[int] = []

    def fake_free(like: Any) -> int:
        asked.append(1)
        return 2 * 37 * point + point // 2  # 37 points per block

    monkeypatch.setattr(blocks_module, "free_device_bytes", fake_free)
    gpu = Recorder(torch_mlp()).eval()
    small = binarization_test(gpu, x, y, attack=attack, epsilon=0.1, n_validation=8, seed=3)
    assert small.settings["forward_block"] == 37
    assert len(asked) > 3  # asked again at every pass, not once
    # Every pass but the attack's (the whole chunk, 24 inputs) is at most one block.
    assert max(gpu.sizes) == 37
    assert small.verdict == full.verdict == "passed", small.summary()
    assert [s.success for s in small.samples] == [s.success for s in full.samples]
    np.testing.assert_allclose(
        [s.distance for s in small.samples], [s.distance for s in full.samples], rtol=1e-5
    )


# ---------------------------------------------------------------------- channels_last


def test_a_channels_last_model_gets_channels_last_inputs_with_the_same_results() -> None:
    plain = Recorder(torch_convnet()).eval()
    fast = Recorder(torch_convnet().to(memory_format=torch.channels_last)).eval()
    assert not uses_channels_last(plain)
    assert uses_channels_last(fast)
    before = [p.detach().clone() for p in fast.parameters()]

    reference = _convnet_test(plain)
    report = _convnet_test(fast)

    assert plain.channels_last
    assert not any(plain.channels_last)
    # The clean logits' pass and the feature layer's probe are the model's own;
    # every pass after them (features, attack, verification) is channels_last.
    assert len(fast.channels_last) > 5
    assert all(fast.channels_last[2:]), fast.channels_last
    assert report.verdict == reference.verdict == "passed", report.summary()
    assert [s.conclusive for s in report.samples] == [s.conclusive for s in reference.samples]
    np.testing.assert_allclose(
        [s.train_margin for s in report.samples],
        [s.train_margin for s in reference.samples],
        rtol=1e-3,
        atol=1e-5,
    )
    # The user's model is not touched: same weights, same layout.
    assert all(torch.equal(a, b) for a, b in zip(before, fast.parameters(), strict=True))
    assert uses_channels_last(fast)


def test_channels_last_leaves_other_inputs_and_models_alone() -> None:
    net = torch_convnet().to(memory_format=torch.channels_last)
    seen: list[Any] = []
    forward = channels_last_inputs(net, lambda x: seen.append(x) or x)
    flat = torch.zeros(2, 64)
    assert forward(flat) is flat  # not 4-D: unchanged
    assert channels_last_inputs(torch_mlp(), len) is len  # not channels_last: the same function


# ---------------------------------------------------------------------- reduced-precision features


def test_bf16_features_are_measured_as_noise_and_keep_the_verdict() -> None:
    """bf16 autocast for the training features only; its difference counts as noise."""
    reference = _convnet_test(torch_convnet())
    net = Recorder(torch_convnet()).eval()
    report = _convnet_test(net, feature_dtype="bfloat16")

    assert any(net.autocast)
    assert not all(net.autocast)
    assert report.settings["feature_dtype"] == "bfloat16"
    # The fresh full-precision passes see what bf16 changed: noise the CPU's
    # float32 passes do not have, and margins that cover it.
    assert report.settings["forward_noise_median"] > 10 * reference.settings["forward_noise_median"]
    assert report.verdict == reference.verdict == "passed", report.summary()
    share = 1 - report.n_inconclusive / SAMPLES
    assert share >= 0.75, report.summary()
    assert report.settings["feature_inputs"] == SAMPLES * (1 + report.settings["n_inner"] + 1)
    assert report.timings["features"] > 0


def test_bf16_features_never_pass_a_non_attack() -> None:
    report = _convnet_test(torch_convnet(), attack=identity, feature_dtype="bfloat16")
    assert report.verdict != "passed", report.summary()
    assert not any(s.success for s in report.samples)


def test_feature_dtype_is_validated_and_torch_only() -> None:
    x, y = _images(4)
    with pytest.raises(SettingsError, match="feature_dtype must be"):
        binarization_test(torch_convnet(), x, y, attack=identity, epsilon=EPS, feature_dtype="bf16")
    from digits_models import numpy_mlp

    xn, yn = held_out(4)
    with pytest.raises(ValueError, match="PyTorch models"):
        binarization_test(
            numpy_mlp(),
            xn,
            yn,
            attack=identity,
            epsilon=0.1,
            features=lambda x: x,
            feature_dtype="float16",
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_blocks_come_from_the_free_memory() -> None:
    import eagerpy as ep

    x = ep.astensor(torch.zeros(2, 3, 224, 224, device="cuda"))
    free = blocks_module.free_device_bytes(x)
    assert free is not None
    assert free > 0
    sized = blocks_module.forward_blocks(x, 4)
    assert sized.size == device_block_size((3, 224, 224), 4, free) or sized.size < MAX_BLOCK
    # An 80 GB GPU with most of it free allows far more than the 64 MiB input budget.
    if free > 20 * 2**30:
        assert sized.size > 111


def test_wrapped_torch_models_are_recognised() -> None:
    """attacks.Model and attacks.BPDA around a torch module: bf16 allowed, layout seen."""
    from pytest_attacktest.engine.forward import reduced_precision

    net = torch_convnet().to(memory_format=torch.channels_last)
    bpda = attacks.BPDA(net, lambda x: x)
    assert uses_channels_last(attacks.Model(net, bounds=(0, 1)))
    assert uses_channels_last(bpda)
    assert reduced_precision(bpda, len, "bfloat16") is not len
    assert reduced_precision(bpda, len, "float32") is len
    assert reduced_precision(bpda, len, None) is len
