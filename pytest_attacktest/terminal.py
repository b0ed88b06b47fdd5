"""The "attack tests" section of pytest's terminal summary.

Why a table: a run may hold many attack tests, and the line that matters when
one fails (which test, its verdict, its attack success rate against the
threshold, how many samples could not be set up) should be readable at a
glance without opening the JSON. Pure formatting of the plain entries that
:class:`pytest_attacktest.session.RunResults` holds: no pytest, no ML framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["HEADER", "summary_rows"]

HEADER = ("test", "verdict", "ASR", "threshold", "inconclusive", "time")


def _asr(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _rows(entries: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for entry in entries:
        reports = entry["reports"]
        if not reports:
            # Ran but produced no binarization report: say how the test ended.
            rows.append((entry["nodeid"], f"no report ({entry['outcome']})", "-", "-", "-", "-"))
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
                )
            )
    return rows


def summary_rows(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Aligned lines, header first: one row per fixture call (per test without one)."""
    rows = [HEADER, *_rows(entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines
