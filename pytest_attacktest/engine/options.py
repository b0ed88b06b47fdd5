"""Parsing and validation of the plugin's options and of ``attack_test`` marker arguments.

This module is kept free of pytest hooks and of every ML framework so that the
rules live in one place and can be tested (and reused by a future CLI, as
pytest-benchmark does with its ``utils.py`` parsers) without a pytest run.

Invalid input must fail loudly and early: a typo such as ``epslion=8/255`` that
were silently ignored would make a test run with a default the author never
chose, and "never a false pass" is the product's first rule.
"""

from __future__ import annotations

import argparse
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeGuard

from pytest_attacktest.engine.errors import AttackTestError, did_you_mean

__all__ = [
    "CORE_KEYS",
    "DEFAULT_CLOSENESS",
    "DEFAULT_GAP",
    "DEFAULT_MAX_INCONCLUSIVE",
    "DEFAULT_MIN_CONCLUSIVE",
    "DEFAULT_NORM",
    "DEFAULT_P",
    "DEFAULT_SAMPLES",
    "DEFAULT_THRESHOLD",
    "ENGINE_KEYS",
    "MARKER_KEYS",
    "SEED_MAX",
    "AttackTestSettings",
    "EngineSettings",
    "SettingsError",
    "apply_kwargs",
    "parse_claim_tolerance",
    "parse_device",
    "parse_json_path",
    "parse_samples",
    "parse_seed",
    "parse_threshold",
    "resolve_settings",
    "validate_engine_call",
]

#: Largest accepted seed. NumPy's legacy ``RandomState`` and several framework
#: seeding functions only take 32-bit unsigned seeds, so one seed works everywhere.
SEED_MAX = 2**32 - 1

#: The plugin's own settings: the threat model, the bar, the sample count and
#: the robust accuracy a claim gate checks (``claim``; see :mod:`pytest_attacktest.engine.claims`).
CORE_KEYS: tuple[str, ...] = ("epsilon", "norm", "threshold", "samples", "claim")

#: Keyword arguments passed through, unchanged, to
#: :func:`pytest_attacktest.engine.binarization.binarization_test` (a test in
#: ``tests/test_plugin_engine.py`` keeps this list equal to its signature).
ENGINE_KEYS: tuple[str, ...] = (
    "features",
    "n_inner",
    "n_boundary",
    "corners",
    "gap",
    "closeness",
    "rescale_logits",
    "max_inconclusive",
    "min_conclusive",
    "feature_passes",
    "average_passes",
    "verify_passes",
    "n_validation",
    "valid_input",
    "chunk_size",
    "max_batch",
    "feature_dtype",
)

#: The keyword arguments the ``attack_test`` marker (and the fixture's call
#: overrides) accept. Anything else is rejected rather than ignored.
MARKER_KEYS: tuple[str, ...] = CORE_KEYS + ENGINE_KEYS

#: Threat-model norm when the test names none. Every case study of the
#: binarization test paper is Linf, so it is the least surprising default.
DEFAULT_NORM = "linf"
DEFAULT_P = math.inf

#: Minimum attack success rate over conclusive samples for the test to pass:
#: the paper's 0.95. The engine's defaults live here, not in
#: :mod:`pytest_attacktest.engine.binarization` (which re-exports them), because
#: importing the engine would load NumPy and EagerPy into every pytest run.
DEFAULT_THRESHOLD = 0.95
#: Largest share of inconclusive samples for a verdict (after the reference's case studies).
DEFAULT_MAX_INCONCLUSIVE = 0.1
#: Fewest conclusive samples for a verdict. With fewer, luck decides: an
#: attack that finds the adversarial for 80% of samples passes a one-sample
#: test 80% of the time, a ten-sample one (all ten needed at the 0.95
#: threshold) 11% of the time, and a 20-sample one (19 needed) 7%.
DEFAULT_MIN_CONCLUSIVE = 10
DEFAULT_GAP = 0.05  #: inner points within (1 - gap) * epsilon
DEFAULT_CLOSENESS = 0.999  #: the reference's decision-boundary closeness

#: Number of clean samples the binarization test uses by default (the fixture
#: takes the first ``samples`` of the inputs it is given). Chosen for CI run time.
DEFAULT_SAMPLES = 64

#: Accepted shape of ``--attack-test-device``: a device type and an optional
#: index ("cpu", "cuda", "cuda:1", "mps", "xpu:0"). The framework checks the rest.
_DEVICE = re.compile(r"[a-z][a-z0-9_]*(:[0-9]+)?")


