"""Live progress of long attack tests: phase, samples done, ETA, in pytest's terminal.

Why: a binarization test on a real model can run for many minutes, and a
silent terminal looks like a hang. The engine calls ``progress(phase, done,
total)`` as each phase of a chunk starts (``binarization_test(progress=...)``);
this module turns those calls into lines such as::

    [attacktest] test_model.py::test_pgd: attack, 1024/4096 samples, 41s, ETA 2m03s

Where they go: a test's output is captured, so lines are written through
pytest's terminal reporter with capturing suspended (as pytest's live logging
does). They are whole lines, not in-place rewrites: pytest is writing its own
progress on the current line, and whole lines read the same on a terminal, in
a CI log and in a file. At most one line per ``attack_test_progress_interval``
seconds per test (default 2), plus a last line when a test that printed
finishes; short tests print nothing.

When: ``--attack-test-progress`` (ini ``attack_test_progress``) is ``auto``
(default: on when the output is a terminal and not ``-q``), ``on`` or ``off``.

Under pytest-xdist a worker cannot write to the controller's terminal and
xdist has no channel for live messages, so workers print nothing; instead the
controller prints one line per finished attack test or bench cell (verdict,
ASR, time, how many are done, and an ETA when the total is known). Nothing
here imports an ML framework.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import pytest

from pytest_attacktest.terminal import start_line

__all__ = [
    "MODES",
    "PROGRESS_FLAG",
    "ProgressWriter",
    "Tracker",
    "format_seconds",
    "parse_interval",
    "parse_mode",
    "progress_key",
    "tracker_for",
]

PROGRESS_FLAG = "--attack-test-progress"
INI_PROGRESS = "attack_test_progress"
INI_INTERVAL = "attack_test_progress_interval"
MODES = ("auto", "on", "off")
DEFAULT_INTERVAL = 2.0
PREFIX = "[attacktest]"


def parse_mode(value: str) -> str:
    """Parse ``--attack-test-progress`` (and its ini twin): auto, on or off."""
    mode = value.strip().lower()
    if mode not in MODES:
        raise argparse.ArgumentTypeError(
            f"invalid progress mode {value!r}: expected one of {', '.join(MODES)}"
        )
    return mode


def parse_interval(value: str) -> float:
    """Parse ini ``attack_test_progress_interval``: seconds >= 0 between a test's lines."""
    try:
        seconds = float(value.strip())
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(
            f"invalid progress interval {value!r}: expected seconds >= 0, e.g. 2"
        )
    return seconds


