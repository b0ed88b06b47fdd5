"""HopSkipJump (Chen, Jordan and Wainwright, IEEE S&P 2020), L2 and Linf, on labels only.

Why: some defenses leave neither useful gradients nor trustworthy scores
(randomised or thresholded outputs, detectors that change the scores). An
attack that sees only the predicted label is the last resort that still works,
and as a minimum-norm attack it reports how far each sample is from the
decision boundary rather than a yes/no at one epsilon.

The algorithm follows the paper and its reference code (``hsja.py``):

1. Start from an adversarial point and binary-search the segment to the clean
   point for the boundary (tolerance ``theta = gamma / d**1.5`` for L2,
   ``gamma / d**2`` for Linf, on the interpolation factor).
2. Each iteration ``t`` estimates the boundary's normal by Monte Carlo: it
   queries ``initial_evals * sqrt(t)`` (at most ``max_evals``) random points at
   radius ``delta`` around the boundary point and averages the directions,
   signed by the decision, with a baseline.
3. It steps along that direction (its sign for Linf) by the largest of
   ``dist / sqrt(t) / 2**k`` that stays adversarial, then binary-searches back
   to the boundary.

Batched without host round trips: all samples move together; the number of
binary-search rounds is fixed by ``theta`` (the reference loops until the
tolerance is met, which is the same count); the geometric step-size search
queries its candidate step sizes in one batched pass instead of a loop that
checks on the host; the gradient estimate runs in chunks of at most
``max_batch`` inputs per forward pass and keeps running sums, so memory does
not grow with ``max_evals``. The best (smallest) adversarial point of each
sample is kept, so its distance never grows with more steps.

Starting points: for each sample the nearest (in L2) other input of the batch
that the model already classifies adversarially (another class, or the target
class), which costs no query beyond the clean batch's; samples without one get
uniform noise that is adversarial, as in the reference.
"""

from __future__ import annotations

import math

import eagerpy as ep

from attacks import progress
from attacks.base import Attack, RunContext
from attacks.geometry import PROJECTION_SLACK, atleast_kd, lp_norms
from attacks.losses import is_adversarial
from attacks.models import Model
from attacks.norms import parse_p

#: Candidate step sizes ``dist / sqrt(t) / 2**k`` for k < this, queried together.
STEPSIZE_CANDIDATES = 10
#: Uniform-noise starting points: rounds (one host check each) x candidates per round.
INIT_ROUNDS = 10
INIT_TRIALS = 10

_TINY = 1e-12


