"""Minimum-norm gradient attacks: Carlini-Wagner L2, FMN (L1, L2, Linf) and DDN (L2).

Why these: a fixed-budget attack answers "is there an adversarial inside eps?";
a minimum-norm attack answers "how far is the nearest one?" for every sample
at once, which gives robustness curves from one run and shows masking (an
attack whose distances plateau or explode is being fooled). C&W (Carlini and
Wagner, 2017) is the classic reference, FMN (Pintor et al., 2021) and DDN
(Rony et al., 2019) reach similar distances in a hundred steps.

All three run without epsilon (``ctx.epsilon is None``) and return, per sample,
the smallest adversarial point they saw (the clean point where they saw none).
With epsilon, DDN never lets its adaptive radius exceed the budget (a
budget-constrained search that shrinks towards the boundary); FMN follows its
unbounded trajectory; both stop once every sample has an adversarial inside
the budget. C&W runs unchanged. The base class then projects into the ball.

Untargeted, FMN and C&W follow the gradient of a soft margin
(:func:`soft_margin`) by default instead of the logit difference of the
papers: the logit difference only sees the runner-up class, and the iterates
then settle on the boundary with that class even where another class's
boundary is much nearer.

Every kept point is the very point whose logits were computed in the
gradient pass, so what an attack reports as adversarial is what a fresh
forward pass sees. Per-sample state (radii, constants of the binary search,
best points) lives in tensors; the only host reads are the early-exit checks,
at most ten per optimisation run (like Foolbox's and the original C&W code).
"""

from __future__ import annotations

import math

import eagerpy as ep

from attacks import backend, progress
from attacks.base import Attack, RunContext
from attacks.geometry import atleast_kd, farthest_norm, lp_norms, project_ball, unit_l2
from attacks.gradient import loss_and_logits
from attacks.losses import Loss, cross_entropy, is_adversarial, margin, soft_margin
from attacks.norms import parse_p

#: Relative margin kept inside an epsilon budget, larger than the base class's
#: projection slack (1e-6): a point found inside ``eps * (1 - BUDGET_SLACK)`` is
#: left untouched by the final projection, so it stays adversarial.
BUDGET_SLACK = 1e-5

#: Stands for "no bound yet" in the C&W binary search (as in the original code).
_UNBOUNDED = 1e10

_DUAL = {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}

#: What FMN and C&W can follow: the soft margin or the papers' logit difference.
DIRECTION_LOSSES = {"soft-margin": soft_margin, "margin": margin}


def _check_loss(loss: str) -> str:
    choices = ["auto", *DIRECTION_LOSSES]
    if loss not in choices:
        raise ValueError(f"loss must be one of {choices}, got {loss!r}")
    return loss


def _direction_loss(loss: str, target: ep.Tensor | None) -> Loss:
    """``"auto"``: the soft margin untargeted, the logit difference targeted.

    Why: the runner-up lock-in is a choice of class, which a target removes;
    targeted, the logit difference (the class to beat) ended slightly closer.
    """
    if loss == "auto":
        loss = "margin" if target is not None else "soft-margin"
    return DIRECTION_LOSSES[loss]


def _cosine(i: int, steps: int, start: float, end: float) -> float:
    """Cosine annealing from ``start`` (step 0) towards ``end`` (step ``steps``)."""
    return end + (start - end) * (1 + math.cos(math.pi * i / steps)) / 2


def _check_every(steps: int) -> int:
    """Early-exit checks (host reads) happen at most ten times per run."""
    return max(1, math.ceil(steps / 10))


def _budget(ctx: RunContext) -> ep.Tensor | None:
    return None if ctx.epsilon is None else ctx.epsilon * (1 - BUDGET_SLACK)


