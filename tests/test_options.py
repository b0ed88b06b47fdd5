"""Tests of :mod:`pytest_attacktest.engine.options`: the settings of markers and calls."""

from __future__ import annotations

import argparse
import math
from typing import Any

import pytest

from pytest_attacktest.engine.options import (
    DEFAULT_SAMPLES,
    ENGINE_KEYS,
    SEED_MAX,
    AttackTestSettings,
    EngineSettings,
    SettingsError,
    parse_device,
    parse_json_path,
    parse_samples,
    parse_seed,
    parse_threshold,
    resolve_settings,
)


def test_parse_seed_accepts_range_ends() -> None:
    assert parse_seed("0") == 0
    assert parse_seed(" 12 ") == 12
    assert parse_seed(str(SEED_MAX)) == SEED_MAX
    assert parse_seed(5) == 5


@pytest.mark.parametrize("value", ["", "x", "-1", "0x10", str(SEED_MAX + 1), True])
def test_parse_seed_rejects(value: str | bool) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid seed"):
        parse_seed(value)


def test_resolve_settings_later_layers_win_and_defaults_fill() -> None:
    settings = resolve_settings([{"epsilon": 0.5, "threshold": 0.9}, {"epsilon": 1}], seed=4)
    assert settings == AttackTestSettings(
        epsilon=1.0, norm="linf", p=math.inf, threshold=0.9, samples=DEFAULT_SAMPLES, seed=4
    )
    assert isinstance(settings.epsilon, float)


def test_resolve_settings_parses_norm_spellings() -> None:
    assert resolve_settings([{"norm": "Linf"}], seed=0).p == math.inf
    assert resolve_settings([{"norm": 2}], seed=0).norm == "l2"
    assert resolve_settings([{"norm": 3.5}], seed=0).norm == "l3.5"
    assert resolve_settings([{"norm": "l1"}], seed=0).p == 1.0


def test_resolve_settings_rejects_unknown_key_listing_allowed() -> None:
    with pytest.raises(SettingsError, match=r"'budget'.*allowed: epsilon, norm, threshold"):
        resolve_settings([{"budget": 3}], seed=0)


@pytest.mark.parametrize(
    ("parse", "good", "expected"),
    [
        (parse_samples, " 8 ", 8),
        (parse_threshold, "0.95", 0.95),
        (parse_threshold, "1", 1.0),
        (parse_device, "cuda:1", "cuda:1"),
        (parse_device, " cpu ", "cpu"),
        (parse_json_path, "out/a.json", "out/a.json"),
    ],
)
def test_option_parsers_accept(parse: Any, good: str, expected: object) -> None:
    assert parse(good) == expected


@pytest.mark.parametrize(
    ("parse", "bad"),
    [
        (parse_samples, "0"),
        (parse_samples, "-3"),
        (parse_samples, "2.5"),
        (parse_samples, "many"),
        (parse_threshold, "0"),
        (parse_threshold, "1.01"),
        (parse_threshold, "nan"),
        (parse_threshold, "high"),
        (parse_device, "CUDA"),
        (parse_device, "cuda:x"),
        (parse_device, "cuda 1"),
        (parse_device, ""),
        (parse_json_path, " "),
    ],
)
def test_option_parsers_reject(parse: Any, bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid"):
        parse(bad)


def test_engine_keys_are_accepted_and_validated_in_order() -> None:
    def feature_fn(x: object) -> object:
        return x

    settings = resolve_settings(
        [{"n_inner": 5, "features": "layer1"}, {"features": feature_fn, "gap": 0.1}], seed=0
    )
    assert settings.engine == {"n_inner": 5, "features": feature_fn, "gap": 0.1}
    assert set(settings.engine) <= set(ENGINE_KEYS)
    with pytest.raises(SettingsError, match="closeness must be a number in"):
        resolve_settings([{"closeness": 1.0}], seed=0)


def test_engine_settings_are_validated_once_with_the_marker_rules_and_normalised() -> None:
    """A direct call's settings: the marker's error messages, numbers as Python numbers."""
    np = pytest.importorskip("numpy")
    settings = EngineSettings(
        epsilon=np.float32(0.25), norm="L2", n_boundary=np.int64(2), gap=np.float64(0.1)
    )
    assert (settings.norm, settings.p, settings.epsilon) == ("l2", 2.0, 0.25)
    assert [type(settings.n_boundary), type(settings.gap)] == [int, float]
    assert settings.n_boundary == 2
    with pytest.raises(SettingsError, match="verify_passes must be a positive integer, got 0"):
        EngineSettings(epsilon=0.1, verify_passes=0)
    with pytest.raises(SettingsError, match="epsilon must be a positive finite number"):
        EngineSettings(epsilon=True)
    with pytest.raises(SettingsError, match="threshold must be a number in"):
        EngineSettings(epsilon=0.1, threshold=0.0)
    with pytest.raises(AttributeError):  # frozen: the engine cannot change what it was given
        settings.gap = 0.5  # type: ignore[misc]


def test_engine_settings_give_the_reports_settings_and_the_engines_defaults() -> None:
    """The JSON report's keys stay as they are; binarization_test's defaults are these."""
    import inspect

    from pytest_attacktest.engine import binarization

    assert list(EngineSettings(epsilon=0.1, valid_input=bool).report_settings().items()) == [
        ("n_inner", None),
        ("n_boundary", 1),
        ("corners", False),
        ("gap", 0.05),
        ("closeness", 0.999),
        ("rescale_logits", None),
        ("feature_passes", 1),
        ("average_passes", "auto"),
        ("verify_passes", 1),
        ("n_validation", 32),
        ("chunk_size", None),
        ("max_batch", None),
        ("feature_dtype", None),
        ("detector", True),
    ]
    parameters = inspect.signature(binarization.binarization_test).parameters
    for key in (*ENGINE_KEYS, "norm", "threshold"):
        assert parameters[key].default == getattr(EngineSettings, key), key