class SettingsError(AttackTestError, ValueError):
    """An ``attack_test`` marker argument or fixture override is invalid."""


def parse_seed(value: str | int) -> int:
    """Parse a seed given on the command line or in the ini file.

    Used as the argparse ``type=`` of ``--attack-test-seed`` so a bad value is
    reported by pytest as a usage error naming the option, and reused for the
    ``attack_test_seed`` ini value so both spellings obey the same rule.

    Raises:
        argparse.ArgumentTypeError: when ``value`` is not an integer in
            ``[0, SEED_MAX]``.
    """
    if isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"invalid seed {value!r}: expected an integer")
    if isinstance(value, int):
        seed = value
    else:
        try:
            seed = int(value.strip(), 10)
        except ValueError:
            seed = -1  # refused below, with the same message
    if not 0 <= seed <= SEED_MAX:
        raise argparse.ArgumentTypeError(
            f"invalid seed {value!r}: expected an integer in [0, {SEED_MAX}]"
        )
    return seed


def parse_samples(value: str) -> int:
    """Parse ``--attack-test-samples`` (and ini ``attack_test_samples``): an integer >= 1.

    Raises:
        argparse.ArgumentTypeError: naming the bad value.
    """
    try:
        samples = int(value.strip(), 10)
    except ValueError:
        samples = 0
    if samples < 1:
        raise argparse.ArgumentTypeError(
            f"invalid samples {value!r}: expected a positive integer (clean samples per test)"
        )
    return samples


def parse_threshold(value: str) -> float:
    """Parse ``--attack-test-threshold`` (and ini ``attack_test_threshold``): a number in (0, 1].

    0 is refused: a test that an attack which never succeeds passes would be a
    false pass by construction.

    Raises:
        argparse.ArgumentTypeError: naming the bad value.
    """
    try:
        threshold = float(value.strip())
    except ValueError:
        threshold = math.nan
    if not 0.0 < threshold <= 1.0:
        raise argparse.ArgumentTypeError(
            f"invalid threshold {value!r}: expected a number in (0, 1] (minimum attack "
            "success rate, e.g. 0.95)"
        )
    return threshold


def parse_claim_tolerance(value: str) -> float:
    """Parse ``--attack-test-claim-tolerance`` (and its ini twin): a number in [0, 1).

    How far the measured robust accuracy may fall below a test's ``claim``.
    1 and more are refused: every claim would pass.

    Raises:
        argparse.ArgumentTypeError: naming the bad value.
    """
    try:
        tolerance = float(value.strip())
    except ValueError:
        tolerance = math.nan
    if not 0.0 <= tolerance < 1.0:
        raise argparse.ArgumentTypeError(
            f"invalid claim tolerance {value!r}: expected a number in [0, 1) (how far the "
            "measured robust accuracy may differ from the claim, e.g. 0.02)"
        )
    return tolerance


def parse_device(value: str) -> str:
    """Parse ``--attack-test-device`` (and ini ``attack_test_device``): e.g. cpu, cuda, cuda:1.

    Only the spelling is checked here, without importing a framework; whether
    the device exists is checked when a model is moved to it.

    Raises:
        argparse.ArgumentTypeError: naming the bad value.
    """
    device = value.strip()
    if not _DEVICE.fullmatch(device):
        raise argparse.ArgumentTypeError(
            f"invalid device {value!r}: expected a device such as cpu, cuda or cuda:1"
        )
    return device


def parse_json_path(value: str) -> str:
    """Parse ``--attack-test-json`` (and ini ``attack_test_json``): a non-empty file path.

    Raises:
        argparse.ArgumentTypeError: for an empty path.
    """
    if not value.strip():
        raise argparse.ArgumentTypeError("invalid path '': expected a file name for the report")
    return value


@dataclass(frozen=True)
class AttackTestSettings:
    """Resolved settings of one attack test: marker kwargs merged over the defaults.

    Attributes:
        epsilon: radius of the threat model; ``None`` when the marker gives
            none (the fixture then requires it as a call override).
        norm: canonical name of the norm ("linf", "l2", "l1", "l3.5").
        p: the norm's exponent (``math.inf`` for Linf).
        threshold: minimum attack success rate, in ``(0, 1]``.
        samples: number of clean samples to test (at most; the first ones).
        claim: claimed robust accuracy in ``[0, 1]`` that the claim gate checks,
            or ``None`` (no claim: the binarization test alone).
        seed: the session seed (``--attack-test-seed``).
        engine: validated keyword arguments for ``binarization_test`` (see
            :data:`ENGINE_KEYS`); only the keys the test set.
    """

    epsilon: float | None = None
    norm: str = DEFAULT_NORM
    p: float = DEFAULT_P
    threshold: float = DEFAULT_THRESHOLD
    samples: int = DEFAULT_SAMPLES
    claim: float | None = None
    seed: int = 0
    engine: Mapping[str, object] = field(default_factory=dict)


def _is_real(value: object) -> TypeGuard[numbers.Real]:
    # numbers.Real covers numpy scalars without importing numpy; bool is an int
    # subclass but ``epsilon=True`` is a mistake, not the number 1.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> TypeGuard[numbers.Integral]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_epsilon(value: object) -> float:
    eps = float(value) if _is_real(value) else math.nan
    if not (math.isfinite(eps) and eps > 0.0):
        raise SettingsError(f"epsilon must be a positive finite number, got {value!r}")
    return eps


def _check_norm(value: object) -> tuple[str, float]:
    if isinstance(value, str):
        spelled: str | float = value
    elif _is_real(value):
        spelled = float(value)
    else:
        raise SettingsError(f"norm must be 'l1', 'l2', 'linf' or a number p >= 1, got {value!r}")
    # Imported here, not at module level: ``attacks/__init__`` imports eagerpy
    # and numpy, and the plugin must not pull those into every pytest run.
    from attacks.norms import norm_name, parse_p

    try:
        p = parse_p(spelled)
    except (TypeError, ValueError) as exc:
        raise SettingsError(
            f"norm must be 'l1', 'l2', 'linf' or a number p >= 1, got {value!r} ({exc})"
        ) from None
    return norm_name(p), p


def _check_threshold(value: object) -> float:
    threshold = float(value) if _is_real(value) else math.nan
    # 0 would let an attack that never succeeds pass: a false pass by construction.
    if not 0.0 < threshold <= 1.0:
        raise SettingsError(f"threshold must be a number in (0, 1], got {value!r}")
    return threshold


def _check_samples(value: object) -> int:
    if not _is_int(value) or int(value) < 1:
        raise SettingsError(f"samples must be a positive integer, got {value!r}")
    return int(value)


def _check_claim(value: object) -> float | None:
    if value is None:
        return None  # clears a claim set by a farther marker
    claim = float(value) if _is_real(value) else math.nan
    if not 0.0 <= claim <= 1.0:
        raise SettingsError(
            f"claim must be a robust accuracy in [0, 1] (e.g. 0.55) or None, got {value!r}"
        )
    return claim


def _positive_int(name: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        if not _is_int(value) or int(value) < 1:
            raise SettingsError(f"{name} must be a positive integer, got {value!r}")
        return int(value)

    return check


def _check_average_passes(value: object) -> object:
    """``"auto"`` (the engine chooses from the measured noise) or a positive integer."""
    if value == "auto":
        return value
    if not _is_int(value) or int(value) < 1:
        raise SettingsError(f'average_passes must be "auto" or a positive integer, got {value!r}')
    return int(value)


def _optional_positive_int(name: str) -> Callable[[object], object]:
    check = _positive_int(name)
    return lambda value: None if value is None else check(value)


def _non_negative_int(name: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        if not _is_int(value) or int(value) < 0:
            raise SettingsError(f"{name} must be an integer >= 0, got {value!r}")
        return int(value)

    return check


def _fraction(name: str, *, low_open: bool) -> Callable[[object], object]:
    interval = "(0, 1)" if low_open else "[0, 1)"

    def check(value: object) -> object:
        number = float(value) if _is_real(value) else math.nan
        ok = (0.0 < number < 1.0) if low_open else (0.0 <= number < 1.0)
        if not ok:
            raise SettingsError(f"{name} must be a number in {interval}, got {value!r}")
        return number

    return check


def _check_bool(name: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        if not isinstance(value, bool):
            raise SettingsError(f"{name} must be True or False, got {value!r}")
        return value

    return check


def _check_rescale_logits(value: object) -> object:
    if value in (None, "fixed", "adaptive"):
        return value
    raise SettingsError(f"rescale_logits must be None, 'fixed' or 'adaptive', got {value!r}")


def _check_features(value: object) -> object:
    if value is None or isinstance(value, str) or callable(value):
        return value
    raise SettingsError(
        f"features must be None, a layer name or a function x -> features, got {value!r}"
    )


def _check_feature_dtype(value: object) -> object:
    if value in (None, "float32", "bfloat16", "float16"):
        return value
    raise SettingsError(
        "feature_dtype must be None (full precision), 'float32', 'bfloat16' or 'float16', "
        f"got {value!r}"
    )


def _check_valid_input(value: object) -> object:
    if value is None or callable(value):
        return value
    raise SettingsError(f"valid_input must be None or a function x -> bool mask, got {value!r}")


#: One checker per engine key; it returns the value to pass on (ints as int).
_ENGINE_CHECKS: dict[str, Callable[[object], object]] = {
    "features": _check_features,
    "n_inner": _optional_positive_int("n_inner"),
    "n_boundary": _positive_int("n_boundary"),
    "corners": _check_bool("corners"),
    "gap": _fraction("gap", low_open=True),
    "closeness": _fraction("closeness", low_open=False),
    "rescale_logits": _check_rescale_logits,
    "max_inconclusive": _fraction("max_inconclusive", low_open=False),
    "min_conclusive": _positive_int("min_conclusive"),
    "feature_passes": _positive_int("feature_passes"),
    "average_passes": _check_average_passes,
    "verify_passes": _positive_int("verify_passes"),
    "n_validation": _non_negative_int("n_validation"),
    "valid_input": _check_valid_input,
    "chunk_size": _positive_int("chunk_size"),
    "max_batch": _positive_int("max_batch"),
    "feature_dtype": _check_feature_dtype,
}
assert tuple(_ENGINE_CHECKS) == ENGINE_KEYS


#: Engine keys whose ``None`` means "the default" in a direct call (the marker
#: takes ``None`` for the ones whose checker accepts it).
_NONE_IS_DEFAULT = frozenset(
    {
        "features",
        "n_inner",
        "rescale_logits",
        "valid_input",
        "chunk_size",
        "max_batch",
        "feature_dtype",
    }
)


def validate_engine_call(
    *, epsilon: object, norm: object, threshold: object, engine: Mapping[str, object]
) -> tuple[float, float, float, dict[str, object]]:
    """Validate a direct ``binarization_test`` call's settings with the marker's rules.

    Why one validation: the marker checked its arguments, a direct call did
    not, so ``verify_passes=0`` raised ``UnboundLocalError`` deep in the
    engine and ``epsilon=True`` ran as 1.0. Both paths now use the same
    checkers (the marker through :func:`apply_kwargs`, a direct call when its
    :class:`EngineSettings` is built).

    Returns:
        ``(epsilon, p, threshold, engine)`` with numbers normalised (numpy
        scalars to Python numbers, ints as int).

    Raises:
        SettingsError: naming the bad setting and what is accepted.
    """
    unknown = sorted(set(engine) - set(ENGINE_KEYS))
    if unknown:
        raise SettingsError(
            f"unknown engine setting(s) {_unknown(unknown, (*ENGINE_KEYS, 'epsilon'))}"
        )
    checked: dict[str, object] = {}
    for key, value in engine.items():
        if value is None and key in _NONE_IS_DEFAULT:
            checked[key] = None
        else:
            checked[key] = _ENGINE_CHECKS[key](value)
    _, p = _check_norm(norm)
    return _check_epsilon(epsilon), p, _check_threshold(threshold), checked


@dataclass(frozen=True)
class EngineSettings:
    """The settings of one :func:`~pytest_attacktest.engine.binarization.binarization_test` run.

    Why one object: the keyword arguments, their defaults, their validation
    and the report's ``settings`` were spelled in several places, and the
    engine read them back from the report as strings. Built once from the
    call's arguments, validated once in ``__post_init__`` with the marker's
    rules (:func:`validate_engine_call`, so the error messages are the same),
    numbers normalised (NumPy scalars to Python numbers, ints as int), and
    given to the engine at construction. The field defaults are the engine's
    defaults, and ``binarization_test``'s signature takes them from here.

    The engine keys (:data:`ENGINE_KEYS`) are documented on
    ``binarization_test``; ``norm`` is given as the user spells it and stored
    by its canonical name, with its exponent in ``p``.
    """

    epsilon: float
    norm: str | float = DEFAULT_NORM
    threshold: float = DEFAULT_THRESHOLD
    features: str | Callable[[Any], Any] | None = None
    n_inner: int | None = None
    n_boundary: int = 1
    corners: bool = False
    gap: float = DEFAULT_GAP
    closeness: float = DEFAULT_CLOSENESS
    rescale_logits: str | None = None
    max_inconclusive: float = DEFAULT_MAX_INCONCLUSIVE
    min_conclusive: int = DEFAULT_MIN_CONCLUSIVE
    feature_passes: int = 1
    average_passes: int | str = "auto"
    verify_passes: int = 1
    n_validation: int = 32
    valid_input: Callable[[Any], Any] | None = None
    chunk_size: int | None = None
    max_batch: int | None = None
    feature_dtype: str | None = None
    #: The norm's exponent (``math.inf`` for Linf), derived from ``norm``.
    p: float = field(init=False, default=DEFAULT_P)

    def __post_init__(self) -> None:
        epsilon, p, threshold, engine = validate_engine_call(
            epsilon=self.epsilon,
            norm=self.norm,
            threshold=self.threshold,
            engine={key: getattr(self, key) for key in ENGINE_KEYS},
        )
        # Imported here, as in _check_norm: attacks/__init__ loads eagerpy and numpy.
        from attacks.norms import norm_name

        checked: dict[str, Any] = {"epsilon": epsilon, "norm": norm_name(p), "p": p}
        checked.update(threshold=threshold, **engine)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def report_settings(self) -> dict[str, Any]:
        """The report's ``settings`` as the run starts (the engine adds what it resolves).

        Its keys and values are the JSON report's and the baselines': they must not change.
        """
        return {
            "n_inner": self.n_inner,
            "n_boundary": self.n_boundary,
            "corners": self.corners,
            "gap": self.gap,
            "closeness": self.closeness,
            "rescale_logits": self.rescale_logits,
            "feature_passes": self.feature_passes,
            "average_passes": self.average_passes,
            "verify_passes": self.verify_passes,
            "n_validation": self.n_validation,
            "chunk_size": self.chunk_size,
            "max_batch": self.max_batch,
            "feature_dtype": self.feature_dtype,
            "detector": self.valid_input is not None,
        }


assert tuple(f.name for f in fields(EngineSettings) if f.name in ENGINE_KEYS) == ENGINE_KEYS


def _unknown(names: Iterable[str], allowed: Iterable[str]) -> str:
    """The unknown keywords, each with the allowed one it most likely meant (``eps``: epsilon)."""
    choices = tuple(allowed)
    return ", ".join(f"{name!r}{did_you_mean(name, choices)}" for name in names)


def apply_kwargs(settings: AttackTestSettings, kwargs: Mapping[str, object]) -> AttackTestSettings:
    """Return ``settings`` with the validated ``kwargs`` (marker or call overrides) applied.

    Raises:
        SettingsError: naming the bad key and, for unknown keys, the allowed ones.
            Positional marker arguments are the caller's to reject (a mapping
            cannot carry them).
    """
    unknown = sorted(set(kwargs) - set(MARKER_KEYS))
    if unknown:
        raise SettingsError(
            f"unknown keyword argument(s) {_unknown(unknown, MARKER_KEYS)}; "
            f"allowed: {', '.join(MARKER_KEYS)}"
        )
    epsilon = _check_epsilon(kwargs["epsilon"]) if "epsilon" in kwargs else settings.epsilon
    norm, p = _check_norm(kwargs["norm"]) if "norm" in kwargs else (settings.norm, settings.p)
    threshold = (
        _check_threshold(kwargs["threshold"]) if "threshold" in kwargs else settings.threshold
    )
    samples = _check_samples(kwargs["samples"]) if "samples" in kwargs else settings.samples
    claim = _check_claim(kwargs["claim"]) if "claim" in kwargs else settings.claim
    engine = dict(settings.engine)
    for key in ENGINE_KEYS:
        if key in kwargs:
            engine[key] = _ENGINE_CHECKS[key](kwargs[key])
    return replace(
        settings,
        epsilon=epsilon,
        norm=norm,
        p=p,
        threshold=threshold,
        samples=samples,
        claim=claim,
        engine=engine,
    )


def resolve_settings(
    layers: Iterable[Mapping[str, object]],
    *,
    seed: int,
    base: AttackTestSettings | None = None,
) -> AttackTestSettings:
    """Apply ``layers`` of kwargs over ``base`` (or the defaults), later layers winning.

    ``layers`` goes from the farthest scope to the closest (module marker,
    class marker, function marker, then call overrides), so the most specific
    value wins, as with any pytest marker.
    """
    settings = replace(base if base is not None else AttackTestSettings(), seed=seed)
    for layer in layers:
        settings = apply_kwargs(settings, layer)
    return settings
