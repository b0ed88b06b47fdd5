"""Results of a binarization test: per sample, per test, as text and JSON.

Why its own module: the plugin prints these in the terminal summary, writes
them to JSON for CI and attaches them to JUnit; keeping the data plain
(dataclasses of Python numbers) means a report crosses xdist's process
boundary and the JSON writer without touching any ML framework.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

#: At most this many example inputs (clean and adversarial) are kept per test,
#: for pictures in the HTML report; they travel in every record, so few.
MAX_EXAMPLES = 3
#: Inputs with more values than this (3x32x32) are not kept: the JSON report and
#: the xdist channel carry them, and a test of large images would grow both.
MAX_EXAMPLE_VALUES = 3072
#: Above this share of conclusive samples with a random hit, the test is too
#: easy for a pass to mean much (:meth:`Report.caveats`).
RANDOM_SUCCESS_CAVEAT = 0.5
#: The README section the masked-gradients diagnosis points to.
MASKED_GRADIENTS_SECTION = "Masked gradients: BPDA and EOT"


@dataclass
class SampleResult:
    """One test sample.

    Attributes:
        index: position of the sample in the input batch.
        conclusive: the setup worked (readout separates its training points,
            the guaranteed adversarial is adversarial in the final model);
            inconclusive samples never count as passed or failed.
        reason: why the sample is inconclusive ("" when conclusive).
        success: the attack's point is verified adversarial (inside the
            bounds and the ball, class 1 in every verification pass).
        distance: ``||x_adv - x||`` in the threat norm.
        logit_difference: ``z(x_adv) - z(best boundary training point)``:
            above 0, the attack found a point more adversarial than the one
            the readout was built on.
        inner_accuracy: share of fresh random inner points (anywhere in the
            ball) classified 0.
        boundary_accuracy: share of fresh random boundary points classified 1.
        random_success: some fresh random point in the ball is already
            adversarial: the region is easy to hit and the sample says little.
        outside_ball: the attack's point was outside the ball (no credit).
        outside_bounds: the attack's point was outside the bounds (no credit).
        rejected: the detector (``valid_input``) rejected the attack's point.
        train_margin: smallest signed margin of the fitted readout over the
            sample's training points (> 0 when it separates them all).
        noise: largest change of the readout logit that a fresh forward pass
            (another batch composition) made at a training point, relative to
            the readout's logit span; 0 on exact arithmetic.
        closeness: the decision-boundary closeness applied: the configured
            one, or less where the noise needed a wider margin.
        moved: the attack's point differs from the clean point by more than
            float rounding (False: it returned the clean point unchanged).
        logit_gain: ``z(x_adv) - z(x)``: how far the attack raised the
            readout logit above the clean point's (<= 0: its point is no more
            adversarial than where it started, the loss never rose).
        clean_grad: the input gradient of the readout logit at the clean
            point, through the model the attack sees: ``"ok"`` (finite and
            not all zero), ``"zero"``, ``"non-finite"``, ``"saturated"`` (the
            logit's gradient is fine but the cross-entropy's is zero: the
            softmax saturates), or ``""`` when not computed (the sample was
            fooled, the model has no gradients, or the attack uses none).
            Diagnostic only: it never decides a verdict.
    """

    index: int
    conclusive: bool
    reason: str = ""
    success: bool = False
    distance: float = math.nan
    logit_difference: float = math.nan
    inner_accuracy: float = math.nan
    boundary_accuracy: float = math.nan
    random_success: bool = False
    outside_ball: bool = False
    outside_bounds: bool = False
    rejected: bool = False
    train_margin: float = math.nan
    noise: float = math.nan
    closeness: float = math.nan
    moved: bool = True
    logit_gain: float = math.nan
    clean_grad: str = ""


@dataclass
class Report:
    """The outcome of one binarization test.

    ``passed`` is True only when the attack success rate over conclusive
    samples reaches the threshold *and* the share of inconclusive samples is
    at most ``max_inconclusive`` *and* at least ``min_conclusive`` samples
    are conclusive; too many inconclusive samples, or too few conclusive
    ones, make the test an error (``verdict == "error"``), never a pass.
    """

    attack: str
    norm: str
    epsilon: float
    threshold: float
    max_inconclusive: float
    seed: int
    settings: dict[str, Any]
    samples: list[SampleResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: A few samples' clean and adversarial inputs, for pictures (see
    #: :data:`MAX_EXAMPLES`): ``{"index", "shape", "bounds", "clean",
    #: "adversarial"}`` with flat lists of numbers; empty for large inputs.
    examples: list[dict[str, Any]] = field(default_factory=list)
    #: Fewest conclusive samples for a verdict (:data:`MIN_CONCLUSIVE`).
    min_conclusive: int = 0

    @property
    def n_samples(self) -> int:
        return len(self.samples)

    @property
    def n_conclusive(self) -> int:
        return sum(s.conclusive for s in self.samples)

    @property
    def n_inconclusive(self) -> int:
        return self.n_samples - self.n_conclusive

    @property
    def n_success(self) -> int:
        return sum(s.success for s in self.samples if s.conclusive)

    @property
    def asr(self) -> float:
        """Attack success rate over conclusive samples (NaN when none is conclusive)."""
        return self.n_success / self.n_conclusive if self.n_conclusive else math.nan

    @property
    def inconclusive_share(self) -> float:
        return self.n_inconclusive / self.n_samples if self.n_samples else 1.0

    @property
    def random_success_rate(self) -> float:
        conclusive = [s for s in self.samples if s.conclusive]
        return sum(s.random_success for s in conclusive) / len(conclusive) if conclusive else 0.0

    @property
    def verdict(self) -> str:
        """``"passed"``, ``"failed"`` (attack too weak) or ``"error"`` (test not usable)."""
        if self.n_conclusive < max(1, self.min_conclusive):
            return "error"
        if self.inconclusive_share > self.max_inconclusive:
            return "error"
        return "passed" if self.asr >= self.threshold else "failed"

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def causes(self) -> list[str]:
        """Likely reasons for a failure or error, the best-evidenced first, in plain words.

        Order: what the attack's points showed (outside the ball or bounds,
        rejected), then what the engine saw of the attack's progress on the
        missed samples (:meth:`_progress_causes`: points that never moved,
        zero gradients), then why samples could not be set up (first instead
        when the verdict is ``error``), and last the caveats
        (:meth:`caveats`), which describe the test rather than explain a miss.
        """
        found = []
        conclusive = [s for s in self.samples if s.conclusive]
        outside = sum(s.outside_ball for s in conclusive)
        if outside:
            found.append(f"attack returned points outside the epsilon ball for {outside} samples")
        off_bounds = sum(s.outside_bounds for s in conclusive)
        if off_bounds:
            found.append(f"attack returned points outside the bounds for {off_bounds} samples")
        rejected = sum(s.rejected for s in conclusive)
        if rejected:
            found.append(f"the detector rejected the attack's points for {rejected} samples")
        setup = []
        if 0 < self.n_conclusive < self.min_conclusive:
            setup.append(
                f"only {self.n_conclusive} conclusive samples: a verdict needs at least "
                f"{self.min_conclusive} (test more samples)"
            )
        reasons: dict[str, int] = {}
        for s in self.samples:
            if not s.conclusive:
                reasons[s.reason] = reasons.get(s.reason, 0) + 1
        for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            setup.append(f"inconclusive ({count} samples): {reason}")
        progress = self._progress_causes() if self.verdict != "passed" else []
        found += setup + progress if self.verdict == "error" else progress + setup
        return found + [f"caveat: {c}" for c in self.caveats()]

    def caveats(self) -> list[str]:
        """What limits the test itself, whatever the verdict (shown for passing tests too).

        A high random success rate means fresh random points in the ball are
        already adversarial: a pass then says little about the attack (one
        step of FGSM may pass), while a miss is all the more the attack's.
        """
        rate = self.random_success_rate
        if rate <= RANDOM_SUCCESS_CAVEAT:
            return []
        return [
            f"random points are already adversarial for {rate:.0%} of samples: the test is "
            "too easy to be informative"
            + (
                " (a pass says little about the attack)"
                if self.verdict == "passed"
                else " for a pass (a miss where random points succeed is the attack's weakness)"
            )
        ]

    def _progress_causes(self) -> list[str]:
        """What the engine saw of the attack on the samples it missed with no other explanation.

        The evidence, per missed sample: the returned point is the clean
        point (``moved``), the readout logit did not rise above the clean
        point's (``logit_gain``), the input gradient at the clean point was
        zero or non-finite, or the cross-entropy's zero (``clean_grad``). When
        most missed samples with a gradient show it, gradients look masked
        (quantization, squeezing: BPDA; randomness: EOT; a saturated softmax:
        a margin loss); when the gradient was fine but the loss still never
        rose for most, the attack itself did not climb.
        """
        misses = [
            s
            for s in self.samples
            if s.conclusive
            and not s.success
            and not (s.outside_ball or s.outside_bounds or s.rejected)
        ]
        m = len(misses)
        if not m:
            return []
        stuck = sum(not s.moved for s in misses)
        no_gain = sum(not s.moved or s.logit_gain <= 0 for s in misses)
        known = [s for s in misses if s.clean_grad]
        flat = sum(s.clean_grad in ("zero", "non-finite") for s in known)
        saturated = sum(s.clean_grad == "saturated" for s in known)
        evidence = []
        if flat:
            evidence.append(
                f"the input gradient at the clean point was zero or non-finite for {flat}"
            )
        if saturated:
            evidence.append(
                "the cross-entropy's gradient at the clean point was zero (its softmax "
                "saturated) for "
                f"{saturated}"
            )
        if stuck:
            evidence.append(f"the attack returned the unmodified clean point for {stuck}")
        if no_gain > stuck:
            evidence.append(
                "a point no more adversarial than the clean point (the readout logit never "
                f"rose) for {no_gain - stuck}{' more' if stuck else ''}"
            )
        seen = f"of {m} missed samples, " + ", ".join(evidence)
        recipe = f'README section "{MASKED_GRADIENTS_SECTION}"'
        if known and 2 * (flat + saturated) > len(known):
            if saturated > flat:
                return [
                    "gradients look masked: the cross-entropy saturates, use a margin loss "
                    f'(e.g. attacks.APGD("linf", loss="margin")) ({recipe}); {seen}'
                ]
            return [f"gradients look masked: try BPDA or EOT ({recipe}); {seen}"]
        if 2 * no_gain <= m:
            return []
        if not known:  # no gradients: a NumPy model or a gradient-free attack
            return [
                "the attack made no progress: its points are no more adversarial than the "
                f"clean points (more queries, iterations or restarts); {seen}"
            ]
        return [
            "the attack made no progress although the gradient at the clean point is finite "
            "and nonzero: check its step size and loss; a randomized defense's noisy gradients "
            f"need EOT ({recipe}); {seen}"
        ]

    def summary(self) -> str:
        """One paragraph for a failing test's message."""
        head = (
            f"binarization test {self.verdict.upper()}: attack {self.attack} found the guaranteed "
            f"adversarial for {self.n_success}/{self.n_conclusive} conclusive samples "
            f"(ASR {self.asr:.3f}, threshold {self.threshold:.3f}); "
            f"{self.n_inconclusive}/{self.n_samples} inconclusive "
            f"(limit {self.max_inconclusive:.0%}); {self.norm} epsilon={self.epsilon:g}, "
            f"seed={self.seed}"
        )
        # A pass has no causes to explain, only its caveats (each without its label).
        causes = self.caveats() if self.passed else self.causes()
        if causes:
            label = "caveats" if self.passed else "likely causes"
            head += f"\n  {label}:\n" + "\n".join(f"  - {c}" for c in causes)
        return head

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "norm": self.norm,
            "epsilon": self.epsilon,
            "threshold": self.threshold,
            "max_inconclusive": self.max_inconclusive,
            "min_conclusive": self.min_conclusive,
            "seed": self.seed,
            "verdict": self.verdict,
            "passed": self.passed,
            "asr": None if math.isnan(self.asr) else self.asr,
            "n_samples": self.n_samples,
            "n_conclusive": self.n_conclusive,
            "n_inconclusive": self.n_inconclusive,
            "random_success_rate": self.random_success_rate,
            "causes": self.causes(),
            "caveats": self.caveats(),
            "settings": self.settings,
            "timings": self.timings,
            "warnings": self.warnings,
            "samples": [_finite(asdict(s)) for s in self.samples],
            "examples": self.examples,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN is not JSON: write null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
