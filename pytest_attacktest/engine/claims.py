"""The claim gate: is a published robust accuracy backed by a strong attack?

A defense reports "robust accuracy X at epsilon" measured with attack A. The
claim is backed only when both hold:

1. A passes the binarization test (it finds adversarials that provably exist),
   so the number it measures is not the product of a weak attack; and
2. A, run on the *real* model at the same samples, measures a robust accuracy
   that agrees with the claim, in both directions, each judged on the 95%
   Wilson interval of the measurement (the samples are a sample of the test
   set the claim was made on, so a fixed cut on the point estimate would fail
   an honest claim on about half of all subsets):

   - not *below* ``claim - tolerance``: a robust accuracy measured by an
     attack is an upper bound on the true one, so a strong attack that breaks
     more samples than the claim allows refutes it (an inflated claim). The
     gate fails when even the upper end of the interval lies below
     ``claim - tolerance``.
   - not *above* ``claim + tolerance``: the gate fails when even the lower end
     of the interval lies above it. The number in the README is then not what
     this attack measures: a stale claim, or an evaluation weaker than the one
     that produced it.

What "never a false pass" means here: the gate never passes on an attack
that did not pass the binarization test (whatever it measured), and never
passes a claim the measured samples refute. An inflated claim fails as soon
as the samples show it: near a robust accuracy of 0.5, 64 samples refute a
claim more than about 0.12 above the measurement, 1000 samples one 0.03
above. A gap smaller than the sampling error cannot be seen in so few
samples, so a measurement below the claim but within its interval passes,
with a note in the summary that says so and how many samples at the measured
robust accuracy would settle it (:attr:`ClaimResult.samples_to_settle`, also
in the JSON). A claim of exactly 1.0 is refuted by a single broken sample
(the interval's upper end is then below 1).

Robust accuracy is measured by this module, never taken from the attack: a
sample counts as robust when its clean point is classified correctly and the
attack's point is not a verified adversarial. A verified adversarial lies
inside the bounds and the ball (the engine's tolerances), is finite, is not
rejected by the detector (``valid_input``), and is misclassified in a fresh
forward pass. With ``verify_passes = k`` (randomized defenses) a sample is
robust only when the clean point and the attack's point are classified
correctly in every one of the k passes, so randomness never inflates the
measurement. Points outside the threat model get the attack no credit.

The module's top level imports no ML framework (the plugin imports it at
start-up); :func:`measure_robust_accuracy` imports the engine's helpers when
it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_CLAIM_TOLERANCE",
    "ClaimResult",
    "check_claim",
    "measure_robust_accuracy",
    "samples_to_settle",
    "wilson_interval",
]

#: Default slack around the claim. Zero: on both sides the measurement's 95%
#: interval already allows for the sampling error of the measured samples.
DEFAULT_CLAIM_TOLERANCE = 0.0

#: Rounding guard when comparing ``n_robust / n`` with ``claim - tolerance``:
#: 48/64 must meet a claim of 0.75 although 0.75 - 0.0 is computed in floats.
_FLOAT_GUARD = 1e-12


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (``(0, 1)`` when ``n == 0``).

    Shown beside the measured robust accuracy so that a reader sees how much
    a few dozen samples can say about a claim made on a whole test set.
    """
    if n <= 0:
        return 0.0, 1.0
    return _wilson(successes / n, n, z)


