"""The operations every framework supplies: the interface of :mod:`attacks.frameworks`.

Why an interface: EagerPy covers tensor arithmetic, but conversion, devices,
autodiff, random numbers, batched linear algebra and memory queries differ
per framework. Each framework implements them once, in its own module, and
the rest of the code asks :func:`attacks.frameworks.of` for a tensor's
framework instead of writing ``if framework == ...`` chains. Methods take
and return native tensors (``.raw``) unless they say otherwise.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import eagerpy as ep
import numpy as np

LossFn = Callable[[ep.Tensor], tuple[ep.Tensor, ep.Tensor]]


class Generator(abc.ABC):
    """A seeded stream of random numbers in one framework, on one device."""

    @abc.abstractmethod
    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype: Any) -> Any:
        """Uniform samples in ``[low, high)``."""

    @abc.abstractmethod
    def normal(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """Standard normal samples."""


class Framework(abc.ABC):
    """One framework's plumbing; one instance each (see :func:`attacks.frameworks.named`)."""

    #: ``"numpy"``, ``"torch"``, ``"tensorflow"`` or ``"jax"``.
    name: str

    def __repr__(self) -> str:
        return f"<framework {self.name}>"

    # ------------------------------------------------------------------ dtypes and devices

    @abc.abstractmethod
    def dtype(self, name: str) -> Any:
        """The dtype called ``name`` (``"float32"``, ``"int64"``) as this framework names it."""

    def widest_float(self) -> Any:
        """The widest float this framework computes in here (float64; JAX without x64: float32)."""
        return self.dtype("float64")

    def index_dtype(self) -> Any:
        """The integer dtype for indices into a batch (int64; JAX without x64: int32)."""
        return self.dtype("int64")

    def device(self, raw: Any) -> Any:
        """The device to create tensors like ``raw`` on, or None where the framework places them."""
        return None

    def free_memory_bytes(self, raw: Any) -> int | None:
        """Memory ``raw``'s accelerator could still give; None on a CPU or where it is not known."""
        return None

    # ------------------------------------------------------------------ conversion

    @abc.abstractmethod
    def from_numpy(self, array: np.ndarray, device: Any = None) -> Any:
        """A NumPy array as a native tensor (on ``device`` where the framework takes one)."""

    def from_numpy_like(self, array: np.ndarray, like: Any) -> Any:
        """A NumPy array as a native tensor on ``like``'s device."""
        return self.from_numpy(array, self.device(like))

    def to_numpy(self, raw: Any) -> np.ndarray:
        """A native tensor as a NumPy array on the host (a device-to-host copy)."""
        return np.asarray(raw)

    def adopt(self, raw: Any, like: Any) -> Any:
        """A tensor of this framework as a constant on ``like``'s device (a result handed back)."""
        return raw

    def private_copy(self, raw: Any) -> Any:
        """A copy sharing no memory with ``raw``; immutable arrays are their own copy."""
        return raw

    # ------------------------------------------------------------------ autodiff

    def value_and_grad(
        self, loss_fn: LossFn, x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
        """``(loss, aux, d loss / d x)`` for ``loss_fn(x) -> (scalar loss, aux)``."""
        raise TypeError("NumPy has no autodiff: gradients need a PyTorch, TensorFlow or JAX model")

    def stop_gradient(self, raw: Any) -> Any:
        """The same value, as a constant for autodiff."""
        return raw

    def no_grad(self) -> AbstractContextManager[Any]:
        """A context for forward passes whose gradient is never taken (a no-op unless torch)."""
        return nullcontext()

    # ------------------------------------------------------------------ randomness

    @abc.abstractmethod
    def generator(self, seed: int, like: Any) -> Generator:
        """A generator seeded with ``seed`` that draws on ``like``'s device."""

    @contextmanager
    def same_randomness(self, seed: int) -> Iterator[Callable[[], None]]:
        """A ``reseed()`` that puts this framework's global RNG at ``seed``; restored on exit.

        Only torch draws a model's randomness from a global generator that can
        be put back; elsewhere ``reseed`` does nothing.
        """
        yield lambda: None

    def seed_global(self, seed: int) -> Callable[[], None] | None:
        """Seed the framework's global generators; return what restores them (None: none)."""
        return None

    # ------------------------------------------------------------------ operations EagerPy lacks

    def clamp(self, raw: Any, lower: Any, upper: Any) -> Any:
        """Elementwise ``min(max(raw, lower), upper)`` with tensor limits."""
        t = ep.astensor(raw)
        return ep.minimum(ep.maximum(t, ep.astensor(lower)), ep.astensor(upper)).raw

    def add_product(self, raw: Any, a: Any, b: Any) -> Any:
        """``raw + a * b`` (one kernel where the framework has one)."""
        return raw + a * b

    def diagonal(self, raw: Any) -> Any:
        """The diagonals of a batch of square matrices, ``(S, n, n) -> (S, n)``."""
        return raw.diagonal(axis1=1, axis2=2)

    def batched_matmul(
        self, a: Any, b: Any, transpose_a: bool = False, transpose_b: bool = False
    ) -> Any:
        """``a @ b`` per batch entry, either side transposed (EagerPy's matmul is 2-D only)."""
        a = a.swapaxes(1, 2) if transpose_a else a
        b = b.swapaxes(1, 2) if transpose_b else b
        return a @ b

    @abc.abstractmethod
    def solve(self, a: Any, b: Any) -> Any:
        """Batched ``a x = b`` on the tensors' device."""

    # ------------------------------------------------------------------ models

    def native_model(self, forward: Callable[[Any], Any], holds: Any, name: str) -> Any:
        """``forward`` as this framework's kind of model called ``name``, tracking ``holds``.

        ``holds`` is the user's model inside (registered where the framework
        tracks submodels). The default is the function itself (NumPy, JAX:
        models are functions).
        """
        return forward
