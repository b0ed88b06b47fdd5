"""The attack protocol: one final ``__call__`` that checks, converts and projects.

Why a template method (as in Foolbox 3): every attack must accept native
tensors of any framework, reject bad input with a clear message, never mutate
its inputs, be reproducible under a seed and return points that lie inside the
bounds and the epsilon ball. Doing that once, here, around an abstract
``run`` means a new attack only writes its optimisation loop and cannot forget
the guarantees.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, final

import eagerpy as ep
import numpy as np

from attacks import backend
from attacks.geometry import lp_norms, project
from attacks.keywords import keyword_hints
from attacks.losses import is_adversarial
from attacks.models import Model, as_model
from attacks.norms import norm_name, parse_p


@dataclass
class RunContext:
    """What ``Attack.run`` receives besides the data: model, budget, RNG."""

    model: Model
    epsilon: ep.Tensor | None  # (N,) or None for unbounded minimum-norm attacks
    p: float
    random: backend.RandomSource

    @property
    def bounds(self) -> tuple[float, float]:
        return self.model.bounds.lower, self.model.bounds.upper


class Attack(ABC):
    """Base class of every attack: ``attack(model, x, y, epsilon=..., target=None) -> x_adv``.

    Subclasses set ``p`` (the norm of their threat model), ``uses_gradient`` and
    implement :meth:`run`. The returned points are projected onto the epsilon
    ball of their clean point and into the bounds, so whatever ``run`` does,
    the attack never leaves the threat model.
    """

    uses_gradient: bool = True
    minimizes_norm: ClassVar[bool] = False  #: can run without epsilon
    p: float = math.inf
    seed: int | None = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every attack's constructor answers ``eps=`` with where the budget goes.

        Why here: ``PGD(eps=8/255)`` (torchattacks' spelling) is the most
        common first mistake, and a bare ``TypeError`` does not say that
        epsilon is given per call. See :mod:`attacks.keywords`.
        """
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = keyword_hints(init)  # type: ignore[method-assign]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

    @property
    def norm(self) -> str:
        """The threat-model norm as a name ("l2", "linf", ...)."""
        return norm_name(self.p)

    @final
    @keyword_hints
    def __call__(
        self,
        model: Any,
        x: Any,
        y: Any,
        *,
        epsilon: Any = None,
        target: Any = None,
    ) -> Any:
        """Attack ``model`` at ``x`` with labels ``y``; return adversarial points.

        Args:
            model: an :class:`attacks.Model` or a native model (bounds ``(0, 1)``).
            x: inputs ``(N, ...)``, a NumPy array or a framework tensor, inside the bounds.
            y: integer labels ``(N,)``.
            epsilon: the budget in this attack's norm: a positive number or one
                per sample. Minimum-norm attacks also run without it.
            target: optional target classes ``(N,)`` for a targeted attack.

        Returns:
            Points of the same type, dtype, shape and device as ``x``; for
            samples the attack could not fool, the clean point or the best try.
        """
        model_ = as_model(model)
        x_, restore = model_.adopt(x)
        check_gradient_support(self, model_)
        check_inputs(x_, model_)
        y_ = _labels_like(x_, y, "y")
        target_ = None if target is None else _labels_like(x_, target, "target")
        epsilon_ = self._epsilon(x_, epsilon)
        ctx = RunContext(model_, epsilon_, self.p, backend.RandomSource(self.seed, x_))
        with model_.bind_labels(y_, target_):
            x_adv = self.run(ctx, x_, y_, target_)
        if tuple(x_adv.shape) != tuple(x_.shape):
            raise RuntimeError(f"{self!r}.run returned shape {x_adv.shape}, expected {x_.shape}")
        x_adv = project(x_, x_adv, epsilon_, self.p, ctx.bounds)
        return restore(x_adv.astype(x_.dtype))

    @abstractmethod
    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        """The attack's own optimisation; the result is projected afterwards."""

    def _epsilon(self, x: ep.Tensor, epsilon: Any) -> ep.Tensor | None:
        if epsilon is None:
            if self.minimizes_norm:
                return None
            raise ValueError(f"{type(self).__name__} needs epsilon (its {self.norm} budget)")
        values = np.asarray(backend.to_numpy(epsilon), dtype=np.float64).reshape(-1)
        n = x.shape[0]
        if values.size not in (1, n):
            raise ValueError(
                f"epsilon must be a number or have one entry per sample ({n}), got {values.size}"
            )
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"epsilon must be positive and finite, got {epsilon!r}")
        values = np.broadcast_to(values, (n,)).astype(backend.to_numpy(x[:1]).dtype)
        return backend.wrap(backend.from_numpy_like(values, x))


# ---------------------------------------------------------------------- shared helpers


def _labels_like(x: ep.Tensor, labels: Any, name: str) -> ep.Tensor:
    """Labels as an integer tensor of x's framework, shape (N,)."""
    framework = backend.tensor_framework(x)
    if backend.tensor_framework(labels) == framework:
        t = backend.wrap(labels)
    else:
        t = backend.wrap(backend.from_numpy_like(np.asarray(backend.to_numpy(labels)), x))
    if tuple(t.shape) != (x.shape[0],):
        raise ValueError(
            f"{name} must have shape ({x.shape[0]},), one label per input, got {tuple(t.shape)}"
        )
    if "int" not in str(t.dtype):
        raise TypeError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    return t


def check_gradient_support(attack: Attack, model: Model) -> None:
    """Refuse a gradient attack on a model without gradients (a NumPy model).

    Shared by ``Attack.__call__`` and the binarization test, which checks it
    before sampling and fitting so that the error comes at once.
    """
    if attack.uses_gradient and not model.differentiable:
        raise TypeError(
            f"{type(attack).__name__} needs gradients, but the model is a NumPy model; use a "
            "gradient-free attack (attacks.Square, attacks.HopSkipJump) or a PyTorch, "
            "TensorFlow or JAX model"
        )


def check_inputs(
    x: ep.Tensor,
    model: Model,
    hint: str = "pass attacks.Model(model, bounds=(lo, hi)) or rescale x",
) -> None:
    """Shape, dtype and bounds of the clean inputs (one host read, before any loop).

    ``hint`` ends the out-of-bounds message: what the caller should do.
    """
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a batch (N, ...) with N >= 1, got shape {tuple(x.shape)}")
    if "float" not in str(x.dtype):
        raise TypeError(f"x must be floating point, got {x.dtype}; scale images to the bounds")
    lo, hi = model.bounds
    x_min, x_max = float(x.min().item()), float(x.max().item())
    if math.isnan(x_min) or math.isnan(x_max):
        raise ValueError("x contains NaN")
    if x_min < lo or x_max > hi:
        raise ValueError(
            f"x lies outside the model's bounds {tuple(model.bounds)}: min {x_min:.4g}, max "
            f"{x_max:.4g}; {hint}"
        )


def distances(x: Any, x_adv: Any, norm: float | str) -> Any:
    """Per-sample ``||x_adv - x||`` in ``norm``, as a native ``(N,)`` tensor of x's type.

    Minimum-norm attacks report their result this way: run them without
    epsilon, then measure.
    """
    (x_, x_adv_), restore = ep.astensors_(x, x_adv)
    return restore(lp_norms(x_adv_ - x_, parse_p(norm)))


def success(model: Model, x_adv: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None) -> ep.Tensor:
    """Boolean ``(N,)``: whether the model is fooled at ``x_adv`` (one fresh forward pass)."""
    return is_adversarial(model.logits(x_adv), y, target)