class _Oracle:
    """Labels only: the model's decision (adversarial or not) for batches of candidates.

    Candidates come as ``(M, N, ...)``: M points for each of the N samples. They
    are evaluated in chunks of at most ``max_batch`` inputs (at least one
    sample-batch) per forward pass.
    """

    def __init__(
        self, model: Model, y: ep.Tensor, target: ep.Tensor | None, max_batch: int
    ) -> None:
        self.model = model
        self.y = y
        self.target = target
        self.n = y.shape[0]
        self.per_pass = max(1, max_batch // self.n)

    def labels(self, x: ep.Tensor) -> ep.Tensor:
        return self.model.logits(x).argmax(axis=-1)

    def __call__(self, points: ep.Tensor) -> ep.Tensor:
        decisions = []
        for start in range(0, points.shape[0], self.per_pass):
            chunk = points[start : start + self.per_pass]
            m = chunk.shape[0]
            logits = self.model.logits(chunk.reshape((m * self.n, *chunk.shape[2:])))
            target = None if self.target is None else ep.tile(self.target, (m,))
            decisions.append(is_adversarial(logits, ep.tile(self.y, (m,)), target).reshape((m, -1)))
        return decisions[0] if len(decisions) == 1 else ep.concatenate(decisions, axis=0)


class HopSkipJump(Attack):
    """HopSkipJump (Chen et al., 2020): a minimum-norm attack that sees only predicted labels.

    Without epsilon it returns, per sample, the adversarial point of smallest
    norm it found (the clean point where it found none); with epsilon it stops
    refining a sample once it is inside the ball, and stops altogether when
    every sample is.

    Args:
        norm: ``"l2"`` (default) or ``"linf"``.
        steps: iterations (gradient estimate, step, binary search).
        initial_evals: queries of the first gradient estimate; iteration ``t``
            uses ``initial_evals * sqrt(t)``.
        max_evals: most queries of one gradient estimate.
        gamma: sets the binary-search tolerance ``theta`` (``gamma / d**1.5`` for
            L2, ``gamma / d**2`` for Linf, d the input dimension) and the
            estimation radius.
        seed: seed of all random draws (``None``: fresh randomness).
        max_batch: most inputs per forward pass (bounds memory; never fewer
            than the batch itself).
    """

    uses_gradient = False
    minimizes_norm = True

    def __init__(
        self,
        norm: str | float = "l2",
        *,
        steps: int = 64,
        initial_evals: int = 100,
        max_evals: int = 10000,
        gamma: float = 1.0,
        seed: int | None = 0,
        max_batch: int = 4096,
    ) -> None:
        p = parse_p(norm)
        if p not in (2.0, math.inf):
            raise ValueError(f"HopSkipJump supports norm 'l2' or 'linf', got {norm!r}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if not 1 <= initial_evals <= max_evals:
            raise ValueError(
                f"need 1 <= initial_evals <= max_evals, got {initial_evals} and {max_evals}"
            )
        if gamma <= 0 or max_batch < 1:
            raise ValueError(f"gamma and max_batch must be positive, got {gamma} and {max_batch}")
        self.p = p
        self.steps = steps
        self.initial_evals = initial_evals
        self.max_evals = max_evals
        self.gamma = gamma
        self.seed = seed
        self.max_batch = max_batch

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        n, d = x.shape[0], math.prod(x.shape[1:])
        theta = self.gamma / (d**1.5 if self.p == 2 else d**2)
        search_rounds = max(1, math.ceil(math.log2(1 / theta)))
        oracle = _Oracle(ctx.model, y, target, self.max_batch)

        start, has_start, clean_adversarial = self._starting_points(ctx, x, y, target, oracle)
        active = ep.logical_and(has_start, ep.logical_not(clean_adversarial))
        x_adv = self._binary_search(x, start, oracle, search_rounds)
        x_adv = ep.where(atleast_kd(active, x.ndim), x_adv, x)
        dist = lp_norms(x_adv - x, self.p)
        best, best_dist = x_adv, dist
        if not active.any().item():
            return best
        lo, hi = ctx.bounds
        count = progress.counter(self.steps)
        for t in range(1, self.steps + 1):
            if count is not None:
                count.at(t - 1)
            if ctx.epsilon is not None:
                inside = best_dist <= ctx.epsilon * (1 - 2 * PROJECTION_SLACK)
                active = ep.logical_and(active, ep.logical_not(inside))
                if not active.any().item():  # one host read per iteration (~100+ queries)
                    break
            if t == 1:
                delta = ep.ones(x, (n,)) * (0.1 * (hi - lo))
            else:
                delta = dist * (d * theta if math.isinf(self.p) else math.sqrt(d) * theta)
            evals = int(min(self.initial_evals * math.sqrt(t), self.max_evals))
            grad = self._estimate_gradient(ctx, x_adv, ep.maximum(delta, _TINY), evals, oracle)
            update = grad.sign() if math.isinf(self.p) else grad
            x_new = self._step(x_adv, update, dist / math.sqrt(t), oracle, (lo, hi))
            x_new = self._binary_search(x, x_new, oracle, search_rounds)
            x_adv = ep.where(atleast_kd(active, x.ndim), x_new, x_adv)
            dist = lp_norms(x_adv - x, self.p)
            better = ep.logical_and(active, dist < best_dist)
            best = ep.where(atleast_kd(better, x.ndim), x_adv, best)
            best_dist = ep.where(better, dist, best_dist)
        return best

    # ------------------------------------------------------------------ pieces

    def _starting_points(
        self,
        ctx: RunContext,
        x: ep.Tensor,
        y: ep.Tensor,
        target: ep.Tensor | None,
        oracle: _Oracle,
    ) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
        """An adversarial point per sample where one is found: ``(start, found, clean_adv)``.

        The clean batch's labels are one query; each other input of the batch
        classified adversarially for sample i is a candidate, the nearest in L2
        wins. Uniform noise covers samples without a candidate (host checks
        here, before the main loop).
        """
        labels = oracle.labels(x).astype(y.dtype)
        wanted = y if target is None else target
        if target is None:
            valid = labels.reshape((1, -1)) != wanted.reshape((-1, 1))  # (i, j): x_j fools i
            clean_adversarial = labels != y
        else:
            valid = labels.reshape((1, -1)) == wanted.reshape((-1, 1))
            clean_adversarial = labels == target
        flat = x.flatten(start=1)
        squared = (flat**2).sum(axis=1)
        d2 = (
            squared.reshape((-1, 1))
            + squared.reshape((1, -1))
            - 2 * ep.matmul(flat, flat.transpose())
        )
        nearest = ep.where(valid, d2, ep.ones_like(d2) * math.inf).argmin(axis=1)
        start = x[nearest]
        found = valid.any(axis=1)
        if found.all().item():
            return start, found, clean_adversarial
        lo, hi = ctx.bounds
        for _ in range(INIT_ROUNDS):
            noise = ctx.random.uniform((INIT_TRIALS, *x.shape), lo, hi)
            decisions = oracle(noise)
            for k in range(INIT_TRIALS):
                take = ep.logical_and(decisions[k], ep.logical_not(found))
                start = ep.where(atleast_kd(take, x.ndim), noise[k], start)
                found = ep.logical_or(found, decisions[k])
            if found.all().item():
                break
        return start, found, clean_adversarial

    def _project(self, x: ep.Tensor, far: ep.Tensor, alpha: ep.Tensor) -> ep.Tensor:
        """The point at fraction ``alpha`` (per sample) from ``x`` towards ``far``.

        L2: the blend ``(1 - alpha) x + alpha far``. Linf: ``far`` clipped to the
        box of radius ``alpha * ||far - x||_inf`` around x (as the reference).
        """
        delta = far - x
        if self.p == 2:
            return x + atleast_kd(alpha, x.ndim) * delta
        radius = atleast_kd(alpha * lp_norms(delta, math.inf), x.ndim)
        return x + ep.minimum(ep.maximum(delta, -radius), radius)

    def _binary_search(
        self, x: ep.Tensor, far: ep.Tensor, oracle: _Oracle, rounds: int
    ) -> ep.Tensor:
        """The boundary point between ``x`` and an adversarial ``far``, on the adversarial side."""
        low = ep.zeros(x, (x.shape[0],))
        high = ep.ones(x, (x.shape[0],))
        for _ in range(rounds):
            mid = (low + high) / 2
            adversarial = oracle(ep.expand_dims(self._project(x, far, mid), 0))[0]
            high = ep.where(adversarial, mid, high)
            low = ep.where(adversarial, low, mid)
        return self._project(x, far, high)

    def _estimate_gradient(
        self, ctx: RunContext, x_adv: ep.Tensor, delta: ep.Tensor, evals: int, oracle: _Oracle
    ) -> ep.Tensor:
        """Unit-L2 Monte Carlo estimate of the boundary normal at ``x_adv``, pointing outwards."""
        lo, hi = ctx.bounds
        n = x_adv.shape[0]
        radius = ep.expand_dims(atleast_kd(delta, x_adv.ndim), 0)  # (1, N, 1, ...)
        sum_f = ep.zeros(x_adv, (n,))
        sum_f_rv = ep.zeros_like(x_adv)
        sum_rv = ep.zeros_like(x_adv)
        done = 0
        while done < evals:
            m = min(oracle.per_pass, evals - done)
            shape = (m, *x_adv.shape)
            rv = ctx.random.normal(shape) if self.p == 2 else ctx.random.uniform(shape, -1.0, 1.0)
            rv = rv / (
                atleast_kd(rv.flatten(start=2).square().sum(axis=-1).sqrt(), rv.ndim) + _TINY
            )
            perturbed = ep.clip(ep.expand_dims(x_adv, 0) + radius * rv, lo, hi)
            rv = (perturbed - ep.expand_dims(x_adv, 0)) / radius
            f = oracle(perturbed).astype(x_adv.dtype) * 2 - 1  # (m, N): +1 adversarial
            sum_f = sum_f + f.sum(axis=0)
            sum_f_rv = sum_f_rv + (atleast_kd(f, rv.ndim) * rv).sum(axis=0)
            sum_rv = sum_rv + rv.sum(axis=0)
            done += m
        mean_f = sum_f / evals
        baseline = ep.where(mean_f.abs() == 1, ep.zeros_like(mean_f), mean_f)
        grad = (sum_f_rv - atleast_kd(baseline, x_adv.ndim) * sum_rv) / evals
        return grad / (atleast_kd(lp_norms(grad, 2), grad.ndim) + _TINY)

    def _step(
        self,
        x_adv: ep.Tensor,
        update: ep.Tensor,
        size: ep.Tensor,
        oracle: _Oracle,
        bounds: tuple[float, float],
    ) -> ep.Tensor:
        """Geometric step-size search: the largest ``size / 2**k`` that stays adversarial.

        All candidates are queried in one batched pass; where none is
        adversarial the point stays (the reference would keep halving).
        """
        lo, hi = bounds
        sizes = [size / 2**k for k in range(STEPSIZE_CANDIDATES)]
        candidates = ep.stack(
            [ep.clip(x_adv + atleast_kd(s, x_adv.ndim) * update, lo, hi) for s in sizes], axis=0
        )
        adversarial = oracle(candidates)
        chosen = ep.zeros_like(size)
        for k in reversed(range(STEPSIZE_CANDIDATES)):
            chosen = ep.where(adversarial[k], sizes[k], chosen)
        return ep.clip(x_adv + atleast_kd(chosen, x_adv.ndim) * update, lo, hi)
