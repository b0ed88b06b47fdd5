"""Defense zoo: small defenses with the obfuscations that broke published ones.

For attack developers and for checking the binarization test itself. Each
defense is trained in seconds on scikit-learn's digits (inputs in [0, 1], 64
pixels; no download) and cached (:func:`~pytest_attacktest.zoo.base.cache_dir`),
and documents an attack its obfuscation defeats (``weak``) and the adaptive
attack that breaks it (``adaptive``)::

    from pytest_attacktest import zoo

    defense = zoo.get("quantized")
    defense.run(defense.weak).verdict      # "failed": PGD sees zero gradients
    defense.run(defense.adaptive).verdict  # "passed": PGD on BPDA
    defense.run(attacks.APGD(loss="margin"))  # any attack, on the defense as shipped

Importing this package imports PyTorch.
"""

from __future__ import annotations

from pytest_attacktest.zoo import (
    detector,
    ensemble,
    kwta,
    noise,
    plain,
    purifier,
    quantized,
    randomized,
    saturated,
)
from pytest_attacktest.zoo.attack_tools import LastIteratePGD, OnModel, RandomNoise
from pytest_attacktest.zoo.base import CACHE_ENV, AttackSpec, Defense, cache_dir

__all__ = [
    "CACHE_ENV",
    "DEFENSES",
    "AttackSpec",
    "Defense",
    "LastIteratePGD",
    "OnModel",
    "RandomNoise",
    "cache_dir",
    "get",
    "names",
]

#: Every zoo defense by name, from the baseline to the hardest obfuscations.
DEFENSES: dict[str, Defense] = {
    module.DEFENSE.name: module.DEFENSE
    for module in (
        plain,
        quantized,
        randomized,
        noise,
        saturated,
        kwta,
        detector,
        purifier,
        ensemble,
    )
}


def names() -> list[str]:
    """The defenses' names, in registry order."""
    return list(DEFENSES)


def get(name: str) -> Defense:
    """The defense called ``name``.

    Raises:
        KeyError: no such defense (the message lists the known names).
    """
    try:
        return DEFENSES[name]
    except KeyError:
        raise KeyError(f"no zoo defense {name!r}; known: {', '.join(DEFENSES)}") from None
