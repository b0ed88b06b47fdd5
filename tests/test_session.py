"""Tests of :mod:`pytest_attacktest.session`: the run's results merged into one entry per test."""

from __future__ import annotations

import json
from typing import Any

from pytest_attacktest.session import RunResults, phase_outcome, plain


def _report_dict(verdict: str, asr: float | None, n: int, inconclusive: int) -> dict[str, Any]:
    return {
        "verdict": verdict,
        "asr": asr,
        "threshold": 0.95,
        "n_samples": n,
        "n_inconclusive": inconclusive,
        "seconds": 1.5,
    }


def test_results_merge_phases_into_one_entry_per_test() -> None:
    results = RunResults()
    passing = [_report_dict("passed", 1.0, 8, 0)]
    results.add("t.py::a", "setup", "passed", None)
    results.add("t.py::a", "call", "passed", passing)
    results.add("t.py::a", "teardown", "passed", None)
    results.add("t.py::b", "setup", "skipped", [])
    results.add("t.py::b", "teardown", "passed", None)
    results.add("t.py::c", "setup", "passed", None)
    results.add("t.py::c", "call", "passed", passing)
    results.add("t.py::c", "teardown", "error", None)
    two = [_report_dict("passed", 1.0, 8, 0), _report_dict("error", None, 4, 4)]
    results.add("t.py::d", "call", "failed", two)
    entries = results.entries
    assert [entries[k]["outcome"] for k in ("t.py::a", "t.py::b", "t.py::c", "t.py::d")] == [
        "passed",
        "skipped",
        "error",
        "failed",
    ]
    assert entries["t.py::a"]["reports"] == passing
    assert entries["t.py::d"]["verdict"] == "error"  # the worst call decides
    assert entries["t.py::d"]["asr"] == 1.0  # the error call has no ASR
    assert (entries["t.py::d"]["n_samples"], entries["t.py::d"]["n_inconclusive"]) == (12, 4)
    assert [e["nodeid"] for e in results.ran()] == ["t.py::a", "t.py::c", "t.py::d"]


def test_phase_outcome_names_what_pytest_counts() -> None:
    assert phase_outcome("call", "failed", False) == "failed"
    assert phase_outcome("setup", "failed", False) == "error"
    assert phase_outcome("teardown", "failed", False) == "error"
    assert phase_outcome("call", "skipped", True) == "xfailed"
    assert phase_outcome("call", "passed", True) == "xpassed"


def test_plain_makes_strict_json() -> None:
    data = plain({"a": (1, float("nan")), 2: {"b": float("inf"), "c": True}, "d": object})
    assert data == {"a": [1, None], "2": {"b": None, "c": True}, "d": repr(object)}
    json.dumps(data, allow_nan=False)
