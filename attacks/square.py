"""The Square attack (Andriushchenko et al., ECCV 2020), Linf and L2, on scores.

Why a score-based attack: defenses that mask gradients (input quantization,
saturated softmax, non-differentiable preprocessing) defeat PGD without being
robust. Square needs only the model's scores, so it is the standard check that
"black-box beats white-box" flags masking (it is the fourth attack of
AutoAttack), and it is the strongest attack this library offers for NumPy
models, which have no gradients.

The algorithm follows the paper and AutoAttack's ``square.py``: random search
that changes one square window per iteration, with window size shrinking on a
fixed schedule of ``p`` (the fraction of pixels changed) defined for 10000
iterations and rescaled to the query budget; a sample's candidate is kept when
the loss improves or the sample becomes misclassified.

Two deliberate differences from AutoAttack: window positions are drawn per
sample (AutoAttack shares one position across the batch in each iteration; per
sample is the paper's original algorithm and costs nothing when batched), and
the whole batch takes one forward pass per iteration with updates masked to
the samples not yet fooled, instead of indexing the still-robust subset on the
host every iteration.

Input layouts. The square is defined on images ``(N, C, H, W)`` (channels first).
Other layouts are handled by viewing each sample as an image, set by two
arguments: ``channel_axis=-1`` for channels last ``(N, H, W, C)``, and
``image_shape`` to reshape flat inputs, e.g. ``image_shape=(1, 8, 8)`` for the
64 features of sklearn's digits (``channel_axis`` then applies to that view).
Without ``image_shape``, a flat input ``(N, D)`` is a one-channel 1-D signal and
the "square" is a window of contiguous coordinates (its length is ``p * D``, so
it changes the same fraction of coordinates as a square of area ``p * H * W``);
``(N, C, L)`` is a C-channel 1-D signal.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import eagerpy as ep
import numpy as np

from attacks import progress
from attacks.base import Attack, RunContext
from attacks.geometry import atleast_kd, lp_norms
from attacks.losses import Loss, get_loss, is_adversarial
from attacks.norms import parse_p

#: Early stop: whether every sample is fooled is read on the host (a sync) only
#: every this many iterations, so at most this many iterations are wasted.
CHECK_EVERY = 10

#: AutoAttack's schedule of p over 10000 iterations: ``(last iteration, divisor of p_init)``.
P_SCHEDULE = (
    (10, 1),
    (50, 2),
    (200, 4),
    (500, 8),
    (1000, 16),
    (2000, 32),
    (4000, 64),
    (6000, 128),
    (8000, 256),
)

_TINY = 1e-12  # guards divisions by norms, as in AutoAttack

Evaluate = Callable[[ep.Tensor], tuple[ep.Tensor, ep.Tensor]]


def p_selection(p_init: float, iteration: int, queries: int) -> float:
    """The fraction of pixels changed at ``iteration``: AutoAttack's schedule, rescaled.

    The schedule is defined for 10000 iterations; with a budget of ``queries``
    iteration ``i`` counts as ``int(i / queries * 10000)`` (AutoAttack's
    ``resc_schedule=True``), so a short budget still goes through every stage.
    """
    it = int(iteration / queries * 10000)
    for last, divisor in P_SCHEDULE:
        if it <= last:
            return p_init / divisor
    return p_init / 512


def square_size(p: float, spatial: tuple[int, ...], *, minimum: int = 1, odd: bool = False) -> int:
    """Side of a window covering a fraction ``p`` of the pixels (``sqrt(p*H*W)`` for images).

    Linf uses ``minimum=1``; L2 uses ``minimum=3, odd=True`` (its pattern has a
    centre), as AutoAttack. The side never exceeds the smallest spatial size.
    """
    pixels = math.prod(spatial)
    s = max(round(math.pow(p * pixels, 1.0 / len(spatial))), minimum)
    if odd and s % 2 == 0:
        s += 1
    return max(1, min(s, min(spatial)))


def _rectangles(shape: tuple[int, ...]) -> np.ndarray:
    """AutoAttack's ``eta_rectangles``: concentric rectangles of weight ``1/(k+1)**2``, unit L2.

    A point at Chebyshev distance ``d`` from the centre ``shape // 2`` lies in
    rectangles ``d .. K-1`` with ``K = max(shape // 2 + 1)``, so its value is a
    partial sum; this closed form equals AutoAttack's loop over rectangles.
    """
    if 0 in shape:
        return np.zeros(shape)
    k = max(n // 2 + 1 for n in shape)
    grids = np.meshgrid(*[np.abs(np.arange(n) - n // 2) for n in shape], indexing="ij")
    distance = np.maximum.reduce(grids) if len(grids) > 1 else grids[0]
    tail = np.cumsum((1.0 / np.arange(1, k + 1) ** 2)[::-1])[::-1]  # tail[d] = sum_{m>d} 1/m^2
    values = tail[distance]
    return np.asarray(values / np.sqrt((values**2).sum()))


@functools.cache
def eta(s: int, spatial_dims: int) -> np.ndarray:
    """The L2 attack's window pattern of side ``s``: ``+`` rectangles on top, ``-`` below, unit L2.

    For images it is AutoAttack's ``eta(s)`` before its random transposition;
    for 1-D signals the same construction along one axis.
    """
    rest = (s,) * (spatial_dims - 1)
    top = _rectangles((s // 2, *rest))
    bottom = -_rectangles((s - s // 2, *rest))
    pattern = np.concatenate([top, bottom], axis=0)
    return np.asarray(pattern / np.sqrt((pattern**2).sum()))


@dataclass(frozen=True)
class ImageLayout:
    """How an input batch is viewed as images ``(N, C, *spatial)`` with 1 or 2 spatial axes."""

    view: tuple[int, ...]  # per-sample shape after the optional reshape
    channels_last: bool

    @staticmethod
    def of(
        sample_shape: tuple[int, ...], image_shape: tuple[int, ...] | None, channel_axis: int
    ) -> ImageLayout:
        if channel_axis not in (1, -1):
            raise ValueError(
                f"channel_axis must be 1 (channels first) or -1 (channels last), got {channel_axis}"
            )
        view = sample_shape if image_shape is None else tuple(int(n) for n in image_shape)
        if math.prod(view) != math.prod(sample_shape):
            raise ValueError(
                f"image_shape {view} has {math.prod(view)} elements, but each input has "
                f"{math.prod(sample_shape)} (shape {sample_shape}); pass a shape with as many"
            )
        if len(view) not in (1, 2, 3):
            raise ValueError(
                f"the Square attack views each input as an image (C, H, W) or a signal (C, L); "
                f"inputs of per-sample shape {view} have neither layout: pass image_shape=..."
            )
        return ImageLayout(view, channels_last=channel_axis == -1 and len(view) > 1)

    @property
    def canonical(self) -> tuple[int, ...]:
        """Per-sample shape ``(C, *spatial)``."""
        if len(self.view) == 1:
            return (1, *self.view)
        if self.channels_last:
            return (self.view[-1], *self.view[:-1])
        return self.view

    def to_canonical(self, x: ep.Tensor) -> ep.Tensor:
        x = x.reshape((x.shape[0], *self.view))
        if self.channels_last:
            x = x.transpose((0, x.ndim - 1, *range(1, x.ndim - 1)))
        return x.reshape((x.shape[0], *self.canonical))

    def to_input(self, xc: ep.Tensor, shape: tuple[int, ...]) -> ep.Tensor:
        x = xc
        if self.channels_last:
            x = x.transpose((0, *range(2, x.ndim), 1))
        return x.reshape(shape)


class Square(Attack):
    """Square attack (Andriushchenko et al., 2020): score-based random search, Linf or L2.

    Needs only the model's logits (``model.logits``), never gradients, so it
    runs on NumPy models and sees through gradient masking.

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        queries: forward passes per restart and sample, the initial one
            included (5000, as in AutoAttack).
        p_init: initial fraction of pixels a window covers (0.8, as in AutoAttack).
        restarts: independent runs; later runs attack only the samples not yet fooled.
        loss: ``"margin"`` (default, as in AutoAttack), ``"ce"``, ``"dlr"`` or a
            callable ``(logits, y, target) -> (N,)`` to maximise.
        seed: seed of all random draws (``None``: fresh randomness).
        image_shape: view each input as this per-sample shape first, e.g.
            ``(1, 8, 8)`` for flat 64-pixel digits. Default: the input's own shape.
        channel_axis: ``1`` for channels first ``(C, H, W)`` (default), ``-1`` for
            channels last ``(H, W, C)``; applies to the ``image_shape`` view.
    """

    uses_gradient = False

    def __init__(
        self,
        norm: str | float = "linf",
        *,
        queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        loss: str | Loss = "margin",
        seed: int | None = 0,
        image_shape: tuple[int, ...] | None = None,
        channel_axis: int = 1,
    ) -> None:
        p = parse_p(norm)
        if p not in (2.0, math.inf):
            raise ValueError(f"Square supports norm 'linf' or 'l2', got {norm!r}")
        if queries < 1 or restarts < 1:
            raise ValueError(f"queries and restarts must be >= 1, got {queries} and {restarts}")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init is a fraction of the pixels, in (0, 1], got {p_init}")
        if channel_axis not in (1, -1):
            raise ValueError(
                f"channel_axis must be 1 (channels first) or -1 (channels last), got {channel_axis}"
            )
        self.p = p
        self.queries = queries
        self.p_init = p_init
        self.restarts = restarts
        self.loss = loss
        self.seed = seed
        self.image_shape = image_shape
        self.channel_axis = channel_axis
        self._loss = get_loss(loss)

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        assert ctx.epsilon is not None
        shape = tuple(x.shape)
        layout = ImageLayout.of(shape[1:], self.image_shape, self.channel_axis)
        xc = layout.to_canonical(x)
        eps = atleast_kd(ctx.epsilon, xc.ndim)

        def evaluate(candidate: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
            logits = ctx.model.logits(layout.to_input(candidate, shape))
            return self._loss(logits, y, target), is_adversarial(logits, y, target)

        search = _Search(ctx, xc, eps, self.p)
        loss_best, fooled = evaluate(xc)  # samples misclassified already stay at x
        x_best = xc
        count = progress.counter(self.restarts * self.queries)
        for restart in range(self.restarts):
            if count is not None:
                count.at(restart * self.queries)
            if fooled.all().item():
                break
            start = search.start()
            loss, adversarial = evaluate(start)
            fresh = ep.logical_not(fooled)
            x_best = ep.where(atleast_kd(fresh, xc.ndim), start, x_best)
            loss_best = ep.where(fresh, loss, loss_best)
            fooled = ep.logical_or(fooled, adversarial)
            for i in range(self.queries - 1):
                if i % CHECK_EVERY == 0 and i > 0 and fooled.all().item():
                    break
                candidate = search.step(x_best, p_selection(self.p_init, i, self.queries))
                loss, adversarial = evaluate(candidate)  # one forward pass for the batch
                improved = ep.logical_and(
                    ep.logical_not(fooled), ep.logical_or(loss > loss_best, adversarial)
                )
                x_best = ep.where(atleast_kd(improved, xc.ndim), candidate, x_best)
                loss_best = ep.where(improved, loss, loss_best)
                fooled = ep.logical_or(fooled, ep.logical_and(improved, adversarial))
                if count is not None:
                    count.advance()
        return layout.to_input(x_best, shape)


class _Search:
    """Initial points and candidate proposals of the Square attack on canonical images."""

    def __init__(self, ctx: RunContext, xc: ep.Tensor, eps: ep.Tensor, p: float) -> None:
        self.ctx = ctx
        self.x = xc
        self.eps = eps
        self.p = p
        self.n, self.channels = xc.shape[0], xc.shape[1]
        self.spatial: tuple[int, ...] = tuple(xc.shape[2:])
        k = len(self.spatial)
        self.sum_axes = tuple(range(2, xc.ndim))
        self.index_dtype = ep.arange(xc, 1).dtype  # the framework's natural index type
        # One broadcastable coordinate grid per spatial axis, (1, 1, ..., S_a, ..., 1).
        self.grids = [
            ep.arange(xc, size)
            .astype(xc.dtype)
            .reshape((1, 1, *(size if b == a else 1 for b in range(k))))
            for a, size in enumerate(self.spatial)
        ]
        self._tables: dict[int, ep.Tensor] = {}

    # ------------------------------------------------------------------ starts

    def start(self) -> ep.Tensor:
        """Linf: vertical stripes of +-eps (AutoAttack); L2: blocks of the pattern, norm eps."""
        lo, hi = self.ctx.bounds
        if math.isinf(self.p):
            stripes = (1,) * (len(self.spatial) - 1) + self.spatial[-1:]
            signs = self.ctx.random.sign((self.n, self.channels, *stripes))
            return ep.clip(self.x + self.eps * signs, lo, hi)
        blocks = self._init_blocks()
        signs = self.ctx.random.sign((self.n * self.channels, blocks.shape[0]))
        delta = ep.matmul(signs, blocks).reshape(self.x.shape)
        return ep.clip(self.x + self._to_norm(delta, self.eps), lo, hi)

    def _init_blocks(self) -> ep.Tensor:
        """AutoAttack's L2 start as a matrix: one row per block of side ``h // 5``, pattern inside.

        Blocks tile the image from offset ``(h - 5 * side) // 2``; each gets a
        random sign per sample and channel by one matrix product.
        """
        side = max(self.spatial[0] // 5, 1)
        offset = (self.spatial[0] - side * 5) // 2
        pattern = eta(side, len(self.spatial))
        counts = [size // side for size in self.spatial]
        rows = []
        for block in np.ndindex(*counts):
            image = np.zeros(self.spatial)
            region = tuple(
                slice(offset + b * side, min(offset + (b + 1) * side, size))
                for b, size in zip(block, self.spatial, strict=True)
            )
            image[region] = pattern[tuple(slice(0, r.stop - r.start) for r in region)]
            rows.append(image.reshape(-1))
        return ep.from_numpy(self.x, np.stack(rows)).astype(self.x.dtype)

    # ------------------------------------------------------------------ proposals

    def step(self, x_best: ep.Tensor, p: float) -> ep.Tensor:
        """One candidate per sample: ``x_best`` with a window changed."""
        if math.isinf(self.p):
            return self._step_linf(x_best, p)
        return self._step_l2(x_best, p)

    def _step_linf(self, x_best: ep.Tensor, p: float) -> ep.Tensor:
        """Set one window per sample to ``x +- eps`` (a random sign per channel)."""
        lo, hi = self.ctx.bounds
        s = square_size(p, self.spatial)
        window, _ = self._window(s)
        signs = self.ctx.random.sign((self.n, self.channels) + (1,) * len(self.spatial))
        return ep.where(window, ep.clip(self.x + self.eps * signs, lo, hi), x_best)

    def _step_l2(self, x_best: ep.Tensor, p: float) -> ep.Tensor:
        """AutoAttack's L2 update: move the mass of a second window into the first, reshaped.

        The first window gets the pattern (random sign per channel) plus its old
        content, rescaled per channel so that the budget left over and the mass
        of both windows go into it; the second window is zeroed; the whole
        perturbation is then rescaled to norm eps.
        """
        lo, hi = self.ctx.bounds
        s = square_size(p, self.spatial, minimum=3, odd=True)
        first, pattern = self._window(s, with_pattern=True)
        second, _ = self._window(s)
        w1 = first.astype(self.x.dtype)
        union = ep.maximum(w1, second.astype(self.x.dtype))
        delta = x_best - self.x
        norm_first = self._spatial_norm(delta * w1)  # (N, C, 1, ...)
        norm_image = atleast_kd(lp_norms(delta, 2), delta.ndim)
        norm_windows = atleast_kd(lp_norms(delta * union, 2), delta.ndim)
        signs = self.ctx.random.sign((self.n, self.channels) + (1,) * len(self.spatial))
        new = pattern * signs + delta * w1 / (norm_first + _TINY)
        budget = ep.maximum(self.eps**2 - norm_image**2, 0.0) / self.channels + norm_windows**2
        new = new / (self._spatial_norm(new) + _TINY) * budget.sqrt()
        delta = new + delta * (1 - union)
        return ep.clip(self.x + self._to_norm(delta, self.eps), lo, hi)

    # ------------------------------------------------------------------ windows

    def _window(self, s: int, with_pattern: bool = False) -> tuple[ep.Tensor, ep.Tensor]:
        """A random window of side ``s`` per sample: its mask ``(N, 1, *spatial)`` and, for
        L2, the pattern placed in it (zero outside; randomly transposed per sample for images).
        """
        inside: ep.Tensor | None = None
        relative = []
        for grid, size in zip(self.grids, self.spatial, strict=True):
            u = self.ctx.random.uniform((self.n,))
            corner = ep.minimum((u * (size - s + 1)).astype(self.index_dtype), size - s)
            corner = atleast_kd(corner.astype(self.x.dtype), self.x.ndim)
            cond = ep.logical_and(grid >= corner, grid < corner + s)
            inside = cond if inside is None else ep.logical_and(inside, cond)
            relative.append(ep.clip(grid - corner, 0, s - 1))
        assert inside is not None
        if not with_pattern:
            return inside, inside
        return inside, self._pattern(s, relative) * inside.astype(self.x.dtype)

    def _pattern(self, s: int, relative: list[ep.Tensor]) -> ep.Tensor:
        """Gather the pattern at each pixel's position inside its sample's window."""
        if len(relative) == 2:
            flip = self.ctx.random.uniform((self.n,)) < 0.5
            offset = atleast_kd(flip.astype(self.x.dtype) * float(s * s), 4)
            index = offset + relative[0] * s + relative[1]  # (N, 1, H, W)
        else:
            index = relative[0]  # (N, 1, L)
        index = index.reshape((self.n, -1)).astype(self.index_dtype)
        table = ep.tile(self._table(s).reshape((1, -1)), (self.n, 1))
        return table.take_along_axis(index, axis=-1).reshape((self.n, 1, *self.spatial))

    def _table(self, s: int) -> ep.Tensor:
        """The flattened pattern (and its transpose, for images) on the device, once per size."""
        if s not in self._tables:
            pattern = eta(s, len(self.spatial))
            flat = [pattern.reshape(-1)]
            if len(self.spatial) == 2:
                flat.append(pattern.T.reshape(-1))
            table = ep.from_numpy(self.x, np.concatenate(flat)).astype(self.x.dtype)
            self._tables[s] = table
        return self._tables[s]

    def _spatial_norm(self, t: ep.Tensor) -> ep.Tensor:
        return (t**2).sum(axis=self.sum_axes, keepdims=True).sqrt()

    @staticmethod
    def _to_norm(delta: ep.Tensor, eps: ep.Tensor) -> ep.Tensor:
        return delta / (atleast_kd(lp_norms(delta, 2), delta.ndim) + _TINY) * eps
