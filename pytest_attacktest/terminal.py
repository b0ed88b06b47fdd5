"""The "attack tests" section of pytest's terminal summary.

Why a table: a run may hold many attack tests, and the line that matters when
one fails (which test, its verdict, its attack success rate against the
threshold, how many samples could not be set up) should be readable at a
glance without opening the JSON. Tests that make a robustness claim add three
columns (measured robust accuracy, the claim, the claim gate's verdict); runs
without claims keep the narrower table. Pure formatting of the plain entries that
:class:`pytest_attacktest.session.RunResults` holds: no pytest, no ML framework.
Under the table, a passing test's caveats (a test too easy to say much) get a
line each: the table alone would show them as plain passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["CLAIM_HEADER", "HEADER", "start_line", "summary_rows"]

HEADER = ("test", "verdict", "ASR", "threshold", "inconclusive", "time")
#: Columns added when some test makes a claim (``attack_test(..., claim=0.55)``).
CLAIM_HEADER = ("robust acc", "claim", "gate")


def _asr(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _claim_cells(report: dict[str, Any]) -> tuple[str, ...]:
    claim = report.get("claim")
    if not claim:
        return ("-", "-", "-")
    return (_asr(claim.get("robust_accuracy")), _asr(claim.get("claim")), str(claim["verdict"]))


def _rows(entries: Sequence[dict[str, Any]], claims: bool) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    extra = len(CLAIM_HEADER) if claims else 0
    for entry in entries:
        reports = entry["reports"]
        if not reports and entry.get("error"):
            # Stopped on a setup error: its message, on one line (see summary_rows).
            rows.append((entry["nodeid"], f"error: {entry['error']}"))
            continue
        if not reports:
            # Ran but produced no binarization report: say how the test ended.
            rows.append((entry["nodeid"], f"no report ({entry['outcome']})", *("-",) * (4 + extra)))
            continue
        for number, report in enumerate(reports, start=1):
            name = entry["nodeid"] if len(reports) == 1 else f"{entry['nodeid']} [call {number}]"
            rows.append(
                (
                    name,
                    str(report["verdict"]),
                    _asr(report.get("asr")),
                    _asr(report.get("threshold")),
                    f"{report['n_inconclusive']}/{report['n_samples']}",
                    f"{report['seconds']:.2f}s",
                    *(_claim_cells(report) if claims else ()),
                )
            )
    return rows


def summary_rows(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Aligned lines, header first: one row per fixture call (per test without one),
    then the caveats of passing tests."""
    claims = any(report.get("claim") for entry in entries for report in entry["reports"])
    header = HEADER + CLAIM_HEADER if claims else HEADER
    rows = [header, *_rows(entries, claims)]
    # A setup error's row is its name and message: the message may be long, and
    # must neither widen the table's columns nor be cut.
    table = [row for row in rows if len(row) == len(header)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in rows:
        if len(row) != len(header):
            lines.append(f"{row[0].ljust(widths[0])}  {' '.join(row[1].split())}")
            continue
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines + _caveat_lines(entries)


def _caveat_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """One line per caveat of a passing test (a failing one shows its causes in its message).

    Why on the terminal: a pass of a too-easy test (random points already
    adversarial) looks like any other pass in the table.
    """
    lines = []
    for entry in entries:
        reports = entry["reports"]
        for number, report in enumerate(reports, start=1):
            if report.get("verdict") != "passed":
                continue
            name = entry["nodeid"] if len(reports) == 1 else f"{entry['nodeid']} [call {number}]"
            lines += [f"caveat: {name}: {caveat}" for caveat in report.get("caveats") or ()]
    return lines


def start_line(reporter: Any) -> None:
    """Make the terminal reporter's next line start at the left edge.

    Why not ``reporter.ensure_newline()`` alone: it only ends a line that
    pytest began with a file name. Progress dots written on their own (under
    pytest-xdist every test's ``.``; a bench cell's after a progress line) leave
    the cursor mid-line with no file name, and a progress line would be glued
    to them (``..[attacktest] ...``). The terminal writer knows how much of
    the current line is filled.
    """
    reporter.ensure_newline()
    writer: Any = getattr(reporter, "_tw", None)
    if writer is not None and int(getattr(writer, "width_of_current_line", 0)):
        writer.line()
