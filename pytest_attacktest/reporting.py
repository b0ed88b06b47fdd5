"""The results of a run: merged where reports are logged, then printed and written.

How results reach the summary and the files: the fixture keeps each call's
report as a plain dict; :func:`attach_results` (called from
``pytest_runtest_makereport``) puts them on the test report (pytest serialises
a report's extra attributes, so under xdist they travel to the controller with
the report); the process that logs reports (the controller, or the only
process) merges them in :class:`~pytest_attacktest.session.RunResults` through
:class:`ResultsReporter`, which at the end of the session compares with a
baseline (``--attack-test-compare``, which can fail the session through its
exit status), saves one (``--attack-test-save``), writes the JSON
(``--attack-test-json``) and the HTML page (``--attack-test-html``), and prints
the "attack tests" section. Workers print and write nothing. Nothing here
imports an ML framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_attacktest.baselines import (
    BaselineError,
    Comparison,
    baseline_document,
    compare,
    comparison_lines,
    figures_of,
    framework_changes,
    framework_versions,
    load_baseline,
    locate_baseline,
    machine_id,
    save_baseline,
)
from pytest_attacktest.cli_options import (
    COMPARE_FAIL_FLAG,
    COMPARE_FLAG,
    DEVICE_FLAG,
    HTML_FLAG,
    JSON_FLAG,
    SAVE_FLAG,
)
from pytest_attacktest.collection import is_attack_test
from pytest_attacktest.devices import WORKER_OUTPUT_KEY, mapping_lines
from pytest_attacktest.fixture import fixture_key
from pytest_attacktest.session import phase_outcome, results_key, session_key
from pytest_attacktest.terminal import summary_rows

__all__ = ["REPORT_ATTRIBUTE", "ResultsReporter", "attach_results"]

#: The name of the extra attribute that carries a test's results on its pytest report.
REPORT_ATTRIBUTE = "attack_test"


def attach_results(
    item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
) -> None:
    """Fail a passing test whose fixture tested nothing, and attach its results.

    Called on the report after other plugins (xfail handling included) have
    shaped it. The results go on the report as plain data so that xdist
    carries them to the controller.
    """
    fixture = item.stash.get(fixture_key, None)
    if fixture is None and not is_attack_test(item):
        return
    if call.when == "call" and fixture is not None and report.passed:
        problem = fixture.problem()
        if problem is not None:
            report.outcome = "failed"
            report.longrepr = problem
    error = _user_error(call)
    if error is not None and report.failed and not item.config.getoption("fulltrace", False):
        report.longrepr = _one_line(item, error)
    payload: dict[str, Any] = {}
    if call.when == "call" or (call.when == "setup" and not report.passed):
        payload["reports"] = [] if fixture is None else list(fixture.records)
    if error is not None:
        payload["error"] = error
    setattr(report, REPORT_ATTRIBUTE, payload)


def _user_error(call: pytest.CallInfo[None]) -> str | None:
    """The message of an :class:`~pytest_attacktest.engine.errors.AttackTestError` the phase raised.

    Why only these: their message says what to change (no epsilon, no such
    feature layer, an attack object of another library), and a traceback
    through the engine would bury it. Any other exception may be a bug, in
    the plugin or in the user's model or attack, and keeps its traceback.
    """
    from pytest_attacktest.engine.errors import AttackTestError

    excinfo = call.excinfo
    if excinfo is None or not isinstance(excinfo.value, AttackTestError):
        return None
    return str(excinfo.value) or type(excinfo.value).__name__


def _one_line(item: pytest.Item, message: str) -> Any:
    """``ERROR: message`` as pytest shows ``pytest.fail(..., pytrace=False)``: no traceback.

    Built through ``item.repr_failure`` so that the short test summary shows
    the message too, as for any ``pytest.fail``; ``--fulltrace`` keeps the
    traceback for whoever needs it.
    """
    try:
        raise pytest.fail.Exception(f"ERROR: {message}", pytrace=False)
    except pytest.fail.Exception:
        info = pytest.ExceptionInfo.from_current()
    return item.repr_failure(info)


class ResultsReporter:
    """Merges attack-test results where reports are logged; prints and writes them.

    Registered in ``pytest_configure`` only outside xdist workers, so under
    ``pytest -n`` the controller alone prints the section and writes the JSON.
    """

    name = "attacktest-results"

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.session = config.stash[session_key]
        self.results = config.stash[results_key]
        self.written: Path | None = None
        self.html_written: Path | None = None
        self.saved: Path | None = None
        self.save_error: str | None = None
        self.save_note: str | None = None
        self.write_errors: list[str] = []
        self.interrupted: list[str] = []
        self.comparison: Comparison | None = None
        self.baseline: dict[str, Any] | None = None
        self.baseline_path: Path | None = None
        self.baseline_notes: list[str] = []
        if self.session.compare is not None:
            # Found now, not at the end: a missing baseline is a usage error before any test.
            assert self.session.storage is not None
            try:
                self.baseline_path, note = locate_baseline(
                    self.session.storage, self.session.compare, machine_id()
                )
                self.baseline = load_baseline(self.baseline_path)
                self.baseline_notes = [note] if note else []
                changes = framework_changes(self.baseline, framework_versions())
                if changes:
                    self.baseline_notes.append(
                        f"frameworks changed since the baseline: {', '.join(changes)}"
                    )
            except BaselineError as exc:
                raise pytest.UsageError(f"{COMPARE_FLAG}: {exc}") from None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload: dict[str, Any] | None = getattr(report, REPORT_ATTRIBUTE, None)
        if payload is None:
            return
        outcome = phase_outcome(report.when, report.outcome, hasattr(report, "wasxfail"))
        self.results.add(
            report.nodeid, report.when, outcome, payload.get("reports"), payload.get("error")
        )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Compare with the baseline (may fail the session), save it, write the reports.

        A regression sets the session's exit status to "tests failed" when it
        was a success, as pytest-cov does for its coverage threshold: the run
        fails without any test being marked failed, and the summary says why.
        So does a report that cannot be written: the paths were checked before
        the first test, and what still fails here (a full disk, a folder
        removed during the run) becomes an error line in the summary, never an
        exception that would lose the summary.

        First, tests cut off by Ctrl-C (or a crashed worker) are marked
        ``interrupted`` (:meth:`RunResults.finish`): what finished is kept.
        """
        self.interrupted = self.results.finish()
        self._compare(session)
        self._save(session)
        path = self.session.json_path
        if path is not None:
            try:
                self.results.write_json(
                    path,
                    self.session,
                    pytest_version=pytest.__version__,
                    exitstatus=int(session.exitstatus),
                )
                self.written = path
            except OSError as exc:
                self._write_failed(session, JSON_FLAG, path, exc)
        html_path = self.session.html_path
        if html_path is not None:
            from pytest_attacktest.html_report import render_html

            document = self.results.document(
                self.session, pytest_version=pytest.__version__, exitstatus=int(session.exitstatus)
            )
            try:
                html_path.parent.mkdir(parents=True, exist_ok=True)
                html_path.write_text(render_html(document), encoding="utf-8")
                self.html_written = html_path
            except OSError as exc:
                self._write_failed(session, HTML_FLAG, html_path, exc)

    def _write_failed(self, session: pytest.Session, flag: str, path: Path, exc: OSError) -> None:
        """Keep a report's write error for the summary; the run then fails (exit status 1)."""
        self.write_errors.append(f"{flag}: cannot write {path}: {exc.strerror or exc}")
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _compare(self, session: pytest.Session) -> None:
        if self.baseline is None or self.baseline_path is None:
            return
        # An interrupted test has no figures; it is listed as "not run", not as a regression.
        current = {
            str(e["nodeid"]): figures_of(e)
            for e in self.results.ran()
            if e["outcome"] != "interrupted"
        }
        self.comparison = compare(
            self.baseline, current, self.session.compare_fail, name=self.baseline_path.stem
        )
        if self.comparison.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _save(self, session: pytest.Session) -> None:
        name = self.session.save_name
        if name is None:
            return
        assert self.session.storage is not None
        ran = self.results.ran()
        if not ran:
            self.save_note = "no attack test ran: nothing saved"
            return
        if session.exitstatus == pytest.ExitCode.INTERRUPTED or self.interrupted:
            # A baseline of part of the tests would later compare as "not run", silently.
            self.save_note = "the run was interrupted: nothing saved"
            return
        from pytest_attacktest import __version__

        metadata = {
            "name": name,
            "version": __version__,
            "seed": self.session.seed,
            "samples": self.session.samples,
            "threshold": self.session.threshold,
            "claim_tolerance": self.session.claim_tolerance,
            "device": self.session.device,
            "pytest": pytest.__version__,
            "machine": machine_id(),
            "frameworks": framework_versions(),
            "exitstatus": int(session.exitstatus),
            **{
                k: v
                for k, v in self.results.document(
                    self.session, pytest_version=pytest.__version__, exitstatus=0
                )["metadata"].items()
                if k in ("date", "python", "platform")
            },
        }
        try:
            self.saved = save_baseline(
                self.session.storage / machine_id(), name, baseline_document(ran, metadata)
            )
        except BaselineError as exc:
            self.save_error = str(exc)
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        """xdist: keep the GPU each worker took (sent in its ``workeroutput``)."""
        assigned = (getattr(node, "workeroutput", None) or {}).get(WORKER_OUTPUT_KEY)
        if assigned is not None:
            self.results.workers[str(assigned["worker"])] = dict(assigned)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        ran = self.results.ran()
        if ran or self.results.workers:
            terminalreporter.write_sep("=", "attack tests")
        for line in summary_rows(ran) if ran else []:
            terminalreporter.write_line(line)
        if self.interrupted:
            terminalreporter.write_line(
                f"INTERRUPTED: {len(self.interrupted)} attack test(s) did not finish and have "
                f"no verdict: {', '.join(self.interrupted)}",
                red=True,
            )
        if self.results.workers:
            terminalreporter.write_line(f"devices ({DEVICE_FLAG} cuda, one GPU per worker):")
            for line in mapping_lines(self.results.workers):
                terminalreporter.write_line(f"  {line}")
        if self.comparison is not None:
            comparison = self.comparison
            rules = ", ".join(map(str, comparison.rules)) or f"none ({COMPARE_FAIL_FLAG})"
            terminalreporter.write_sep(
                "=", f"attack tests compared with {comparison.baseline} (fail on: {rules})"
            )
            for line in self.baseline_notes:
                terminalreporter.write_line(f"note: {line}")
            for line in comparison_lines(comparison):
                terminalreporter.write_line(line, red=line.startswith("REGRESSION"))
            if comparison.failed:
                terminalreporter.write_line(
                    f"FAILED: {len(comparison.regressions)} regression(s) against baseline "
                    f"{comparison.baseline}; the session fails (exit status 1)",
                    red=True,
                    bold=True,
                )
        if self.saved is not None:
            terminalreporter.write_sep("-", f"attack test baseline saved to {self.saved}")
        if self.save_note is not None:
            terminalreporter.write_line(f"{SAVE_FLAG} {self.session.save_name}: {self.save_note}")
        if self.save_error is not None:
            terminalreporter.write_line(
                f"ERROR: {SAVE_FLAG} {self.session.save_name}: {self.save_error}", red=True
            )
        for error in self.write_errors:
            terminalreporter.write_line(f"ERROR: {error}; the session fails", red=True, bold=True)
        if self.written is not None:
            terminalreporter.write_sep("-", f"attack test report written to {self.written}")
        if self.html_written is not None:
            terminalreporter.write_sep(
                "-", f"attack test HTML report written to {self.html_written}"
            )
