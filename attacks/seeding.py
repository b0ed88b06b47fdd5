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

import numpy as np

from attacks.base import Attack

#: numpy's legacy global generator takes seeds below 2**32.
_NUMPY_SEEDS = 2**32


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
        restores.append(_seed_numpy(seed))
        if "torch" in sys.modules:
            restores.append(_seed_torch(sys.modules["torch"], seed))
        if "tensorflow" in sys.modules:
            restores.append(_seed_tensorflow(sys.modules["tensorflow"], seed))
        yield
    finally:
        for restore in reversed(restores):
            restore()


def _seed_python(seed: int) -> Callable[[], None]:
    state = random.getstate()
    random.seed(seed)
    return lambda: random.setstate(state)


def _seed_numpy(seed: int) -> Callable[[], None]:
    state = np.random.get_state()
    np.random.seed(seed % _NUMPY_SEEDS)
    return lambda: np.random.set_state(state)


def _seed_torch(torch: Any, seed: int) -> Callable[[], None]:
    """Torch's CPU generator and every initialized CUDA device's.

    ``torch.manual_seed`` is not used: with CUDA not yet initialized it queues a
    seed for CUDA's initialization, which would outlive the block.
    """
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    torch.default_generator.manual_seed(seed)
    if cuda is not None:
        torch.cuda.manual_seed_all(seed)

    def restore() -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    return restore


def _seed_tensorflow(tf: Any, seed: int) -> Callable[[], None]:
    """TensorFlow's global (eager) seed, from which unseeded random ops draw their seeds.

    TensorFlow has no public getter: the eager context's seed and its op-seed
    generator are read, and put back, where ``tf.random.set_seed`` keeps them.
    """
    try:
        from tensorflow.python.eager import context
    except ImportError:  # a TensorFlow without the eager context: seed only
        tf.random.set_seed(seed)
        return lambda: None
    eager = context.context()
    old_seed = getattr(eager, "_seed", None)
    old_rng = getattr(eager, "_rng", None)
    rng_state = old_rng.getstate() if isinstance(old_rng, random.Random) else None
    tf.random.set_seed(seed)

    def restore() -> None:
        eager._seed = old_seed
        eager._rng = old_rng
        if old_rng is not None and rng_state is not None:
            old_rng.setstate(rng_state)

    return restore
