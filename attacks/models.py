"""One Model type over native models of every framework.

Why: an attack needs three things from a model: logits for a batch, the input
bounds, and (for gradient attacks) gradients through the model's own
framework. ``attacks.Model`` supplies them for a torch ``nn.Module`` or
callable, a Keras model, a JAX function and a NumPy function, so that one
attack implementation serves all four. Attacks also accept a native model
directly and wrap it with bounds ``(0, 1)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import eagerpy as ep
import numpy as np

from attacks import backend


class Bounds(NamedTuple):
    """Input domain ``[lower, upper]`` (numbers)."""

    lower: float
    upper: float


class Model:
    """A native model seen by attacks: logits, bounds, framework, gradients.

    Args:
        model: a ``torch.nn.Module`` or torch callable, a Keras model (called
            with ``training=False``), a JAX function ``f(x) -> logits``, or a
            NumPy function. Its output must be logits (or scores) of shape
            ``(N, classes)``.
        bounds: ``(lower, upper)`` of valid inputs, ``(0, 1)`` by default.
        framework: ``"torch"``, ``"tensorflow"``, ``"jax"`` or ``"numpy"``. Found
            automatically for torch modules and Keras models; a plain function
            takes the framework of the tensors it is called with unless given.

    Raises:
        ValueError: empty bounds or an unknown framework name.
        TypeError: ``model`` is not callable.
    """

    def __init__(
        self,
        model: Any,
        bounds: tuple[float, float] = (0.0, 1.0),
        *,
        framework: str | None = None,
    ) -> None:
        if isinstance(model, Model):
            raise TypeError("model is already an attacks.Model")
        if not callable(model):
            raise TypeError(f"model must be callable (x -> logits), got {type(model).__name__}")
        lower, upper = (float(b) for b in bounds)
        if not lower < upper:
            raise ValueError(f"bounds must satisfy lower < upper, got {bounds!r}")
        if framework is not None and framework not in backend.FRAMEWORKS:
            raise ValueError(f"framework must be one of {backend.FRAMEWORKS}, got {framework!r}")
        self.native = model
        self.bounds = Bounds(lower, upper)
        self.framework = framework or backend.model_framework(model)
        self._call: Callable[[Any], Any] = self._make_call(model)
        self._warned_training = False

    def __repr__(self) -> str:
        name = type(self.native).__name__
        return f"Model({name}, bounds={tuple(self.bounds)}, framework={self.framework!r})"

    def _make_call(self, model: Any) -> Callable[[Any], Any]:
        if self.framework == "tensorflow" and hasattr(model, "layers"):
            return lambda x: model(x, training=False)
        return model  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ forward

    def __call__(self, x: ep.Tensor) -> ep.Tensor:
        """Logits for ``x`` (an EagerPy tensor of the model's framework), differentiably."""
        self._check_training_mode()
        out = self._call(x.raw)
        if isinstance(out, tuple | list) or not hasattr(out, "shape"):
            raise TypeError(
                f"the model must return one logits tensor of shape (N, classes), got "
                f"{type(out).__name__}; wrap it, e.g. lambda x: model(x)[0]"
            )
        logits = backend.wrap(out)
        if backend.tensor_framework(logits) != backend.tensor_framework(x):
            raise TypeError(
                f"the model returned a {backend.tensor_framework(logits)} tensor for "
                f"{backend.tensor_framework(x)} input; pass framework=... to attacks.Model"
            )
        return logits

    def logits(self, x: ep.Tensor) -> ep.Tensor:
        """Logits without building an autodiff graph (cheaper for evaluation passes)."""
        with backend.no_grad(x):
            return self(x)

    def bind_labels(self, y: Any, target: Any = None) -> AbstractContextManager[None]:
        """Tell the model which labels the current attack works on (a no-op here).

        Models that judge success per label, such as ``attacks.EOT`` (fooled in
        *every* random pass), override this; ``Attack.__call__`` enters it
        around ``run`` so every success check inside an attack uses it.
        """
        return nullcontext()

    @property
    def differentiable(self) -> bool:
        """Whether gradients can flow (False for NumPy models)."""
        return self.framework != "numpy"

    def _check_training_mode(self) -> None:
        training = getattr(self.native, "training", False)
        if self.framework == "torch" and training is True and not self._warned_training:
            self._warned_training = True
            warnings.warn(
                "the torch model is in training mode (dropout, batch-norm statistics): "
                "call model.eval() before attacking it",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ conversion

    def adopt(self, x: Any) -> tuple[ep.Tensor, Callable[[ep.Tensor], Any]]:
        """Bring a native input into the model's framework; return it and a restorer.

        NumPy input to a torch, TensorFlow or JAX model is moved to that
        framework (and to the torch model's device) once, on entry; the
        restorer converts results back. Any other mismatch is an error.
        """
        source = backend.tensor_framework(x)
        if self.framework is None:
            self.framework = source
        target = self.framework
        if source == target:
            t = ep.astensor(x)
            return t, lambda r: r.raw
        if source != "numpy":
            raise TypeError(
                f"the model is a {target} model but the inputs are {source} tensors; "
                f"pass {target} tensors or NumPy arrays"
            )
        device = backend.torch_device(self.native) if target == "torch" else None
        t = ep.astensor(backend.from_numpy(target, np.asarray(x), device))
        return t, lambda r: backend.to_numpy(r)


def as_model(model: Any, bounds: tuple[float, float] | None = None) -> Model:
    """Wrap a native model (bounds ``(0, 1)`` unless given); pass a Model through."""
    if isinstance(model, Model):
        if bounds is not None and tuple(bounds) != tuple(model.bounds):
            raise ValueError(f"bounds {bounds} differ from the model's bounds {model.bounds}")
        return model
    return Model(model, bounds=bounds or (0.0, 1.0))
