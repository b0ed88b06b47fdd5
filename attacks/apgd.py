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

import eagerpy as ep

from attacks import backend, fast_path
from attacks.base import RunContext
from attacks.geometry import (
    atleast_kd,
    clamp,
    linf_ascent,
    linf_limits,
    project_ball,
    sparse_l1_step,
    steepest_step,
)
from attacks.gradient import _gradient_norm, loss_and_logits, random_start, track
from attacks.losses import Loss, get_loss, is_adversarial, margin
from attacks.steploop import StepLoopAttack

#: Target classes APGD-T tries by default (AutoAttack's ``n_target_classes``).
AUTOATTACK_TARGETS = 9
MOMENTUM = 0.75  #: weight of the new step; 1 - MOMENTUM goes to the previous move
#: Linf/L2 checkpoints, as fractions of the budget: first interval, decrease, floor.
FIRST_CHECK, CHECK_DECREASE, MIN_CHECK = 0.22, 0.03, 0.06
#: L1 (AutoAttack's L1-APGD): checkpoint interval, initial share of coordinates,
#: step decay, smallest step (fraction of epsilon), sparsity drop that resets the step.
L1_CHECK, L1_TOPK_START, L1_STEP_DECAY, L1_MIN_STEP, L1_SPARSER = 0.04, 0.2, 1.5, 0.1, 0.95


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


