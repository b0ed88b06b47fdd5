"""A failing test names the cause the engine saw, and a too-easy pass says so on the terminal.

The measured case of issue 15: plain APGD on feature squeezing (3-bit input
quantization, zero gradients) failed with "the test is too easy" as its only
likely cause, although half the returned points were the unmodified clean
point. Here the same defense on the digits MLP (8 grey levels, Linf epsilon
0.05: random points are already adversarial for about 80% of samples) must
fail with "gradients look masked" first, BPDA must pass, and an attack that
does not move on a model with working gradients must not be called masked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from attack_project import make_project, run_pytest
from digits_models import held_out, mlp_weights, numpy_mlp, torch_mlp
from helpers import identity

import attacks
from pytest_attacktest import Report, binarization_test
from pytest_attacktest.engine import binarization as engine
from pytest_attacktest.engine.report import MASKED_GRADIENTS_SECTION, SampleResult
from pytest_attacktest.terminal import summary_rows

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

#: 3-bit feature squeezing (Xu, Evans and Qi, 2018): 8 grey levels.
LEVELS = 8
EPS = 0.05
MASKED = "gradients look masked: try BPDA or EOT"


def squeeze(t: Any) -> Any:
    return torch.round(t * (LEVELS - 1)) / (LEVELS - 1)


class Squeezed(torch.nn.Module):
    """``classifier(squeeze(x))``: the gradient through the rounding is zero."""

    def __init__(self, classifier: Any) -> None:
        super().__init__()
        self.classifier = classifier
        self.eval()

    def forward(self, t: Any) -> Any:
        return self.classifier(squeeze(t))


def _data(n: int = 64) -> tuple[Any, Any]:
    x, y = held_out(n)
    return torch.from_numpy(x), torch.from_numpy(y)


def _misses(report: Report) -> list[SampleResult]:
    return [s for s in report.samples if s.conclusive and not s.success]


@pytest.mark.parametrize(
    "attack",
    [attacks.APGD("linf"), attacks.PGD("linf", steps=30)],
    ids=["apgd", "pgd"],
)
def test_squeezing_with_plain_attack_fails_as_masked_gradients_not_as_too_easy(
    attack: Any,
) -> None:
    """APGD returns the clean point for many samples; PGD leaves its random start (it moved).

    Both see a zero gradient at every clean point, which is the evidence the
    diagnosis leads with; "too easy" is only a caveat, after it.
    """
    report = binarization_test(Squeezed(torch_mlp()), *_data(), attack=attack, epsilon=EPS)
    assert report.verdict == "failed", report.summary()
    assert report.random_success_rate > 0.5  # the measured case: random hits are common
    causes = report.causes()
    assert causes[0].startswith(MASKED), causes
    assert f'README section "{MASKED_GRADIENTS_SECTION}"' in causes[0]
    assert "too easy" not in causes[0]
    assert causes[-1].startswith("caveat: random points are already adversarial"), causes
    misses = _misses(report)
    assert {s.clean_grad for s in misses} == {"zero"}
    assert re.search(
        rf"of {len(misses)} missed samples, the input gradient at the clean point "
        rf"was zero or non-finite for {len(misses)}",
        causes[0],
    )
    if isinstance(attack, attacks.APGD):  # no margin gain anywhere: it keeps the clean point
        assert sum(not s.moved for s in misses) > len(misses) // 4
        assert "returned the unmodified clean point" in causes[0]
    else:
        assert all(s.moved for s in misses)
    assert MASKED in report.summary()
    assert report.to_dict()["causes"] == causes


def test_squeezing_with_bpda_passes_without_a_masked_diagnosis() -> None:
    classifier = torch_mlp()
    bpda = attacks.BPDA(classifier, squeeze)
    report = binarization_test(bpda, *_data(), attack=attacks.PGD("linf", steps=30), epsilon=EPS)
    assert report.passed, report.summary()
    assert not any(MASKED in c for c in report.causes())
    # Where a miss asked for the gradient, BPDA's identity gradient is there.
    assert {s.clean_grad for s in _misses(report)} <= {"ok"}


class Saturated(torch.nn.Module):
    """Logits x1000, as defensive distillation deployed: the softmax is one-hot in float32."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = torch_mlp()
        self.eval()

    def forward(self, t: Any) -> Any:
        return 1000.0 * self.classifier(t)


