"""Gradient attacks with a fixed budget: FGSM and PGD under L1, L2 and Linf.

Why these shapes: PGD (Madry et al., 2018) is the evaluation most defenses
report, so it must be at least as strong as the implementations users compare
against. Two choices make ours stronger than the textbook loop at no extra
cost: L1 and L2 steps and random starts have their exact length *after*
clipping (the clipping-aware rescaling kernel), and every iterate's forward
pass, which the gradient needs anyway, is checked for success, so an
adversarial point found on the way is kept even if later steps leave it.

The loop is a step function over a tuple of tensors (iterate, tracker), run by
:class:`attacks.fast_path.StepLoop`: eagerly, or on CUDA captured once in a
CUDA graph and replayed (``compile=``). Per step it costs one forward and one
backward pass plus few kernels: the Linf step and projection are one clamp
against limits computed once per call (the ball intersected with the bounds),
and the tracker is an argmax, a comparison, an ``or`` and one ``where``.
"""

from __future__ import annotations

import math
from typing import Any

import eagerpy as ep

from attacks import backend, fast_path, progress
from attacks.backend import RandomSource
from attacks.base import Attack, RunContext, atleast_kd, lp_norms
from attacks.losses import Loss, get_loss, is_adversarial
from attacks.norms import parse_p
from attacks.rescaling import rescale_and_clip

#: For L1 steps: the share of coordinates (by gradient magnitude) left out, as in
#: sparse L1 descent (Tramer and Boneh, 2019); dense L1 steps are very weak.
L1_SPARSITY = 0.99


def _gradient_norm(norm: Any) -> float:
    p = parse_p(norm)
    if p not in (1.0, 2.0, math.inf):
        raise ValueError(f"gradient attacks support norm 'l1', 'l2' or 'linf', got {norm!r}")
    return p


def steepest_step(
    x_adv: ep.Tensor, grad: ep.Tensor, step: ep.Tensor, p: float, bounds: tuple[float, float]
) -> ep.Tensor:
    """Move ``x_adv`` by ``step`` (per sample) along the steepest ascent direction of ``p``.

    Linf: the sign of the gradient. L2: the gradient, with the step's length
    exact after clipping. L1: the sign of the largest-magnitude coordinates
    that can still move (sparse), likewise exact after clipping.
    """
    lo, hi = bounds
    if math.isinf(p):
        return ep.clip(x_adv + atleast_kd(step, x_adv.ndim) * grad.sign(), lo, hi)
    if p == 1:
        movable = ep.logical_or(
            ep.logical_and(grad > 0, x_adv < hi), ep.logical_and(grad < 0, x_adv > lo)
        )
        g = ep.where(movable, grad, ep.zeros_like(grad)).flatten(start=1).abs()
        d = g.shape[1]
        k = max(1, math.ceil(d * (1 - L1_SPARSITY)))
        threshold = g.sort(axis=1)[:, d - k : d - k + 1]
        keep = ep.logical_and(g >= threshold, g > 0).reshape(grad.shape)
        direction = ep.where(keep, grad.sign(), ep.zeros_like(grad))
        return rescale_and_clip(x_adv, direction, step, p=1, bounds=bounds)
    return rescale_and_clip(x_adv, grad, step, p=2, bounds=bounds)


def project_l1_ball(delta: ep.Tensor, epsilon: ep.Tensor) -> ep.Tensor:
    """Euclidean projection of each sample's ``delta`` onto the L1 ball of radius epsilon.

    Sort-based (Duchi et al., 2008), batched, without gathers: the condition
    that selects the support is a prefix of the sorted magnitudes, so its
    cumulative sum is a masked sum.
    """
    shape = delta.shape
    v = delta.flatten(start=1)
    u = v.abs().sort(axis=1).flip(axis=1)  # descending
    css = u.cumsum(axis=1)
    eps = epsilon.reshape((-1, 1))
    ranks = ep.arange(v, 1, v.shape[1] + 1).astype(v.dtype).reshape((1, -1))
    support = u - (css - eps) / ranks > 0
    rho = ep.maximum(ep.where(support, ep.ones_like(u), ep.zeros_like(u)).sum(axis=1), 1.0)
    theta = (ep.where(support, u, ep.zeros_like(u)).sum(axis=1) - eps[:, 0]) / rho
    theta = ep.maximum(theta, 0.0).reshape((-1, 1))
    projected = v.sign() * ep.maximum(v.abs() - theta, 0.0)
    inside = (v.abs().sum(axis=1) <= eps[:, 0]).reshape((-1, 1))
    return ep.where(inside, v, projected).reshape(shape)


def project_ball(
    x: ep.Tensor, x_adv: ep.Tensor, epsilon: ep.Tensor, p: float, bounds: tuple[float, float]
) -> ep.Tensor:
    """Into the bounds and the ball: Linf clip, L2 radial, L1 exact (then clipped)."""
    lo, hi = bounds
    delta = x_adv - x
    if math.isinf(p):
        eps = atleast_kd(epsilon, x.ndim)
        delta = ep.minimum(ep.maximum(delta, -eps), eps)
    elif p == 1:
        delta = project_l1_ball(delta, epsilon)
    else:
        factor = ep.minimum(1.0, epsilon / ep.maximum(lp_norms(delta, p), 1e-30))
        delta = delta * atleast_kd(factor, x.ndim)
    return ep.clip(x + delta, lo, hi)


