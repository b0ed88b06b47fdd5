"""Seed the global RNGs that third-party and function attacks draw from, then restore them.

Why: our attacks draw from their own seeded :class:`~attacks.backend.RandomSource`,
but a plain function, torchattacks, Foolbox or a paper's script draws from
the frameworks' global generators (``torch.rand``, ``np.random``, ``random``,
TensorFlow's global seed). Unseeded, the same test gave a different ASR, and
sometimes another verdict, on every run. :func:`seeded` seeds every global
generator of a framework that is already imported (importing one only to seed
it would cost seconds and change nothing), and restores each generator's
state afterwards, so the caller's own random stream is the same as if the
attack had never run.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from attacks import frameworks
from attacks.base import Attack
from attacks.frameworks import FRAMEWORKS


def draws_from_global_rngs(attack: Any) -> bool:
    """Whether ``attack`` takes its randomness from global RNGs rather than its own seed.

    A function ``fn(model, x, y, epsilon)`` does, and so does an
    :class:`~attacks.Attack` whose ``seed`` is ``None`` (the adapters of
    :mod:`attacks.external`, which hand the model to third-party code).
    """
    return not isinstance(attack, Attack) or attack.seed is None


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed the global RNGs with ``seed`` inside the block; restore their states after.

    Seeds Python's ``random``, NumPy's global ``np.random``, and, when already
    imported, torch's CPU generator and the generator of every CUDA device
    already initialized, and TensorFlow's global seed. ``seed=None`` does
    nothing. The states are restored even when the block raises.
    """
    if seed is None:
        yield
        return
    restores: list[Callable[[], None]] = []
    try:
        restores.append(_seed_python(seed))
        for name in FRAMEWORKS:
            # Only frameworks already imported: importing one only to seed it
            # would cost seconds and change nothing. NumPy always is.
            if name in sys.modules:
                restore = frameworks.named(name).seed_global(seed)
                if restore is not None:
                    restores.append(restore)
        yield
    finally:
        for restore in reversed(restores):
            restore()


def _seed_python(seed: int) -> Callable[[], None]:
    state = random.getstate()
    random.seed(seed)
    return lambda: random.setstate(state)
