"""The binarization test with the reference implementation's structure: one sample at a time.

Why: the engine (``pytest_attacktest.binarization_test``) claims to be much
faster than the reference implementation (google-research/
active-adversarial-tests, ``interior_boundary_discrimination_attack``) because
it batches every phase over samples. That claim needs the reference's
*structure* measured on the same model, samples and settings, in the same
run. This module is written from the reference's description
(``/work/shared/reference/binarization_test.md``), not from its code, and
keeps what makes it slow, per sample:

1. draw that sample's inner and boundary points (a Python loop over samples);
2. extract their features in batches of ``batch_size`` points (the
   reference's DataLoader, default 512) and move them to the CPU as NumPy;
3. fit a scikit-learn ``LogisticRegression`` without penalty on the CPU
   (``C=inf``, the current spelling of the reference's ``penalty="none"``;
   ``max_iter`` 10000, the case studies' value), require every training
   point to be classified correctly, then shift the bias by the
   decision-boundary closeness;
4. build that sample's binarized model (the defended features, then a
   ``Linear(d, 2)`` with weights ``[-w; w]``) and run the attack on the clean
   sample alone, at batch size 1, with label 0;
5. verify the returned point and draw validation points for that sample.

So that the verdicts can be compared with the engine's, everything else is
the engine's definition, not the reference's: the same sampling functions
(inner points within ``(1 - gap) * epsilon``, boundary points exactly on the
sphere after clipping), the same attack object, the same checks (inside the
ball with the engine's tolerance, inside the bounds, adversarial in a fresh
forward pass of the final float32 model), a sample is conclusive only when the
fit separates every training point *and* the best boundary point is
adversarial in the final model while the clean point is not, and the verdict
comes from the same :class:`~pytest_attacktest.engine.report.Report`. What differs
is only the readout (logistic regression instead of the engine's batched
minimum-norm solve; both separate the same points), the random draws, and
that an inconclusive sample is not attacked (as in the reference).

Two settings (:data:`SETTINGS`):

- ``"engine"`` (default): the engine's numbers (its ``n_inner``, one random
  boundary point, closeness 0.999) and its noise rule: the clean point, the
  boundary points and the first ``NOISE_INNER`` inner points are extracted
  again in another batch (another size and order), and the closeness shift
  keeps ``NOISE_FACTOR`` times the root-mean-square change of the readout
  logit as margin; a sample whose clean or guaranteed point cannot keep it,
  or where less than ``MIN_CLOSENESS`` of the shift is left, is
  inconclusive (without this rule a closeness of 0.999 leaves a margin that
  a GPU's TF32 noise flips, and every sample was inconclusive there); the
  logistic regression weights both classes equally (one boundary point
  against hundreds of inner points, unweighted, stopped at its tolerance
  with that point misclassified on a trained ResNet-18);
- ``"reference"``: the reference's own case-study setting
  (:data:`CASE_STUDY`): 49 inner points, 10 boundary points on the Linf
  cube's corners, closeness 0.9999, unregularised logistic regression,
  adaptive logit rescaling, no noise rule. Its random success (a fresh
  random point of the ball already adversarial) is reported beside its
  verdict: corner points make the adversarial region large.

PyTorch only (the reference is PyTorch only).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import Any

import eagerpy as ep
import numpy as np
import torch

from attacks import backend
from attacks.base import Attack
from attacks.geometry import lp_norms
from attacks.norms import norm_name, parse_p
from pytest_attacktest.engine.binarization import (
    DEFAULT_CLOSENESS,
    DEFAULT_GAP,
    DEFAULT_MAX_INCONCLUSIVE,
    DEFAULT_THRESHOLD,
    NOISE_INNER,
)
from pytest_attacktest.engine.features import feature_extractor
from pytest_attacktest.engine.readout import MIN_CLOSENESS, NOISE_FACTOR
from pytest_attacktest.engine.report import Report, SampleResult
from pytest_attacktest.engine.sampling import boundary_points, inner_points
from pytest_attacktest.engine.verification import BALL_TOLERANCE, ROUNDING

#: The case studies pass lr=10000, which the reference uses as sklearn's max_iter.
MAX_ITER = 10000
#: The reference's default batch size for feature extraction (its DataLoaders).
BATCH_SIZE = 512

PHASES = ("sampling", "features", "fit", "attack", "verification")

#: The reference's case-study setting (``per_sample_test(**CASE_STUDY, ...)``).
CASE_STUDY: dict[str, Any] = {
    "n_inner": 49,
    "n_boundary": 10,
    "corners": True,
    "closeness": 0.9999,
    "readout": "sklearn",
    "noise_rule": False,
    "balanced": False,
    "rescale_logits": "adaptive",
}
SETTINGS = ("engine", "reference")


class _Binarized(torch.nn.Module):
    """One sample's binarized model: defended features, then ``Linear(d, 2)`` = ``[-z, z]``."""

    def __init__(self, model: torch.nn.Module, extract: Any, w: np.ndarray, b: float) -> None:
        super().__init__()
        self.model = model  # registered so that the module reports the model's device
        self.extract = extract
        self.head = torch.nn.Linear(w.shape[0], 2)
        weight = torch.from_numpy(np.stack([-w, w])).float()
        bias = torch.tensor([-b, b], dtype=torch.float32)
        device = next(model.parameters()).device
        with torch.no_grad():
            self.head.weight.copy_(weight.to(device))
            self.head.bias.copy_(bias.to(device))
        self.head.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32: under autocast inside the model's forward, features come in bf16/fp16.
        return self.head(self.extract(x).float())

    def z(self, x: torch.Tensor) -> np.ndarray:
        """The readout logit ``z`` (class 1 iff ``z > 0``) of every point, float64 on the host."""
        out = torch.cat([self(x[i : i + BATCH_SIZE]) for i in range(0, x.shape[0], BATCH_SIZE)])
        return (out[:, 1].double().cpu().numpy() - out[:, 0].double().cpu().numpy()) / 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    max_iter: int,
    blas_threads: int | None = None,
    balanced: bool = False,
) -> tuple[np.ndarray, float, int]:
    """The reference's readout: scikit-learn's unpenalised logistic regression, on the CPU.

    Returns the weights, the bias and the solver's iterations (on separable
    data an unpenalised fit runs until its gradient is tiny, or ``max_iter``).
    ``blas_threads`` caps the BLAS threads during the fit: on a busy machine
    OpenBLAS's default (all cores) made each fit ten times slower here, and
    the baseline should not lose by a setting.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if balanced:
        # One boundary point among hundreds of inner points carries a share
        # 1/n of the mean loss's gradient: lbfgs met its tolerance after a
        # dozen iterations with that point still misclassified (every sample
        # of a trained ResNet-18). Weighting the classes equally (the
        # reference's class_weight option) and a tight tolerance fit it.
        regression = LogisticRegression(
            C=math.inf, max_iter=max_iter, class_weight="balanced", tol=1e-10
        )
    else:
        regression = LogisticRegression(C=math.inf, max_iter=max_iter)
    with warnings.catch_warnings(), _blas_limit(blas_threads):
        warnings.simplefilter("ignore", ConvergenceWarning)
        regression.fit(features, labels)
    w = regression.coef_[0].astype(np.float64)
    return w, float(regression.intercept_[0]), int(np.max(regression.n_iter_))


def _blas_limit(threads: int | None) -> Any:
    """At most ``threads`` BLAS/OpenMP threads inside ``with`` (None: leave them)."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


