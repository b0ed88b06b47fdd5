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

from attacks import backend, fast_path
from attacks.base import RunContext
from attacks.geometry import (
    atleast_kd,
    linf_ascent,
    linf_limits,
    project_ball,
    random_point_in_ball,
    steepest_step,
)
from attacks.losses import Loss, get_loss, is_adversarial
from attacks.norms import parse_p
from attacks.steploop import StepLoopAttack


def _gradient_norm(norm: Any) -> float:
    p = parse_p(norm)
    if p not in (1.0, 2.0, math.inf):
        raise ValueError(f"gradient attacks support norm 'l1', 'l2' or 'linf', got {norm!r}")
    return p


def random_start(ctx: RunContext, x: ep.Tensor, epsilon: ep.Tensor, p: float) -> ep.Tensor:
    """A random start for an attack run: :func:`random_point_in_ball` with its RNG and bounds."""
    return random_point_in_ball(ctx.random, ctx.bounds, x, epsilon, p)


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


class PGD(StepLoopAttack):
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
        super().__init__(compile=compile)
        self._loss = get_loss(loss)

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

        loop = self.step_loop(pgd_step, ctx, x, self.restarts * self.steps)
        found, best = ep.zeros(x, (x.shape[0],)).bool(), x
        for _ in range(self.restarts):
            x_adv = random_start(ctx, x, eps, p) if self.random_start else x
            x_adv, found, best = loop.run((x_adv, found, best), self.steps)
            found, best = track(
                found, best, x_adv, is_adversarial(ctx.model.logits(x_adv), y, target), latest
            )
        self.finish(loop)
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
