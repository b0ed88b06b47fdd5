"""Small API mistakes answered in words: APGD's target count, epsilon's spellings, too few inputs.

* APGD-T's default number of target classes is an upper bound (AutoAttack's
  9, capped at classes - 1): the repr must show what was set (``None``), not
  a 9 that a 5-class model never uses, and the count used must follow the model.
* ``eps=`` (torchattacks) and ``epsilons=`` (Foolbox) must be answered with
  "did you mean 'epsilon'" (or, for an attack's constructor, where the
  budget goes) in the marker, the fixture's call, ``binarization_test``,
  attack constructors and attack calls.
* 20 inputs for ``samples=64`` must warn and leave the note in the report
  (and so in the JSON and the HTML), also with a claim gate.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from digits_models import held_out, numpy_mlp, torch_mlp

import attacks
from pytest_attacktest import binarization_test
from pytest_attacktest.engine.errors import FewerSamplesWarning
from pytest_attacktest.engine.options import AttackTestSettings, SettingsError, apply_kwargs
from pytest_attacktest.fixture import AttackTestFixture
from pytest_attacktest.html_report import render_html
from pytest_attacktest.session import AttackTestSession, RunResults


def _targets(attack: attacks.APGD, classes: int) -> int:
    logits = ep.astensor(np.random.default_rng(0).normal(size=(4, classes)).astype(np.float32))
    return len(attack._loss_targets(logits, None))


def test_apgd_repr_shows_the_target_count_that_was_set() -> None:
    default = attacks.APGD(targeted=True, loss="dlr")
    assert "n_target_classes=None" in repr(default)
    assert _targets(default, 5) == 4  # capped at classes - 1
    assert _targets(default, 12) == 9  # AutoAttack's default
    assert _targets(attacks.APGD(targeted=True, n_target_classes=2), 5) == 2
    assert "n_target_classes=2" in repr(attacks.APGD(targeted=True, n_target_classes=2))
    with pytest.raises(ValueError, match="n_target_classes must be >= 1"):
        attacks.APGD(n_target_classes=0)


def test_epsilon_spellings_say_what_was_meant() -> None:
    with pytest.raises(TypeError, match=r"'eps' \(the budget is not set when the attack is built"):
        attacks.PGD("linf", eps=8 / 255)
    with pytest.raises(TypeError, match=r"'stpes' \(did you mean 'steps'\?\)"):
        attacks.APGD(stpes=10)
    x, y = held_out(4)
    with pytest.raises(TypeError, match=r"'epsilons' \(did you mean 'epsilon'\?\)"):
        attacks.FGSM()(numpy_mlp(), x, y, epsilons=0.1)
    with pytest.raises(TypeError, match=r"binarization_test\(\).*'eps' \(did you mean 'epsilon'"):
        binarization_test(numpy_mlp(), x, y, attack=attacks.FGSM(), eps=0.1)
    for spelling in ("eps", "epsilons", "Epsilon_"):
        with pytest.raises(SettingsError, match=r"did you mean 'epsilon'\?"):
            apply_kwargs(AttackTestSettings(), {spelling: 0.1})
    with pytest.raises(SettingsError, match=r"'n_innner' \(did you mean 'n_inner'\?\)"):
        apply_kwargs(AttackTestSettings(), {"n_innner": 4})
    # Keywords that are right still work, positional ones too.
    assert attacks.PGD("l2", steps=3).steps == 3


@pytest.mark.torch
def test_fewer_inputs_than_samples_warns_and_notes_it_in_every_report() -> None:
    torch = pytest.importorskip("torch")

    x_np, y_np = held_out(20)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    # A claim near what PGD measures (0.35 of 20) with a wide tolerance: the gate passes.
    session = AttackTestSession(
        enabled=True, enabled_by="--attack-test", seed=0, claim_tolerance=0.3
    )
    settings = apply_kwargs(session.base_settings(), {"epsilon": 0.1, "claim": 0.35})
    assert settings.samples == 64
    fixture = AttackTestFixture(settings, session=session, results=RunResults())
    with pytest.warns(FewerSamplesWarning, match=r"samples=64 asked, 20 given") as caught:
        report = fixture(torch_mlp(), x, y, attack=attacks.PGD(steps=10))
    assert caught[0].filename == __file__  # points at the test, not at the plugin
    assert report.n_samples == 20
    note = next(w for w in report.warnings if "samples=64 asked, 20 given" in w)
    assert "claim gate" in note
    (record,) = fixture.records
    assert note in record["warnings"]
    assert record["claim"]["n_samples"] == 20
    results = RunResults()
    results.add("test_x.py::test_few", "call", "passed", fixture.records)
    document: dict[str, Any] = results.document(session, pytest_version="9", exitstatus=0)
    assert note in document["tests"][0]["reports"][0]["warnings"]  # the JSON
    page = render_html(document)
    assert re.search(r"warning: samples=64 asked, 20 given", page)

    # As many inputs as asked: no warning, no note.
    enough = apply_kwargs(settings, {"samples": 20, "claim": None})
    quiet = AttackTestFixture(enough, session=session, results=RunResults())
    with warnings.catch_warnings():
        warnings.simplefilter("error", FewerSamplesWarning)
        report = quiet(torch_mlp(), x, y, attack=attacks.PGD(steps=10))
    assert not any("asked" in w for w in report.warnings)


@pytest.mark.torch
def test_engine_warnings_still_point_at_the_caller() -> None:
    """The keyword check wraps binarization_test: its warnings must still name the test's line."""
    torch = pytest.importorskip("torch")

    def in_place(model: Any, x: Any, y: Any, epsilon: float) -> Any:
        x.add_(0.5 * epsilon).clamp_(0, 1)  # writes into the points it was given
        return x

    x, y = held_out(12)
    with pytest.warns(UserWarning, match="modified its input") as caught:
        binarization_test(
            torch_mlp(), torch.from_numpy(x), y, attack=in_place, epsilon=0.1, n_validation=4
        )
    assert {w.filename for w in caught if "modified its input" in str(w.message)} == {__file__}
