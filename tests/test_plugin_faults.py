"""Faults around the plugin's run: Ctrl-C, report paths, setup errors under ``xfail``.

Each test is named after the case it covers. End-to-end runs go through a
subprocess with the plugin loaded by its entry point (``attack_project`` for
runs that need the torch digits model, pytester otherwise, as in
``test_plugin.py``). A Ctrl-C is what a terminal sends: SIGINT to the run's
whole process group (the controller and its xdist workers), from inside an
attack, once the test before it has been logged as finished.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from attack_project import make_project, run_pytest
from helpers import MARKED_AND_FIXTURE, run, write

import pytest_attacktest
from pytest_attacktest import AttackTestFailed
from pytest_attacktest.session import RunResults

#: The inner runs find the plugin through its entry point (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("plugin_autoload")


# --------------------------------------------------------------------------- Ctrl-C

#: Written by the inner run's reporting process when test_a's teardown was logged.
FINISHED_HOOK = """

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(report):
        import pathlib

        if report.when == "teardown" and report.nodeid.endswith("test_a_finishes"):
            pathlib.Path(__file__).with_name("a_finished").touch()
"""

CTRL_C_TESTS = """
    import os
    import pathlib
    import signal
    import time

    import pytest

    pytestmark = pytest.mark.attack_test(epsilon=0.1, n_validation=8, threshold=0.5)
    FINISHED = pathlib.Path(__file__).with_name("a_finished")


    def test_a_finishes(attack_test, model, data, pgd):
        attack_test(model, *data, attack=pgd)


    def test_b_interrupted(attack_test, model, data):
        def ctrl_c(native, x, y, epsilon):
            deadline = time.monotonic() + 120
            while not FINISHED.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            os.killpg(os.getpgid(0), signal.SIGINT)  # Ctrl-C: the whole process group
            time.sleep(120)
            return x

        attack_test(model, *data, attack=ctrl_c)


    def test_c_waits(attack_test):
        time.sleep(120)  # interrupted too, or never started
