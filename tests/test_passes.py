"""Averaged feature passes (pytest_attacktest/engine/passes.py): the choice, and its limits.

The engine-level behaviour on a real noise-layer defense (passes chosen from
the noise, the over-cap reason, EOT-wrapped models) is in tests/test_zoo.py,
which trains the zoo's "noise" defense; here the arithmetic and the
deterministic case, which must be unchanged by the averaging.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pytest_attacktest.engine.options import SettingsError
from pytest_attacktest.engine.passes import (
    MAX_FEATURE_PASSES,
    NOISE_TARGET,
    needed_passes,
    next_passes,
    over_cap_reason,
)


def test_needed_passes_follow_the_inverse_square_root_law_in_powers_of_two() -> None:
    noise = np.array([0.0, NOISE_TARGET, 2 * NOISE_TARGET, 3 * NOISE_TARGET, np.inf, np.nan])
    assert needed_passes(1, noise).tolist() == [1, 1, 4, 16, 2**62, 2**62]
    # Measured at 4 passes, twice the target needs 4 * 4 = 16.
    assert needed_passes(4, np.array([2 * NOISE_TARGET])).tolist() == [16]


def test_next_passes_at_least_double_and_stop_at_the_cap() -> None:
    assert next_passes(1, np.array([], dtype=np.int64)) == 1  # nothing noisy: stay
    assert next_passes(1, np.array([2, 2])) == 2
    assert next_passes(4, np.array([4, 5])) == 8  # a rough estimate: at least double
    assert next_passes(1, np.array([16, 2**62])) == MAX_FEATURE_PASSES
    assert next_passes(MAX_FEATURE_PASSES, np.array([2**62])) == MAX_FEATURE_PASSES


def test_over_cap_reason_names_the_passes_needed_and_the_option() -> None:
    text = over_cap_reason(256)
    assert "about 256 passes would be needed" in text
    assert 'average_passes="auto"' in text
    assert f"{MAX_FEATURE_PASSES} passes" in text
    assert "far more than" in over_cap_reason(2**62)


@pytest.mark.parametrize("value", ["many", 0, -1, 1.5, True])
def test_average_passes_must_be_auto_or_a_positive_integer(value: object) -> None:
    from pytest_attacktest.engine.options import validate_engine_call

    with pytest.raises(SettingsError, match='average_passes must be "auto" or a positive integer'):
        validate_engine_call(
            epsilon=0.1, norm="linf", threshold=0.95, engine={"average_passes": value}
        )


def test_a_deterministic_model_is_tested_with_one_pass() -> None:
    """``"auto"`` probes the model: repeated passes agree, so nothing is averaged."""
    torch = pytest.importorskip("torch")
    from digits_models import held_out, torch_mlp

    import attacks
    from pytest_attacktest import binarization_test

    model = torch_mlp()
    x, y = held_out(16)
    report = binarization_test(
        model, torch.from_numpy(x), torch.from_numpy(y), attack=attacks.PGD(steps=10), epsilon=0.1
    )
    assert report.settings["average_passes"] == "auto"
    assert report.settings["average_passes_used"] == 1
    assert report.settings["randomized"] is False
    assert report.passed, report.summary()


@pytest.mark.parametrize("batch_passes", [False, True])
def test_eot_model_features_are_the_mean_over_its_passes(batch_passes: bool) -> None:
    """The readout of EOT(model)'s features is EOT's mean logits (the head is affine)."""
    torch = pytest.importorskip("torch")
    import attacks
    from pytest_attacktest.engine.features import feature_extractor

    class Noisy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x: Any) -> Any:
            return self.head(self.body(x + 0.3 * torch.randn_like(x)))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Noisy().eval()
        x = torch.rand(5, 4)
        eot = attacks.EOT(model, n=6, batch_passes=batch_passes)
        extract = feature_extractor(eot, None, probe=x[:2])
        torch.manual_seed(1)
        features = extract(x)
        torch.manual_seed(1)
        logits = eot.native(x)
        torch.manual_seed(2)
        other = extract(x)
    assert tuple(features.shape) == (5, 8)
    assert torch.allclose(model.head(features), logits, atol=1e-5)
    assert not torch.equal(features, other)  # fresh passes, fresh noise