def test_a_saturated_softmax_is_diagnosed_with_a_margin_loss_as_the_fix() -> None:
    """The readout spans the defense's logit range: CE's gradient underflows, the logit's not."""
    x, y = _data(32)
    args = {"epsilon": 0.1, "rescale_logits": "adaptive"}
    plain = binarization_test(Saturated(), x, y, attack=attacks.PGD("linf", steps=20), **args)
    assert plain.verdict == "failed", plain.summary()
    assert {s.clean_grad for s in _misses(plain)} == {"saturated"}
    cause = plain.causes()[0]
    assert cause.startswith("gradients look masked: the cross-entropy saturates"), cause
    assert 'loss="margin"' in cause
    margin = binarization_test(
        Saturated(), x, y, attack=attacks.PGD("linf", steps=20, loss="margin"), **args
    )
    assert margin.passed, margin.summary()


def test_the_clean_gradient_goes_through_bpda() -> None:
    """The same squeezed model, plain and behind BPDA: zero gradients, then working ones."""
    x, y = _data(16)
    classifier = torch_mlp()
    plain = binarization_test(Squeezed(classifier), x, y, attack=identity, epsilon=EPS)
    bpda = binarization_test(attacks.BPDA(classifier, squeeze), x, y, attack=identity, epsilon=EPS)
    assert {s.clean_grad for s in _misses(plain)} == {"zero"}
    assert {s.clean_grad for s in _misses(bpda)} == {"ok"}
    assert MASKED in plain.causes()[0]
    assert not any(MASKED in c for c in bpda.causes())


def test_an_attack_that_does_not_move_on_working_gradients_is_not_called_masked() -> None:
    """The identity "attack" on the undefended MLP: stuck, but the gradient is fine."""
    report = binarization_test(torch_mlp(), *_data(32), attack=identity, epsilon=0.1)
    assert report.verdict == "failed", report.summary()
    misses = _misses(report)
    assert misses
    assert not any(s.moved for s in misses)
    assert {s.clean_grad for s in misses} == {"ok"}
    assert all(s.logit_gain == 0 for s in misses)
    causes = report.causes()
    assert not any(MASKED in c for c in causes), causes
    assert causes[0].startswith("the attack made no progress although the gradient"), causes
    assert f"the attack returned the unmodified clean point for {len(misses)}" in causes[0]


def test_a_numpy_model_gets_no_gradient_and_no_masked_diagnosis() -> None:
    x, y = held_out(16)
    w1, b1, _, _ = mlp_weights()
    features = lambda t: np.maximum(t @ w1 + b1, 0)  # noqa: E731
    report = binarization_test(numpy_mlp(), x, y, attack=identity, epsilon=0.1, features=features)
    assert report.verdict == "failed", report.summary()
    assert {s.clean_grad for s in report.samples} == {""}
    causes = report.causes()
    assert causes[0].startswith("the attack made no progress: its points"), causes
    assert not any(MASKED in c for c in causes)


def test_a_passing_test_gets_no_progress_diagnosis_and_no_gradient_pass() -> None:
    """Nothing missed, nothing to diagnose: the gradient pass is skipped."""
    with mock.patch.object(engine._Engine, "_clean_gradients") as gradients:
        report = binarization_test(
            torch_mlp(), *_data(16), attack=attacks.PGD("linf", steps=20), epsilon=0.1
        )
    assert report.n_success == report.n_conclusive == 16, report.summary()
    gradients.assert_not_called()
    assert {s.clean_grad for s in report.samples} == {""}


