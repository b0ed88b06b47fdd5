"""APGD (Croce and Hein, 2020): PGD that sets its own step size, the core of AutoAttack.

Why: a fixed-step PGD is as strong as its step size, and the step size that
works depends on the model, the loss and epsilon; a badly tuned PGD is the most
common reason a robustness claim was later broken. APGD starts with a large
step (2 epsilon), uses momentum, and at checkpoints halves the step of each
sample whose loss stopped improving, restarting it from its best point. It has
no step size to tune, which is why AutoAttack and the binarization test use it
as the default evaluation.

What follows AutoAttack (``autopgd_base.py``) and what differs:

* Linf and L2: the step, momentum and checkpoint rules are AutoAttack's. L2
  steps have their exact length *after* clipping (``steepest_step``), which
  AutoAttack's "step then clip" does not, so the iterates do not stall at the
  bounds. When a sample restarts from its best point its momentum is reset
  (AutoAttack keeps the move from the abandoned iterate, an artefact).
* L1: AutoAttack's L1 rule: sparse steps on an adaptive share of the
  coordinates (20% at first, then two thirds of the sparsity of the best
  point), no momentum, checkpoints every 4% of the budget that cut the step by
  1.5 (floor: a tenth) or reset it when the best point became sparser. The
  3-2-1 epsilon schedule of AutoAttack's standard L1 version is not used.
* Every per-sample quantity is a tensor; the schedule is the same for all
  samples, so the loop has no host reads and no per-sample Python.
* Returned: the first misclassified iterate (every iterate's forward pass is
  checked), else the best try over all runs (highest margin, one comparable
  score for every loss and target).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import eagerpy as ep

from attacks import backend
from attacks.base import Attack, RunContext, atleast_kd
from attacks.gradient import (
    _gradient_norm,
    _Tracker,
    loss_and_logits,
    project_ball,
    random_start,
    steepest_step,
)
from attacks.losses import Loss, get_loss, is_adversarial, margin
from attacks.rescaling import rescale_and_clip

MOMENTUM = 0.75  #: weight of the new step; 1 - MOMENTUM goes to the previous move
#: Linf/L2 checkpoints, as fractions of the budget: first interval, decrease, floor.
FIRST_CHECK, CHECK_DECREASE, MIN_CHECK = 0.22, 0.03, 0.06
#: L1 (AutoAttack's L1-APGD): checkpoint interval, initial share of coordinates,
#: step decay, smallest step (fraction of epsilon), sparsity drop that resets the step.
L1_CHECK, L1_TOPK_START, L1_STEP_DECAY, L1_MIN_STEP, L1_SPARSER = 0.04, 0.2, 1.5, 0.1, 0.95

Evaluate = Callable[[ep.Tensor], tuple[ep.Tensor, ep.Tensor]]


def checkpoint_intervals(steps: int) -> list[int]:
    """Lengths of the Linf/L2 checkpoint intervals for a budget of ``steps``.

    22% of the budget, then 3% shorter each time, never below 6% (AutoAttack's
    ``n_iter_2``, ``size_decr``, ``n_iter_min``; each at least one step). For
    100 steps the checks fall after iterations 22, 41, 57, 70, 80, 87, 93, 99.
    """
    k = max(int(FIRST_CHECK * steps), 1)
    decrease = max(int(CHECK_DECREASE * steps), 1)
    floor = max(int(MIN_CHECK * steps), 1)
    intervals, done = [], 0
    while done + k <= steps:
        intervals.append(k)
        done += k
        k = max(k - decrease, floor)
    return intervals


class APGD(Attack):
    """Auto-PGD under an Linf, L2 or L1 budget; ``targeted=True`` gives APGD-T.

    Args:
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        steps: iterations per run (AutoAttack: 100).
        restarts: random restarts per run (per target class for APGD-T).
        loss: ``"ce"`` (default), ``"margin"``, ``"dlr"`` or a callable
            ``(logits, y, target) -> (N,)`` to maximise. DLR needs at least 3
            classes (4 when targeted); on two-class models use ``"margin"``.
        targeted: without an explicit ``target``, attack towards each of the
            ``n_target_classes`` classes ranked highest by the model after the
            top one, in turn, as AutoAttack's APGD-T does; success is any
            misclassification. AutoAttack's APGD-T is
            ``APGD(targeted=True, loss="dlr")``. An explicit ``target`` passed to
            the call always makes the attack targeted towards it.
        n_target_classes: how many classes APGD-T tries (capped at classes - 1).
        rho: the step is halved when the loss rose in at most this share of
            the steps since the last checkpoint.
        seed: seed of the random starts (``None``: fresh randomness).
    """

    def __init__(
        self,
        norm: str | float = "linf",
        *,
        steps: int = 100,
        restarts: int = 1,
        loss: str | Loss = "ce",
        targeted: bool = False,
        n_target_classes: int = 9,
        rho: float = 0.75,
        seed: int | None = 0,
    ) -> None:
        if steps < 1 or restarts < 1 or n_target_classes < 1:
            raise ValueError(
                "steps, restarts and n_target_classes must be >= 1, got "
                f"{steps}, {restarts} and {n_target_classes}"
            )
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho is a share of steps and must lie in [0, 1], got {rho}")
        self.p = _gradient_norm(norm)
        self.steps = steps
        self.restarts = restarts
        self.loss = loss
        self.targeted = targeted
        self.n_target_classes = n_target_classes
        self.rho = rho
        self.seed = seed
        self._loss = get_loss(loss)

    # ------------------------------------------------------------------ driver

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        assert ctx.epsilon is not None
        clean = ctx.model.logits(x)
        loss_targets = self._loss_targets(clean, target)
        self._check_loss(clean, y, loss_targets[0])  # DLR on too few classes fails here, early
        tracker = _Tracker(x)
        tracker.update(x, is_adversarial(clean, y, target))
        best_x, best_score = x, margin(clean, y, target)
        for loss_target in loss_targets:
            for _ in range(self.restarts):
                x_run = self._single_run(ctx, x, y, loss_target, target, tracker)
                logits = ctx.model.logits(x_run)
                score = margin(logits, y, target)
                better = score > best_score
                best_x = ep.where(atleast_kd(better, x.ndim), x_run, best_x)
                best_score = ep.where(better, score, best_score)
        return tracker.result(best_x)

    def _loss_targets(self, clean: ep.Tensor, target: ep.Tensor | None) -> list[ep.Tensor | None]:
        """The target of each run's loss: the given one, none, or APGD-T's ranked classes."""
        if target is not None:
            return [target]
        if not self.targeted:
            return [None]
        classes = clean.shape[-1]
        order = clean.argsort(axis=-1)  # ascending: column -1 is the top class
        n = min(self.n_target_classes, classes - 1)
        return [order[:, classes - 1 - j] for j in range(1, n + 1)]

    def _check_loss(self, clean: ep.Tensor, y: ep.Tensor, loss_target: ep.Tensor | None) -> None:
        """Evaluate the loss once on the clean logits, so a bad loss fails before the loop."""
        values = self._loss(clean, y, loss_target)
        if tuple(values.shape) != (clean.shape[0],):
            raise ValueError(
                f"the loss must return one value per sample, shape ({clean.shape[0]},), got "
                f"{tuple(values.shape)}; reduce over everything but the batch axis"
            )

    def _single_run(
        self,
        ctx: RunContext,
        x: ep.Tensor,
        y: ep.Tensor,
        loss_target: ep.Tensor | None,
        target: ep.Tensor | None,
        tracker: _Tracker,
    ) -> ep.Tensor:
        """One APGD run from a random start; returns its highest-loss point."""
        fn = loss_and_logits(ctx.model, self._loss, y, loss_target)

        def evaluate(x_adv: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
            _, logits, grad = backend.value_and_grad(fn, x_adv)
            tracker.update(x_adv, is_adversarial(logits, y, target))
            return self._loss(logits, y, loss_target), grad

        if self.p == 1:
            return self._run_l1(ctx, x, evaluate)
        return self._run_lp(ctx, x, evaluate)

    # ------------------------------------------------------------------ Linf and L2

    def _run_lp(self, ctx: RunContext, x: ep.Tensor, evaluate: Evaluate) -> ep.Tensor:
        assert ctx.epsilon is not None
        eps, p, bounds, nd = ctx.epsilon, self.p, ctx.bounds, x.ndim
        x_adv = random_start(ctx, x, eps, p)
        loss, grad = evaluate(x_adv)
        x_best, grad_best, loss_best = x_adv, grad, loss
        x_prev, loss_prev = x_adv, loss
        step = eps * 2.0
        rises = ep.zeros_like(loss)  # steps since the last checkpoint whose loss rose
        loss_best_at_check = loss_best
        reduced_at_check = ep.ones_like(loss).bool()  # AutoAttack: no rule (b) at the first check
        checks = iter(checkpoint_intervals(self.steps))
        interval, since_check = next(checks, 0), 0
        for i in range(self.steps):
            x_new = project_ball(x, steepest_step(x_adv, grad, step, p, bounds), eps, p, bounds)
            if i > 0:
                moved = x_adv + (x_new - x_adv) * MOMENTUM + (x_adv - x_prev) * (1 - MOMENTUM)
                x_new = project_ball(x, moved, eps, p, bounds)
            x_prev, x_adv = x_adv, x_new
            loss, grad = evaluate(x_adv)
            rises = rises + (loss > loss_prev).astype(loss.dtype)
            loss_prev = loss
            improved = loss > loss_best
            x_best = ep.where(atleast_kd(improved, nd), x_adv, x_best)
            grad_best = ep.where(atleast_kd(improved, nd), grad, grad_best)
            loss_best = ep.where(improved, loss, loss_best)
            since_check += 1
            if since_check < interval:
                continue
            stalled = rises <= self.rho * interval  # (a): the loss rose too rarely
            no_gain = ep.logical_and(  # (b): not cut last time, and no better point since
                ep.logical_not(reduced_at_check), loss_best_at_check >= loss_best
            )
            cut = ep.logical_or(stalled, no_gain)
            step = ep.where(cut, step / 2.0, step)
            cut_x = atleast_kd(cut, nd)
            x_adv = ep.where(cut_x, x_best, x_adv)
            x_prev = ep.where(cut_x, x_best, x_prev)  # restart without momentum
            grad = ep.where(cut_x, grad_best, grad)
            loss_prev = ep.where(cut, loss_best, loss_prev)
            reduced_at_check, loss_best_at_check = cut, loss_best
            rises = ep.zeros_like(rises)
            interval, since_check = next(checks, 0), 0
        return x_best

    # ------------------------------------------------------------------ L1

    def _run_l1(self, ctx: RunContext, x: ep.Tensor, evaluate: Evaluate) -> ep.Tensor:
        assert ctx.epsilon is not None
        eps, bounds, nd = ctx.epsilon, ctx.bounds, x.ndim
        d = math.prod(x.shape[1:])
        # AutoAttack's L1 start: a Gaussian projected onto the ball, sparse and on its surface.
        x_adv = project_ball(x, x + ctx.random.normal(tuple(x.shape)), eps, 1.0, bounds)
        loss, grad = evaluate(x_adv)
        x_best, grad_best, loss_best = x_adv, grad, loss
        step = eps * 1.0
        share = ep.zeros_like(eps) + L1_TOPK_START  # share of coordinates a step moves
        sparsity_before = ep.zeros_like(eps) + float(d)
        interval = max(int(L1_CHECK * self.steps), 1)
        for i in range(1, self.steps + 1):
            x_adv = project_ball(
                x, sparse_l1_step(x_adv, grad, step, share, bounds), eps, 1, bounds
            )
            loss, grad = evaluate(x_adv)
            improved = loss > loss_best
            x_best = ep.where(atleast_kd(improved, nd), x_adv, x_best)
            grad_best = ep.where(atleast_kd(improved, nd), grad, grad_best)
            loss_best = ep.where(improved, loss, loss_best)
            if i % interval:
                continue
            sparsity = (x_best - x).flatten(start=1).abs().sign().sum(axis=1)
            sparser = sparsity < sparsity_before * L1_SPARSER
            share = sparsity / (d * L1_STEP_DECAY)
            step = ep.where(sparser, eps, step / L1_STEP_DECAY)
            step = ep.minimum(ep.maximum(step, eps * L1_MIN_STEP), eps)
            sparsity_before = sparsity
            x_adv = ep.where(atleast_kd(sparser, nd), x_best, x_adv)
            grad = ep.where(atleast_kd(sparser, nd), grad_best, grad)
        return x_best


def sparse_l1_step(
    x_adv: ep.Tensor,
    grad: ep.Tensor,
    step: ep.Tensor,
    share: ep.Tensor,
    bounds: tuple[float, float],
) -> ep.Tensor:
    """An L1 step of length ``step`` on the ``share`` (per sample) of largest-gradient coordinates.

    Like ``steepest_step(p=1)`` but with a per-sample share instead of a fixed
    one (AutoAttack adapts it to the sparsity of the best point). Only
    coordinates that can move in the gradient's direction count, and the step
    has its exact L1 length after clipping. The k-th largest magnitude is read
    by a mask over ranks, not a gather, so it works on every backend.
    """
    lo, hi = bounds
    movable = ep.logical_or(
        ep.logical_and(grad > 0, x_adv < hi), ep.logical_and(grad < 0, x_adv > lo)
    )
    g = ep.where(movable, grad, ep.zeros_like(grad)).flatten(start=1).abs()
    d = g.shape[1]
    ordered = g.sort(axis=1).flip(axis=1)  # descending
    ranks = ep.arange(g, 1, d + 1).astype(g.dtype).reshape((1, -1))
    k = ep.maximum(share * d, 1.0).reshape((-1, 1))
    threshold = ep.where(ranks <= k, ordered, ep.zeros_like(ordered) + math.inf).min(axis=1)
    keep = ep.logical_and(g >= threshold.reshape((-1, 1)), g > 0).reshape(grad.shape)
    direction = ep.where(keep, grad.sign(), ep.zeros_like(grad))
    return rescale_and_clip(x_adv, direction, step, p=1, bounds=bounds)
