"""The ``attack_test`` fixture: the test's settings, and the call that runs the binarization test.

A test calls ``attack_test(model, x, y, attack=...)``; the fixture runs
:func:`~pytest_attacktest.engine.binarization.binarization_test` on the first
``samples`` inputs (and the claim gate, :mod:`pytest_attacktest.engine.claims`, when
the test makes a claim), keeps each call's report as a plain dict for the
results reporter (:mod:`pytest_attacktest.reporting`), and fails the test
unless the attack passes. The engine is imported when the fixture is called,
never when the plugin loads: this module imports no ML framework.

:mod:`pytest_attacktest.plugin` imports :func:`attack_test_fixture` so that
pytest finds it on the registered plugin module.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Any

import pytest

from pytest_attacktest import progress
from pytest_attacktest.cli_options import DEVICE_FLAG, MARKER
from pytest_attacktest.collection import SKIP_REASON, item_settings, marker_error, settings_key
from pytest_attacktest.engine.claims import DEFAULT_CLAIM_TOLERANCE, ClaimResult
from pytest_attacktest.engine.options import AttackTestSettings, SettingsError, apply_kwargs
from pytest_attacktest.outcomes import AttackTestFailed
from pytest_attacktest.session import AttackTestSession, RunResults, get_session, plain, results_key

if TYPE_CHECKING:
    from pytest_attacktest.engine.report import Report

__all__ = [
    "ERROR_VERDICT",
    "NEVER_CALLED",
    "AttackTestFixture",
    "attack_test_fixture",
    "attack_test_reports",
    "fixture_key",
    "worker_index",
]

NEVER_CALLED = (
    "attack_test fixture was requested but never called: nothing was tested. Call "
    "attack_test(model, x, y, attack=...) in the test, or drop the fixture"
)

ERROR_VERDICT = (
    "attack_test: the binarization test could not be set up on this model (too many "
    "inconclusive samples), so the attack was NOT tested; this is no verdict on the "
    "attack's strength. Fix the setup (see the likely causes: e.g. features=, n_inner=, "
    "average_passes=) and rerun."
)


def worker_index(config: pytest.Config) -> int | None:
    """This pytest-xdist worker's number (``gw3`` is 3), or ``None`` outside a worker."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    worker_id = str(workerinput.get("workerid", ""))
    return int(worker_id[2:]) if worker_id[2:].isdigit() else None