class NoisyInput(torch.nn.Module):
    """A randomized defense drawing from torch's global generator in every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch_mlp()
        self.eval()

    def forward(self, t: Any) -> Any:
        return self.net(t + 0.002 * torch.randn_like(t))


def _fingerprint(report: Report) -> list[tuple[bool, bool, float, float]]:
    """Verdict flags, and figures that change with every noise draw."""
    return [(s.conclusive, s.success, s.noise, s.logit_difference) for s in report.samples]


def test_the_gradient_pass_changes_no_result_of_a_randomized_defense() -> None:
    """Three chunks: the passes after chunk 1 must leave chunk 2's noise draws as they were.

    Against a run without them (the clean logits and gradients of the
    diagnosis): the same samples, figures and verdict.
    """
    x, y = _data(24)
    attack = attacks.PGD("linf", steps=1, random_start=False, rel_stepsize=0.1)
    args = {"attack": attack, "epsilon": 0.1, "chunk_size": 8, "max_inconclusive": 0.99}
    torch.manual_seed(0)
    with_pass = binarization_test(NoisyInput(), x, y, **args)
    assert any(s.clean_grad == "ok" for s in with_pass.samples[:16]), with_pass.summary()

    def blank(self: Any, binarized: Any, x: Any, index: Any, missed: bool) -> Any:
        return np.zeros(x.shape[0]), [""] * x.shape[0]

    torch.manual_seed(0)
    with mock.patch.object(engine._Engine, "_diagnose", blank):
        without = binarization_test(NoisyInput(), x, y, **args)
    assert _fingerprint(with_pass) == _fingerprint(without)
    assert with_pass.verdict == without.verdict


def test_a_failing_gradient_pass_is_no_error() -> None:
    x, y = _data(16)
    with mock.patch.object(
        engine.backend, "value_and_grad", side_effect=RuntimeError("no gradient here")
    ):
        report = binarization_test(Squeezed(torch_mlp()), x, y, attack=identity, epsilon=EPS)
    assert report.verdict == "failed"
    assert {s.clean_grad for s in report.samples} == {""}


def test_the_readme_has_the_section_the_diagnosis_names() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"### {MASKED_GRADIENTS_SECTION}\n" in readme
    assert "attacks.BPDA(" in readme.split(MASKED_GRADIENTS_SECTION)[-1]


# ---------------------------------------------------------------------- the caveat


def _record(verdict: str, caveats: list[str]) -> dict[str, Any]:
    return {
        "verdict": verdict,
        "asr": 1.0,
        "threshold": 0.95,
        "n_inconclusive": 0,
        "n_samples": 8,
        "seconds": 1.0,
        "caveats": caveats,
    }


def test_summary_prints_the_caveats_of_passing_tests_only() -> None:
    easy = "random points are already adversarial for 81% of samples: the test is too easy"
    entries = [
        {"nodeid": "t.py::easy", "outcome": "passed", "reports": [_record("passed", [easy])]},
        {"nodeid": "t.py::fine", "outcome": "passed", "reports": [_record("passed", [])]},
        {"nodeid": "t.py::bad", "outcome": "failed", "reports": [_record("failed", [easy])]},
        {"nodeid": "t.py::old", "outcome": "passed", "reports": [{**_record("passed", [])}]},
    ]
    del entries[3]["reports"][0]["caveats"]  # a record from before caveats existed
    lines = summary_rows(entries)
    assert lines[1 + len(entries) :] == [f"caveat: t.py::easy: {easy}"]


def test_caveats_are_in_the_report_whatever_the_verdict() -> None:
    x, y = _data(32)
    report = binarization_test(torch_mlp(), x, y, attack=attacks.FGSM(), epsilon=0.1, closeness=0.5)
    assert report.passed, report.summary()
    assert report.random_success_rate > 0.5
    (caveat,) = report.caveats()
    assert "too easy to be informative (a pass says little about the attack)" in caveat
    assert report.to_dict()["caveats"] == [caveat]
    assert report.causes() == [f"caveat: {caveat}"]
    assert report.summary().endswith(f"\n  caveats:\n  - {caveat}")


TOO_EASY = """
    import pytest
    import torch

    import attacks


    def squeeze(t):
        return torch.round(t * 7) / 7


    @pytest.mark.attack_test(epsilon=0.05, norm="linf")
    def test_fgsm_on_squeezing(attack_test, model, data):
        attack_test(attacks.BPDA(model, squeeze), *data, attack=attacks.FGSM())

"""


def test_a_too_easy_pass_shows_its_caveat_on_the_terminal(tmp_path: Path) -> None:
    """One-step FGSM passes 3-bit squeezing behind BPDA because random points already win."""
    result = run_pytest(make_project(tmp_path, TOO_EASY), "--attack-test")
    result.assert_outcomes(passed=1)
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"=+ attack tests =+", line))
    caveats = [line for line in lines[start:] if line.startswith("caveat: ")]
    assert len(caveats) == 1, lines[start:]
    assert re.fullmatch(
        r"caveat: test_attack\.py::test_fgsm_on_squeezing: random points are already "
        r"adversarial for \d+% of samples: the test is too easy to be informative \(a pass "
        r"says little about the attack\)",
        caveats[0],
    )
    assert int(re.search(r"for (\d+)%", caveats[0]).group(1)) > 50  # type: ignore[union-attr]
