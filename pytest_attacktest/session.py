"""The run's options and the attack tests' results, merged on one process.

Why its own module: results travel. Each test's reports are plain JSON-able
dicts, attached to the pytest test report of the ``call`` phase (pytest
documents that reports may carry extra attributes; they are serialised with
the report, so under pytest-xdist they reach the controller with every test,
even when a worker later crashes). The process that logs reports, the
controller under xdist or the only process otherwise, merges them here, prints
the summary and writes the JSON. Nothing here imports an ML framework.
"""

from __future__ import annotations

import datetime
import json
import math
import numbers
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from pytest_attacktest.baselines import CompareFail
from pytest_attacktest.engine.options import DEFAULT_SAMPLES, DEFAULT_THRESHOLD, AttackTestSettings

__all__ = [
    "FORMAT_VERSION",
    "AttackTestSession",
    "RunResults",
    "get_session",
    "phase_outcome",
    "plain",
    "results_key",
    "session_key",
]

#: Version of the JSON document's layout; bumped on incompatible changes.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class AttackTestSession:
    """Options of one pytest run, resolved once in ``pytest_configure``.

    Attributes:
        enabled: attack tests run (``--attack-test`` or ini ``attack_test = true``).
        enabled_by: what enabled them: ``"--attack-test"``, ``"ini"`` or ``None``.
        seed: the run's seed, from ``--attack-test-seed`` or ini ``attack_test_seed``.
        samples: default number of clean samples per test (markers override it).
        threshold: default minimum attack success rate (markers override it).
        device: where torch models and inputs are moved, or ``None`` (left as they are).
        json_path: where the JSON report is written, or ``None``.
        claim_tolerance: how far a claim gate's measured robust accuracy may
            differ from the claim (``--attack-test-claim-tolerance``).
        html_path: where the HTML report is written, or ``None``.
        storage: folder of saved baselines (``--attack-test-storage``).
        save_name: ``--attack-test-save NAME``, or ``None``.
        compare: ``--attack-test-compare``: ``None`` (no comparison), ``""``
            (the newest baseline) or a name.
        compare_fail: the ``--attack-test-compare-fail`` rules.
    """

    enabled: bool
    enabled_by: str | None
    seed: int
    samples: int = DEFAULT_SAMPLES
    threshold: float = DEFAULT_THRESHOLD
    device: str | None = None
    json_path: Path | None = None
    claim_tolerance: float = 0.0
    html_path: Path | None = None
    storage: Path | None = None
    save_name: str | None = None
    compare: str | None = None
    compare_fail: tuple[CompareFail, ...] = ()

    def base_settings(self) -> AttackTestSettings:
        """Defaults that markers and call overrides are applied over."""
        return replace(
            AttackTestSettings(), samples=self.samples, threshold=self.threshold, seed=self.seed
        )