"""


@pytest.mark.parametrize("workers", [0, 2], ids=["serial", "xdist-n2"])
def test_ctrl_c_interrupted_test_is_interrupted_never_passed(tmp_path: Path, workers: int) -> None:
    """Ctrl-C during an attack: the finished test keeps its row, the cut one is ``interrupted``.

    Before the fix the interrupted test's merged outcome was its setup's,
    "passed", in the JSON summary.
    """
    pytest.importorskip("torch")
    if workers:
        pytest.importorskip("xdist")
    path = make_project(tmp_path, CTRL_C_TESTS)
    with (path / "conftest.py").open("a") as conftest:
        conftest.write(textwrap.dedent(FINISHED_HOOK))
    args = ["--attack-test", "--attack-test-samples", "16", "--attack-test-json", "out.json"]
    if workers:
        args += ["-n", str(workers)]
    result = run_pytest(path, *args, new_session=True)
    print(result.stdout.str(), result.stderr.str(), sep="\n")  # shown when an assert fails
    assert result.ret == pytest.ExitCode.INTERRUPTED
    document = json.loads((path / "out.json").read_text())
    tests = {t["nodeid"].split("::")[-1]: t for t in document["tests"]}
    assert tests["test_a_finishes"]["outcome"] == "passed"
    assert tests["test_a_finishes"]["verdict"] == "passed"
    assert tests["test_a_finishes"]["asr"] == 1.0
    assert tests["test_b_interrupted"]["outcome"] == "interrupted"
    assert tests["test_b_interrupted"]["verdict"] is None
    assert tests.get("test_c_waits", {"outcome": "interrupted"})["outcome"] == "interrupted"
    assert document["summary"]["passed"] == 1  # test_a alone
    assert document["summary"]["interrupted"] >= 1
    assert document["metadata"]["exitstatus"] == pytest.ExitCode.INTERRUPTED
    lines = result.stdout.lines
    table = lines[next(i for i, line in enumerate(lines) if "= attack tests =" in line) :]
    assert any("test_a_finishes" in line and " passed " in line for line in table)
    assert any("test_b_interrupted" in line and "no report (interrupted)" in line for line in table)
    result.stdout.fnmatch_lines(
        ["INTERRUPTED: * attack test(s) did not finish*test_b_interrupted*"]
    )


def test_ctrl_c_interrupted_run_saves_no_baseline(tmp_path: Path) -> None:
    """A baseline of part of the tests would later compare as "not run": nothing is saved."""
    pytest.importorskip("torch")
    path = make_project(tmp_path, CTRL_C_TESTS)
    with (path / "conftest.py").open("a") as conftest:
        conftest.write(textwrap.dedent(FINISHED_HOOK))
    result = run_pytest(
        path,
        "--attack-test",
        "--attack-test-samples",
        "16",
        "--attack-test-save",
        "partial",
        new_session=True,
    )
    print(result.stdout.str(), result.stderr.str(), sep="\n")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["--attack-test-save partial: the run was interrupted: nothing*"])
    assert not (path / ".attacktest").exists()


def test_ctrl_c_results_without_teardown_are_interrupted_unless_already_failed() -> None:
    """The merge rule behind the runs above: no teardown phase, no finished test."""
    results = RunResults()
    passing = [{"verdict": "passed", "asr": 1.0, "n_samples": 8, "n_inconclusive": 0, "seconds": 1}]
    for phase, outcome in (("setup", "passed"), ("call", "passed"), ("teardown", "passed")):
        results.add("t.py::done", phase, outcome, passing if phase == "call" else None)
    results.add("t.py::in_call", "setup", "passed", None)  # Ctrl-C during the call
    results.add("t.py::in_teardown", "setup", "passed", None)  # Ctrl-C during teardown
    results.add("t.py::in_teardown", "call", "passed", passing)
    results.add("t.py::failed_first", "setup", "passed", None)
    results.add("t.py::failed_first", "call", "failed", None)
    assert results.entries["t.py::in_call"]["outcome"] == "passed"  # what the summary said
    assert results.finish() == ["t.py::in_call", "t.py::in_teardown"]
    outcomes = {nodeid: entry["outcome"] for nodeid, entry in results.entries.items()}
    assert outcomes == {
        "t.py::done": "passed",
        "t.py::in_call": "interrupted",
        "t.py::in_teardown": "interrupted",
        "t.py::failed_first": "failed",
    }
    assert [e["nodeid"] for e in results.ran()] == sorted(outcomes)  # all are listed


# --------------------------------------------------------------------------- report paths


@pytest.mark.parametrize(
    ("flag", "name"),
    [("--attack-test-json", "report.json"), ("--attack-test-html", "report.html")],
)
def test_report_path_in_unwritable_folder_is_a_usage_error_before_any_test(
    pytester: pytest.Pytester, flag: str, name: str
) -> None:
    """A report folder that cannot be created stops the run before the first test."""
    write(pytester, MARKED_AND_FIXTURE)
    (pytester.path / "blocker").write_text("a file where the folder should be")
    result = run(pytester, "--attack-test", flag, f"blocker/sub/{name}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*{flag}: cannot write the report to *blocker/sub/{name}: *blocker is not a "
            "folder; give a path in a folder you can write to*"
        ]
    )
    result.stdout.no_fnmatch_line("*passed*")


def test_report_path_from_ini_in_unwritable_folder_names_the_ini_option(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\nattack_test_json = blocker/report.json\n")
    (pytester.path / "blocker").write_text("")
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option attack_test_json: cannot write the report to *"])


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="needs a user that file permissions apply to (root may write anywhere)",
)
def test_report_path_in_read_only_folder_is_a_usage_error(pytester: pytest.Pytester) -> None:
    write(pytester, MARKED_AND_FIXTURE)
    locked = pytester.mkdir("locked")
    locked.chmod(0o555)
    try:
        result = run(pytester, "--attack-test-json", "locked/report.json")
    finally:
        locked.chmod(0o755)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--attack-test-json: *no permission to write in *locked*"])


def test_baseline_storage_that_cannot_be_created_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    write(pytester, MARKED_AND_FIXTURE)
    (pytester.path / "blocker").write_text("")
    result = run(pytester, "--attack-test-save", "main", "--attack-test-storage", "blocker/store")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--attack-test-save main: cannot save the baseline in *blocker is not a folder*"]
    )


def test_report_write_failure_at_session_end_keeps_the_summary(pytester: pytest.Pytester) -> None:
    """A folder that disappears during the run: an error line, the table kept, no traceback."""
    write(
        pytester,
        """
        import pathlib

        import pytest

        @pytest.mark.attack_test(epsilon=0.1)
        def test_marked():
            # The report folders could be created at the start; now files block them.
            pathlib.Path("out").write_text("")
            pathlib.Path("html").write_text("")
        """,
    )
    result = run(
        pytester,
        "--attack-test",
        "--attack-test-json",
        "out/report.json",
        "--attack-test-html",
        "html/report.html",
    )
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the reports asked for are missing
    result.stdout.fnmatch_lines(
        [
            "*= attack tests =*",
            "test *verdict*",
            "test_attack.py::test_marked *no report (passed)*",
            "ERROR: --attack-test-json: cannot write *out/report.json: *; the session fails",
            "ERROR: --attack-test-html: cannot write *html/report.html: *; the session fails",
            "*= 1 passed in *",
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


# --------------------------------------------------------------------------- xfail


def test_attack_test_failed_is_exported_and_cannot_be_swallowed() -> None:
    assert pytest_attacktest.AttackTestFailed is AttackTestFailed
    assert "AttackTestFailed" in pytest_attacktest.__all__
    assert issubclass(AttackTestFailed, pytest.fail.Exception)
    assert not issubclass(AttackTestFailed, Exception)  # ``except Exception`` cannot catch it


XFAIL_TESTS = """
    import pytest

    import attacks
    from pytest_attacktest import AttackTestFailed

    pytestmark = [
        pytest.mark.attack_test(epsilon=0.1, norm="linf", n_validation=8),
        pytest.mark.xfail(strict=True, raises=AttackTestFailed, reason="weak attack"),
    ]


    def unchanged(native, x, y, epsilon):
        return x  # no attack at all: misses every guaranteed adversarial


    def test_weak_attack_is_xfail(attack_test, model, data):
        attack_test(model, *data, attack=unchanged)


    def test_norm_mismatch_is_a_failure(attack_test, model, data):
        attack_test(model, *data, attack=attacks.PGD("l2", steps=5))


    def test_missing_feature_layer_is_a_failure(attack_test, model, data):
        attack_test(model, *data, attack=unchanged, features="no_such_layer")


    def test_bad_setting_is_a_failure(attack_test, model, data):
        attack_test(model, *data, attack=unchanged, n_inner="many")


    @pytest.mark.xfail(strict=True, reason="bare xfail: any failure satisfies it")
    def test_bare_xfail_is_satisfied_by_a_setup_error(attack_test, model, data):
        attack_test(model, *data, attack=attacks.PGD("l2", steps=5))