def random_start(ctx: RunContext, x: ep.Tensor, epsilon: ep.Tensor, p: float) -> ep.Tensor:
    """A random start for an attack run: :func:`random_point_in_ball` with its RNG and bounds."""
    return random_point_in_ball(ctx.random, ctx.bounds, x, epsilon, p)


def random_point_in_ball(
    random: RandomSource,
    bounds: tuple[float, float],
    x: ep.Tensor,
    epsilon: ep.Tensor,
    p: float,
) -> ep.Tensor:
    """A uniform point of the Linf ball, or a point of the Lp ball at a random radius.

    For finite p the direction is Gaussian (Laplace for L1, the direction law
    of a uniform point of the L1 ball) and the radius ``epsilon * u**(1/D)``
    (the radial law of a uniform point in D dimensions), exact after clipping.
    Attacks start here; the binarization test draws its inner points here.
    """
    lo, hi = bounds
    if math.isinf(p):
        noise = random.uniform(tuple(x.shape), -1.0, 1.0)
        return ep.clip(x + atleast_kd(epsilon, x.ndim) * noise, lo, hi)
    direction = random.normal(tuple(x.shape))
    if p == 1:
        direction = direction.sign() * random.uniform(tuple(x.shape)).log().abs()  # Laplace
    d = math.prod(x.shape[1:])
    radius = epsilon * random.uniform((x.shape[0],)) ** (1.0 / d)
    return rescale_and_clip(x, direction, radius, p=p, bounds=bounds)


