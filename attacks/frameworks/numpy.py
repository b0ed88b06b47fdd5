"""NumPy: arrays on the host, no autodiff, NumPy's own generators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from attacks.frameworks.base import Framework, Generator


class _NumpyGenerator(Generator):
    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype: Any) -> Any:
        return self._rng.uniform(low, high, shape).astype(dtype)

    def normal(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self._rng.standard_normal(shape).astype(dtype)


class NumPy(Framework):
    name = "numpy"

    def dtype(self, name: str) -> Any:
        return getattr(np, name)

    def from_numpy(self, array: np.ndarray, device: Any = None) -> Any:
        return array

    def private_copy(self, raw: Any) -> Any:
        return np.array(raw, copy=True)

    def generator(self, seed: int, like: Any) -> Generator:
        return _NumpyGenerator(seed)

    def solve(self, a: Any, b: Any) -> Any:
        return np.linalg.solve(a, b)

    def seed_global(self, seed: int) -> Callable[[], None] | None:
        """NumPy's legacy global generator (``np.random.rand``), which takes seeds below 2**32."""
        state = np.random.get_state()
        np.random.seed(seed % 2**32)
        return lambda: np.random.set_state(state)


FRAMEWORK = NumPy()
