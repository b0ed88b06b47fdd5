"""Tests of :mod:`pytest_attacktest.terminal`: the summary table and lines started cleanly."""

from __future__ import annotations

from test_session import _report_dict

from pytest_attacktest.terminal import summary_rows


def test_summary_rows_align_and_show_each_call() -> None:
    entries = [
        {
            "nodeid": "t.py::long_name",
            "outcome": "failed",
            "reports": [_report_dict("passed", 1.0, 8, 0), _report_dict("failed", 0.5, 8, 1)],
        },
        {"nodeid": "t.py::x", "outcome": "failed", "reports": []},
    ]
    lines = summary_rows(entries)
    assert lines[0].split() == ["test", "verdict", "ASR", "threshold", "inconclusive", "time"]
    assert lines[1].split() == [
        "t.py::long_name",
        "[call",
        "1]",
        "passed",
        "1.000",
        "0.950",
        "0/8",
        "1.50s",
    ]
    assert lines[2].split()[3:] == ["failed", "0.500", "0.950", "1/8", "1.50s"]
    assert lines[3].split() == ["t.py::x", "no", "report", "(failed)", "-", "-", "-", "-"]
    assert lines[1].index("passed") == lines[0].index("verdict")


def test_start_line_ends_a_line_of_dots_that_has_no_file_name() -> None:
    """``ensure_newline`` alone leaves ``..`` (no file name) and glues the next line to it."""
    import io

    from _pytest._io import TerminalWriter

    from pytest_attacktest.terminal import start_line

    class Reporter:  # pytest's TerminalReporter, as far as start_line uses it
        def __init__(self) -> None:
            self.out = io.StringIO()
            self._tw = TerminalWriter(self.out)

        def ensure_newline(self) -> None:  # no file name written: nothing to end
            pass

    reporter = Reporter()
    reporter._tw.write("..")
    start_line(reporter)
    reporter._tw.line("[attacktest] line")
    start_line(reporter)  # at the left edge already: no empty line
    reporter._tw.line("[attacktest] next")
    assert reporter.out.getvalue() == "..\n[attacktest] line\n[attacktest] next\n"
