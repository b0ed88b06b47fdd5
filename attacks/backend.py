"""Per-framework plumbing that EagerPy does not cover: detection, conversion, autodiff, RNG.

Why a module of its own: EagerPy abstracts tensor arithmetic well, but models,
devices, gradients and random number generators differ per framework, and
EagerPy 0.30.0 gets some of them wrong (its PyTorch gradient calls
``loss.backward()`` and leaves gradients in the model's parameters; its JAX
RNG is one global key). Everything framework-specific that the attacks need
sits here, imported lazily so that NumPy users never import torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import eagerpy as ep
import numpy as np

FRAMEWORKS = ("numpy", "torch", "tensorflow", "jax")

LossFn = Callable[[ep.Tensor], tuple[ep.Tensor, ep.Tensor]]


def tensor_framework(t: Any) -> str:
    """'numpy', 'torch', 'tensorflow' or 'jax' for a native tensor (or an EagerPy one)."""
    if isinstance(t, ep.Tensor):
        t = t.raw
    module = type(t).__module__.split(".")[0]
    if module in ("jax", "jaxlib"):
        return "jax"
    if module in ("torch", "tensorflow", "numpy"):
        return module
    raise TypeError(
        f"expected a NumPy array or a PyTorch, TensorFlow or JAX tensor, got {type(t).__name__}"
    )


def model_framework(model: Any) -> str | None:
    """The framework a native model belongs to, or None for a plain callable.

    A plain Python function could be NumPy, JAX or anything else; its framework
    is then taken from the inputs it is called with, or given explicitly.
    """
    if "torch" in sys.modules:
        import torch

        if isinstance(model, torch.nn.Module):
            return "torch"
    if "keras" in sys.modules:
        # A subclassed Keras model's class lives in the user's module: ask Keras.
        import keras

        if isinstance(model, keras.layers.Layer):
            name = str(keras.backend.backend())
            return name if name in FRAMEWORKS else None
    module = type(model).__module__.split(".")[0]
    if module in ("keras", "tf_keras") or (module == "tensorflow" and hasattr(model, "layers")):
        return "tensorflow"
    if module == "flax":
        return "jax"
    return None


def torch_device(model: Any) -> Any:
    """The device of a torch module's first parameter or buffer (CPU when it has none)."""
    import torch

    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


#: The attributes through which the wrappers that attacks and the engine accept
#: reach what they wrap: :class:`attacks.Model` (``.native``), ``attacks.BPDA``
#: and ``attacks.EOT`` (``.inner``, ``.preprocess``, ``.surrogate``), the
#: binarized model (``.defended``) and a bound method (``__self__``).
WRAPPER_ATTRIBUTES = ("native", "inner", "defended", "preprocess", "surrogate", "__self__")


