"""Batched linear readouts: one per test sample, all fitted at once on the device.

Why a closed form: each sample's training set is tiny next to the feature
dimension (tens to hundreds of points, hundreds of features), so the
minimum-norm interpolating solution of ``F w + b = t`` with targets -1 (inner)
and +1 (boundary) exists whenever the points' features are linearly
independent, and it is one batched ``n x n`` solve for all samples; the
reference fits an unregularised scikit-learn logistic regression per sample on
the CPU instead. In the regime n < d the minimum-norm interpolator is close to
the max-margin separator (most points are support vectors), which is what the
logistic regression converges to.

Nothing is assumed: every training point must be classified correctly by the
fitted readout, otherwise the sample is *inconclusive*, never a pass.
After the fit the bias is shifted towards the boundary points (the
reference's "decision-boundary closeness" c): the most confident boundary point
keeps a logit of ``(1 - c)`` times its fitted value, so the adversarial region
inside the ball is small and a random perturbation rarely hits it.

Why the shift is bounded by the measured noise: forward passes are not exact
on accelerators (TF32 convolutions, algorithms chosen by batch size, reduced
precision), so the readout logit of the same point moves between the passes
that fit the readout and those that attack and verify it. The engine measures
that movement per sample (the same training points evaluated again in another
batch composition, ``_Engine._feature_noise`` in :mod:`pytest_attacktest.engine.binarization`),
and the shift stops where the
guaranteed boundary point keeps ``NOISE_FACTOR`` times that noise. A readout
whose clean point cannot also keep that margin is not *robust*: its sample is
inconclusive, with the noise stated, never a coin flip decided by the GPU.
On exact arithmetic the noise is zero and the shift is the closeness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import eagerpy as ep
import numpy as np

from attacks import backend, frameworks, jaxjit

#: The guaranteed boundary point and the clean point keep readout logits at
#: least this many times the root-mean-square change a fresh forward pass made.
NOISE_FACTOR = 3.0
#: A readout is robust only if the noise leaves this much of the closeness
#: shift (or the configured closeness, if smaller): a margin that takes more
#: than half of the boundary point's logit makes the adversarial region large
#: enough for random points to hit it, and the test would get easier.
MIN_CLOSENESS = 0.4


@dataclass
class Readouts:
    """Linear readouts ``z = w . f + b`` (class 1 iff z > 0) for S samples."""

    weight: ep.Tensor  # (S, d)
    bias: ep.Tensor  # (S,)
    fitted: np.ndarray  # (S,) bool: every training point classified correctly
    train_margin: np.ndarray  # (S,) smallest signed margin over training points
    boundary_logit: np.ndarray  # (S,) best (largest) z over boundary training points
    #: (S,) root-mean-square change of a training point's z in a fresh forward pass,
    #: relative to the fitted logit span (z of the best boundary point minus
    #: z of the clean point, before the shift); 0 without a noise measurement.
    noise: np.ndarray
    #: (S,) the closeness applied: the configured one, or less where the noise needs it.
    closeness: np.ndarray
    #: (S,) the clean and the guaranteed boundary point keep ``NOISE_FACTOR``
    #: times the noise as margin (always true without a noise measurement).
    robust: np.ndarray

    def logits(self, features: ep.Tensor, index: ep.Tensor | None = None) -> ep.Tensor:
        """``z`` for features ``(N, d)`` of samples ``index`` (default: 0..S-1 in order)."""
        return _logits(features, self.weight, self.bias, index)


@jaxjit.for_jax
def _logits(
    features: ep.Tensor, weight: ep.Tensor, bias: ep.Tensor, index: ep.Tensor | None
) -> ep.Tensor:
    w = weight if index is None else weight[index]
    b = bias if index is None else bias[index]
    if features.dtype != w.dtype:  # half-precision features, float32 readout
        features = features.astype(w.dtype)
    return (features * w).sum(axis=-1) + b


def fit_readouts(
    features: ep.Tensor,
    labels: np.ndarray,
    closeness: float,
    logit_range: ep.Tensor | None = None,
    noise: ep.Tensor | None = None,
) -> Readouts:
    """Fit one readout per sample.

    Args:
        features: ``(S, n, d)`` training features per sample.
        labels: ``(n,)`` 0 (inner) or 1 (boundary), the same layout for every
            sample; the first point is the clean point.
        closeness: decision-boundary closeness ``c`` in ``[0, 1)``.
        logit_range: optional ``(S,)``: scale each readout (a positive factor,
            decisions unchanged) so its logits span this range over the
            training points, as the reference's logit rescaling does; attacks
            whose step depends on the loss scale (cross-entropy) then see the
            original model's scale.
        noise: optional ``(S, m, d)``: for m of each sample's training points,
            fresh features minus the fitted ones (the engine's noise measurement). The
            shift then keeps ``NOISE_FACTOR`` times the root-mean-square
            logit change as margin, and ``robust`` says where both the clean
            and the guaranteed point keep it with at least ``MIN_CLOSENESS``
            of the shift left.
    """
    if not 0.0 <= closeness < 1.0:
        raise ValueError(f"closeness must be in [0, 1), got {closeness}")
    label_tuple = tuple(int(v) for v in np.asarray(labels).reshape(-1))
    if label_tuple[0] != 0:
        raise ValueError("the first training point must be the clean point (label 0)")
    if _float32_only(features):
        fit = _fit_on_host(features, label_tuple, closeness, logit_range, noise)
    else:
        fit = _fit(features, label_tuple, closeness, logit_range, noise)
    weight, bias, margin, best_boundary, spread, change, applied, clean = fit
    margin_np = backend.to_numpy(margin).astype(np.float64)
    fitted = np.isfinite(margin_np) & (margin_np > 0)
    change_np = backend.to_numpy(change).astype(np.float64)
    # The shift gives the boundary point its margin by construction (up to
    # rounding); the clean point must keep it too.
    applied_np = backend.to_numpy(applied).astype(np.float64)
    robust = (backend.to_numpy(clean).astype(np.float64) <= -NOISE_FACTOR * change_np) & (
        applied_np >= min(closeness, MIN_CLOSENESS)
    )
    return Readouts(
        weight=weight,
        bias=bias,
        fitted=fitted,
        train_margin=margin_np,
        boundary_logit=backend.to_numpy(best_boundary),
        noise=change_np / np.maximum(backend.to_numpy(spread).astype(np.float64), 1e-300),
        closeness=applied_np,
        robust=fitted & robust,
    )


def _float32_only(features: ep.Tensor) -> bool:
    """JAX without x64: no float64 on the device, and float32 solves lose separability."""
    fw = frameworks.of(features)
    return bool(fw.widest_float() != fw.dtype("float64"))


def _fit_on_host(
    features: ep.Tensor,
    label_tuple: tuple[int, ...],
    closeness: float,
    logit_range: ep.Tensor | None,
    noise: ep.Tensor | None,
) -> tuple[ep.Tensor, ...]:
    """The fit in NumPy float64, its weight and bias returned to the features' JAX device.

    Why: JAX computes in float32 unless x64 is switched on for the whole
    process (which the engine must not do), and on GPUs its float32 matmuls
    default to reduced precision; the minimum-norm solve on nearly degenerate
    feature clouds needs float64. One host copy of the chunk's features per
    fit, outside any attack loop.
    """

    def host(t: ep.Tensor | None) -> ep.Tensor | None:
        return None if t is None else backend.wrap(backend.to_numpy(t).astype(np.float64))

    host_features = host(features)
    assert host_features is not None
    fit = _fit(host_features, label_tuple, closeness, host(logit_range), host(noise))

    def back(t: ep.Tensor) -> ep.Tensor:  # float32: the most JAX holds without x64
        return backend.wrap(
            backend.from_numpy_like(backend.to_numpy(t).astype(np.float32), features)
        )

    return (back(fit[0]), back(fit[1]), *fit[2:])


def _readout_dtype(features: ep.Tensor) -> Any:
    """The readout's dtype: the features', but float32 for half-precision features.

    Why: under mixed precision (Keras ``mixed_float16``, autocast) features
    arrive in 16 bits, whose rounding alone would move the readout logits by
    more than the margins the fit keeps.
    """
    if "16" not in str(features.dtype):
        return features.dtype
    return backend.dtype_like(features, "float32")


@jaxjit.for_jax
def _fit(
    features: ep.Tensor,
    label_tuple: tuple[int, ...],
    closeness: float,
    logit_range: ep.Tensor | None,
    noise: ep.Tensor | None,
) -> tuple[ep.Tensor, ...]:
    """The fit on the device.

    Returns weight, bias, training margin, the best boundary logit after the
    shift, the fitted span (best boundary minus clean logit), the
    root-mean-square noise-induced logit change, the closeness applied and the clean point's
    logit after the shift: all in the final readout's units. Pure tensor code
    (labels as a tuple), so JAX runs it as one compiled program.
    """
    labels = np.asarray(label_tuple)
    fw = frameworks.of(features)
    s, n, d = features.shape
    targets_np = np.where(labels == 1, 1.0, -1.0)

    f64 = _as_float64(features)
    # A constant column of value ``scale`` absorbs the bias, scaled to the
    # features' size so the minimum-norm solution does not favour the bias over
    # the weights. It is never built: it adds ``scale**2`` to every Gram entry.
    gram = _matmul(fw, f64, f64, transpose_b=True)  # (S, n, n)
    row_sq = backend.wrap(fw.diagonal(gram.raw))  # (S, n): squared feature norms
    scale_sq = ep.maximum(row_sq.mean(axis=-1), 1e-24)  # (S,)
    gram = gram + scale_sq.reshape((s, 1, 1))
    jitter = 1e-10 * (row_sq.sum(axis=-1) + n * scale_sq) / n + 1e-30  # trace / n
    targets = _const(f64, np.broadcast_to(targets_np, (s, n)).copy()).expand_dims(-1)
    alpha = backend.wrap(
        fw.solve((gram + _eye_like(gram, n) * jitter.reshape((s, 1, 1))).raw, targets.raw)
    )
    # w = F^T alpha, b = scale**2 * sum(alpha). The training logits are computed
    # from w and b as the readout will compute them, not read off Gram @ alpha:
    # in float32 (JAX without x64) the two differ by enough that a closeness
    # shift taken from the idealised values can push the boundary point back.
    weight = _matmul(fw, alpha, f64, transpose_a=True).reshape((s, d))
    bias = scale_sq * alpha.sum(axis=(1, 2))
    z = _matmul(fw, f64, weight.expand_dims(-1)).reshape((s, n)) + bias.expand_dims(1)
    signed = z * _const(f64, targets_np).reshape((1, n))
    margin = signed.min(axis=1)
    boundary_mask = _const(f64, (labels == 1).astype(np.float64)).reshape((1, n))
    best_boundary = ep.where(boundary_mask > 0, z, ep.full_like(z, -np.inf)).max(axis=1)
    if noise is None:
        change = ep.zeros_like(best_boundary)
    else:
        m = noise.shape[1]
        moved = _matmul(fw, _as_float64(noise), weight.expand_dims(-1))
        own = moved.reshape((s, m)).square().mean(axis=1).sqrt()
        # Few points per sample give a rough estimate: no sample is taken to be
        # quieter than the chunk's typical one (the noise is the hardware's).
        change = ep.maximum(own, own.sort()[s // 2])
    # Shift so that the most confident boundary point keeps (1 - c) of its
    # logit, or NOISE_FACTOR times the noise where that is more.
    shift = ep.minimum(closeness * best_boundary, best_boundary - NOISE_FACTOR * change)
    applied = shift / ep.maximum(best_boundary, 1e-300)
    clean = z[:, 0] - shift
    spread = best_boundary - z[:, 0]
    bias = bias - shift
    best_boundary = best_boundary - shift
    if logit_range is not None:
        shifted = z - shift.expand_dims(1)
        span = ep.maximum(shifted.max(axis=1) - shifted.min(axis=1), 1e-12)
        factor = logit_range.astype(f64.dtype) / span
        weight, bias, best_boundary = (
            weight * factor.expand_dims(1),
            bias * factor,
            best_boundary * factor,
        )
        spread, change, clean = spread * factor, change * factor, clean * factor

    dtype = _readout_dtype(features)
    return (
        weight.astype(dtype),
        bias.astype(dtype),
        margin,
        best_boundary,
        spread,
        change,
        applied,
        clean,
    )


# ---------------------------------------------------------------------- helpers


def _as_float64(t: ep.Tensor) -> ep.Tensor:
    """float64 where the framework allows it (JAX without x64 stays float32)."""
    return t.astype(frameworks.of(t).widest_float())


def _const(like: ep.Tensor, array: np.ndarray) -> ep.Tensor:
    """A NumPy constant on ``like``'s framework, device and dtype."""
    return backend.wrap(backend.from_numpy_like(array, like)).astype(like.dtype)


def _eye_like(t: ep.Tensor, n: int) -> ep.Tensor:
    return _const(t, np.eye(n)).expand_dims(0)


def _matmul(
    fw: frameworks.Framework,
    a: ep.Tensor,
    b: ep.Tensor,
    transpose_a: bool = False,
    transpose_b: bool = False,
) -> ep.Tensor:
    """``a @ b`` per batch entry, either side transposed (EagerPy's matmul is 2-D only)."""
    return backend.wrap(fw.batched_matmul(a.raw, b.raw, transpose_a, transpose_b))