class AttackTestFixture:
    """What the ``attack_test`` fixture returns: the test's settings, and a callable.

    ``attack_test(model, x, y, attack=..., **overrides)`` runs the binarization
    test of ``attack`` and fails the test unless the attack passes it.

    Attributes:
        settings: the resolved :class:`AttackTestSettings` (marker kwargs merged
            over the run's defaults, plus the session seed).
        calls: how many times the fixture was called in this test.
        reports: the :class:`~pytest_attacktest.engine.report.Report` of each call that
            finished (passed or not), for hooks and conftest code.
        records: the same as plain dicts (``Report.to_dict()`` plus ``seconds``,
            and ``claim`` when the test makes one), which travel to the xdist
            controller and into the JSON.
    """

    def __init__(
        self,
        settings: AttackTestSettings,
        *,
        node: pytest.Item | None = None,
        session: AttackTestSession | None = None,
        results: RunResults | None = None,
        worker_index: int | None = None,
    ) -> None:
        self.settings = settings
        self.calls = 0
        self.reports: list[Report] = []
        self.records: list[dict[str, Any]] = []
        self._node = node
        self._session = session
        self._results = results
        self._worker_index = worker_index

    @property
    def epsilon(self) -> float | None:
        """Threat-model radius, ``None`` when the marker gives none."""
        return self.settings.epsilon

    @property
    def norm(self) -> str:
        """Canonical norm name ("linf", "l2", ...)."""
        return self.settings.norm

    @property
    def p(self) -> float:
        """Exponent of the norm (``math.inf`` for Linf)."""
        return self.settings.p

    @property
    def threshold(self) -> float:
        """Minimum attack success rate for the test to pass."""
        return self.settings.threshold

    @property
    def samples(self) -> int:
        """Number of clean samples (the first ones of the inputs)."""
        return self.settings.samples

    @property
    def seed(self) -> int:
        """The session seed."""
        return self.settings.seed

    def __repr__(self) -> str:
        return f"AttackTestFixture({self.settings!r})"

    def __call__(
        self, model: Any, x: Any, y: Any = None, *, attack: Any, **overrides: object
    ) -> Report:
        """Run the binarization test of ``attack`` on ``model`` at the first samples of ``x``.

        ``overrides`` take the marker's keys (epsilon, norm, threshold,
        samples, claim, and the engine keywords of ``binarization_test``) and
        win over the marker. They are validated first, so a typo is reported
        as such.

        With a ``claim`` (the claim gate), the attack also runs on the real
        model at the same samples and the test passes only when the attack
        passes the binarization test *and* the robust accuracy measured by the
        plugin agrees with the claim (its 95% interval reaches
        ``[claim - tolerance, claim + tolerance]``;
        :mod:`pytest_attacktest.engine.claims`); the failure says which check
        failed, or both.

        Returns:
            the :class:`~pytest_attacktest.engine.report.Report`, when the test passed.

        Raises:
            SettingsError: invalid overrides, or no epsilon anywhere.
            AttackTestFailed: the attack missed (verdict "failed"), with or
                without a failed claim gate; a subclass of ``pytest.fail.Exception``.
            pytest.fail.Exception: the test could not be set up (verdict
                "error"), or the claim gate failed on an attack that passed.
        """
        self.calls += 1
        settings = apply_kwargs(self.settings, overrides)
        if settings.epsilon is None:
            raise SettingsError(
                "epsilon is missing: give it in the marker "
                "(@pytest.mark.attack_test(epsilon=8/255)) or in the call "
                "(attack_test(model, x, y, attack=..., epsilon=8/255))"
            )
        if settings.claim is not None and y is None:
            raise SettingsError(
                f"claim={settings.claim:g} needs the true labels to measure robust accuracy: "
                "call attack_test(model, x, y, attack=...) with y"
            )
        given = _length(x)
        x = x[: settings.samples]
        y = None if y is None else y[: settings.samples]
        fewer = _fewer_samples(settings.samples, given)
        if fewer is not None:
            from pytest_attacktest.engine.errors import FewerSamplesWarning

            warnings.warn(FewerSamplesWarning(fewer), stacklevel=2)
        model, x, y = self._to_device(model, x, y)

        from pytest_attacktest.engine.binarization import binarization_test

        tracker = self._progress()
        if tracker is not None:
            tracker.hold_done = settings.claim is not None  # the claim's attack comes first
        start = time.perf_counter()
        report = binarization_test(
            model,
            x,
            y,
            attack=attack,
            epsilon=settings.epsilon,
            norm=settings.norm,
            threshold=settings.threshold,
            seed=settings.seed,
            stacklevel=3,  # warnings point at the test that called the fixture
            progress=tracker,
            **settings.engine,  # type: ignore[arg-type]
        )
        if fewer is not None:
            report.warnings.append(fewer)
        claim = None
        if settings.claim is not None:
            claim = self._claim(model, x, y, attack, settings, report.verdict, tracker)
        seconds = time.perf_counter() - start
        self._record(report, seconds, claim)
        # A weak attack (verdict "failed") raises AttackTestFailed, also when a
        # claim failed with it: xfail(raises=AttackTestFailed) matches it and
        # nothing else (a setup error, a claim gate alone, bad settings).
        fail = AttackTestFailed if report.verdict == "failed" else pytest.fail.Exception
        if claim is not None and not claim.passed:
            setup = f"{ERROR_VERDICT}\n" if report.verdict == "error" else ""
            raise fail(f"{claim.summary()}\n{setup}{report.summary()}", pytrace=False)
        if report.verdict == "error":
            pytest.fail(f"{ERROR_VERDICT}\n{report.summary()}", pytrace=False)
        if not report.passed:
            raise AttackTestFailed(report.summary(), pytrace=False)
        return report

    def _claim(
        self,
        model: Any,
        x: Any,
        y: Any,
        attack: Any,
        settings: AttackTestSettings,
        verdict: str,
        tracker: progress.Tracker | None = None,
    ) -> ClaimResult:
        """The claim gate: measure robust accuracy on the real model, combine with ``verdict``.

        Its attack runs on every sample again, as long as the test's own; with
        live progress it shows as the phase "claim", before the test's "done".
        """
        from pytest_attacktest.engine.claims import check_claim, measure_robust_accuracy

        assert settings.claim is not None
        assert settings.epsilon is not None
        passes = settings.engine.get("verify_passes", 1)
        with progress.claim_phase(tracker, int(x.shape[0])):
            measurement = measure_robust_accuracy(
                model,
                x,
                y,
                attack=attack,
                epsilon=settings.epsilon,
                p=settings.p,
                verify_passes=passes if isinstance(passes, int) else 1,
                valid_input=settings.engine.get("valid_input"),
            )
        tolerance = (
            DEFAULT_CLAIM_TOLERANCE if self._session is None else self._session.claim_tolerance
        )
        return check_claim(settings.claim, tolerance, measurement, verdict)

    def _progress(self) -> progress.Tracker | None:
        """The engine's progress callback when live progress shows in this run."""
        if self._node is None:
            return None
        return progress.tracker_for(self._node.config, self._node.nodeid)

    def _to_device(self, model: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
        device = None if self._session is None else self._session.device
        if device is None:
            return model, x, y
        from pytest_attacktest.devices import (
            DeviceError,
            DeviceNotAppliedWarning,
            to_device,
        )

        try:
            model, x, y, used = to_device(model, x, y, device, self._worker_index)
        except DeviceError as exc:
            pytest.fail(str(exc), pytrace=False)
        if used is None and self._results is not None and not self._results.device_warned:
            self._results.device_warned = True
            warnings.warn(
                DeviceNotAppliedWarning(
                    f"{DEVICE_FLAG} {device} is applied to PyTorch models only (a "
                    f"torch.nn.Module or an attacks.Model wrapping one); this "
                    f"{type(model).__name__} model runs where it is. Place TensorFlow and "
                    "JAX models on the device yourself. (Shown once per run.)"
                ),
                stacklevel=3,
            )
        return model, x, y

    def _record(self, report: Report, seconds: float, claim: ClaimResult | None = None) -> None:
        self.reports.append(report)
        record: dict[str, Any] = {**report.to_dict(), "seconds": seconds}
        if claim is not None:
            record["claim"] = claim.to_dict()
        self.records.append(plain(record))
        if self._node is not None and claim is not None:
            robust = claim.robust_accuracy
            self._node.user_properties.extend(
                [
                    ("attack_test_claim", claim.claim),
                    (
                        "attack_test_robust_accuracy",
                        "nan" if math.isnan(robust) else round(robust, 4),
                    ),
                    ("attack_test_claim_verdict", claim.verdict),
                ]
            )
        if self._node is not None:
            asr = report.asr
            self._node.user_properties.extend(
                [
                    ("attack_test_verdict", report.verdict),
                    ("attack_test_asr", "nan" if math.isnan(asr) else round(asr, 4)),
                    ("attack_test_n_inconclusive", report.n_inconclusive),
                    ("attack_test_seconds", round(seconds, 3)),
                ]
            )

    def problem(self) -> str | None:
        """Why a test that passed must fail anyway, or ``None``.

        A test passes only through a call that returned a passing report. The
        fixture's own failures cannot be caught by ``except Exception``
        (``pytest.fail`` raises a ``BaseException``), but an engine error can,
        and a test that never calls the fixture tests nothing.
        """
        if self.calls == 0:
            return NEVER_CALLED
        if len(self.records) < self.calls:
            return (
                f"attack_test was called {self.calls} time(s) but only {len(self.records)} "
                "call(s) finished: the test caught an exception raised by attack_test, so "
                "the attack was NOT tested"
            )
        failing = [r["verdict"] for r in self.records if r["verdict"] != "passed"]
        if failing:
            return (
                f"attack_test: {len(failing)} binarization test(s) did not pass "
                f"(verdict {', '.join(failing)}) but the test caught the failure"
            )
        claims = [r["claim"] for r in self.records if r.get("claim")]
        if any(c["verdict"] != "passed" for c in claims):
            return "attack_test: a claim gate failed but the test caught the failure"
        return None


def _length(x: Any) -> int | None:
    """How many inputs ``x`` holds (its first axis), or ``None`` when it cannot tell."""
    shape = getattr(x, "shape", None)
    if shape is not None and len(shape) > 0 and shape[0] is not None:
        return int(shape[0])
    try:
        return len(x)
    except TypeError:
        return None


def _fewer_samples(asked: int, given: int | None) -> str | None:
    """The note for a test given fewer inputs than ``samples`` asks for, or ``None``.

    Why said: a verdict (and a claim gate's interval) from 20 samples is much
    weaker evidence than one from the 64 the settings promise, and nothing
    else in the report tells that the inputs ran out.
    """
    if given is None or given >= asked:
        return None
    return (
        f"samples={asked} asked, {given} given: the binarization test (and a claim gate) "
        f"ran on {given} samples; pass at least {asked} inputs, or set samples={given} to "
        "mean it"
    )


#: Where the fixture of a test lives: ``item.stash[fixture_key]``, for the report hooks.
fixture_key = pytest.StashKey[AttackTestFixture]()


def attack_test_reports(item: pytest.Item) -> list[Report]:
    """The reports of ``item``'s fixture calls (empty when it made none), for conftest hooks."""
    fixture = item.stash.get(fixture_key, None)
    return [] if fixture is None else list(fixture.reports)


@pytest.fixture(name=MARKER)
def attack_test_fixture(request: pytest.FixtureRequest) -> AttackTestFixture:
    """The ``attack_test`` fixture; see :class:`AttackTestFixture`.

    Tests that request it are skipped at collection when attack tests are off;
    the skip here also covers ``request.getfixturevalue("attack_test")``, which
    collection cannot see. A test that requests it and never calls it fails.
    """
    run = get_session(request.config)
    if not run.enabled:
        pytest.skip(SKIP_REASON)
    node: pytest.Item = request.node
    settings = node.stash.get(settings_key, None)
    if settings is None:
        # Requested dynamically, so collection did not resolve it.
        try:
            settings = item_settings(node, run)
        except SettingsError as exc:
            pytest.fail(marker_error(node, exc), pytrace=False)
    fixture = AttackTestFixture(
        settings,
        node=node,
        session=run,
        results=request.config.stash[results_key],
        worker_index=worker_index(request.config),
    )
    node.stash[fixture_key] = fixture
    return fixture
