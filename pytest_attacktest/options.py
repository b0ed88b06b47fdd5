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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TypeGuard

__all__ = [
    "DEFAULT_NORM",
    "DEFAULT_P",
    "DEFAULT_SAMPLES",
    "DEFAULT_THRESHOLD",
    "MARKER_KEYS",
    "SEED_MAX",
    "AttackTestSettings",
    "SettingsError",
    "apply_kwargs",
    "parse_seed",
    "resolve_settings",
]

#: Largest accepted seed. NumPy's legacy ``RandomState`` and several framework
#: seeding functions only take 32-bit unsigned seeds, so one seed works everywhere.
SEED_MAX = 2**32 - 1

#: The keyword arguments the ``attack_test`` marker (and the fixture's call
#: overrides) accept. Anything else is rejected rather than ignored.
MARKER_KEYS: tuple[str, ...] = ("epsilon", "norm", "threshold", "samples")

#: Threat-model norm when the test names none. Every case study of the
#: binarization test paper is Linf, so it is the least surprising default.
DEFAULT_NORM = "linf"
DEFAULT_P = math.inf

#: Minimum attack success rate over conclusive samples for the test to pass.
#: An adversarial example provably exists for every sample, so a correct attack
#: finds all of them; a lower bar must be written, visibly, in the test file.
#: Provisional: the binarization engine may refine it once measured.
DEFAULT_THRESHOLD = 1.0

#: Number of clean samples the binarization test uses by default. Provisional,
#: chosen for CI run time; the engine should revisit it with measurements.
DEFAULT_SAMPLES = 64


class SettingsError(ValueError):
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
            raise argparse.ArgumentTypeError(
                f"invalid seed {value!r}: expected an integer in [0, {SEED_MAX}]"
            ) from None
    if not 0 <= seed <= SEED_MAX:
        raise argparse.ArgumentTypeError(
            f"invalid seed {value!r}: expected an integer in [0, {SEED_MAX}]"
        )
    return seed


@dataclass(frozen=True)
class AttackTestSettings:
    """Resolved settings of one attack test: marker kwargs merged over the defaults.

    Attributes:
        epsilon: radius of the threat model; ``None`` when the marker gives
            none (the engine then requires it as a call override).
        norm: canonical name of the norm ("linf", "l2", "l1", "l3.5").
        p: the norm's exponent (``math.inf`` for Linf).
        threshold: minimum attack success rate, in ``(0, 1]``.
        samples: number of clean samples to test.
        seed: the session seed (``--attack-test-seed``).
    """

    epsilon: float | None = None
    norm: str = DEFAULT_NORM
    p: float = DEFAULT_P
    threshold: float = DEFAULT_THRESHOLD
    samples: int = DEFAULT_SAMPLES
    seed: int = 0


def _is_real(value: object) -> TypeGuard[numbers.Real]:
    # numbers.Real covers numpy scalars without importing numpy; bool is an int
    # subclass but ``epsilon=True`` is a mistake, not the number 1.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise SettingsError(f"samples must be a positive integer, got {value!r}")
    return int(value)


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
            f"unknown keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(MARKER_KEYS)}"
        )
    epsilon = _check_epsilon(kwargs["epsilon"]) if "epsilon" in kwargs else settings.epsilon
    norm, p = _check_norm(kwargs["norm"]) if "norm" in kwargs else (settings.norm, settings.p)
    threshold = (
        _check_threshold(kwargs["threshold"]) if "threshold" in kwargs else settings.threshold
    )
    samples = _check_samples(kwargs["samples"]) if "samples" in kwargs else settings.samples
    return replace(settings, epsilon=epsilon, norm=norm, p=p, threshold=threshold, samples=samples)


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
