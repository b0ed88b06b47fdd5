"""Features averaged over forward passes: how randomized defenses become testable.

Why: a defense that adds noise at inference (a Gaussian noise layer, random
transformations) gives every forward pass other features. A readout fitted on
one pass and verified on another then moves by the defense's randomness, and a
readout whose guaranteed adversarial keeps a margin of three times that
movement leaves no room for a small adversarial region: every sample was
inconclusive ("forward-pass noise"), whatever the settings.

The engine therefore classifies with the *mean* of ``k`` passes' features
wherever it decides something: the readout is fitted on features averaged
over ``k`` passes per training point, the noise is measured on two such means
(in different batch compositions), and the guarantee, the verification of the
attack's points and the random-point check all evaluate the readout on fresh
``k``-pass means. The noise of a mean of ``k`` independent passes falls as
``1 / sqrt(k)``, so ``k`` follows from the noise measured at fewer passes
(:func:`needed_passes`), up to :data:`MAX_FEATURE_PASSES`; a sample that
would need more is inconclusive with the number it needs.

What this guarantees, and why verification is "adversarial in every one of
``verify_passes`` fresh ``k``-pass means" rather than "in every single pass":
the readout's decision on a randomized model is a random variable, and the
test can only promise a point whose decision is adversarial with a margin
above that randomness. With ``k`` passes averaged, the guaranteed boundary
point keeps three times the measured noise of the mean as margin (and the
clean point as much on the other side), so it is adversarial in fresh means;
requiring each single pass instead would need a margin of three times the
single-pass noise, which for a noise layer is larger than any region the
closeness shift may leave (the old 100% inconclusive). The verdict is about
the randomized model's *averaged* decision, which is what an attack on
``attacks.EOT`` targets and what a majority of passes would decide; with
``k = 1`` it is exactly the per-pass criterion. Random points are judged the
same way, so "random points are already adversarial" is measured under the
same randomness as the attack's points.

What the attack sees is unchanged: the binarized model runs *one* pass of the
defense per call, with all its randomness. Averaging inside the attacked model
would do the attack's EOT for it, and an attack that ignores the randomness
would pass a test that the real defense fails. An attack that handles
randomness wraps the model it is given (``attacks.EOT``); a model that is
already an ``attacks.EOT`` is tested as the user runs it (its features are
averaged over its own passes, :mod:`pytest_attacktest.engine.features`).
"""

from __future__ import annotations

import numpy as np

#: The most passes ``average_passes="auto"`` averages (an explicit integer may exceed it).
MAX_FEATURE_PASSES = 64
#: The readout noise (root-mean-square change of a readout logit relative to the
#: fitted span between the clean and the best boundary point) the automatic
#: choice aims at. A readout is robust below about 0.1 (the guaranteed point
#: keeps 3 times the noise and 0.4 of the closeness shift); aiming at 0.07
#: leaves room for the rough estimate of a few points per sample.
NOISE_TARGET = 0.07
#: Rounds of "measure, then average more" per chunk at most.
MAX_ROUNDS = 4
#: ``"auto"``: the engine chooses the passes from the measured noise.
AUTO = "auto"


def needed_passes(passes: int, noise: np.ndarray) -> np.ndarray:
    """Per sample, the passes whose mean would bring ``noise`` (measured at ``passes``) to target.

    The noise of a mean of ``k`` independent passes is ``1 / sqrt(k)`` times that
    of one pass, so ``passes * (noise / NOISE_TARGET) ** 2``, rounded up to a
    power of two (the reasons that name it then group into few texts). At least
    1; non-finite noise needs ``2**62`` (never reachable).
    """
    ratio = np.asarray(noise, dtype=np.float64) / NOISE_TARGET
    raw = passes * np.square(ratio)
    out = np.full(raw.shape, 2**62, dtype=np.int64)
    finite = np.isfinite(raw) & (raw < 2.0**62)
    exponent = np.ceil(np.log2(np.maximum(raw[finite], 1.0)))
    out[finite] = np.power(2, exponent).astype(np.int64)
    return out


def next_passes(passes: int, noisy_need: np.ndarray) -> int:
    """The passes of the next round, from the needs of the samples still too noisy.

    At least twice the current passes (the estimate is rough while the readout
    still fits the noise), at most :data:`MAX_FEATURE_PASSES`; the current
    passes when nothing is noisy or the cap is reached.
    """
    if noisy_need.size == 0 or passes >= MAX_FEATURE_PASSES:
        return passes
    want = int(min(int(noisy_need.max()), MAX_FEATURE_PASSES))
    return int(min(MAX_FEATURE_PASSES, max(want, 2 * passes)))


def over_cap_reason(needed: int) -> str:
    """The inconclusive reason of a sample whose noise needs more than the cap."""
    shown = f"about {needed}" if needed < 2**40 else "far more than"
    return (
        "forward-pass noise: the defense's randomness moves the readout logits too much even "
        f"with features averaged over {MAX_FEATURE_PASSES} passes (the most "
        f'average_passes="auto" takes); {shown} passes would be needed: pass '
        f"average_passes=<that number> (slower), or test at a larger epsilon"
    )


def is_auto(average_passes: object) -> bool:
    """Whether the engine chooses the passes (``average_passes="auto"``)."""
    return isinstance(average_passes, str) and average_passes == AUTO
