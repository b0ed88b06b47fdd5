"""Adaptive-attack model wrappers: BPDA for shattered gradients, EOT for randomness.

Why: most broken defenses were broken not by a new attack but by attacking the
right function (Athalye, Carlini and Wagner, 2018). A quantizing, JPEG-ing or
denoising preprocessor has zero or useless gradients: plain PGD stands still
and the defense looks robust. A randomized forward pass gives a different
gradient and a different verdict on every call: one lucky pass looks like a
success. Both are fixed by wrapping the *model*, not the attack, so every
attack of the library (and every third-party attack given ``model.native``)
profits unchanged:

* :class:`BPDA` runs the real preprocessor forward and a surrogate (the
  identity by default) backward.
* :class:`EOT` differentiates the mean logits of ``n`` passes and judges
  success by the worst of the passes, so a point counts as adversarial only
  if it is adversarial in every pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import eagerpy as ep
import numpy as np

from attacks import backend
from attacks.losses import is_adversarial, margin
from attacks.models import Model, as_model

#: Per-framework plumbing lives in :mod:`attacks.backend`; the name stays importable here.
stop_gradient = backend.stop_gradient


def _sg(t: ep.Tensor) -> ep.Tensor:
    return backend.wrap(stop_gradient(t.raw))


def straight_through(value: ep.Tensor, surrogate: ep.Tensor) -> ep.Tensor:
    """A tensor whose value is ``value`` and whose gradient is ``surrogate``'s.

    The textbook form ``s + stop_gradient(v - s)`` equals ``v`` only up to
    float rounding (``s + (v - s)`` may differ from ``v`` by an ulp), so an
    attack could see a different class than the real model at a tie. We write
    it as ``stop_gradient(v) + (s - stop_gradient(s))``: the bracket is exactly
    zero, so the value is bit-identical to ``v``, and the gradient is still
    exactly that of ``s``.
    """
    return _sg(value) + (surrogate - _sg(surrogate))


def _bounds(model: Model) -> tuple[float, float]:
    return model.bounds.lower, model.bounds.upper


class _Wrapper(Model):
    """A Model around an inner Model: conversion and device come from the inner one."""

    inner: Model

    def adopt(self, x: Any) -> tuple[ep.Tensor, Callable[[ep.Tensor], Any]]:
        """Convert like the inner model (its torch device), then share its framework."""
        if self.framework is not None and self.inner.framework is None:
            self.inner.framework = self.framework
        out = self.inner.adopt(x)
        self.framework = self.inner.framework
        return out


def _wrap_inner(model: Any, bounds: tuple[float, float] | None) -> Model:
    if isinstance(model, Model):
        return as_model(model, bounds)
    return Model(model, bounds=bounds or (0.0, 1.0))


class BPDA(_Wrapper):
    """Backward pass differentiable approximation (Athalye et al., 2018) of a preprocessor.

    The forward pass is ``model(preprocess(x))``, bit for bit; the backward pass
    goes through ``model(surrogate(x))``. With the default identity surrogate
    the gradient is that of the undefended model evaluated at the preprocessed
    point, which is what breaks input quantization, JPEG and denoisers.

    Args:
        model: the classifier *after* the preprocessor: a native model or an
            :class:`attacks.Model` (also an :class:`EOT` or another BPDA).
        preprocess: the non-differentiable step, a function of native tensors
            of the model's framework (``torch.round``-based quantization, ...).
            Under JAX it is traced, so it must be written with ``jax.numpy``.
        surrogate: a differentiable approximation of ``preprocess`` with the
            same signature; the identity when omitted.
        bounds: input bounds; those of ``model`` when it is an
            :class:`attacks.Model`, else ``(0, 1)``.

    Raises:
        TypeError: ``preprocess`` or ``surrogate`` is not callable.
    """

    def __init__(
        self,
        model: Any,
        preprocess: Callable[[Any], Any],
        surrogate: Callable[[Any], Any] | None = None,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        if not callable(preprocess):
            raise TypeError(f"preprocess must be a function x -> x', got {type(preprocess)}")
        if surrogate is not None and not callable(surrogate):
            raise TypeError(f"surrogate must be a function x -> x' or None, got {type(surrogate)}")
        self.inner = _wrap_inner(model, bounds)
        self.preprocess = preprocess
        self.surrogate = surrogate
        super().__init__(self._native, bounds=_bounds(self.inner), framework=None)
        self.framework = self.inner.framework

    def __repr__(self) -> str:
        return f"BPDA({self.inner!r}, preprocess={getattr(self.preprocess, '__name__', '?')})"

    def _preprocessed(self, raw: Any) -> Any:
        with backend.no_grad(raw):  # no graph for a step whose gradient is discarded
            return self.preprocess(raw)

    def through(self, raw: Any) -> Any:
        """``preprocess(x)`` in value, ``surrogate(x)`` in gradient, as a native tensor.

        What the inner model receives; the binarization test extracts the inner
        model's features from it, so the binarized model keeps BPDA gradients.
        """
        x = backend.wrap(raw)
        value = backend.wrap(self._preprocessed(raw))
        s = x if self.surrogate is None else backend.wrap(self.surrogate(raw))
        return straight_through(value, s).raw

    def _native(self, raw: Any) -> Any:
        """The BPDA model as a native function: what third-party attacks get."""
        return self.inner(backend.wrap(self.through(raw))).raw

    def logits(self, x: ep.Tensor) -> ep.Tensor:
        """The real defended model ``model(preprocess(x))``, without a graph."""
        return self.inner.logits(backend.wrap(self._preprocessed(x.raw)))


class EOT(_Wrapper):
    """Expectation over transformation (Athalye et al., 2018) for randomized models.

    Gradients: ``eot(x)`` is differentiable and its gradient is that of the
    mean logits of ``n`` forward passes. Averaging logits rather than losses
    keeps the wrapper a plain model, so every attack and every loss works
    unchanged (averaging losses would need the attack's loss inside the
    wrapper); for small randomizations the two estimates agree to first order.
    With bound labels (below) the value is the worst pass's logits, so an
    attack's loss gradient is ``J_mean^T grad_z loss(z_worst)``: the mean
    Jacobian, weighted by the loss at the pass that resists most.

    Success: a randomized defense is broken at a point only if the point is
    adversarial in *every* pass; one lucky pass is not a success (AutoAttack
    PRs #104/#105 show how much that inflates attack success). The worst pass
    for a sample depends on its label, which ``Model.logits(x)`` is not given, so:

    * :meth:`is_adversarial_all` and :meth:`worst_logits` take the labels and
      run fresh passes: use them to verify.
    * Inside ``with eot.bind_labels(y, target):`` both ``eot(x)`` and
      ``eot.logits(x)`` return, per sample, the logits of the pass that is
      least adversarial for that sample (the highest true-class margin, or the
      lowest target margin; a pass with the sample not adversarial always wins).
      Every success check that reads the model's logits
      (``attacks.base.success``, PGD's tracker) then means "adversarial in
      all ``n`` passes". The gradient of ``eot(x)`` stays that of the mean logits.
      :class:`attacks.ensemble.Ensemble` binds the labels itself.
    * Without bound labels (or when an attack calls the model on a different
      batch size than the bound labels) the value is the mean logits: the
      attack's own bookkeeping is then "adversarial on average", which can
      only weaken the attack, never a verification done with
      :meth:`is_adversarial_all`.

    Args:
        model: the randomized model: a native model or an :class:`attacks.Model`.
        n: forward passes per call (gradient and success).
        bounds: input bounds; those of ``model`` when it is an
            :class:`attacks.Model`, else ``(0, 1)``.
        batch_passes: run the ``n`` passes as one batch of ``n * N`` inputs
            (faster on accelerators). Only correct when the model draws its
            randomness per sample; a model that draws one transformation per
            batch would see ``n`` identical passes. Off by default.

    Raises:
        ValueError: ``n < 1``.
    """

    def __init__(
        self,
        model: Any,
        n: int = 10,
        *,
        bounds: tuple[float, float] | None = None,
        batch_passes: bool = False,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (forward passes per call) must be an integer >= 1, got {n!r}")
        self.inner = _wrap_inner(model, bounds)
        self.n = n
        self.batch_passes = batch_passes
        self._labels: list[tuple[Any, Any]] = []
        super().__init__(self._native, bounds=_bounds(self.inner), framework=None)
        self.framework = self.inner.framework

    def __repr__(self) -> str:
        return f"EOT({self.inner!r}, n={self.n})"

    # ------------------------------------------------------------------ passes

    def passes(self, x: ep.Tensor, n: int | None = None) -> ep.Tensor:
        """Logits of ``n`` (default ``self.n``) independent passes, shape ``(n, N, K)``."""
        n = self.n if n is None else n
        if self.batch_passes:
            out = self.inner(ep.concatenate([x] * n, axis=0))
            return out.reshape((n, x.shape[0], *out.shape[1:]))
        return ep.stack([self.inner(x) for _ in range(n)], axis=0)

    def _native(self, raw: Any) -> Any:
        """The mean logits of ``n`` passes as a native function (for third-party attacks)."""
        return self.passes(backend.wrap(raw)).mean(axis=0).raw

    # ------------------------------------------------------------------ success

    @contextmanager
    def bind_labels(self, y: Any, target: Any = None) -> Iterator[None]:
        """Within the block, ``self(x)`` and ``self.logits(x)`` are worst-case per sample.

        ``y`` and ``target`` are native or EagerPy label tensors ``(N,)`` of the
        batch the attack runs on. Bindings nest (the innermost one applies).
        """
        self._labels.append((y, target))
        try:
            yield
        finally:
            self._labels.pop()

    def _bound(self, x: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor | None] | None:
        if not self._labels:
            return None
        y, target = self._labels[-1]
        y_ = _labels_as(x, y)
        t_ = None if target is None else _labels_as(x, target)
        self._labels[-1] = (y_, t_)  # converted once, not on every call of the attack loop
        if y_.shape[0] != x.shape[0]:
            return None  # an attack evaluating a sub-batch: fall back to the mean
        return y_, t_

    def worst_logits(
        self, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None = None, passes: int | None = None
    ) -> ep.Tensor:
        """Per sample, the logits of the least adversarial of ``passes`` fresh passes."""
        return _worst(self._no_grad_passes(x, passes), y, target)

    def is_adversarial_all(
        self, x: Any, y: Any, target: Any = None, passes: int | None = None
    ) -> Any:
        """Boolean ``(N,)``: adversarial in every one of ``passes`` (default ``n``) fresh passes.

        Accepts native or EagerPy tensors and returns the type of ``x``.
        """
        x_, restore = self.adopt(x)
        y_ = _labels_as(x_, y)
        t_ = None if target is None else _labels_as(x_, target)
        return restore(is_adversarial(self.worst_logits(x_, y_, t_, passes), y_, t_))

    def _no_grad_passes(self, x: ep.Tensor, n: int | None) -> ep.Tensor:
        with backend.no_grad(x):
            return self.passes(x, n)

    # ------------------------------------------------------------------ Model API

    def __call__(self, x: ep.Tensor) -> ep.Tensor:
        """Differentiable: gradient of the mean logits; value worst-case when labels are bound."""
        stacked = self.passes(x)
        mean = stacked.mean(axis=0)
        bound = self._bound(x)
        if bound is None:
            return mean
        return straight_through(_worst(stacked, *bound), mean)

    def logits(self, x: ep.Tensor) -> ep.Tensor:
        """``n`` fresh passes without a graph: worst case when labels are bound, else the mean."""
        stacked = self._no_grad_passes(x, None)
        bound = self._bound(x)
        return stacked.mean(axis=0) if bound is None else _worst(stacked, *bound)


def _labels_as(x: ep.Tensor, labels: Any) -> ep.Tensor:
    """Labels as an EagerPy tensor of x's framework (converted from NumPy if needed)."""
    if isinstance(labels, ep.Tensor):
        labels = labels.raw
    framework = backend.tensor_framework(x)
    if not hasattr(labels, "shape"):  # a list of ints
        labels = np.asarray(labels)
    if backend.tensor_framework(labels) != framework:
        labels = backend.from_numpy_like(backend.to_numpy(labels), x)
    return backend.wrap(labels)


def _worst(stacked: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None) -> ep.Tensor:
    """From ``(n, N, K)`` pass logits, per sample the pass that resists the attack most.

    Resistance is the true-class margin (untargeted) or minus the target
    margin (targeted): >= 0 in passes where the sample is not adversarial,
    <= 0 where it is. Only a tie at 0 could mix the two, so the score puts
    every non-adversarial pass (>= 0) above every adversarial one (<= -1)
    without changing the order inside each group: if any pass is not
    adversarial, the chosen one is not either (argmax order included), so
    "the chosen pass is adversarial" is exactly "every pass is adversarial".
    """
    n = stacked.shape[0]
    flat = stacked.reshape((-1, stacked.shape[-1]))
    y_rep = ep.concatenate([y] * n, axis=0)
    t_rep = None if target is None else ep.concatenate([target] * n, axis=0)
    adversarial = is_adversarial(flat, y_rep, t_rep)
    resistance = -margin(flat, y_rep, t_rep)
    score = ep.where(adversarial, ep.minimum(resistance, 0.0) - 1.0, ep.maximum(resistance, 0.0))
    chosen = score.reshape((n, -1)).argmax(axis=0)  # (N,)
    ranks = ep.arange(stacked, 0, n).reshape((n, 1))
    pick = (ranks == chosen.reshape((1, -1))).reshape((n, -1, 1))
    return ep.where(pick, stacked, ep.zeros_like(stacked)).sum(axis=0)


def label_scope(model: Any, y: Any, target: Any = None) -> AbstractContextManager[Any]:
    """``model.bind_labels(y, target)`` for models that judge success per label (EOT), else a no-op.

    Attacks that evaluate success themselves (the ensemble) enter this around
    their work so that randomized models are judged in every pass.
    """
    bind = getattr(model, "bind_labels", None)
    return bind(y, target) if callable(bind) else nullcontext()