class APGD(StepLoopAttack):
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
        n_target_classes: how many classes APGD-T tries, at most classes - 1;
            ``None`` (default): AutoAttack's 9, capped at classes - 1 when the
            model has fewer. The repr shows what was set, since the count
            used depends on the model attacked.
        rho: the step is halved when the loss rose in at most this share of
            the steps since the last checkpoint.
        seed: seed of the random starts (``None``: fresh randomness).
        compile: the step loop's fast path, as for :class:`attacks.PGD`:
            ``"auto"`` (default; a CUDA graph on CUDA for PyTorch models that pass
            the checks, eager elsewhere), ``True`` (``torch.compile``; ``jax.jit``
            for JAX models), a dict of ``torch.compile`` arguments, or ``False``.
            The checkpoints run in Python between replays; ``last_fast_path``
            tells how the last call ran.
    """

    def __init__(
        self,
        norm: str | float = "linf",
        *,
        steps: int = 100,
        restarts: int = 1,
        loss: str | Loss = "ce",
        targeted: bool = False,
        n_target_classes: int | None = None,
        rho: float = 0.75,
        seed: int | None = 0,
        compile: fast_path.CompileSetting = "auto",
    ) -> None:
        if steps < 1 or restarts < 1 or (n_target_classes is not None and n_target_classes < 1):
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
        super().__init__(compile=compile)
        self._loss = get_loss(loss)

    # ------------------------------------------------------------------ driver

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        assert ctx.epsilon is not None
        clean = ctx.model.logits(x)
        loss_targets = self._loss_targets(clean, target)
        self._check_loss(clean, y, loss_targets[0])  # DLR on too few classes fails here, early
        found, best = track(
            ep.zeros(x, (x.shape[0],)).bool(), x, x, is_adversarial(clean, y, target)
        )
        best_x, best_score = x, margin(clean, y, target)
        run = _Run(self, ctx, x, y, target, targeted=loss_targets[0] is not None)
        run.loop = self.step_loop(run.step, ctx, x, len(loss_targets) * self.restarts * self.steps)
        for loss_target in loss_targets:
            for _ in range(self.restarts):
                x_run, found, best = run.single(found, best, loss_target)
                logits = ctx.model.logits(x_run)
                score = margin(logits, y, target)
                better = score > best_score
                best_x = ep.where(atleast_kd(better, x.ndim), x_run, best_x)
                best_score = ep.where(better, score, best_score)
        self.finish(run.loop)
        return ep.where(atleast_kd(found, x.ndim), best, best_x)

    def _loss_targets(self, clean: ep.Tensor, target: ep.Tensor | None) -> list[ep.Tensor | None]:
        """The target of each run's loss: the given one, none, or APGD-T's ranked classes."""
        if target is not None:
            return [target]
        if not self.targeted:
            return [None]
        classes = clean.shape[-1]
        order = clean.argsort(axis=-1)  # ascending: column -1 is the top class
        wanted = AUTOATTACK_TARGETS if self.n_target_classes is None else self.n_target_classes
        n = min(wanted, classes - 1)
        return [order[:, classes - 1 - j] for j in range(1, n + 1)]

    def _check_loss(self, clean: ep.Tensor, y: ep.Tensor, loss_target: ep.Tensor | None) -> None:
        """Evaluate the loss once on the clean logits, so a bad loss fails before the loop."""
        values = self._loss(clean, y, loss_target)
        if tuple(values.shape) != (clean.shape[0],):
            raise ValueError(
                f"the loss must return one value per sample, shape ({clean.shape[0]},), got "
                f"{tuple(values.shape)}; reduce over everything but the batch axis"
            )


class _Run:
    """One APGD call: its step functions, its step loop and its runs.

    Why a class: every run of a call (restarts, APGD-T's target classes) shares
    one step function and one :class:`attacks.fast_path.StepLoop`, so on CUDA
    the step is captured once per call. The state the step maps is a tuple of
    tensors, last of all the tracker (``found``, ``best``) and, for targeted
    losses, the loss target, so that one captured step serves every target.
    Checkpoints change the state between segments of steps, in Python.
    """

    #: Built by :meth:`APGD.run` around :meth:`step` (:meth:`APGD.step_loop` is
    #: called from ``run``, so a fast-path warning points at the user's call).
    loop: fast_path.StepLoop

    def __init__(
        self,
        attack: APGD,
        ctx: RunContext,
        x: ep.Tensor,
        y: ep.Tensor,
        target: ep.Tensor | None,
        *,
        targeted: bool,
    ) -> None:
        assert ctx.epsilon is not None
        self.attack, self.ctx, self.x, self.y, self.target = attack, ctx, x, y, target
        self.eps, self.p, self.bounds = ctx.epsilon, attack.p, ctx.bounds
        self.targeted = targeted
        self.lower, self.upper = linf_limits(x, self.eps, self.bounds)
        self._body = self._l1_step if self.p == 1 else self._lp_step

    def step(self, state: fast_path.State) -> fast_path.State:
        """The step the loop runs: the body of this norm, with momentum."""
        return self._body(state, momentum=True)

    def single(
        self, found: ep.Tensor, best: ep.Tensor, loss_target: ep.Tensor | None
    ) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
        """One APGD run from a random start: its highest-loss point, and the tracker."""
        extra = (loss_target,) if loss_target is not None else ()
        if self.p == 1:
            return self._run_l1(found, best, extra)
        return self._run_lp(found, best, extra)

    def _evaluate(
        self, x_adv: ep.Tensor, found: ep.Tensor, best: ep.Tensor, extra: fast_path.State
    ) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor, ep.Tensor]:
        """Loss, gradient, and the tracker updated with this iterate's success."""
        loss_target = extra[0] if self.targeted else None
        fn = loss_and_logits(self.ctx.model, self.attack._loss, self.y, loss_target)
        _, logits, grad = backend.value_and_grad(fn, x_adv)
        found, best = track(found, best, x_adv, is_adversarial(logits, self.y, self.target))
        return self.attack._loss(logits, self.y, loss_target), grad, found, best

    # ------------------------------------------------------------------ Linf and L2

    def _project(self, x_adv: ep.Tensor) -> ep.Tensor:
        if math.isinf(self.p):
            return clamp(x_adv, self.lower, self.upper)
        return project_ball(self.x, x_adv, self.eps, self.p, self.bounds)

    def _ascend(self, x_adv: ep.Tensor, grad: ep.Tensor, step: ep.Tensor) -> ep.Tensor:
        if math.isinf(self.p):
            return linf_ascent(x_adv, grad, step, self.lower, self.upper)
        return self._project(steepest_step(x_adv, grad, step, self.p, self.bounds))

    def _lp_step(self, state: fast_path.State, *, momentum: bool) -> fast_path.State:
        """One Linf/L2 step: ascent, momentum, evaluation, best-point bookkeeping."""
        x_adv, x_prev, grad, loss_prev, rises, x_best, grad_best, loss_best, step = state[:9]
        found, best, extra = state[9], state[10], state[11:]
        x_new = self._ascend(x_adv, grad, step)
        if momentum:
            moved = x_adv + (x_new - x_adv) * MOMENTUM + (x_adv - x_prev) * (1 - MOMENTUM)
            x_new = self._project(moved)
        x_prev, x_adv = x_adv, x_new
        loss, grad, found, best = self._evaluate(x_adv, found, best, extra)
        rises = rises + (loss > loss_prev).astype(loss.dtype)
        improved = loss > loss_best
        x_best = ep.where(atleast_kd(improved, x_adv.ndim), x_adv, x_best)
        grad_best = ep.where(atleast_kd(improved, x_adv.ndim), grad, grad_best)
        loss_best = ep.where(improved, loss, loss_best)
        new = (x_adv, x_prev, grad, loss, rises, x_best, grad_best, loss_best, step, found, best)
        return new + extra

    def _run_lp(
        self, found: ep.Tensor, best: ep.Tensor, extra: fast_path.State
    ) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
        eps, nd, rho = self.eps, self.x.ndim, self.attack.rho
        x_adv = random_start(self.ctx, self.x, eps, self.p)
        loss, grad, found, best = self._evaluate(x_adv, found, best, extra)
        zeros = ep.zeros_like(loss)  # rises: steps since the last checkpoint whose loss rose
        state: fast_path.State = (x_adv, x_adv, grad, loss, zeros, x_adv, grad, loss, eps * 2.0)
        state = self._body((*state, found, best, *extra), momentum=False)  # step 0
        if self.loop.counter is not None:
            self.loop.counter.advance()
        loss_best_at_check = loss
        reduced_at_check = ep.ones_like(loss).bool()  # AutoAttack: no rule (b) at the first check
        intervals = checkpoint_intervals(self.attack.steps)
        # After the last interval every step is followed by a check of interval 0, as
        # in a loop that counts steps since the last check against a used-up schedule.
        schedule = intervals + [0] * (self.attack.steps - sum(intervals))
        since_check = 1
        for interval in schedule:
            state = self.loop.run(state, max(interval, 1) - since_check)
            since_check = 0
            x_adv, x_prev, grad, loss_prev, rises, x_best, grad_best, loss_best, step = state[:9]
            stalled = rises <= rho * interval  # (a): the loss rose too rarely
            no_gain = ep.logical_and(  # (b): not cut last time, and no better point since
                ep.logical_not(reduced_at_check), loss_best_at_check >= loss_best
            )
            cut = ep.logical_or(stalled, no_gain)
            cut_x = atleast_kd(cut, nd)
            state = (
                ep.where(cut_x, x_best, x_adv),
                ep.where(cut_x, x_best, x_prev),  # restart without momentum
                ep.where(cut_x, grad_best, grad),
                ep.where(cut, loss_best, loss_prev),
                zeros,
                x_best,
                grad_best,
                loss_best,
                ep.where(cut, step / 2.0, step),
                *state[9:],
            )
            reduced_at_check, loss_best_at_check = cut, loss_best
        return state[5], state[9], state[10]

    # ------------------------------------------------------------------ L1

    def _l1_step(self, state: fast_path.State, *, momentum: bool) -> fast_path.State:
        """One L1 step (no momentum in AutoAttack's L1 rule): sparse ascent, bookkeeping."""
        del momentum
        x_adv, grad, x_best, grad_best, loss_best, step, share = state[:7]
        found, best, extra = state[7], state[8], state[9:]
        moved = sparse_l1_step(x_adv, grad, step, share, self.bounds)
        x_adv = project_ball(self.x, moved, self.eps, 1, self.bounds)
        loss, grad, found, best = self._evaluate(x_adv, found, best, extra)
        improved = loss > loss_best
        x_best = ep.where(atleast_kd(improved, x_adv.ndim), x_adv, x_best)
        grad_best = ep.where(atleast_kd(improved, x_adv.ndim), grad, grad_best)
        loss_best = ep.where(improved, loss, loss_best)
        return (x_adv, grad, x_best, grad_best, loss_best, step, share, found, best, *extra)

    def _run_l1(
        self, found: ep.Tensor, best: ep.Tensor, extra: fast_path.State
    ) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
        x, eps, bounds, nd = self.x, self.eps, self.bounds, self.x.ndim
        d = math.prod(x.shape[1:])
        # AutoAttack's L1 start: a Gaussian projected onto the ball, sparse and on its surface.
        x_adv = project_ball(x, x + self.ctx.random.normal(tuple(x.shape)), eps, 1.0, bounds)
        loss, grad, found, best = self._evaluate(x_adv, found, best, extra)
        share = ep.zeros_like(eps) + L1_TOPK_START  # share of coordinates a step moves
        state: fast_path.State = (x_adv, grad, x_adv, grad, loss, eps * 1.0, share)
        state = (*state, found, best, *extra)
        sparsity_before = ep.zeros_like(eps) + float(d)
        steps = self.attack.steps
        interval = max(int(L1_CHECK * steps), 1)
        for _ in range(steps // interval):
            state = self.loop.run(state, interval)
            x_adv, grad, x_best, grad_best, loss_best, step = state[:6]
            sparsity = (x_best - x).flatten(start=1).abs().sign().sum(axis=1)
            sparser = sparsity < sparsity_before * L1_SPARSER
            share = sparsity / (d * L1_STEP_DECAY)
            step = ep.where(sparser, eps, step / L1_STEP_DECAY)
            step = ep.minimum(ep.maximum(step, eps * L1_MIN_STEP), eps)
            sparsity_before = sparsity
            sparser_x = atleast_kd(sparser, nd)
            state = (
                ep.where(sparser_x, x_best, x_adv),
                ep.where(sparser_x, grad_best, grad),
                x_best,
                grad_best,
                loss_best,
                step,
                share,
                *state[7:],
            )
        state = self.loop.run(state, steps % interval)
        return state[2], state[7], state[8]
