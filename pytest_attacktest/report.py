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
        """Likely reasons for a failure or error, most specific first, in plain words."""
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
        if self.random_success_rate > 0.5:
            found.append(
                "random points are already adversarial for "
                f"{self.random_success_rate:.0%} of samples: the test is too easy to be informative"
            )
        if 0 < self.n_conclusive < self.min_conclusive:
            found.append(
                f"only {self.n_conclusive} conclusive samples: a verdict needs at least "
                f"{self.min_conclusive} (test more samples)"
            )
        reasons: dict[str, int] = {}
        for s in self.samples:
            if not s.conclusive:
                reasons[s.reason] = reasons.get(s.reason, 0) + 1
        for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            found.append(f"inconclusive ({count} samples): {reason}")
        return found

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
        causes = self.causes()
        if causes:
            head += "\n  likely causes:\n" + "\n".join(f"  - {c}" for c in causes)
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