def format_seconds(seconds: float) -> str:
    """``41s``, ``2m03s``, ``1h02m``: short enough for a progress line."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class Tracker:
    """The engine's ``progress`` callback for one test: throttled lines through ``write``.

    The ETA extrapolates the time per finished sample; before the first chunk
    finishes there is none (``ETA ?``).
    """

    def __init__(
        self,
        label: str,
        write: Callable[[str], None],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.write = write
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self.last: float | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self.clock()
        elapsed = now - self.start
        if phase == "done":
            if self.last is not None:  # only tests that showed progress say they finished
                self.write(
                    f"{PREFIX} {self.label}: done, {total} samples in {format_seconds(elapsed)}"
                )
            return
        since = elapsed if self.last is None else now - self.last
        if since < self.interval:
            return
        self.last = now
        eta = "?" if done <= 0 else format_seconds(elapsed * (total - done) / done)
        self.write(
            f"{PREFIX} {self.label}: {phase}, {done}/{total} samples, "
            f"{format_seconds(elapsed)}, ETA {eta}"
        )


#: Where the run's writer lives (absent when progress is off or in an xdist worker).
progress_key = pytest.StashKey["ProgressWriter"]()


class ProgressWriter:
    """Writes progress lines to the terminal from inside a running test."""

    def __init__(self, config: pytest.Config, interval: float, *, auto: bool = False) -> None:
        self.config = config
        self.interval = interval
        self.auto = auto
        self._active: bool | None = None

    def active(self) -> bool:
        """Whether lines are shown: always when forced; in ``auto`` mode on a terminal without -q.

        Decided at first use, not in ``pytest_configure``: pytest's terminal
        reporter may not be registered yet when this plugin is configured.
        """
        if self._active is None:
            self._active = not self.auto or _terminal_wants_progress(self.config)
        return self._active

    def write(self, line: str) -> None:
        reporter: Any = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture: Any = self.config.pluginmanager.get_plugin("capturemanager")
        if capture is None:
            self._write(reporter, line)
            return
        with capture.global_and_fixture_disabled():
            self._write(reporter, line)

    @staticmethod
    def _write(reporter: Any, line: str) -> None:
        start_line(reporter)
        reporter.write_line(line)

    def tracker(self, label: str) -> Tracker:
        return Tracker(label, self.write, self.interval)


def tracker_for(config: pytest.Config, label: str) -> Tracker | None:
    """A progress callback for the test ``label``, or ``None`` when progress is off here."""
    writer = config.stash.get(progress_key, None)
    return None if writer is None or not writer.active() else writer.tracker(label)


def _terminal_wants_progress(config: pytest.Config) -> bool:
    reporter: Any = config.pluginmanager.get_plugin("terminalreporter")
    return reporter is not None and bool(reporter.isatty()) and config.get_verbosity() >= 0


def addoption(parser: pytest.Parser, group: Any) -> None:
    """Register ``--attack-test-progress`` and its ini twins."""
    group.addoption(
        PROGRESS_FLAG,
        action="store",
        nargs="?",
        const="on",
        type=parse_mode,
        default=None,
        dest="attack_test_progress",
        metavar="MODE",
        help="Live progress of attack tests (phase, samples done, ETA): auto (on a terminal "
        "without -q), on (the flag alone), off. Under xdist the controller prints a line per "
        f"finished attack test instead. Overrides ini {INI_PROGRESS}. Default: auto.",
    )
    parser.addini(
        INI_PROGRESS,
        type="string",
        default="",
        help=f"Live progress of attack tests: auto, on, off; overridden by {PROGRESS_FLAG}.",
    )
    parser.addini(
        INI_INTERVAL,
        type="string",
        default="",
        help=f"Seconds between a test's progress lines. Default: {DEFAULT_INTERVAL:g}.",
    )


def _setting(config: pytest.Config, dest: str | None, ini: str, parse: Callable[[str], Any]) -> Any:
    if dest is not None and config.getoption(dest) is not None:
        return config.getoption(dest)
    raw = str(config.getini(ini))
    if not raw.strip():
        return None
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"ini option {ini}: {exc}") from None


def configure(config: pytest.Config, *, enabled: bool, is_worker: bool) -> None:
    """Decide whether progress shows in this run; set up the writer or the xdist lines."""
    mode = _setting(config, "attack_test_progress", INI_PROGRESS, parse_mode) or "auto"
    interval = _setting(config, None, INI_INTERVAL, parse_interval)
    if not enabled or mode == "off" or is_worker:
        return
    auto = mode == "auto"
    if getattr(config.option, "numprocesses", None) or getattr(config.option, "dist", "no") != "no":
        config.pluginmanager.register(FinishedLines(config, auto=auto), "attacktest-progress-xdist")
        return
    config.stash[progress_key] = ProgressWriter(
        config, DEFAULT_INTERVAL if interval is None else interval, auto=auto
    )


class FinishedLines:
    """Under xdist, on the controller: one line per finished attack test or bench cell."""

    def __init__(self, config: pytest.Config, *, auto: bool = False) -> None:
        self.config = config
        self.auto = auto
        self.start = time.monotonic()
        self.done = 0
        self.total: int | None = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.total is None and any(i.startswith("attack-bench::") for i in ids):
            self.total = len(ids)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and not (report.when == "setup" and not report.passed):
            return
        line = _finished(report)
        if line is None or (self.auto and not _terminal_wants_progress(self.config)):
            return
        self.done += 1
        elapsed = time.monotonic() - self.start
        count = f"{self.done}" if self.total is None else f"{self.done}/{self.total}"
        eta = ""
        if self.total is not None and self.done < self.total:
            eta = f", ETA {format_seconds(elapsed * (self.total - self.done) / self.done)}"
        worker = getattr(getattr(report, "node", None), "gateway", None)
        where = f" [{worker.id}]" if worker is not None else ""
        reporter: Any = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            start_line(reporter)
            reporter.write_line(f"{PREFIX}{where} {count} done{eta}: {report.nodeid}: {line}")


def _finished(report: pytest.TestReport) -> str | None:
    """A finished attack test's or bench cell's figures, from what its report carries."""
    records: list[dict[str, Any]] = [
        v for k, v in report.user_properties if k == "attack_bench" and isinstance(v, dict)
    ]
    if not records:
        payload = getattr(report, "attack_test", None)
        if payload is None:
            return None
        records = list(payload.get("reports") or [])
        if not records:
            return report.outcome
    parts = []
    for record in records:
        asr = record.get("asr")
        seconds = record.get("seconds")
        parts.append(
            f"{record.get('verdict', report.outcome)}"
            + ("" if asr is None else f", ASR {asr:.3f}")
            + ("" if seconds is None else f", {seconds:.1f}s")
        )
    return "; ".join(parts)