def torch_modules(
    model: Any, through: tuple[str, ...] = WRAPPER_ATTRIBUTES, max_depth: int = 32
) -> list[Any]:
    """The ``torch.nn.Module`` s behind ``model``: itself, or those its wrappers hold.

    One walk for every place that must find the user's torch module behind a
    model given in any accepted form (to snapshot its state, move it to a
    device, read its layout, register it, refuse a fast path). Callers choose
    which wrapper attributes to look through, ``through``, depth first in that
    order; a module is not looked into, each object is visited once (so cycles
    end) and at most ``max_depth`` wrappers deep. Returns ``[]`` without
    importing torch when it is not imported: a model cannot then hold a module.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    found: list[Any] = []
    seen: set[int] = set()

    def visit(item: Any, depth: int) -> None:
        if item is None or id(item) in seen or depth > max_depth:
            return
        seen.add(id(item))
        if isinstance(item, torch.nn.Module):
            found.append(item)
            return
        for name in through:
            visit(getattr(item, name, None), depth + 1)

    visit(model, 0)
    return found


def torch_module(model: Any, through: tuple[str, ...] = ("native", "inner")) -> Any:
    """The first torch module behind ``model`` (see :func:`torch_modules`), or None.

    The default looks through :class:`attacks.Model` and the ``.inner`` of
    ``attacks.BPDA``/``attacks.EOT``: the defended model the user gave.
    """
    modules = torch_modules(model, through)
    return modules[0] if modules else None


def half_precision_ulp(dtype: Any) -> float | None:
    """The spacing of ``dtype``'s numbers just above 1 when it is a 16-bit type, else None.

    Read from the dtype's name, so one test serves every framework (``torch.bfloat16``,
    ``tf.bfloat16``, ``jnp.bfloat16``, ``"float16"``): 2**-7 for bfloat16, 2**-10
    for float16 (and, by name, any other 16-bit type), None for float32 and wider,
    whose rounding the callers treat as their own constant.
    """
    name = str(dtype)
    if "bfloat16" in name:
        return 2.0**-7
    if "16" in name:
        return 2.0**-10
    return None


def dtype_like(like: Any, name: str) -> Any:
    """The dtype called ``name`` (``"float32"``, ``"int64"``) in ``like``'s framework.

    For ``astype`` on EagerPy tensors, which takes the framework's own dtype
    objects; NumPy's for NumPy arrays and anything unknown.
    """
    framework = tensor_framework(like)
    if framework == "torch":
        import torch

        return getattr(torch, name)
    if framework == "tensorflow":
        import tensorflow as tf

        return getattr(tf, name)
    if framework == "jax":
        import jax.numpy as jnp

        return getattr(jnp, name)
    return getattr(np, name)


def from_numpy(framework: str, array: np.ndarray, device: Any = None) -> Any:
    """A NumPy array as a native tensor of ``framework`` (on ``device`` for torch)."""
    if framework == "numpy":
        return array
    if framework == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(device or "cpu")
    if framework == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(array)
    if framework == "jax":
        import jax.numpy as jnp

        return jnp.asarray(array)
    raise ValueError(f"unknown framework {framework!r}")


def from_numpy_like(array: np.ndarray, like: Any) -> Any:
    """``array`` as a native tensor of ``like``'s framework, and on its device for torch.

    ``like`` is a native or EagerPy tensor. The one place that knows only torch
    tensors carry a device to create on (TF and JAX place new arrays themselves).
    """
    framework = tensor_framework(like)
    raw = like.raw if isinstance(like, ep.Tensor) else like
    device = getattr(raw, "device", None) if framework == "torch" else None
    return from_numpy(framework, array, device)


def to_numpy(t: Any) -> np.ndarray:
    """A native or EagerPy tensor as a NumPy array on the host (a device-to-host copy)."""
    if isinstance(t, ep.Tensor):
        t = t.raw
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: autocast outputs
            t = t.float()
        return np.asarray(t.numpy())
    if hasattr(t, "numpy"):
        return np.asarray(t.numpy())
    return np.asarray(t)


def value_and_grad(loss_fn: LossFn, x: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
    """Return ``(loss, aux, d loss / d x)`` for ``loss_fn(x) -> (scalar loss, aux)``.

    PyTorch uses ``torch.autograd.grad`` so no gradient lands in the model's
    parameters (EagerPy 0.30.0 calls ``backward()``, which accumulates there);
    TensorFlow asks the tape for zeros where the loss does not depend on x
    (EagerPy passes TF's ``None`` on and crashes); JAX compiles the closure
    once per attack run when that is safe (:mod:`attacks.jaxjit`), else uses
    EagerPy's eager gradient.
    """
    framework = tensor_framework(x)
    if framework == "numpy":
        raise TypeError("NumPy has no autodiff: gradients need a PyTorch, TensorFlow or JAX model")
    if framework == "torch":
        import torch

        with torch.enable_grad():
            x_ = x.raw.detach().requires_grad_(True)
            loss, aux = loss_fn(ep.astensor(x_))
            (grad,) = torch.autograd.grad(loss.raw, x_)
        return wrap(loss.raw.detach()), _detach(aux), wrap(grad)
    if framework == "tensorflow":
        import tensorflow as tf

        x_ = x.raw
        with tf.GradientTape() as tape:
            tape.watch(x_)
            loss, aux = loss_fn(wrap(x_))
        # A non-differentiable op (tf.round) gives None; EagerPy would crash on it.
        grad = tape.gradient(loss.raw, x_, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return loss, aux, wrap(grad)
    from attacks import jaxjit

    return jaxjit.value_and_grad(loss_fn, x)


def stop_gradient(raw: Any) -> Any:
    """``raw`` as a constant for autodiff, in its own framework (NumPy: unchanged).

    torch ``.detach()``, ``tf.stop_gradient``, ``jax.lax.stop_gradient``: the
    value is the same tensor, the gradient through it is zero.
    """
    framework = tensor_framework(raw)
    if framework == "torch":
        return raw.detach()
    if framework == "tensorflow":
        import tensorflow as tf

        return tf.stop_gradient(raw)
    if framework == "jax":
        import jax

        return jax.lax.stop_gradient(raw)
    return raw


def no_grad(like: Any) -> AbstractContextManager[Any]:
    """``torch.no_grad()`` when ``like`` is a torch tensor, else a context that does nothing.

    For forward passes whose gradient is never taken: torch would record a
    graph for them; TensorFlow and JAX record one only when asked.
    """
    if tensor_framework(like) == "torch":
        import torch

        return torch.no_grad()
    return nullcontext()


def _detach(t: ep.Tensor) -> ep.Tensor:
    raw = t.raw
    return wrap(raw.detach()) if hasattr(raw, "detach") else t


def wrap(raw: Any) -> ep.Tensor:
    """``ep.astensor`` with a precise type for mypy."""
    t: ep.Tensor = ep.astensor(raw)
    return t


def _jax_key(seed: int, like: Any) -> Any:
    """A JAX PRNG key on ``like``'s device, of the RBG kind.

    Why RBG and not JAX's default threefry: XLA:CPU takes about 0.7 s of CPU
    to compile a threefry draw, once per shape, and the binarization test
    draws in several shapes; RBG draws (XLA's RngBitGenerator) compile in
    half that and run faster. Statistical quality is what the attacks need;
    the streams are reproducible for a seed on one backend.
    """
    import jax

    key = jax.random.key(seed, impl="rbg")
    if isinstance(like, jax.Array) and not isinstance(like, jax.core.Tracer):
        key = jax.device_put(key, next(iter(like.devices())))  # draw where the data lives
    return key


class RandomSource:
    """Seeded random numbers on the device of a reference tensor, per framework.

    Why not ``ep.uniform``: it draws from each framework's global RNG (for JAX,
    one class-level key that every run starts from), so two attacks with the
    same seed would not reproduce, and seeding the global state would change
    the user's own randomness. Each attack run owns one of these instead.
    """

    def __init__(self, seed: int | None, like: ep.Tensor) -> None:
        self.framework = tensor_framework(like)
        self._like = like
        seed_ = int(np.random.SeedSequence(seed).generate_state(1)[0])
        if self.framework == "torch":
            import torch

            device = like.raw.device
            self._gen: Any = torch.Generator(device=device)
            self._gen.manual_seed(seed_)
        elif self.framework == "tensorflow":
            import tensorflow as tf

            self._gen = tf.random.Generator.from_seed(seed_)
        elif self.framework == "jax":
            self._gen = _jax_key(seed_, like.raw)
        else:
            self._gen = np.random.default_rng(seed_)

    def _next_jax_key(self) -> Any:
        import jax

        self._gen, key = jax.random.split(self._gen)
        return key

    def uniform(self, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> ep.Tensor:
        """Uniform samples in ``[low, high)`` with the reference tensor's dtype and device."""
        raw = self._like.raw
        if self.framework == "torch":
            import torch

            out = torch.rand(shape, generator=self._gen, device=raw.device, dtype=raw.dtype)
            return wrap(out * (high - low) + low)
        if self.framework == "tensorflow":
            return wrap(self._gen.uniform(shape, low, high, dtype=raw.dtype))
        if self.framework == "jax":
            import jax

            key = self._next_jax_key()
            return wrap(jax.random.uniform(key, shape, raw.dtype, low, high))
        return wrap(self._gen.uniform(low, high, shape).astype(raw.dtype))

    def normal(self, shape: tuple[int, ...]) -> ep.Tensor:
        """Standard normal samples with the reference tensor's dtype and device."""
        raw = self._like.raw
        if self.framework == "torch":
            import torch

            return wrap(torch.randn(shape, generator=self._gen, device=raw.device, dtype=raw.dtype))
        if self.framework == "tensorflow":
            return wrap(self._gen.normal(shape, dtype=raw.dtype))
        if self.framework == "jax":
            import jax

            return wrap(jax.random.normal(self._next_jax_key(), shape, raw.dtype))
        return wrap(self._gen.standard_normal(shape).astype(raw.dtype))

    def sign(self, shape: tuple[int, ...]) -> ep.Tensor:
        """Independent random signs (+1 or -1; 0 with negligible probability)."""
        return self.uniform(shape, -1.0, 1.0).sign()
