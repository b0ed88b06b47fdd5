"""EagerPy-level helpers over :mod:`attacks.frameworks`: detection, conversion, autodiff, RNG.

Why a module of its own: EagerPy abstracts tensor arithmetic well, but models,
devices, gradients and random number generators differ per framework, and
EagerPy 0.30.0 gets some of them wrong (its PyTorch gradient calls
``loss.backward()`` and leaves gradients in the model's parameters; its JAX
RNG is one global key). Each framework's version lives in its module of
:mod:`attacks.frameworks`; the functions here take EagerPy or native tensors,
find their framework and call it, so attacks read the same for all four.
Nothing here imports a framework that the caller's tensors do not come from.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from typing import Any

import eagerpy as ep
import numpy as np

from attacks import frameworks
from attacks.frameworks import FRAMEWORKS, LossFn

__all__ = [
    "FRAMEWORKS",
    "LossFn",
    "RandomSource",
    "dtype_like",
    "from_numpy",
    "from_numpy_like",
    "half_precision_ulp",
    "model_framework",
    "no_grad",
    "stop_gradient",
    "tensor_framework",
    "to_numpy",
    "torch_device",
    "torch_module",
    "torch_modules",
    "value_and_grad",
    "wrap",
]


def tensor_framework(t: Any) -> str:
    """'numpy', 'torch', 'tensorflow' or 'jax' for a native tensor (or an EagerPy one)."""
    return frameworks.name_of(t)


def model_framework(model: Any) -> str | None:
    """The framework a native model belongs to, or None for a plain callable."""
    return frameworks.model_name_of(model)


def torch_device(model: Any) -> Any:
    """The device of a torch module's first parameter or buffer (CPU when it has none)."""
    from attacks.frameworks import pytorch

    return pytorch.module_device(model)


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
    objects.
    """
    return frameworks.of(like).dtype(name)


def from_numpy(framework: str, array: np.ndarray, device: Any = None) -> Any:
    """A NumPy array as a native tensor of ``framework`` (on ``device`` for torch)."""
    return frameworks.named(framework).from_numpy(array, device)


def from_numpy_like(array: np.ndarray, like: Any) -> Any:
    """``array`` as a native tensor of ``like``'s framework, on its device."""
    raw = like.raw if isinstance(like, ep.Tensor) else like
    return frameworks.of(raw).from_numpy_like(array, raw)


def to_numpy(t: Any) -> np.ndarray:
    """A native or EagerPy tensor (or a NumPy-convertible value) as a NumPy array on the host."""
    if isinstance(t, ep.Tensor):
        t = t.raw
    try:
        framework = frameworks.of(t)
    except TypeError:  # a Python number or list
        return np.asarray(t)
    return framework.to_numpy(t)


def value_and_grad(loss_fn: LossFn, x: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
    """Return ``(loss, aux, d loss / d x)`` for ``loss_fn(x) -> (scalar loss, aux)``.

    Each framework's way, without side effects on the model: see the
    ``value_and_grad`` of the modules in :mod:`attacks.frameworks`.
    """
    return frameworks.of(x).value_and_grad(loss_fn, x)


def stop_gradient(raw: Any) -> Any:
    """``raw`` as a constant for autodiff, in its own framework (NumPy: unchanged)."""
    return frameworks.of(raw).stop_gradient(raw)


def no_grad(like: Any) -> AbstractContextManager[Any]:
    """``torch.no_grad()`` when ``like`` is a torch tensor, else a context that does nothing.

    For forward passes whose gradient is never taken: torch would record a
    graph for them; TensorFlow and JAX record one only when asked.
    """
    return frameworks.of(like).no_grad()


def wrap(raw: Any) -> ep.Tensor:
    """``ep.astensor`` with a precise type for mypy."""
    t: ep.Tensor = ep.astensor(raw)
    return t


class RandomSource:
    """Seeded random numbers on the device of a reference tensor, per framework.

    Why not ``ep.uniform``: it draws from each framework's global RNG (for JAX,
    one class-level key that every run starts from), so two attacks with the
    same seed would not reproduce, and seeding the global state would change
    the user's own randomness. Each attack run owns one of these instead.
    """

    def __init__(self, seed: int | None, like: ep.Tensor) -> None:
        self.framework = tensor_framework(like)
        self._dtype = like.raw.dtype
        seed_ = int(np.random.SeedSequence(seed).generate_state(1)[0])
        self._gen = frameworks.named(self.framework).generator(seed_, like.raw)

    def uniform(self, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> ep.Tensor:
        """Uniform samples in ``[low, high)`` with the reference tensor's dtype and device."""
        return wrap(self._gen.uniform(shape, low, high, self._dtype))

    def normal(self, shape: tuple[int, ...]) -> ep.Tensor:
        """Standard normal samples with the reference tensor's dtype and device."""
        return wrap(self._gen.normal(shape, self._dtype))

    def sign(self, shape: tuple[int, ...]) -> ep.Tensor:
        """Independent random signs (+1 or -1; 0 with negligible probability)."""
        return self.uniform(shape, -1.0, 1.0).sign()