def _wilson(phat: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson interval of a proportion ``phat`` observed on ``n`` samples (``n`` > 0)."""
    denominator = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denominator
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


#: Beyond this many samples :func:`samples_to_settle` gives up: a gap that small
#: (0.6505 measured against a claim of 0.65) is agreement for any practical purpose.
_MAX_SETTLE = 10**6


def samples_to_settle(robust_accuracy: float, low: float, high: float) -> int | None:
    """How many samples would settle a measurement against the band ``[low, high]``.

    The smallest ``n`` at which a measurement of ``robust_accuracy`` on ``n``
    samples would have its 95% interval wholly outside the band (below
    ``low`` or above ``high``), i.e. refute the claim, if the robust accuracy
    stayed what it is. ``None`` when the measurement lies inside the band
    (nothing to settle: more samples would only confirm the claim) or when it
    would take more than a million samples.

    Why: a measurement below the claim but within sampling error passes the
    gate; the user must see whether more samples could turn that around.
    """
    if math.isnan(robust_accuracy) or low - _FLOAT_GUARD <= robust_accuracy <= high + _FLOAT_GUARD:
        return None

    def refutes(n: int) -> bool:
        lower, upper = _wilson(robust_accuracy, n)
        return upper < low - _FLOAT_GUARD or lower > high + _FLOAT_GUARD

    n = 1
    while not refutes(n):
        n *= 2
        if n > _MAX_SETTLE:
            return None
    lo = n // 2  # refutes(lo) is False (or lo == 0)
    while n - lo > 1:
        mid = (lo + n) // 2
        if refutes(mid):
            n = mid
        else:
            lo = mid
    return n


@dataclass(frozen=True)
class ClaimResult:
    """The outcome of one claim gate: the measurement and both checks.

    Attributes:
        claim: the claimed robust accuracy, in ``[0, 1]``.
        tolerance: how far below the claim the measurement may fall.
        n_samples: samples measured (the first ``samples`` of the test's inputs,
            the same ones as the binarization test).
        n_clean_correct: samples whose clean point is classified correctly.
        n_robust: clean-correct samples whose attack point is not a verified
            adversarial.
        n_invalid: attack points outside the bounds or the ball, or not finite
            (no credit to the attack; reported because it hints at a bug).
        n_rejected: attack points the detector rejected (no credit either).
        verify_passes: fresh forward passes per point.
        attack_verdict: the binarization test's verdict for the same attack.
    """

    claim: float
    tolerance: float
    n_samples: int
    n_clean_correct: int
    n_robust: int
    n_invalid: int = 0
    n_rejected: int = 0
    verify_passes: int = 1
    attack_verdict: str = "passed"

    @property
    def robust_accuracy(self) -> float:
        return self.n_robust / self.n_samples if self.n_samples else math.nan

    @property
    def clean_accuracy(self) -> float:
        return self.n_clean_correct / self.n_samples if self.n_samples else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """95% interval of the robust accuracy over the measured samples."""
        return wilson_interval(self.n_robust, self.n_samples)

    @property
    def attack_ok(self) -> bool:
        """The attack passed the binarization test."""
        return self.attack_verdict == "passed"

    @property
    def not_inflated(self) -> bool:
        """The measurement's 95% interval reaches up to ``claim - tolerance``.

        False (the claim is refuted as inflated) only when even the interval's
        upper end lies below ``claim - tolerance``: the attack breaks clearly
        more samples than the claim allows.
        """
        if self.n_samples == 0:
            return False
        return self.interval[1] + _FLOAT_GUARD >= self.claim - self.tolerance

    @property
    def not_exceeded(self) -> bool:
        """The measurement's 95% interval reaches down to ``claim + tolerance``."""
        if self.n_samples == 0:
            return False
        return self.interval[0] <= self.claim + self.tolerance + _FLOAT_GUARD

    @property
    def samples_to_settle(self) -> int | None:
        """Samples that would settle a measurement outside the claim's band (see
        :func:`samples_to_settle`); ``None`` when it lies inside
        ``[claim - tolerance, claim + tolerance]``."""
        if self.n_samples == 0:
            return None
        return samples_to_settle(
            self.robust_accuracy, self.claim - self.tolerance, self.claim + self.tolerance
        )

    def unsettled(self) -> str | None:
        """A note when the gate holds only within sampling error, or ``None``.

        The measurement lies outside ``[claim - tolerance, claim + tolerance]``
        but its 95% interval still reaches the band, so the claim is not
        refuted; the note says so and how many samples would settle it.
        """
        if not self.n_samples or not self.accuracy_ok:
            return None
        settle = self.samples_to_settle
        if settle is None:  # inside the band, or a gap of no practical size
            return None
        side = "below" if self.robust_accuracy < self.claim else "above"
        return (
            f"the measured robust accuracy {self.robust_accuracy:.3f} is {side} the claim "
            f"{self.claim:.3f} but within the sampling error of {self.n_samples} samples, so "
            f"the claim is not refuted; about {settle} samples at this robust accuracy would "
            "settle it (samples= or --attack-test-samples, with as many inputs)"
        )

    @property
    def accuracy_ok(self) -> bool:
        """The measured robust accuracy agrees with the claim in both directions."""
        return self.not_inflated and self.not_exceeded

    @property
    def passed(self) -> bool:
        """Both checks hold; anything else (including an untestable setup) fails."""
        return self.attack_ok and self.accuracy_ok

    @property
    def verdict(self) -> str:
        return "passed" if self.passed else "failed"

    def failures(self) -> list[str]:
        """Which checks failed, with figures, attack first."""
        found = []
        if not self.attack_ok:
            what = (
                "could not be set up (verdict error), so the attack was NOT tested"
                if self.attack_verdict == "error"
                else "did not pass (verdict failed): the attack is too weak"
            )
            found.append(
                f"the binarization test of the attack {what}; its robust accuracy "
                "is no evidence for the claim"
            )
        low, high = self.interval
        measured = (
            f"the measured robust accuracy {self.robust_accuracy:.3f} "
            f"({self.n_robust}/{self.n_samples} samples, 95% interval {low:.3f}-{high:.3f})"
        )
        if not self.not_inflated:
            found.append(
                f"{measured} is below the claim {self.claim:.3f} minus the tolerance "
                f"{self.tolerance:g} (even the interval's upper end is below it): the attack "
                "breaks more samples than the claim allows"
            )
        if self.n_samples and not self.not_exceeded:
            found.append(
                f"{measured} exceeds the claim {self.claim:.3f} plus the tolerance "
                f"{self.tolerance:g} (even the interval's lower end is above it): the claim "
                "is not what this attack measures; update the claim or check that the "
                "attack is the evaluation that produced it"
            )
        return found

    def summary(self) -> str:
        """One paragraph: the verdict, which checks failed, and the measurement."""
        failures = self.failures()
        low, high = self.interval
        measured = (
            f"robust accuracy {self.robust_accuracy:.3f} ({self.n_robust}/{self.n_samples} "
            f"samples, 95% interval {low:.3f}-{high:.3f}), clean accuracy "
            f"{self.clean_accuracy:.3f}, claim {self.claim:.3f}, tolerance {self.tolerance:g}, "
            f"binarization test {self.attack_verdict}"
        )
        if self.n_invalid:
            measured += (
                f"; {self.n_invalid} attack point(s) outside the bounds or the ball got no credit"
            )
        if self.n_rejected:
            measured += f"; the detector rejected {self.n_rejected} attack point(s)"
        if not failures:
            note = self.unsettled()
            return f"claim gate PASSED: {measured}" + ("" if note is None else f"\n  - {note}")
        which = " and ".join(
            name
            for name, bad in (
                ("attack too weak", not self.attack_ok),
                ("robust accuracy below the claim", not self.not_inflated),
                ("robust accuracy above the claim", self.n_samples > 0 and not self.not_exceeded),
            )
            if bad
        )
        lines = [f"claim gate FAILED ({which}): {measured}"]
        lines += [f"  - {failure}" for failure in failures]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        robust = self.robust_accuracy
        clean = self.clean_accuracy
        low, high = self.interval
        return {
            "claim": self.claim,
            "tolerance": self.tolerance,
            "verdict": self.verdict,
            "passed": self.passed,
            "attack_ok": self.attack_ok,
            "accuracy_ok": self.accuracy_ok,
            "not_inflated": self.not_inflated,
            "not_exceeded": self.not_exceeded,
            "samples_to_settle": self.samples_to_settle,
            "attack_verdict": self.attack_verdict,
            "robust_accuracy": None if math.isnan(robust) else robust,
            "clean_accuracy": None if math.isnan(clean) else clean,
            "interval": [low, high],
            "n_samples": self.n_samples,
            "n_clean_correct": self.n_clean_correct,
            "n_robust": self.n_robust,
            "n_invalid": self.n_invalid,
            "n_rejected": self.n_rejected,
            "verify_passes": self.verify_passes,
        }


def check_claim(
    claim: float,
    tolerance: float,
    measurement: dict[str, int],
    attack_verdict: str,
) -> ClaimResult:
    """Combine a measurement (from :func:`measure_robust_accuracy`) with the attack's verdict."""
    return ClaimResult(
        claim=claim,
        tolerance=tolerance,
        attack_verdict=attack_verdict,
        **measurement,
    )


def measure_robust_accuracy(
    model: Any,
    x: Any,
    y: Any,
    *,
    attack: Any,
    epsilon: float,
    p: float,
    verify_passes: int = 1,
    valid_input: Any = None,
) -> dict[str, int]:
    """Run ``attack`` on the real ``model`` at ``(x, y)`` and count robust samples ourselves.

    ``attack`` is an :class:`attacks.Attack` (called on ``model`` as given) or
    a function ``fn(native_model, x, y, epsilon) -> x_adv``, as in the
    binarization test. The attack's own randomness is its own (an
    ``attacks.Attack`` carries its ``seed``).

    Returns:
        the counts of :class:`ClaimResult` (``n_samples``, ``n_clean_correct``,
        ``n_robust``, ``n_invalid``, ``n_rejected``, ``verify_passes``).

    Raises:
        ValueError: no labels, labels of the wrong length, or an attack that
            returns a batch of another shape.
    """
    import eagerpy as ep
    import numpy as np

    from attacks import backend
    from attacks.base import Attack, check_inputs
    from attacks.models import Model, as_model
    from pytest_attacktest.engine.binarization import _itemsize
    from pytest_attacktest.engine.blocks import Blocks, forward_blocks
    from pytest_attacktest.engine.verification import admissibility

    if y is None:
        raise ValueError(
            "a claim needs the true labels: call attack_test(model, x, y, attack=...) with y"
        )
    wrapped = as_model(model)
    x_, _ = wrapped.adopt(x)
    check_inputs(x_, wrapped, "put normalisation inside the model and pass inputs in the bounds")
    labels = np.asarray(backend.to_numpy(y)).reshape(-1)
    n = int(x_.shape[0])
    if labels.shape[0] != n:
        raise ValueError(f"y must hold one label per input: {labels.shape[0]} labels, {n} inputs")

    native = wrapped.native if isinstance(model, Model) else model

    def attack_part(i: int, j: int) -> ep.Tensor:
        # Whole batch unless the device runs out of memory, then halves (Blocks).
        xs, ys = (x, y) if (i, j) == (0, n) else (x[i:j], y[i:j])
        if isinstance(attack, Attack):
            out = attack(model, xs, ys, epsilon=epsilon)
        else:
            out = attack(native, xs, ys, epsilon)
        return wrapped.adopt(out)[0]

    adv = Blocks(n).gather(attack_part, n)
    blocks = forward_blocks(x_, _itemsize(x_))  # sized from free device memory, as the test's
    if tuple(adv.shape) != tuple(x_.shape):
        raise ValueError(
            f"the attack returned shape {tuple(adv.shape)} for inputs of shape {tuple(x_.shape)}"
        )
    adv = adv.astype(x_.dtype)

    def correct(points: ep.Tensor) -> np.ndarray:
        """Classified correctly in every one of ``verify_passes`` fresh passes."""
        ok = np.ones(n, dtype=bool)
        with backend.no_grad(points):
            for _ in range(verify_passes):
                logits = np.concatenate(
                    blocks.run(lambda i, j: backend.to_numpy(wrapped.logits(points[i:j])), n)
                )
                ok &= logits.argmax(axis=1) == labels
        return ok

    def accepted(points: ep.Tensor) -> np.ndarray:
        if valid_input is None:
            return np.ones(n, dtype=bool)
        from pytest_attacktest.engine.checks import boolean_mask

        return np.asarray(backend.to_numpy(boolean_mask(valid_input(points.raw), n)))

    # The same admissibility as the binarization test's (bounds, ball, finite).
    inside = admissibility(x_, adv, p, epsilon, wrapped.bounds).inside
    clean_ok = correct(x_) & accepted(x_)
    rejected = ~accepted(adv)
    fooled = inside & ~rejected & ~correct(adv)
    robust = clean_ok & ~fooled
    return {
        "n_samples": n,
        "n_clean_correct": int(clean_ok.sum()),
        "n_robust": int(robust.sum()),
        "n_invalid": int((~inside).sum()),
        "n_rejected": int((inside & rejected).sum()),
        "verify_passes": verify_passes,
    }
