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
"""

from __future__ import annotations

from dataclasses import dataclass

import eagerpy as ep
import numpy as np

from attacks import backend, jaxjit


@dataclass
class Readouts:
    """Linear readouts ``z = w . f + b`` (class 1 iff z > 0) for S samples."""

    weight: ep.Tensor  # (S, d)
    bias: ep.Tensor  # (S,)
    fitted: np.ndarray  # (S,) bool: every training point classified correctly
    train_margin: np.ndarray  # (S,) smallest signed margin over training points
    boundary_logit: np.ndarray  # (S,) best (largest) z over boundary training points

    def logits(self, features: ep.Tensor, index: ep.Tensor | None = None) -> ep.Tensor:
        """``z`` for features ``(N, d)`` of samples ``index`` (default: 0..S-1 in order)."""
        return _logits(features, self.weight, self.bias, index)


@jaxjit.for_jax
def _logits(
    features: ep.Tensor, weight: ep.Tensor, bias: ep.Tensor, index: ep.Tensor | None
) -> ep.Tensor:
    w = weight if index is None else weight[index]
    b = bias if index is None else bias[index]
    return (features * w).sum(axis=-1) + b


def fit_readouts(
    features: ep.Tensor,
    labels: np.ndarray,
    closeness: float,
    logit_range: ep.Tensor | None = None,
) -> Readouts:
    """Fit one readout per sample.

    Args:
        features: ``(S, n, d)`` training features per sample.
        labels: ``(n,)`` 0 (inner) or 1 (boundary), the same layout for every sample.
        closeness: decision-boundary closeness ``c`` in ``[0, 1)``.
        logit_range: optional ``(S,)``: scale each readout (a positive factor,
            decisions unchanged) so its logits span this range over the
            training points, as the reference's logit rescaling does; attacks
            whose step depends on the loss scale (cross-entropy) then see the
            original model's scale.
    """
    if not 0.0 <= closeness < 1.0:
        raise ValueError(f"closeness must be in [0, 1), got {closeness}")
    label_tuple = tuple(int(v) for v in np.asarray(labels).reshape(-1))
    weight, bias, margin, best_boundary = _fit(features, label_tuple, closeness, logit_range)
    margin_np = backend.to_numpy(margin)
    fitted = np.isfinite(margin_np) & (margin_np > 0)
    return Readouts(
        weight=weight,
        bias=bias,
        fitted=fitted,
        train_margin=margin_np,
        boundary_logit=backend.to_numpy(best_boundary),
    )


@jaxjit.for_jax
def _fit(
    features: ep.Tensor,
    label_tuple: tuple[int, ...],
    closeness: float,
    logit_range: ep.Tensor | None,
) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor, ep.Tensor]:
    """The fit on the device: weight, bias, training margin and best boundary logit.

    Pure tensor code (labels as a tuple), so JAX runs it as one compiled program.
    """
    labels = np.asarray(label_tuple)
    framework = backend.tensor_framework(features)
    s, n, d = features.shape
    targets_np = np.where(labels == 1, 1.0, -1.0)

    f64 = _as_float64(features)
    # A constant column of value ``scale`` absorbs the bias, scaled to the
    # features' size so the minimum-norm solution does not favour the bias over
    # the weights. It is never built: it adds ``scale**2`` to every Gram entry.
    gram = _batched_matmul(framework, f64, f64, transpose_b=True)  # (S, n, n)
    row_sq = _diagonal(framework, gram)  # (S, n): squared feature norms
    scale_sq = ep.maximum(row_sq.mean(axis=-1), 1e-24)  # (S,)
    gram = gram + scale_sq.reshape((s, 1, 1))
    jitter = 1e-10 * (row_sq.sum(axis=-1) + n * scale_sq) / n + 1e-30  # trace / n
    targets = _const(f64, np.broadcast_to(targets_np, (s, n)).copy()).expand_dims(-1)
    alpha = _solve(framework, gram + _eye_like(gram, n) * jitter.reshape((s, 1, 1)), targets)
    # w = F^T alpha, b = scale**2 * sum(alpha). The training logits are computed
    # from w and b as the readout will compute them, not read off Gram @ alpha:
    # in float32 (JAX without x64) the two differ by enough that a closeness
    # shift taken from the idealised values can push the boundary point back.
    weight = _batched_matmul(framework, alpha, f64, transpose_a=True).reshape((s, d))
    bias = scale_sq * alpha.sum(axis=(1, 2))
    z = _batched_matmul(framework, f64, weight.expand_dims(-1)).reshape((s, n)) + bias.expand_dims(
        1
    )
    signed = z * _const(f64, targets_np).reshape((1, n))
    margin = signed.min(axis=1)
    boundary_mask = _const(f64, (labels == 1).astype(np.float64)).reshape((1, n))
    best_boundary = ep.where(boundary_mask > 0, z, ep.full_like(z, -np.inf)).max(axis=1)
    # Shift so that the most confident boundary point keeps (1 - c) of its logit.
    bias = bias - closeness * best_boundary
    best_boundary = best_boundary * (1 - closeness)
    if logit_range is not None:
        shifted = z - closeness * best_boundary.expand_dims(1) / (1 - closeness)
        spread = ep.maximum(shifted.max(axis=1) - shifted.min(axis=1), 1e-12)
        factor = logit_range.astype(f64.dtype) / spread
        weight, bias, best_boundary = (
            weight * factor.expand_dims(1),
            bias * factor,
            best_boundary * factor,
        )

    dtype = features.dtype
    return weight.astype(dtype), bias.astype(dtype), margin, best_boundary


# ---------------------------------------------------------------------- per framework


def _as_float64(t: ep.Tensor) -> ep.Tensor:
    """float64 where the framework allows it (JAX without x64 stays float32)."""
    framework = backend.tensor_framework(t)
    if framework == "torch":
        import torch

        return t.astype(torch.float64)
    if framework == "tensorflow":
        import tensorflow as tf

        return t.astype(tf.float64)
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        x64 = bool(jax.config.read("jax_enable_x64"))  # type: ignore[no-untyped-call]
        return t.astype(jnp.float64 if x64 else jnp.float32)
    return t.astype(np.float64)


def _const(like: ep.Tensor, array: np.ndarray) -> ep.Tensor:
    """A NumPy constant on ``like``'s framework, device and dtype."""
    framework = backend.tensor_framework(like)
    device = getattr(like.raw, "device", None) if framework == "torch" else None
    return backend.wrap(backend.from_numpy(framework, array, device)).astype(like.dtype)


