"""On a CUDA GPU: the CUDA-graph fast path gives the eager examples, and the engine runs there.

These tests skip without CUDA (CI has none). The CPU tests of
``test_fast_path.py`` exercise the CUDA-graph runner's logic with a CPU stand-in
for ``torch.cuda.graph``; here the real capture runs, with its warm-up on a side
stream, the host-sync check and the comparison against an eager step. Run them
first in any session that has a GPU (``benchmarks/gpu_session.sh tests``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from digits_models import held_out, torch_mlp

import attacks
from pytest_attacktest import binarization_test

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

EPS = 0.08


def _cuda_digits(n: int = 64) -> tuple[Any, Any, Any]:
    x, y = held_out(n)
    return torch_mlp().cuda(), torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()


@pytest.mark.parametrize(
    ("make", "eps"),
    [
        (lambda c: attacks.PGD("linf", steps=10, compile=c), EPS),
        (lambda c: attacks.PGD("l2", steps=8, restarts=2, compile=c), 1.0),
        (lambda c: attacks.APGD("linf", steps=12, compile=c), EPS),
    ],
    ids=["pgd-linf", "pgd-l2-restarts", "apgd-linf"],
)
def test_cuda_graph_gives_the_eager_examples(make: Any, eps: float) -> None:
    model, x, y = _cuda_digits()
    eager = make(False)(model, x, y, epsilon=eps)
    attack = make("auto")
    fast = attack(model, x, y, epsilon=eps)
    status = attack.last_fast_path
    assert status.kind == "cuda-graph", status.reason
    assert status.captured
    assert status.mismatch is not None
    assert status.mismatch <= 1e-3
    assert fast.device == x.device
    np.testing.assert_allclose(fast.cpu().numpy(), eager.cpu().numpy(), atol=1e-5)
    fooled = model(fast).argmax(1) != y
    assert bool((fooled == (model(eager).argmax(1) != y)).all())
    assert float(fooled.float().mean()) > 0.2  # the attack does something here


def test_a_randomized_model_is_not_captured_on_cuda() -> None:
    model, x, y = _cuda_digits(16)

    class Noisy(torch.nn.Module):
        def forward(self, v: Any) -> Any:
            return model(v + 0.01 * torch.randn_like(v))

    attack = attacks.PGD(steps=5)
    with pytest.warns(RuntimeWarning, match="randomized"):
        attack(Noisy().eval(), x, y, epsilon=EPS)
    assert attack.last_fast_path is not None
    assert attack.last_fast_path.kind == "eager"


def test_the_binarization_test_runs_on_cuda_and_keeps_the_device() -> None:
    model, x, y = _cuda_digits(64)
    attack = attacks.PGD("linf", steps=40)
    report = binarization_test(model, x, y, attack=attack, epsilon=0.1)
    assert report.verdict == "passed", report.summary()
    assert attack.last_fast_path is not None
    assert attack.last_fast_path.kind == "cuda-graph", attack.last_fast_path.reason
    assert report.settings["forward_block"] == 4096
    assert report.settings["chunk_size"] == 64