def fit_min_norm(
    features: np.ndarray, labels: np.ndarray, blas_threads: int | None = None
) -> tuple[np.ndarray, float, int]:
    """The engine's readout (minimum-norm interpolation of -1/+1), for one sample in NumPy.

    The same formula as :func:`pytest_attacktest.engine.readout.fit_readouts`, so that
    a comparison with it isolates the per-sample structure from the choice of
    fitter (scikit-learn's fit stops at its tolerance and may leave the one
    boundary point misclassified where the features barely differ).
    """
    with _blas_limit(blas_threads):
        return _min_norm(features, labels)


def _min_norm(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float, int]:
    n = features.shape[0]
    scale = max(float(np.sqrt(np.mean(np.sum(features**2, axis=1)))), 1e-12)
    aug = np.concatenate([features, np.full((n, 1), scale)], axis=1)
    gram = aug @ aug.T
    gram += np.eye(n) * (1e-10 * np.trace(gram) / n + 1e-30)
    alpha = np.linalg.solve(gram, np.where(labels == 1, 1.0, -1.0))
    w_aug = aug.T @ alpha
    return w_aug[:-1], float(w_aug[-1] * scale), 0


READOUTS = ("sklearn", "min-norm")


def per_sample_test(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    attack: Attack,
    epsilon: float,
    norm: str = "linf",
    n_inner: int,
    n_boundary: int = 1,
    corners: bool = False,
    noise_rule: bool = True,
    balanced: bool = True,
    rescale_logits: str | None = "fixed",
    gap: float = DEFAULT_GAP,
    closeness: float = DEFAULT_CLOSENESS,
    n_validation: int = 32,
    threshold: float = DEFAULT_THRESHOLD,
    max_inconclusive: float = DEFAULT_MAX_INCONCLUSIVE,
    max_iter: int = MAX_ITER,
    blas_threads: int | None = None,
    readout: str = "sklearn",
    seed: int = 0,
) -> Report:
    """Run the binarization test sample by sample; the report's timings are per phase.

    Args mirror :func:`pytest_attacktest.binarization_test` (``n_inner`` is
    required: pass the engine's resolved value to compare like with like);
    ``max_iter`` goes to :func:`fit_logistic`, ``blas_threads`` to both fits;
    ``readout="min-norm"`` fits with :func:`fit_min_norm` instead (the engine's
    formula, per sample). ``corners`` puts the boundary points on the Linf
    cube's corners; ``noise_rule`` bounds the closeness shift by the measured
    forward-pass noise (see the module docstring; off in :data:`CASE_STUDY`);
    ``balanced`` weights the two classes equally in the logistic regression,
    with a tight tolerance (see :func:`fit_logistic`; off in :data:`CASE_STUDY`);
    ``rescale_logits`` as the reference: ``"fixed"`` (its public default: the
    readout's logits span 1 over the training points), ``"adaptive"`` (they
    span the model's logits there; the case study's) or None.
    """
    if rescale_logits not in (None, "fixed", "adaptive"):
        raise ValueError(
            f"rescale_logits must be None, 'fixed' or 'adaptive', got {rescale_logits!r}"
        )
    p = parse_p(norm)
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    model.eval()
    device = x.device
    extract = feature_extractor(model, None)
    report = Report(
        attack=repr(attack),
        norm=norm_name(p),
        epsilon=float(epsilon),
        threshold=threshold,
        max_inconclusive=max_inconclusive,
        seed=seed,
        settings={
            "n_inner": n_inner,
            "mode": "per-sample (reference structure)",
            "readout": readout,
            "max_iter": max_iter,
            "blas_threads": blas_threads,
            "sklearn_iterations": [],
            "n_boundary": n_boundary,
            "corners": corners,
            "closeness": closeness,
            "noise_rule": noise_rule,
            "balanced": balanced,
            "rescale_logits": rescale_logits,
        },
        timings=dict.fromkeys(PHASES, 0.0),
    )
    labels = np.array([0] * (1 + n_inner) + [1] * n_boundary)
    bounds = (0.0, 1.0)
    with _blas_limit(blas_threads):  # once: threadpoolctl's look-up takes milliseconds
        for i in range(x.shape[0]):
            clock = _Clock(report.timings, device)
            xi = ep.astensor(x[i : i + 1])
            eps = ep.ones(xi, (1,)) * epsilon
            random = backend.RandomSource(seed + i, xi)
            inner = inner_points(xi, n_inner, eps, p, bounds, random, 1 - gap)[0]
            boundary = boundary_points(xi, n_boundary, eps, p, bounds, random, corners)[0]
            train = torch.cat([x[i : i + 1], inner.raw, boundary.raw])
            clock.lap("sampling")

            with torch.no_grad():
                feats = torch.cat(
                    [
                        extract(train[j : j + BATCH_SIZE])
                        for j in range(0, train.shape[0], BATCH_SIZE)
                    ]
                )
            features = feats.double().cpu().numpy()
            span = 1.0
            if rescale_logits == "adaptive":
                with torch.no_grad():
                    logits = torch.cat(
                        [
                            model(train[j : j + BATCH_SIZE]).float()
                            for j in range(0, train.shape[0], BATCH_SIZE)
                        ]
                    )
                span = float(logits.max() - logits.min())
            moved = (
                _fresh_minus_fitted(extract, train, features, n_boundary) if noise_rule else None
            )
            clock.lap("features")

            if readout == "sklearn":
                w, b, iterations = fit_logistic(features, labels, max_iter, balanced=balanced)
            else:
                w, b, iterations = fit_min_norm(features, labels)
            report.settings["sklearn_iterations"].append(iterations)
            z = features @ w + b
            signed = np.where(labels == 1, z, -z)
            fitted = bool(np.all(signed > 0))
            best = float(z[labels == 1].max())
            # The best boundary point keeps (1 - c) of its logit, or NOISE_FACTOR
            # times the noise where that is more (the engine's rule).
            change = 0.0 if moved is None else float(np.sqrt(np.mean((moved @ w) ** 2)))
            shift = min(closeness * best, best - NOISE_FACTOR * change)
            applied = shift / best if best > 0 else math.nan
            robust = moved is None or (
                z[0] - shift <= -NOISE_FACTOR * change and applied >= min(closeness, MIN_CLOSENESS)
            )
            b -= shift
            # Logit rescaling (the reference's): decisions unchanged, but the
            # attack's loss is not saturated by an unpenalised fit's huge weights.
            factor = 1.0
            if rescale_logits is not None:
                factor = span / max(float(z.max() - z.min()), 1e-300)
                w, b = w * factor, b * factor
            binarized = _Binarized(model, extract, w, b).to(device).eval()
            with torch.no_grad():
                z_clean = binarized.z(x[i : i + 1])[0]
                z_boundary = binarized.z(boundary.raw)
            guaranteed = fitted and robust and z_clean < 0 and z_boundary.max() > 0
            noise = math.nan if moved is None else change / max(best - float(z[0]), 1e-300)
            clock.lap("fit")

            if not guaranteed:
                if not fitted:
                    reason = "readout did not separate the training points"
                elif not robust:
                    reason = "the readout's margin is not above the forward-pass noise"
                else:
                    reason = "the guaranteed adversarial is not adversarial in the final model"
                report.samples.append(
                    SampleResult(
                        index=i,
                        conclusive=False,
                        reason=reason,
                        train_margin=float(signed.min()),
                        noise=noise,
                        closeness=applied,
                    )
                )
                clock.lap("verification")
                continue
            zeros = torch.zeros(1, dtype=torch.long, device=device)
            x_adv = attack(binarized, x[i : i + 1], zeros, epsilon=epsilon)
            clock.lap("attack")

            report.samples.append(
                _verify(binarized, xi, ep.astensor(x_adv), eps, p, epsilon, n_validation, random)
            )
            report.samples[-1].index = i
            report.samples[-1].logit_difference -= (best - shift) * factor
            report.samples[-1].train_margin = float(signed.min())
            report.samples[-1].noise = noise
            report.samples[-1].closeness = applied
            clock.lap("verification")
    return report