"""


def test_xfail_raises_attack_test_failed_setup_error_is_a_failure_weak_attack_is_xfail(
    tmp_path: Path,
) -> None:
    """``xfail(strict=True, raises=AttackTestFailed)``: only a weak attack is an XFAIL.

    A norm that differs between the attack and the marker, a feature layer
    that does not exist or a bad setting fail the test: the attack was never
    tested. The bare ``xfail`` beside them shows what the README warns about.
    """
    pytest.importorskip("torch")
    path = make_project(tmp_path, XFAIL_TESTS)
    result = run_pytest(path, "--attack-test", "--attack-test-samples", "16", "-rxX", "-v")
    result.assert_outcomes(failed=3, xfailed=2)
    result.stdout.fnmatch_lines(
        [
            "*::test_weak_attack_is_xfail XFAIL*",
            "*::test_norm_mismatch_is_a_failure FAILED*",
            "*::test_missing_feature_layer_is_a_failure FAILED*",
            "*::test_bad_setting_is_a_failure FAILED*",
            "*::test_bare_xfail_is_satisfied_by_a_setup_error XFAIL*",
        ]
    )
    result.stdout.fnmatch_lines(["*the attack's norm (l2) differs from the test's (linf)*"])


def test_examples_mark_weak_attacks_with_raises_attack_test_failed() -> None:
    """The examples show the pattern the README documents: ``xfail`` with ``raises=``."""
    root = Path(__file__).resolve().parent.parent / "examples"
    marked = 0
    for source in sorted(root.glob("*_defense/test_*.py")):
        text = source.read_text()
        if "pytest.mark.xfail(" in text:
            marked += 1
            assert text.count("pytest.mark.xfail(") == text.count("raises=AttackTestFailed"), source
    assert marked == 4
    readme = (root.parent / "README.md").read_text()
    assert "xfail(strict=True, raises=AttackTestFailed" in readme
