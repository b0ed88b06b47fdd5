"""Memory-sized blocks: the arithmetic, out-of-memory detection, and the engine's fallback.

A GPU is not needed to test the fallback: the digits MLP is wrapped in a module
that raises torch's own ``OutOfMemoryError`` for batches larger than a limit,
which is what CUDA does for a batch that does not fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from digits_models import held_out, torch_mlp

import attacks
from pytest_attacktest import binarization_test
from pytest_attacktest.engine.blocks import (
    BLOCK_INPUT_BYTES,
    MAX_BLOCK,
    Blocks,
    block_size_for,
    is_out_of_memory,
)
from pytest_attacktest.engine.claims import measure_robust_accuracy

torch = pytest.importorskip("torch")

EPS = 0.1


class OutOfMemoryAbove(torch.nn.Module):
    """The wrapped network, but a batch above ``limit`` inputs raises CUDA's error."""

    def __init__(self, net: Any, limit: int) -> None:
        super().__init__()
        self.net = net
        self.limit = limit
        self.largest = 0
        self.refused = 0

    def forward(self, x: Any) -> Any:
        if x.shape[0] > self.limit:
            self.refused += 1
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate a batch of {x.shape[0]} inputs"
            )
        self.largest = max(self.largest, int(x.shape[0]))
        return self.net(x)


def test_block_size_holds_a_fixed_number_of_input_bytes() -> None:
    assert block_size_for((64,), 4) == MAX_BLOCK  # digits: 16384 fit, capped
    assert block_size_for((3, 32, 32), 4) == MAX_BLOCK  # 5461 fit, capped
    assert block_size_for((3, 224, 224), 4) == BLOCK_INPUT_BYTES // (3 * 224 * 224 * 4) == 111
    assert block_size_for((3, 224, 224), 8) == 55
    assert block_size_for((3, 1024, 1024), 4, budget=1000) == 1  # never zero


def test_out_of_memory_errors_are_recognised_and_others_are_not() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only runtime errors by message
    tf = pytest.importorskip("tensorflow")
    assert is_out_of_memory(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating"))


def test_blocks_halve_until_a_block_fits_and_remember_it() -> None:
    calls: list[tuple[int, int]] = []

    def fn(i: int, j: int) -> list[int]:
        calls.append((i, j))
        if j - i > 5:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return list(range(i, j))

    blocks = Blocks(16)
    parts = blocks.run(fn, 23)
    assert [v for part in parts for v in part] == list(range(23))  # nothing lost or repeated
    assert blocks.size == 4
    assert blocks.halvings == 2
    assert max(j - i for i, j in calls[2:]) == 4
    calls.clear()
    blocks.run(fn, 8)  # the next pass starts at the size that worked
    assert calls == [(0, 4), (4, 8)]


def test_blocks_raise_other_errors_and_out_of_memory_at_one_input() -> None:
    def broken(i: int, j: int) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    blocks = Blocks(8)
    with pytest.raises(RuntimeError, match="shapes"):
        blocks.run(broken, 10)
    assert blocks.size == 8  # not halved for an error that is not about memory

    def never_fits(i: int, j: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        Blocks(8).run(never_fits, 10)
    with pytest.raises(ValueError, match=">= 1"):
        Blocks(0)


def _report(model: Any, x: Any, y: Any) -> Any:
    attack = attacks.PGD("linf", steps=20, random_start=False)
    return binarization_test(model, x, y, attack=attack, epsilon=EPS, n_validation=8, seed=3)


@pytest.mark.usefixtures("one_torch_thread")
def test_engine_survives_out_of_memory_with_the_same_results() -> None:
    """Every forward pass and the attack shrink to fit; per-sample results are unchanged."""
    x_np, y_np = held_out(24)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    full = _report(torch_mlp(), x, y)
    limited = OutOfMemoryAbove(torch_mlp(), limit=7).eval()
    small = _report(limited, x, y)

    assert limited.refused > 0
    assert limited.largest <= 7
    assert small.settings["forward_block"] <= 7
    assert small.settings["attack_batch"] <= 7
    assert small.settings["out_of_memory_retries"] > 0
    assert "attack_batch" not in full.settings
    assert full.settings["forward_block"] == MAX_BLOCK
    assert full.verdict == small.verdict == "passed", small.summary()
    assert [s.conclusive for s in small.samples] == [s.conclusive for s in full.samples]
    assert [s.success for s in small.samples] == [s.success for s in full.samples]
    np.testing.assert_allclose(
        [s.distance for s in small.samples], [s.distance for s in full.samples], rtol=1e-5
    )
    np.testing.assert_allclose(
        [s.train_margin for s in small.samples], [s.train_margin for s in full.samples], rtol=1e-4
    )


def test_claim_measurement_survives_out_of_memory() -> None:
    x_np, y_np = held_out(24)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    attack = attacks.PGD("linf", steps=20, random_start=False)
    kwargs: dict[str, Any] = {"attack": attack, "epsilon": EPS, "p": np.inf}
    full = measure_robust_accuracy(torch_mlp(), x, y, **kwargs)
    limited = OutOfMemoryAbove(torch_mlp(), limit=5).eval()
    small = measure_robust_accuracy(limited, x, y, **kwargs)
    assert limited.refused > 0
    assert limited.largest <= 5
    assert small == full
    assert full["n_clean_correct"] > full["n_robust"]  # the attack does something here


def test_claim_measurement_sizes_its_forward_blocks_from_free_device_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The claim gate's verification passes are sized like the test's: from free device memory."""
    from helpers import identity  # no forward pass of its own: every pass is a check

    from pytest_attacktest.engine import blocks

    x_np, y_np = held_out(24)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    kwargs: dict[str, Any] = {"attack": identity, "epsilon": EPS, "p": np.inf}
    full = measure_robust_accuracy(torch_mlp(), x, y, **kwargs)
    per_input = x_np[0].size * 4 * (1 + blocks.ACTIVATION_FACTOR) / blocks.DEVICE_BLOCK_SHARE
    monkeypatch.setattr(blocks, "free_device_bytes", lambda t: int(5 * per_input) + 1)
    model = OutOfMemoryAbove(torch_mlp(), limit=24).eval()
    sized = measure_robust_accuracy(model, x, y, **kwargs)
    assert model.largest == 5  # a fixed input budget would pass all 24 at once
    assert sized == full
    assert full["n_clean_correct"] == full["n_robust"] > 0  # the identity attack breaks nothing
