"""Live progress of long attack tests: phase, samples done, ETA, in pytest's terminal.

Why: a binarization test on a real model can run for many minutes, and a
silent terminal looks like a hang. The engine calls ``progress(phase, done,
total)`` as each phase of a chunk starts (``binarization_test(progress=...)``)
and, inside the attack, ``progress.attack_steps(step, steps, end)`` as our
attacks do their steps (:mod:`attacks.progress`); the claim gate's attack is
the phase "claim"; a bench cell that trains its zoo model first says so. This
module turns those calls into lines such as::

    [attacktest] test_model.py::test_pgd: attack, 1024/4096 samples, 41s, ETA 2m03s
    [attacktest] test_model.py::test_pgd: attack, 0/64 samples, step 40/100, 12s, ETA 17s

Where they go: a test's output is captured, so lines are written through
pytest's terminal reporter with capturing suspended (as pytest's live logging
does). They are whole lines, not in-place rewrites: pytest is writing its own
progress on the current line, and whole lines read the same on a terminal, in
a CI log and in a file. Nothing in a test's first
``attack_test_progress_interval`` seconds (default 2: short tests print
nothing); after that every phase change, and steps at most once per interval;
a test that printed ends with a "done" line after its claim gate.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pytest_attacktest.terminal import start_line

__all__ = [
    "MODES",
    "PROGRESS_FLAG",
    "ProgressWriter",
    "Tracker",
    "claim_phase",
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
    """The engine's ``progress`` callback for one test: lines through ``write``.

    When lines appear: nothing in the test's first ``interval`` seconds (a
    short test prints nothing); after that every phase change at once, and
    repeated updates within a phase (an attack's steps) at most once per
    ``interval``. A test that printed ends with a "done" line.

    The ETA: after a chunk, from the time per finished sample; inside a chunk's
    attack (our attacks report their steps, :mod:`attacks.progress`), from the
    time per step of the attack call, plus the later chunks at the time per
    sample that implies, so that a run of one chunk (all samples at once, as
    on a CPU) has an ETA too. Before either there is none (``ETA ?``).
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
        self.last: float | None = None  # when the last line was written
        #: The phase, samples finished and total of the last ``__call__``.
        self.phase: str | None = None
        self.done = 0
        self.total = 0
        #: Set while a claim gate follows the test: the engine's "done" is not the end.
        self.hold_done = False
        self._call_start: float | None = None  # when the current attack call began
        self._steps: tuple[int, int] | None = None  # its (done, total) steps
        self._finish_at: float | None = None  # the clock time the last estimate ends at

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self.clock()
        if phase == "done":
            if self.last is not None and not self.hold_done:
                # only tests that showed progress say they finished
                self._write(now, f"done, {total} samples in {format_seconds(now - self.start)}")
            return
        changed = phase != self.phase
        if (changed and phase == "claim") or done != self.done:
            self._finish_at = None  # a new stage: estimates of the last one are spent
        self.phase, self.done, self.total = phase, done, total
        self._call_start, self._steps = None, None
        if self._due(now, changed):
            self._write(now, f"{phase}, {done}/{total} samples, {self._times(now)}")

    def attack_steps(self, step: int, steps: int, end: int) -> None:
        """An attack running in the current phase did ``step`` of its ``steps``.

        ``end`` is the sample count done once the attacked samples are
        (``done`` plus the chunk). A sink of :mod:`attacks.progress`, bound to
        ``end`` by the caller.
        """
        now = self.clock()
        if self._steps is None or step < self._steps[0] or step == 0:
            self._call_start = now  # a new attack call (the next block, member or restart)
        self._steps = (step, steps)
        assert self._call_start is not None
        if step > 0:
            call_left = (now - self._call_start) * (steps - step) / step
            at_end = now - self.start + call_left  # elapsed when the attacked samples are done
            later = at_end * (self.total - end) / end if 0 < end < self.total else 0.0
            self._finish_at = now + call_left + later
        if self._due(now, False):
            self._write(
                now,
                f"{self.phase}, {self.done}/{self.total} samples, step {step}/{steps}, "
                f"{self._times(now)}",
            )

    def note(self, text: str) -> None:
        """A line about slow work outside the phases (training a zoo model), shown at once."""
        self.write(f"{PREFIX} {self.label}: {text}")

    def _due(self, now: float, changed: bool) -> bool:
        if self.last is None:
            return now - self.start >= self.interval
        return changed or now - self.last >= self.interval

    def _times(self, now: float) -> str:
        elapsed = now - self.start
        if self._finish_at is not None:  # this chunk's attack steps: the finer estimate
            eta = format_seconds(self._finish_at - now)
        elif self.done > 0:
            eta = format_seconds(elapsed * (self.total - self.done) / self.done)
        else:
            eta = "?"
        return f"{format_seconds(elapsed)}, ETA {eta}"

    def _write(self, now: float, text: str) -> None:
        self.last = now
        self.write(f"{PREFIX} {self.label}: {text}")


@contextmanager
def claim_phase(tracker: Tracker | None, samples: int) -> Iterator[None]:
    """The claim gate's attack as the phase "claim", with its steps; then the test is done.

    The claim gate attacks every sample once more after the binarization
    test, so the test's "done" line waits for it (``Tracker.hold_done``).
    """
    if tracker is None:
        yield
        return
    from attacks import progress as attack_progress  # not at import: attacks loads eagerpy

    tracker("claim", 0, samples)
    with attack_progress.reporting(lambda step, steps: tracker.attack_steps(step, steps, samples)):
        yield
    tracker.hold_done = False
    tracker("done", samples, samples)


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


def configure(
    config: pytest.Config, *, enabled: bool, is_worker: bool, mode: str, interval: float
) -> None:
    """Decide whether progress shows in this run; set up the writer or the xdist lines.

    ``mode`` and ``interval`` are the resolved options (:mod:`pytest_attacktest.cli_options`).
    """
    if not enabled or mode == "off" or is_worker:
        return
    auto = mode == "auto"
    if getattr(config.option, "numprocesses", None) or getattr(config.option, "dist", "no") != "no":
        config.pluginmanager.register(FinishedLines(config, auto=auto), "attacktest-progress-xdist")
        return
    config.stash[progress_key] = ProgressWriter(config, interval, auto=auto)


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