def plain(value: object) -> Any:
    """``value`` as strict JSON data: NaN and infinities become ``None``, tuples lists.

    Reports hold Python numbers already; this also covers NumPy scalars a user
    passed in and anything else (written as its ``repr``), so neither the
    xdist channel nor ``json.dumps(allow_nan=False)`` can fail on a report.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return repr(value)


def phase_outcome(when: str, outcome: str, wasxfail: bool) -> str:
    """One word for a test phase's outcome, as pytest's summary line counts it."""
    if wasxfail:
        return "xfailed" if outcome == "skipped" else "xpassed"
    if when != "call" and outcome == "failed":
        return "error"
    return outcome


def _worst_verdict(verdicts: list[str]) -> str | None:
    if not verdicts:
        return None
    for verdict in ("error", "failed"):
        if verdict in verdicts:
            return verdict
    return "passed"


def _merged_outcome(phases: Mapping[str, str]) -> str:
    """A test's outcome from its phases', as pytest's summary counts it.

    A setup that did not pass decides alone (no call phase follows); otherwise
    the call decides, and a failing teardown turns it into an error.
    """
    setup, call, teardown = phases.get("setup"), phases.get("call"), phases.get("teardown")
    if setup not in (None, "passed") or call is None:
        outcome = setup or teardown or "unknown"
    else:
        outcome = call
    if teardown == "error" and outcome not in ("failed", "error"):
        outcome = "error"
    return outcome


@dataclass
class RunResults:
    """Every attack test of the run, by node id, merged from its phase reports.

    Attributes:
        entries: node id -> entry: ``nodeid``, ``outcome`` (as pytest counts it, or
            ``"interrupted"``, see :meth:`finish`), ``verdict``, ``asr``,
            ``n_samples``, ``n_inconclusive``, ``seconds``, ``reports`` (one
            ``Report.to_dict()`` per fixture call, plus its ``seconds``) and,
            when the test stopped on a setup error, ``error`` (its message).
        device_warned: the "device not applied" warning was shown in this process.
        workers: under xdist with ``--attack-test-device cuda``, worker id -> the
            GPU it took (:meth:`pytest_attacktest.devices.WorkerDevice.to_dict`).
    """

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    device_warned: bool = False
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    _phases: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    def add(
        self,
        nodeid: str,
        when: str,
        outcome: str,
        reports: list[dict[str, Any]] | None,
        error: str | None = None,
    ) -> None:
        """Merge one phase of a test: its outcome and, from the call phase, its reports.

        Entries are keyed by node id, so each test appears once however many
        of its phases (or workers' copies of them) arrive. ``error`` is the
        message of a setup error the phase raised (an
        :class:`~pytest_attacktest.engine.errors.AttackTestError`: no epsilon, no
        feature layer, ...); the entry keeps the first one as ``error``.
        """
        phases = self._phases.setdefault(nodeid, {})
        phases[when] = outcome
        entry = self.entries.setdefault(nodeid, {"nodeid": nodeid, "reports": []})
        entry["outcome"] = _merged_outcome(phases)
        if reports:
            entry["reports"] = list(reports)
        if error is not None and not entry.get("error"):
            entry["error"] = error
        entry.setdefault("error", None)
        self._aggregate(entry)

    @staticmethod
    def _aggregate(entry: dict[str, Any]) -> None:
        """Per-test figures over its calls: the worst verdict and ASR, summed counts."""
        reports = entry["reports"]
        asrs = [r["asr"] for r in reports if r.get("asr") is not None]
        entry["verdict"] = _worst_verdict([r["verdict"] for r in reports])
        entry["asr"] = min(asrs) if asrs else None
        entry["n_samples"] = sum(r["n_samples"] for r in reports) if reports else None
        entry["n_inconclusive"] = sum(r["n_inconclusive"] for r in reports) if reports else None
        entry["seconds"] = sum(r["seconds"] for r in reports) if reports else None
        claims = [r["claim"] for r in reports if r.get("claim")]
        robust = [c["robust_accuracy"] for c in claims if c.get("robust_accuracy") is not None]
        entry["robust_accuracy"] = min(robust) if robust else None
        entry["claim_verdict"] = _worst_verdict([c["verdict"] for c in claims])

    def finish(self) -> list[str]:
        """Mark the tests that started but never finished as ``interrupted``; return their ids.

        pytest reports a teardown phase for every test it finishes, whatever
        happened before it. A test without one was cut off: Ctrl-C (or
        ``pytest.exit``) during it, or a crashed xdist worker. Its setup report
        says "passed", and without this its merged outcome would read
        "passed" although its attack was never judged. A test whose call had
        already failed keeps that outcome: it did not pass either way. Called
        once, at the session's end, before anything is printed or written.
        """
        cut: list[str] = []
        for nodeid, entry in self.entries.items():
            phases = self._phases.get(nodeid, {})
            if "teardown" not in phases and entry.get("outcome") not in ("failed", "error"):
                entry["outcome"] = "interrupted"
                cut.append(nodeid)
        return sorted(cut)

    def ran(self) -> list[dict[str, Any]]:
        """Entries of tests that ran (not skipped), by node id."""
        return [
            self.entries[k]
            for k in sorted(self.entries)
            if self.entries[k]["outcome"] not in ("skipped", "xfailed")
            or self.entries[k]["reports"]
        ]

    def document(
        self, session: AttackTestSession, *, pytest_version: str, exitstatus: int
    ) -> dict[str, Any]:
        """The JSON document: metadata, then one entry per attack test, by node id."""
        from pytest_attacktest import __version__

        counts: dict[str, int] = {}
        for entry in self.entries.values():
            counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
        metadata = {
            "format": FORMAT_VERSION,
            "version": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "enabled": session.enabled,
            "seed": session.seed,
            "samples": session.samples,
            "threshold": session.threshold,
            "device": session.device,
            "claim_tolerance": session.claim_tolerance,
            "workers": dict(sorted(self.workers.items())) or None,
            "python": platform.python_version(),
            "pytest": pytest_version,
            "platform": sys.platform,
            "exitstatus": exitstatus,
        }
        tests = [self.entries[k] for k in sorted(self.entries)]
        return plain({"metadata": metadata, "summary": counts, "tests": tests})  # type: ignore[no-any-return]

    def write_json(
        self, path: Path, session: AttackTestSession, *, pytest_version: str, exitstatus: int
    ) -> None:
        """Write :meth:`document` to ``path`` (strict JSON: no NaN), creating its folder."""
        document = self.document(session, pytest_version=pytest_version, exitstatus=exitstatus)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(document, indent=2, allow_nan=False)
        path.write_text(text + "\n", encoding="utf-8")


#: Where the run's :class:`AttackTestSession` lives: ``config.stash[session_key]``.
session_key = pytest.StashKey[AttackTestSession]()

#: Where the merged results live, on the process that logs reports.
results_key = pytest.StashKey[RunResults]()


def get_session(config: pytest.Config) -> AttackTestSession:
    """Return the run's :class:`AttackTestSession` (set in ``pytest_configure``)."""
    return config.stash[session_key]
