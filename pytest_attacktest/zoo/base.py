"""What every zoo defense shares: the Defense record, attack recipes, data, training, cache.

Why a record per defense: an attack developer (and ``--attack-bench``) needs
more than a model. Each obfuscation needs its own engine settings (a detector
is passed as ``valid_input``, a randomized model needs ``verify_passes``, a
saturated softmax needs ``rescale_logits="adaptive"``), its own threat model,
and two documented attacks: one that the obfuscation defeats and the adaptive
one that breaks it. :meth:`Defense.run` puts these together so that any attack
can be run against any defense in one call.

Weights are trained on scikit-learn's digits (no download) at first use, in
NumPy float64 (:mod:`pytest_attacktest.zoo.training`: the same weights on every
machine and thread count, which a torch training is not), and cached on disk,
keyed by the defense's ``version`` and the training seed, so a changed defense
never loads stale weights. Training holds a lock file, so
parallel test workers sharing a cache train each defense once.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch

from attacks.base import Attack

if TYPE_CHECKING:
    from pytest_attacktest.engine.report import Report

#: Environment variable that overrides the cache directory.
CACHE_ENV = "PYTEST_ATTACKTEST_ZOO_CACHE"
#: The last HELD_OUT digits are never trained on; :meth:`Defense.data` draws from them.
HELD_OUT = 200

#: An attack the engine accepts: an :class:`attacks.Attack` or ``fn(model, x, y, epsilon)``.
AnyAttack: TypeAlias = "Attack | Callable[[Any, Any, Any, float], Any]"


def cache_dir() -> Path:
    """Where trained weights live.

    ``$PYTEST_ATTACKTEST_ZOO_CACHE`` when set, else
    ``$XDG_CACHE_HOME/pytest-attacktest/zoo`` (``~/.cache/...`` without XDG).
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-attacktest" / "zoo"


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(N, 64)`` float32 in [0, 1] and int64 labels.

    ``split="train"``: all but the last :data:`HELD_OUT`; ``"test"``: those.
    """
    x, y = _digits()
    if split == "train":
        x, y = x[:-HELD_OUT], y[:-HELD_OUT]
    elif split == "test":
        x, y = x[-HELD_OUT:], y[-HELD_OUT:]
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


@dataclass(frozen=True)
class AttackSpec:
    """A documented attack on one defense: how to build it and what it is given.

    Attributes:
        name: short label for tables ("PGD-50 (CE)", "PGD-30 on EOT-16").
        description: why it fails or passes on this defense.
        attack: builds the attack from the trained defended model (some need
            its parts, e.g. the detector's score).
        model: builds the model the binarization test is run on from the
            defended model; ``None``: the defended model itself. Adaptive
            attacks that replace the backward pass (BPDA, straight-through
            estimators) need the same forward pass with other gradients, which
            only a different model can give.
    """

    name: str
    description: str
    attack: Callable[[torch.nn.Module], AnyAttack]
    model: Callable[[torch.nn.Module], Any] | None = None


class MLP(torch.nn.Module):
    """A 64-hidden-64-10 ReLU network: the classifier inside most zoo defenses.

    ``body`` gives the features, ``head`` is the final linear layer that the
    binarization test replaces.
    """

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU())
        self.head = torch.nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # type: ignore[no-any-return]


def _no_options(model: torch.nn.Module) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Defense:
    """One zoo defense: a trained model, its threat model and its documented attacks.

    Attributes:
        name: registry key (``zoo.get(name)``).
        title: one line for tables.
        description: what the defense does and why gradients mislead there.
        references: the published defense(s) it mimics and the paper that broke them.
        epsilon: Linf radius (inputs in [0, 1]).
        norm: threat-model norm (every zoo defense is ``"linf"``).
        weak: an attack the obfuscation defeats (fails the binarization test).
        adaptive: the adaptive attack that passes.
        build: the untrained architecture (also what cached weights load into).
        train: trains a built model in place, called under ``torch.manual_seed(seed)``
            (:func:`pytest_attacktest.zoo.training.seed` reads it). It must give the
            same weights on every machine and thread count.
        options: engine keywords needed to test this defense faithfully,
            from the trained model (``valid_input`` for a detector, ...).
        version: bump when the architecture or training changes: the cache
            key includes it, so stale weights are retrained, never loaded.
    """

    name: str
    title: str
    description: str
    references: tuple[str, ...]
    epsilon: float
    weak: AttackSpec
    adaptive: AttackSpec
    build: Callable[[], torch.nn.Module]
    train: Callable[[torch.nn.Module], None]
    options: Callable[[torch.nn.Module], dict[str, Any]] = _no_options
    norm: str = "linf"
    version: int = 1
    _memory: dict[Path, dict[str, torch.Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    # ------------------------------------------------------------------ model and data

    def cache_path(self, seed: int = 0) -> Path:
        """The weights file of this defense for training seed ``seed``."""
        return cache_dir() / f"{self.name}-v{self.version}-seed{seed}.pt"

    def model(
        self, seed: int = 0, *, announce: Callable[[str], None] | None = None
    ) -> torch.nn.Module:
        """The trained defended model (a fresh module in eval mode, on the CPU).

        Loaded from the cache, else trained now (seconds to a minute) and cached.
        Parameters do not require gradients: attacks differentiate inputs only.
        ``announce(line)`` is told before and after a training, so that a
        caller showing progress is not silent meanwhile.
        """
        path = self.cache_path(seed)
        module = self._restore(self._memory.get(path) or _load(path))
        if module is None:
            with _exclusive(path):  # parallel workers: one trains, the others load
                module = self._restore(_load(path))
                if module is None:
                    if announce is not None:
                        announce(f"training zoo model {self.name} (first use, then cached) ...")
                    start = time.perf_counter()
                    module = self._train(seed)
                    _save(path, module.state_dict())
                    if announce is not None:
                        seconds = time.perf_counter() - start
                        announce(f"trained zoo model {self.name} in {seconds:.0f}s")
        self._memory[path] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        return module

    def _restore(self, state: dict[str, torch.Tensor] | None) -> torch.nn.Module | None:
        """A module with ``state`` loaded; None when there is none or it does not fit."""
        if state is None:
            return None
        module = self.build()
        try:
            module.load_state_dict(state)
        except (RuntimeError, KeyError):
            return None  # weights of another architecture: retrain
        return module

    def _train(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self.build()
            self.train(module)
        return module

    @staticmethod
    def data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` held-out digits (never trained on) and their labels, at most 200."""
        if not 1 <= n <= HELD_OUT:
            raise ValueError(f"n must be between 1 and {HELD_OUT} held-out digits, got {n}")
        x, y = digits("test")
        return x[-n:], y[-n:]

    # ------------------------------------------------------------------ testing

    def engine_options(self, model: torch.nn.Module | None = None) -> dict[str, Any]:
        """Keywords for :func:`~pytest_attacktest.binarization_test` this defense needs."""
        return dict(self.options(self.model() if model is None else model))

    def model_for(
        self, spec: AttackSpec | None = None, model: torch.nn.Module | None = None
    ) -> Any:
        """The model the binarization test runs on for ``spec`` (default: the defense itself)."""
        defended = self.model() if model is None else model
        if spec is None or spec.model is None:
            return defended
        return spec.model(defended)

    def run(
        self,
        attack: AttackSpec | AnyAttack,
        *,
        samples: int = 32,
        seed: int = 0,
        model: torch.nn.Module | None = None,
        **overrides: Any,
    ) -> Report:
        """Run the binarization test of ``attack`` on this defense and return the report.

        Args:
            attack: an :class:`AttackSpec` (``defense.weak``, ``defense.adaptive``:
                its own model and attack) or any attack (an ``attacks.Attack``
                or ``fn(model, x, y, epsilon)``), run on the defense as shipped.
            samples: held-out digits tested.
            seed: the engine's seed; torch's global RNG (the randomness of a
                randomized defense) is seeded with it too, and restored after.
            model: a trained defended model (default: :meth:`model`).
            overrides: engine keywords that replace the defense's own.
        """
        from pytest_attacktest.engine.binarization import binarization_test

        defended = self.model() if model is None else model
        if isinstance(attack, AttackSpec):
            tested = self.model_for(attack, defended)
            runnable = attack.attack(defended)
        else:
            tested, runnable = defended, attack
        options = {**self.engine_options(defended), **overrides}
        x, y = self.data(samples)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return binarization_test(
                tested,
                x,
                y,
                attack=runnable,
                epsilon=self.epsilon,
                norm=self.norm,
                seed=seed,
                stacklevel=3,
                **options,
            )


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (POSIX); without one, just run.

    Only a missing ``fcntl`` (Windows) or an unwritable cache skips the lock:
    then two processes may both train, which is slower but still correct.
    """
    handle = None
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115
        fcntl.flock(handle, fcntl.LOCK_EX)
    except (ImportError, OSError):
        if handle is not None:
            handle.close()
            handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _load(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: retrain rather than fail
        return None
    return dict(state) if isinstance(state, Mapping) else None


def _save(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write atomically (parallel test workers may train the same defense at once)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(handle)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as error:
        warnings.warn(
            f"could not cache zoo weights at {path} ({error}); they are retrained in every "
            f"process. Set {CACHE_ENV} to a writable directory.",
            stacklevel=3,
        )
