"""JAX: RBG keys on the data's device, compiled gradients, float32 unless x64.

Imported only when a JAX array is met (through :func:`attacks.frameworks.of`),
so importing it imports JAX.
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import jax
import jax.numpy as jnp
import numpy as np

from attacks.frameworks.base import Framework, Generator, LossFn


def key(seed: int, like: Any) -> Any:
    """A JAX PRNG key on ``like``'s device, of the RBG kind.

    Why RBG and not JAX's default threefry: XLA:CPU takes about 0.7 s of CPU
    to compile a threefry draw, once per shape, and the binarization test
    draws in several shapes; RBG draws (XLA's RngBitGenerator) compile in
    half that and run faster. Statistical quality is what the attacks need;
    the streams are reproducible for a seed on one backend.
    """
    new = jax.random.key(seed, impl="rbg")
    device = FRAMEWORK.device(like)
    return new if device is None else jax.device_put(new, device)  # draw where the data lives


class _JaxGenerator(Generator):
    def __init__(self, seed: int, like: Any) -> None:
        self._key = key(seed, like)

    def _next(self) -> Any:
        self._key, sub = jax.random.split(self._key)
        return sub

    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype: Any) -> Any:
        return jax.random.uniform(self._next(), shape, dtype, low, high)

    def normal(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return jax.random.normal(self._next(), shape, dtype)


def x64_enabled() -> bool:
    """Whether JAX computes in float64 (off unless the whole process switched it on)."""
    return bool(jax.config.read("jax_enable_x64"))  # type: ignore[no-untyped-call]


class Jax(Framework):
    name = "jax"

    def dtype(self, name: str) -> Any:
        return getattr(jnp, name)

    def device(self, raw: Any) -> Any:
        """The device a concrete array lives on (None while tracing: the trace places it)."""
        if isinstance(raw, jax.Array) and not isinstance(raw, jax.core.Tracer):
            return next(iter(raw.devices()))
        return None

    def widest_float(self) -> Any:
        return jnp.float64 if x64_enabled() else jnp.float32

    def index_dtype(self) -> Any:
        return jnp.int64 if x64_enabled() else jnp.int32

    def free_memory_bytes(self, raw: Any) -> int | None:
        """The allocator's limit minus its use, on an accelerator."""
        device = next(iter(raw.devices()))
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "bytes_limit" in stats:
            return max(0, int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
        return None

    def from_numpy(self, array: np.ndarray, device: Any = None) -> Any:
        return jnp.asarray(array) if device is None else jax.device_put(array, device)

    def value_and_grad(
        self, loss_fn: LossFn, x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
        """Compiled once per attack run when that is safe (:mod:`attacks.jaxjit`), else eager."""
        from attacks import jaxjit

        return jaxjit.value_and_grad(loss_fn, x)

    def stop_gradient(self, raw: Any) -> Any:
        return jax.lax.stop_gradient(raw)

    def generator(self, seed: int, like: Any) -> Generator:
        return _JaxGenerator(seed, like)

    def solve(self, a: Any, b: Any) -> Any:
        return jnp.linalg.solve(a, b)


FRAMEWORK = Jax()
