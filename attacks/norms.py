"""Names of the threat-model norms, parsed in one place.

Users write ``norm="linf"``, ``p=2`` or ``p=math.inf`` depending on which library
they learnt on (Foolbox, AutoAttack, torchattacks); every public function of the
project accepts all of these and turns them into one float ``p`` here, so an
unknown spelling fails with the same message everywhere.
"""

from __future__ import annotations

import math

_NAMES = {
    "l1": 1.0,
    "l2": 2.0,
    "linf": math.inf,
    "inf": math.inf,
    "li": math.inf,
}


def parse_p(norm: float | int | str) -> float:
    """Return the exponent ``p`` (``math.inf`` for Linf) named by ``norm``.

    Accepts ``"l1"``, ``"l2"``, ``"linf"`` (case-insensitive, also ``"Linf"``),
    ``"inf"``, or a real number ``p >= 1`` (``float("inf")`` included).

    Raises:
        ValueError: for an unknown name, ``p < 1`` or NaN; p-norms with p < 1
            are not norms, and the rescaling kernel's monotonicity argument
            needs convexity.
    """
    if isinstance(norm, bool):
        raise TypeError(f"norm must be a number or one of {sorted(_NAMES)}, got {norm!r}")
    if isinstance(norm, str):
        key = norm.strip().lower().replace("_", "")
        if key in _NAMES:
            return _NAMES[key]
        try:
            number = float(key.removeprefix("l"))
        except ValueError:
            number = math.nan
        if math.isnan(number) or number < 0.0:
            # Named as written: "l-inf" is not "p = -inf", it is a misspelt name.
            raise ValueError(f"unknown norm {norm!r}: use 'l1', 'l2', 'linf' or a number p >= 1")
        norm = number
    p = float(norm)
    if math.isnan(p) or p < 1.0:
        raise ValueError(f"p must be >= 1 (a norm), got {norm!r}; use 'l1', 'l2', 'linf' or p >= 1")
    return p


def norm_name(p: float) -> str:
    """The conventional short name of ``p`` ("l2", "linf", "l3.5"), for reports and ids."""
    if math.isinf(p):
        return "linf"
    return f"l{p:g}"