def _fresh_minus_fitted(
    extract: Any, train: torch.Tensor, features: np.ndarray, n_boundary: int
) -> np.ndarray:
    """Fresh features minus fitted ones for the clean, first inner and boundary points.

    The points are extracted again in reverse order, as one batch of another
    size than the fit's: on a GPU that changes the convolution algorithms and
    the reduction order, as the attack's and the verification's passes do.
    """
    n = train.shape[0]
    k = min(NOISE_INNER, n - 1 - n_boundary)
    picked = list(range(1 + k)) + list(range(n - n_boundary, n))
    order = picked[::-1]
    with torch.no_grad():
        fresh = extract(train[order]).double().cpu().numpy()[::-1]
    return np.asarray(fresh - features[picked])


def _verify(
    binarized: _Binarized,
    xi: ep.Tensor,
    adv: ep.Tensor,
    eps: ep.Tensor,
    p: float,
    epsilon: float,
    n_validation: int,
    random: backend.RandomSource,
) -> SampleResult:
    """The engine's checks for one sample: ball, bounds, a fresh forward pass, validation."""
    distance = float(backend.to_numpy(lp_norms(adv - xi, p))[0])
    flat = adv.raw.flatten()
    slack = ROUNDING * (1 if math.isinf(p) else flat.numel() ** (1 / p))
    outside_ball = distance > epsilon * (1 + BALL_TOLERANCE) + slack
    outside_bounds = bool(flat.min() < 0 or flat.max() > 1)
    with torch.no_grad():
        z_adv = float(binarized.z(adv.raw)[0])
        inner_acc = boundary_acc = math.nan
        random_hit = False
        if n_validation > 0:
            inner = inner_points(xi, n_validation, eps, p, (0.0, 1.0), random, 1.0)[0]
            boundary = boundary_points(xi, n_validation, eps, p, (0.0, 1.0), random)[0]
            z_in, z_b = binarized.z(inner.raw), binarized.z(boundary.raw)
            inner_acc, boundary_acc = float((z_in <= 0).mean()), float((z_b > 0).mean())
            random_hit = bool((z_in > 0).any() or (z_b > 0).any())
    finite = math.isfinite(distance)
    return SampleResult(
        index=0,
        conclusive=True,
        success=z_adv > 0 and finite and not outside_ball and not outside_bounds,
        distance=distance,
        logit_difference=z_adv,
        inner_accuracy=inner_acc,
        boundary_accuracy=boundary_acc,
        random_success=random_hit,
        outside_ball=outside_ball,
        outside_bounds=outside_bounds,
    )