def loss_and_logits(
    model: Any, loss: Loss, y: ep.Tensor, target: ep.Tensor | None
) -> backend.LossFn:
    """The closure differentiated by gradient attacks: summed loss, logits as aux."""

    def fn(x_adv: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        logits = model(x_adv)
        return loss(logits, y, target).sum(), logits

    return fn


def track(
    found: ep.Tensor,
    best: ep.Tensor,
    x_adv: ep.Tensor,
    adversarial: ep.Tensor,
    latest: bool = True,
) -> tuple[ep.Tensor, ep.Tensor]:
    """Success tracking, per sample: ``found`` so far, and the point to return.

    ``best`` is the latest (or, with ``latest=False``, the first) adversarial
    iterate of a sample fooled so far, and the latest checked iterate of the
    others, so after the last check it is the result as it stands, with no
    final selection. Why the latest by default (AutoAttack's choice too): the
    attack ascends its loss, so later adversarial iterates lie deeper in the
    adversarial region; on accelerators, where forward passes change with
    the batch, and on randomized models, a point barely past the boundary in
    the attack's pass can fall back in the pass that verifies it. One or two
    x-sized ``where`` kernels on top of the success check.
    """
    keep = ep.logical_and(found, ep.logical_not(adversarial)) if latest else found
    best = ep.where(atleast_kd(keep, x_adv.ndim), best, x_adv)
    return ep.logical_or(found, adversarial), best


def linf_limits(
    x: ep.Tensor, epsilon: ep.Tensor, bounds: tuple[float, float]
) -> tuple[ep.Tensor, ep.Tensor]:
    """Per coordinate, the Linf ball around ``x`` intersected with the bounds: (lower, upper)."""
    eps = atleast_kd(epsilon, x.ndim)
    return ep.clip(x - eps, *bounds), ep.clip(x + eps, *bounds)


def linf_ascent(
    x_adv: ep.Tensor, grad: ep.Tensor, step: ep.Tensor, lower: ep.Tensor, upper: ep.Tensor
) -> ep.Tensor:
    """A sign step of ``step`` (per sample), projected into ``[lower, upper]`` by one clamp.

    The same point as :func:`steepest_step` followed by :func:`project_ball`
    (up to the rounding of ``x + (x_adv - x)``, which this avoids), in three
    kernels instead of about nine.
    """
    if backend.tensor_framework(x_adv) == "torch":
        import torch

        moved = torch.addcmul(x_adv.raw, atleast_kd(step, x_adv.ndim).raw, grad.raw.sign())
        return backend.wrap(torch.clamp(moved, lower.raw, upper.raw))
    return clamp(x_adv + atleast_kd(step, x_adv.ndim) * grad.sign(), lower, upper)


def clamp(t: ep.Tensor, lower: ep.Tensor, upper: ep.Tensor) -> ep.Tensor:
    """Elementwise ``min(max(t, lower), upper)`` with tensor limits (one kernel on torch)."""
    if backend.tensor_framework(t) == "torch":
        import torch

        return backend.wrap(torch.clamp(t.raw, lower.raw, upper.raw))
    return ep.minimum(ep.maximum(t, lower), upper)


class PGD(Attack):
    """Projected gradient descent (ascent on the loss) under an L1, L2 or Linf budget.

    Args:
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        steps: iterations per restart.
        rel_stepsize: step size as a fraction of epsilon (default ``2.5 / steps``,
            so the iterates can cross the ball about 2.5 times).
        abs_stepsize: absolute step size; overrides ``rel_stepsize``.
        random_start: start at a random point of the ball (else at x).
        restarts: independent runs; a sample counts as fooled if any run fools it.
        loss: ``"ce"`` (default), ``"margin"``, ``"dlr"`` or a callable
            ``(logits, y, target) -> (N,)`` to maximise.
        seed: seed of the random starts (``None``: fresh randomness).
        keep: ``"latest"`` (default): return the latest adversarial iterate,
            the deepest one an ascending attack found; ``"first"``: stop
            caring at the first iterate that fooled the model once (early
            stopping; fragile on randomized models and noisy accelerators).
        compile: the step loop's fast path (:mod:`attacks.fast_path`).
            ``"auto"`` (default): on CUDA, PyTorch models that pass the checks
            (eval mode, not randomized, no host reads in the step) have their
            step captured in a CUDA graph; elsewhere the loop is eager.
            ``True``: also off CUDA, with ``torch.compile``; for JAX models the
            whole loop as one ``jax.jit`` program (faster steps, but
            a compilation in every call). A dict: ``torch.compile``
            with these keyword arguments, on any device. ``False``: eager.
            ``last_fast_path`` tells how the last call ran, and why.
    """

    def __init__(
        self,
        norm: str | float = "linf",
        *,
        steps: int = 100,
        rel_stepsize: float | None = None,
        abs_stepsize: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str | Loss = "ce",
        seed: int | None = 0,
        keep: str = "latest",
        compile: fast_path.CompileSetting = "auto",
    ) -> None:
        if steps < 1 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
        if keep not in ("latest", "first"):
            raise ValueError(f"keep must be 'latest' or 'first', got {keep!r}")
        self.keep = keep
        self.p = _gradient_norm(norm)
        self.steps = steps
        self.rel_stepsize = 2.5 / steps if rel_stepsize is None else rel_stepsize
        self.abs_stepsize = abs_stepsize
        self.random_start = random_start
        self.restarts = restarts
        self.loss = loss
        self.seed = seed
        self.compile = fast_path.check_setting(compile)
        self._loss = get_loss(loss)
        self._last_fast_path: fast_path.FastPathStatus | None = None

    @property
    def last_fast_path(self) -> fast_path.FastPathStatus | None:
        """How the step loop of the last call ran (eager, CUDA graph, torch.compile, jax.jit)."""
        return self._last_fast_path

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        assert ctx.epsilon is not None
        eps = ctx.epsilon
        step = (
            ep.full_like(eps, self.abs_stepsize)
            if self.abs_stepsize is not None
            else eps * self.rel_stepsize
        )
        fn = loss_and_logits(ctx.model, self._loss, y, target)
        p, bounds = self.p, ctx.bounds
        latest = self.keep == "latest"
        if math.isinf(p):
            lower, upper = linf_limits(x, eps, bounds)

            def ascend(x_adv: ep.Tensor, grad: ep.Tensor) -> ep.Tensor:
                return linf_ascent(x_adv, grad, step, lower, upper)
        else:

            def ascend(x_adv: ep.Tensor, grad: ep.Tensor) -> ep.Tensor:
                return project_ball(x, steepest_step(x_adv, grad, step, p, bounds), eps, p, bounds)

        def pgd_step(state: fast_path.State) -> fast_path.State:
            x_adv, found, best = state
            _, logits, grad = backend.value_and_grad(fn, x_adv)
            adversarial = is_adversarial(logits, y, target)
            found, best = track(found, best, x_adv, adversarial, latest)
            return ascend(x_adv, grad), found, best

        name = type(self).__name__
        status = fast_path.plan(self.compile, ctx.model, x, name)
        counter = progress.counter(self.restarts * self.steps)
        loop = fast_path.StepLoop(pgd_step, status, name, counter)
        found, best = ep.zeros(x, (x.shape[0],)).bool(), x
        for _ in range(self.restarts):
            x_adv = random_start(ctx, x, eps, p) if self.random_start else x
            x_adv, found, best = loop.run((x_adv, found, best), self.steps)
            found, best = track(
                found, best, x_adv, is_adversarial(ctx.model.logits(x_adv), y, target), latest
            )
        self._last_fast_path = fast_path.finish(loop)
        return best


class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al., 2015): one Linf step of size epsilon.

    With ``norm="l2"`` or ``"l1"`` it is the fast gradient method in that norm.
    """

    def __init__(
        self, norm: str | float = "linf", *, loss: str | Loss = "ce", seed: int | None = 0
    ) -> None:
        super().__init__(
            norm,
            steps=1,
            rel_stepsize=1.0,
            random_start=False,
            restarts=1,
            loss=loss,
            seed=seed,
            compile=False,  # one step: nothing to replay
        )