class _Smallest:
    """Per sample, the adversarial point of smallest norm seen so far."""

    def __init__(self, x: ep.Tensor, worst: ep.Tensor) -> None:
        self.found = ep.zeros(x, (x.shape[0],)).bool()
        self.norms = worst * 2 + 1  # larger than any reachable norm
        self.best = x

    def update(self, x_adv: ep.Tensor, norms: ep.Tensor, adversarial: ep.Tensor) -> None:
        better = ep.logical_and(adversarial, norms < self.norms)
        self.norms = ep.where(better, norms, self.norms)
        self.best = ep.where(atleast_kd(better, x_adv.ndim), x_adv, self.best)
        self.found = ep.logical_or(self.found, adversarial)

    def done(self, budget: ep.Tensor | None, step: int, steps: int) -> bool:
        """With a budget, at a checkpoint: whether every sample is fooled inside it.

        One host read per checkpoint (at most ten per run); never without a budget.
        """
        if budget is None or (step + 1) % _check_every(steps) != 0:
            return False
        within = ep.logical_and(self.found, self.norms <= budget)
        return bool(within.all().item())


# ---------------------------------------------------------------------------- FMN


class FMN(Attack):
    """Fast Minimum-Norm attack (Pintor et al., 2021) under L1, L2 or Linf.

    Normalized gradient steps on the logit difference, projected onto an Lp
    ball whose radius adapts per sample: it shrinks by ``1 - gamma`` while the
    iterate is adversarial, grows by ``1 + gamma`` once an adversarial was seen
    and the iterate is not, and before any success jumps to the current norm
    plus a linear estimate of the distance to the boundary
    (``|margin| / ||grad||_dual``). Step size and gamma follow cosine annealing.

    Three changes to the reference code, each at the same cost per step
    (measured in ``benchmarks/RESULTS.md``, "Minimum-norm attacks"):

    - the step is clipped to the bounds *before* the ball projection (a radial
      or L1 projection of a point inside the bounds stays inside them), so the
      radius is not lost to clipping afterwards;
    - before the first success the radius grows by at least ``1 + gamma`` per
      step on top of the linear estimate, which otherwise undershoots every
      step on inputs with many pixels at a bound, so that the iterates creep
      towards the boundary without crossing it;
    - untargeted, the loss followed is :func:`soft_margin`, not the logit
      difference, with which the iterates settle on the boundary with the clean
      point's runner-up class even where a third class's boundary is nearer.
      Targeted the logit difference stays (a target already names the class).

    Args:
        norm: ``"l2"`` (default), ``"linf"`` or ``"l1"``.
        steps: iterations (paper default 100).
        alpha_init: initial step length (the L2 length of the step, in units of
            the bounds' range), 1 for every norm as in the authors' code (for
            L1 it also gave smaller distances than 10).
        alpha_final: final step length (default ``alpha_init / 100``).
        gamma_init: initial radius factor (paper: 0.05).
        gamma_final: final radius factor (0.001 as in the reference code).
        loss: ``"auto"`` (default: ``"soft-margin"`` untargeted, ``"margin"``
            targeted), ``"soft-margin"`` or ``"margin"`` (the logit difference
            of the paper); the sign of the margin decides success.
        seed: unused (FMN is deterministic); kept for a uniform interface.

    With epsilon the run follows the same trajectory as without (the budget
    does not bound the radius) and stops early once every sample is fooled
    inside it. Why not bound the radius by the budget: for L1 the projected
    steps on the budget's sphere stall, non-adversarial, where the unbounded
    run, shrinking from outside, finds adversarials well inside it; so the
    robust accuracy at any eps is the one the distances of the run without it
    give. The price is in very short runs, which may end before the radius has
    shrunk back below the budget.
    """

    minimizes_norm = True

    def __init__(
        self,
        norm: str | float = "l2",
        *,
        steps: int = 100,
        alpha_init: float | None = None,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        loss: str = "auto",
        seed: int | None = 0,
    ) -> None:
        p = parse_p(norm)
        if p not in _DUAL:
            raise ValueError(f"FMN supports norm 'l1', 'l2' or 'linf', got {norm!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0 < gamma_final <= gamma_init < 1:
            raise ValueError(
                f"need 0 < gamma_final <= gamma_init < 1, got {gamma_final} and {gamma_init}"
            )
        self.p = p
        self.steps = steps
        self.alpha_init = 1.0 if alpha_init is None else alpha_init
        self.alpha_final = self.alpha_init / 100 if alpha_final is None else alpha_final
        if not 0 < self.alpha_final <= self.alpha_init:
            raise ValueError(
                f"need 0 < alpha_final <= alpha_init, got {self.alpha_final} and {self.alpha_init}"
            )
        self.gamma_init = gamma_init
        self.gamma_final = gamma_final
        self.loss = _check_loss(loss)
        self.seed = seed

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        p, dual = self.p, _DUAL[self.p]
        lo, hi = ctx.bounds
        scale = hi - lo
        budget = _budget(ctx)
        worst = farthest_norm(x, p, ctx.bounds)
        radius = worst
        follow = _direction_loss(self.loss, target)
        fn = loss_and_logits(ctx.model, follow, y, target)
        smallest = _Smallest(x, worst)
        x_adv = x
        count = progress.counter(self.steps)
        for i in range(self.steps):
            if count is not None:
                count.at(i)
            alpha = scale * _cosine(i, self.steps, self.alpha_init, self.alpha_final)
            gamma = _cosine(i, self.steps, self.gamma_init, self.gamma_final)
            _, logits, grad = backend.value_and_grad(fn, x_adv)
            adversarial = is_adversarial(logits, y, target)
            norms = lp_norms(x_adv - x, p)
            smallest.update(x_adv, norms, adversarial)
            if smallest.done(budget, i, self.steps):
                break
            # the linear estimate of the distance to the followed loss's zero
            to_boundary = follow(logits, y, target).abs() / ep.maximum(lp_norms(grad, dual), 1e-12)
            radius = ep.where(
                adversarial,
                ep.minimum(radius * (1 - gamma), smallest.norms),
                ep.where(smallest.found, radius * (1 + gamma), norms * (1 + gamma) + to_boundary),
            )
            radius = ep.minimum(radius, worst)
            # clip first, then project: the projection of a point inside the bounds
            # stays inside them, and the radius is not lost to clipping afterwards
            x_adv = ep.clip(x_adv + alpha * unit_l2(grad), lo, hi)
            x_adv = project_ball(x, x_adv, radius, p, ctx.bounds)
        else:
            logits = ctx.model.logits(x_adv)
            smallest.update(x_adv, lp_norms(x_adv - x, p), is_adversarial(logits, y, target))
        return ep.where(atleast_kd(smallest.found, x.ndim), smallest.best, x)


# ---------------------------------------------------------------------------- DDN


class DDN(Attack):
    """Decoupled Direction and Norm L2 attack (Rony et al., 2019).

    A normalized cross-entropy gradient step sets the direction; the norm is
    decoupled: a per-sample radius shrinks by ``1 - gamma`` while the iterate
    is adversarial and grows by ``1 + gamma`` while it is not, and the
    perturbation is rescaled onto that sphere, then clipped to the bounds.
    The step size anneals from 1 to 0.01 (cosine).

    Args:
        steps: iterations (paper default 100).
        init_epsilon: initial radius, in units of the bounds' range (1).
        gamma: radius factor (0.05).
        max_stepsize: initial step length (1); the final one is 0.01 of the range.
        seed: seeds the random directions that replace a vanishing gradient.

    With epsilon the radius never exceeds the budget, and the run stops
    early once every sample is fooled inside it.
    """

    minimizes_norm = True

    def __init__(
        self,
        *,
        steps: int = 100,
        init_epsilon: float = 1.0,
        gamma: float = 0.05,
        max_stepsize: float = 1.0,
        seed: int | None = 0,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if init_epsilon <= 0 or max_stepsize <= 0:
            raise ValueError(
                f"init_epsilon and max_stepsize must be > 0, got {init_epsilon}, {max_stepsize}"
            )
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must lie in (0, 1), got {gamma}")
        self.p = 2.0
        self.steps = steps
        self.init_epsilon = init_epsilon
        self.gamma = gamma
        self.max_stepsize = max_stepsize
        self.seed = seed

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        lo, hi = ctx.bounds
        scale = hi - lo
        budget = _budget(ctx)
        worst = farthest_norm(x, 2.0, ctx.bounds)
        cap = worst if budget is None else ep.minimum(worst, budget)
        radius = ep.minimum(ep.ones_like(worst) * (self.init_epsilon * scale), cap)
        fn = loss_and_logits(ctx.model, cross_entropy, y, target)
        smallest = _Smallest(x, worst)
        x_adv = x
        count = progress.counter(self.steps)
        for i in range(self.steps):
            if count is not None:
                count.at(i)
            alpha = scale * _cosine(i, self.steps, self.max_stepsize, 0.01)
            _, logits, grad = backend.value_and_grad(fn, x_adv)
            adversarial = is_adversarial(logits, y, target)
            smallest.update(x_adv, lp_norms(x_adv - x, 2.0), adversarial)
            if smallest.done(budget, i, self.steps):
                break
            vanished = atleast_kd(lp_norms(grad, 2.0) == 0, x.ndim)
            grad = ep.where(vanished, ctx.random.normal(tuple(x.shape)), grad)
            delta = x_adv - x + alpha * unit_l2(grad)
            shrink = radius * (1 - self.gamma)
            radius = ep.minimum(ep.where(adversarial, shrink, radius * (1 + self.gamma)), cap)
            delta = delta * atleast_kd(radius / ep.maximum(lp_norms(delta, 2.0), 1e-12), x.ndim)
            x_adv = ep.clip(x + delta, lo, hi)
        else:
            logits = ctx.model.logits(x_adv)
            smallest.update(x_adv, lp_norms(x_adv - x, 2.0), is_adversarial(logits, y, target))
        return ep.where(atleast_kd(smallest.found, x.ndim), smallest.best, x)


# ---------------------------------------------------------------------------- C&W


class CarliniWagnerL2(Attack):
    """Carlini and Wagner's L2 attack (2017), batched, with Adam in EagerPy ops.

    Minimises ``||x' - x||_2^2 + c * max(0, confidence - margin(x'))`` over
    ``x' = a + b * tanh(w)`` (the tanh change of variables keeps x' inside the
    bounds without clipping). The constant ``c`` is found per sample by a
    binary search: after each run, samples that were fooled halve towards
    their lower bound, the others grow tenfold until an upper bound is known.

    Two changes to the paper, both at the same cost per step (measured in
    ``benchmarks/RESULTS.md``, "Minimum-norm attacks"):

    - untargeted, the hinge is active where the margin falls short of
      ``confidence``, but the term it pushes is :func:`soft_margin` (with the
      logit difference the runs settle on the boundary with the clean point's
      runner-up class);
    - each run of the binary search starts from the last iterate of the
      previous one, not from x: pixels at a bound start saturated in tanh
      space and take about ``(7.25 - 1) / stepsize`` steps to move at all, so
      a fresh start spends each short run leaving saturation again.

    Args:
        binary_search_steps: runs over ``c`` (9).
        steps: Adam steps per run (10000 in the paper; use fewer).
        stepsize: Adam learning rate in tanh space (0.01). Inputs at exactly a
            bound start saturated (``|w| = arctanh(0.999999) = 7.25``) and move
            about ``stepsize`` per step, so images with many such pixels (digits)
            need more steps or a larger stepsize (0.05 with 5 x 100 steps
            matched FMN and DDN there).
        confidence: margin the adversarial class must win by (0).
        initial_const: starting ``c`` (0.001).
        abort_early: stop a run when the loss has not dropped by 0.01% over a
            tenth of its steps (one host read per tenth).
        loss: what the hinge pushes: ``"auto"`` (default: ``"soft-margin"``
            untargeted, ``"margin"`` targeted), ``"soft-margin"`` or
            ``"margin"`` (the paper's logit difference).
        warm_start: start each run from the previous run's last iterate
            (default) instead of from x as the paper does.
        seed: unused (C&W is deterministic); kept for a uniform interface.

    With epsilon it runs unchanged; the base class projects the result into the ball.
    """

    minimizes_norm = True

    def __init__(
        self,
        *,
        binary_search_steps: int = 9,
        steps: int = 10000,
        stepsize: float = 0.01,
        confidence: float = 0.0,
        initial_const: float = 0.001,
        abort_early: bool = True,
        loss: str = "auto",
        warm_start: bool = True,
        seed: int | None = 0,
    ) -> None:
        if binary_search_steps < 1 or steps < 1:
            raise ValueError(
                f"binary_search_steps and steps must be >= 1, got {binary_search_steps}, {steps}"
            )
        if stepsize <= 0 or initial_const <= 0 or confidence < 0:
            raise ValueError(
                "stepsize and initial_const must be > 0 and confidence >= 0, got "
                f"{stepsize}, {initial_const}, {confidence}"
            )
        self.p = 2.0
        self.binary_search_steps = binary_search_steps
        self.steps = steps
        self.stepsize = stepsize
        self.confidence = confidence
        self.initial_const = initial_const
        self.abort_early = abort_early
        self.loss = _check_loss(loss)
        self.warm_start = warm_start
        self.seed = seed

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        lo, hi = ctx.bounds
        center, half = (hi + lo) / 2, (hi - lo) / 2

        def to_model(w: ep.Tensor) -> ep.Tensor:
            return w.tanh() * half + center

        w_clean = ((x - center) / half * 0.999999).arctanh()
        x_reference = to_model(w_clean)  # what w_clean maps back to (x up to rounding)
        follow = _direction_loss(self.loss, target)
        zeros = ep.zeros(x, (x.shape[0],))
        consts = zeros + self.initial_const
        lower, upper = zeros, zeros + _UNBOUNDED
        smallest = _Smallest(x, farthest_norm(x, 2.0, ctx.bounds))
        w_start = w_clean
        count = progress.counter(self.binary_search_steps * self.steps)

        for search_step in range(self.binary_search_steps):
            if search_step == self.binary_search_steps - 1 and self.binary_search_steps >= 10:
                consts = ep.minimum(upper, _UNBOUNDED)  # the original's final repeat
            c = consts

            def loss_fn(w: ep.Tensor, c: ep.Tensor = c) -> tuple[ep.Tensor, ep.Tensor]:
                x_adv = to_model(w)
                logits = ctx.model(x_adv)
                distance = (x_adv - x_reference).flatten(start=1).square().sum(axis=1)
                short = margin(logits, y, target) <= self.confidence
                push = self.confidence - follow(logits, y, target)
                return (distance + c * ep.where(short, push, ep.zeros_like(push))).sum(), logits

            found = zeros.bool()
            w, m, v = w_start, ep.zeros_like(x), ep.zeros_like(x)
            previous = math.inf
            for step in range(self.steps):
                if count is not None:
                    count.at(search_step * self.steps + step)
                _, logits, grad = backend.value_and_grad(loss_fn, w)
                x_adv = to_model(w)
                margins = margin(logits, y, target)
                success = margins > self.confidence
                found = ep.logical_or(found, success)
                smallest.update(x_adv, lp_norms(x_adv - x, 2.0), success)
                w, m, v = _adam(w, grad, m, v, step + 1, self.stepsize)
                if self.abort_early and step % _check_every(self.steps) == 0:
                    # the paper's objective (the hinge on the margin) at this iterate
                    distance = (x_adv - x_reference).flatten(start=1).square().sum(axis=1)
                    hinge = ep.maximum(self.confidence - margins, 0.0)
                    current = float((distance + c * hinge).sum().item())
                    if not current <= 0.9999 * previous:
                        break
                    previous = current
            if self.warm_start:
                w_start = w

            upper = ep.where(found, ep.minimum(upper, consts), upper)
            lower = ep.where(found, lower, ep.maximum(lower, consts))
            consts = ep.where(upper < _UNBOUNDED, (lower + upper) / 2, consts * 10)
        return ep.where(atleast_kd(smallest.found, x.ndim), smallest.best, x)


def _adam(
    w: ep.Tensor, grad: ep.Tensor, m: ep.Tensor, v: ep.Tensor, t: int, lr: float
) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
    """One Adam descent step (Kingma and Ba, 2015; default betas), elementwise per sample."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad.square()
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return w - lr * m_hat / (v_hat.sqrt() + eps), m, v