class _Clock:
    """Adds the time since the last lap to a phase (GPU work waited for first)."""

    def __init__(self, timings: dict[str, float], device: torch.device) -> None:
        self.timings = timings
        self.device = device
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        self.timings[phase] += now - self.last
        self.last = now


def subset(report: Report, n: int) -> Report:
    """The first ``n`` samples of a report, as a report of their own (same verdict rules)."""
    return Report(
        attack=report.attack,
        norm=report.norm,
        epsilon=report.epsilon,
        threshold=report.threshold,
        max_inconclusive=report.max_inconclusive,
        seed=report.seed,
        settings=dict(report.settings),
        samples=sorted(report.samples, key=lambda s: s.index)[:n],
    )


def agreement(ours: Report, reference: Report) -> dict[str, Any]:
    """Per-sample agreement of two reports on the same samples (matched by index)."""
    by_index = {s.index: s for s in ours.samples}
    pairs = [(by_index[s.index], s) for s in reference.samples if s.index in by_index]
    both = [(a, b) for a, b in pairs if a.conclusive and b.conclusive]
    return {
        "samples": len(pairs),
        "conclusive_same": sum(a.conclusive == b.conclusive for a, b in pairs),
        "conclusive_both": len(both),
        "success_same": sum(a.success == b.success for a, b in both),
        "success_only_ours": sum(a.success and not b.success for a, b in both),
        "success_only_reference": sum(b.success and not a.success for a, b in both),
        "verdict_ours": ours.verdict,
        "verdict_reference": reference.verdict,
        "asr_ours": ours.asr,
        "asr_reference": reference.asr,
        "same_verdict": ours.verdict == reference.verdict,
    }