def _eye_like(t: ep.Tensor, n: int) -> ep.Tensor:
    return _const(t, np.eye(n)).expand_dims(0)


def _diagonal(framework: str, a: ep.Tensor) -> ep.Tensor:
    """The diagonals of a batch of square matrices, ``(S, n, n) -> (S, n)``."""
    raw = a.raw
    if framework == "torch":
        return backend.wrap(raw.diagonal(dim1=1, dim2=2))
    if framework == "tensorflow":
        import tensorflow as tf

        return backend.wrap(tf.linalg.diag_part(raw))
    return backend.wrap(raw.diagonal(axis1=1, axis2=2))


def _batched_matmul(
    framework: str,
    a: ep.Tensor,
    b: ep.Tensor,
    transpose_a: bool = False,
    transpose_b: bool = False,
) -> ep.Tensor:
    """``a @ b`` per batch entry, either side transposed (EagerPy's matmul is 2-D only)."""
    ra, rb = a.raw, b.raw
    if framework == "tensorflow":
        import tensorflow as tf

        return backend.wrap(
            tf.linalg.matmul(ra, rb, transpose_a=transpose_a, transpose_b=transpose_b)
        )
    if framework == "torch":
        ra = ra.transpose(1, 2) if transpose_a else ra
        rb = rb.transpose(1, 2) if transpose_b else rb
    else:
        ra = ra.swapaxes(1, 2) if transpose_a else ra
        rb = rb.swapaxes(1, 2) if transpose_b else rb
    return backend.wrap(ra @ rb)


def _solve(framework: str, a: ep.Tensor, b: ep.Tensor) -> ep.Tensor:
    """Batched ``a x = b`` in the tensors' own framework (on their device)."""
    if framework == "torch":
        import torch

        return backend.wrap(torch.linalg.solve(a.raw, b.raw))
    if framework == "tensorflow":
        import tensorflow as tf

        return backend.wrap(tf.linalg.solve(a.raw, b.raw))
    if framework == "jax":
        import jax.numpy as jnp

        return backend.wrap(jnp.linalg.solve(a.raw, b.raw))
    return backend.wrap(np.linalg.solve(a.raw, b.raw))
