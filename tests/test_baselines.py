"""Baselines: ``--attack-test-save NAME``, ``--attack-test-compare [NAME]`` and
``--attack-test-compare-fail FIELD:LIMIT`` (the pytest-benchmark pattern).

In-process: parsing, the regression rule per field and direction, storage
(numbering, lookup by name, number or newest, clear errors) and the table.
End to end: a run saves a baseline of a full PGD; a second run under
``pytest -n 2`` with the attack weakened (every fourth sample untouched: all
tests still pass the binarization test) compares with it by name and fails
the session on the ASR regression, while its controller saves a second
baseline and writes the HTML report. Usage errors are checked without
running a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from attack_project import make_project, run_pytest

from pytest_attacktest.baselines import (
    FORMAT_VERSION,
    BaselineError,
    CompareFail,
    autosave_name,
    baseline_document,
    compare,
    comparison_lines,
    figures_of,
    find_baseline,
    framework_changes,
    load_baseline,
    locate_baseline,
    machine_id,
    parse_baseline_name,
    parse_compare_fail,
    parse_compare_name,
    save_baseline,
    stored_baselines,
)

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("asr:5%", CompareFail("asr", 0.05, True)),
        ("asr:0.05", CompareFail("asr", 0.05, False)),
        ("robust_accuracy:0.02", CompareFail("robust_accuracy", 0.02, False)),
        ("inconclusive:10%", CompareFail("inconclusive", 0.1, True)),
        ("time:50%", CompareFail("time", 0.5, True)),
        (" asr:.5 ", CompareFail("asr", 0.5, False)),
    ],
)
def test_parse_compare_fail_accepts(text: str, expected: CompareFail) -> None:
    assert parse_compare_fail(text) == expected


@pytest.mark.parametrize("text", ["asr", "asr:", "asr:-1", "asr:5%%", "speed:5%", "ASR:5%", ":5"])
def test_parse_compare_fail_rejects_naming_the_fields(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="FIELD one of asr, robust_accuracy"):
        parse_compare_fail(text)


def test_baseline_names() -> None:
    assert parse_baseline_name("main") == "main"
    assert parse_baseline_name("v1.2_before-refactor") == "v1.2_before-refactor"
    for bad in ("", "a/b", "../x", "-x", "x" * 65, "a b"):
        with pytest.raises(argparse.ArgumentTypeError, match="invalid baseline name"):
            parse_baseline_name(bad)
    assert parse_compare_name("") == ""  # the flag alone: the newest baseline
    assert parse_compare_name("0003") == "0003"
    with pytest.raises(argparse.ArgumentTypeError, match="invalid baseline name 'tests/'"):
        parse_compare_name("tests/")  # a test path swallowed by the optional value


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("rule", "old", "new", "regressed"),
    [
        ("asr:5%", 1.0, 0.96, False),  # 4% lower
        ("asr:5%", 1.0, 0.94, True),  # 6% lower
        ("asr:5%", 0.5, 0.48, False),  # relative to the baseline: 0.025 allowed
        ("asr:5%", 0.5, 0.47, True),
        ("asr:0.05", 0.5, 0.46, False),  # absolute
        ("asr:0.05", 0.5, 0.44, True),
        ("asr:5%", 0.5, 0.9, False),  # better is never a regression
        ("asr:5%", 0.0, 0.0, False),
        ("asr:5%", 1.0, None, True),  # lost its ASR: never a false pass
        ("asr:5%", None, 0.3, False),  # nothing to compare with
        ("robust_accuracy:0.02", 0.50, 0.49, False),
        ("robust_accuracy:0.02", 0.50, 0.47, True),  # less robust
        ("robust_accuracy:0.02", 0.50, 0.90, False),
        ("inconclusive:0.1", 0.0, 0.1, False),  # higher is worse
        ("inconclusive:0.1", 0.0, 0.2, True),
        ("inconclusive:10%", 0.0, 0.01, True),  # relative to 0: no worsening allowed
        ("time:50%", 2.0, 2.9, False),
        ("time:50%", 2.0, 3.1, True),
        ("time:50%", 2.0, 0.5, False),
    ],
)
def test_regression_rule_per_field_and_direction(
    rule: str, old: float | None, new: float | None, regressed: bool
) -> None:
    reason = parse_compare_fail(rule).check(old, new)
    assert (reason is not None) == regressed
    if reason is not None:
        assert reason.startswith(rule.split(":")[0])
        assert reason.endswith(f"({rule})")


# --------------------------------------------------------------------------- storage


def _entry(nodeid: str, asr: float | None, robust: float | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "attack": "PGD",
        "verdict": "passed" if asr and asr >= 0.95 else "failed",
        "asr": asr,
        "n_samples": 8,
        "n_inconclusive": 1,
        "seconds": 0.5,
    }
    if robust is not None:
        report["claim"] = {"claim": 0.3, "robust_accuracy": robust, "verdict": "passed"}
    return {
        "nodeid": nodeid,
        "outcome": "passed",
        "verdict": report["verdict"],
        "asr": asr,
        "n_samples": 8,
        "n_inconclusive": 1,
        "seconds": 0.5,
        "reports": [report],
    }


def test_figures_keep_what_a_comparison_needs() -> None:
    figures = figures_of(_entry("t.py::a", 1.0, robust=0.4))
    assert figures["asr"] == 1.0
    assert figures["robust_accuracy"] == 0.4
    assert figures["claim"] == 0.3
    assert figures["claim_verdict"] == "passed"
    assert figures["inconclusive"] == 1 / 8
    assert figures["time"] == 0.5
    assert figures["calls"][0]["attack"] == "PGD"
    assert figures_of(_entry("t.py::b", 1.0))["robust_accuracy"] is None


def test_save_numbers_files_and_find_picks_newest_or_named(tmp_path: Path) -> None:
    storage = tmp_path / "store"
    with pytest.raises(BaselineError, match=r"no baseline stored in .*--attack-test-save NAME"):
        find_baseline(storage, None)
    doc = baseline_document([_entry("t.py::a", 1.0)], {"name": "x"})
    first = save_baseline(storage, "main", doc)
    second = save_baseline(storage, "feature", doc)
    third = save_baseline(storage, "main", doc)
    assert [p.name for p in stored_baselines(storage)] == [
        "0001_main.json",
        "0002_feature.json",
        "0003_main.json",
    ]
    assert find_baseline(storage, None) == third
    assert find_baseline(storage, "") == third
    assert find_baseline(storage, "main") == third  # the newest of that name
    assert find_baseline(storage, "feature") == second
    assert find_baseline(storage, "1") == first
    assert find_baseline(storage, "0002_feature") == second
    with pytest.raises(BaselineError, match=r"no baseline named 'nope'.*0001_main, 0002_feature"):
        find_baseline(storage, "nope")
    loaded = load_baseline(first)
    assert loaded["format"] == FORMAT_VERSION
    assert loaded["tests"]["t.py::a"]["asr"] == 1.0


def test_load_refuses_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "0001_x.json"
    bad.write_text("{not json")
    with pytest.raises(BaselineError, match="cannot read the baseline"):
        load_baseline(bad)
    bad.write_text(json.dumps({"format": 99, "tests": {}}))
    with pytest.raises(BaselineError, match="not a baseline of format 1"):
        load_baseline(bad)


def _stored(figures: object) -> dict[str, Any]:
    """A baseline document holding one test with ``figures``."""
    return {"format": FORMAT_VERSION, "metadata": {}, "tests": {"t.py::a": figures}}


def _good_figures(**changes: object) -> dict[str, Any]:
    return {**figures_of(_entry("t.py::a", 1.0, robust=0.4)), **changes}


@pytest.mark.parametrize(
    ("document", "field", "expected"),
    [
        (_stored(_good_figures(asr="high")), "tests['t.py::a'].asr is 'high'", "in [0, 1]"),
        (_stored(_good_figures(asr=float("nan"))), "tests['t.py::a'].asr is nan", "in [0, 1]"),
        (_stored(_good_figures(asr=1.5)), "tests['t.py::a'].asr is 1.5", "in [0, 1]"),
        (_stored(_good_figures(asr=True)), "tests['t.py::a'].asr is True", "in [0, 1]"),
        (
            _stored(_good_figures(robust_accuracy=[0.4])),
            "tests['t.py::a'].robust_accuracy is [0.4]",
            "in [0, 1]",
        ),
        (
            _stored(_good_figures(inconclusive=float("inf"))),
            "tests['t.py::a'].inconclusive is inf",
            "in [0, 1]",
        ),
        (_stored(_good_figures(time="1s")), "tests['t.py::a'].time is '1s'", "seconds >= 0"),
        (_stored(_good_figures(time=-1)), "tests['t.py::a'].time is -1", "seconds >= 0"),
        (_stored(_good_figures(n_samples=-8)), "tests['t.py::a'].n_samples is -8", "whole number"),
        (_stored(_good_figures(n_samples=8.5)), "tests['t.py::a'].n_samples is 8.5", "whole"),
        (_stored(_good_figures(verdict=1)), "tests['t.py::a'].verdict is 1", "a string"),
        (_stored(_good_figures(calls={})), "tests['t.py::a'].calls is {}", "a list"),
        (_stored("fast"), "tests['t.py::a'] is 'fast'", "an object of figures"),
        ({"format": FORMAT_VERSION, "tests": ["t.py::a"]}, "'tests' is ['t.py::a']", "object"),
        ({"format": FORMAT_VERSION, "metadata": 3, "tests": {}}, "'metadata' is 3", "object"),
    ],
)
def test_malformed_baseline_asr_high_is_refused_naming_file_and_field(
    tmp_path: Path, document: dict[str, Any], field: str, expected: str
) -> None:
    """A stored baseline with a field of the wrong type or range is refused on load."""
    path = tmp_path / "0001_main.json"
    path.write_text(json.dumps(document))  # NaN and inf as JSON's NaN / Infinity
    with pytest.raises(BaselineError) as info:
        load_baseline(path)
    message = str(info.value)
    assert message.startswith(f"malformed baseline {path}: ")
    assert field in message
    assert expected in message
    assert "--attack-test-save NAME" in message
    # The same figures, well formed, load (the check is not over-eager).
    path.write_text(json.dumps(_stored(_good_figures(asr=None, time=0))))
    assert load_baseline(path)["tests"]["t.py::a"]["asr"] is None


def test_malformed_baseline_is_a_usage_error_before_any_test(tmp_path: Path) -> None:
    """``"asr": "high"`` in the compared baseline stops the run at the start, naming it."""
    make_project(tmp_path, TESTS)
    storage = tmp_path / ".attacktest"
    storage.mkdir()
    bad = storage / "0001_main.json"
    bad.write_text(json.dumps(_stored(_good_figures(asr="high"))))
    result = run_pytest(tmp_path, "--attack-test", "--attack-test-compare")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    expected = f"--attack-test-compare: malformed baseline {bad}: tests['t.py::a'].asr is 'high'"
    assert expected in result.stderr.str()
    result.stdout.no_fnmatch_line("*passed*")


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_concurrent_baseline_saves_keep_every_file_with_distinct_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    """Saves that all see the same highest number each get their own number and file.

    Every thread's first look at the folder waits until all have looked, so
    all of them pick number 1 first: the worst race, every time. Without hard
    links (some network and FUSE file systems) the O_EXCL fallback is used.
    """
    import threading

    import pytest_attacktest.baselines as baselines

    savers = 6
    storage = tmp_path / "store"
    storage.mkdir()
    barrier = threading.Barrier(savers, timeout=30)
    looked = threading.local()
    scan = baselines.stored_baselines

    def slow_scan(folder: Path) -> list[Path]:
        found = scan(folder)
        if not getattr(looked, "once", False):
            looked.once = True
            barrier.wait()
        return found

    monkeypatch.setattr(baselines, "stored_baselines", slow_scan)
    if not links:

        def no_link(source: object, target: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    paths: dict[int, Path] = {}
    errors: list[BaseException] = []

    def save(index: int) -> None:
        try:
            doc = baseline_document([_entry(f"t.py::run{index}", 1.0)], {"run": index})
            paths[index] = save_baseline(storage, "ci", doc)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(savers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    monkeypatch.undo()
    names = sorted(p.name for p in stored_baselines(storage))
    assert names == [f"{n:04d}_ci.json" for n in range(1, savers + 1)]
    assert sorted(p.name for p in storage.iterdir()) == names  # no temporary file left
    for index, path in paths.items():
        assert load_baseline(path)["metadata"]["run"] == index  # each its own content


def test_concurrent_baseline_saves_in_processes_keep_every_file(tmp_path: Path) -> None:
    """Several processes released at once save into one folder: none is overwritten."""
    import subprocess
    import sys

    savers, each = 6, 20
    storage, go = tmp_path / "store", tmp_path / "go"
    code = (
        "import pathlib, sys, time\n"
        "from pytest_attacktest.baselines import save_baseline\n"
        "go = pathlib.Path(sys.argv[2])\n"
        "while not go.exists():\n"
        "    time.sleep(0.001)\n"
        f"for n in range({each}):\n"
        "    save_baseline(pathlib.Path(sys.argv[1]), 'ci', "
        "{'format': 1, 'metadata': {'run': sys.argv[3], 'n': n}, 'tests': {}})\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(storage), str(go), str(i)])
        for i in range(savers)
    ]
    go.touch()
    assert [proc.wait(timeout=120) for proc in procs] == [0] * savers
    files = stored_baselines(storage)
    assert [p.name for p in files] == [f"{n:04d}_ci.json" for n in range(1, each * savers + 1)]
    saved = {(doc["metadata"]["run"], doc["metadata"]["n"]) for doc in map(load_baseline, files)}
    assert saved == {(str(i), n) for i in range(savers) for n in range(each)}


def test_compare_flags_regressions_and_lists_new_and_missing_tests() -> None:
    base = baseline_document(
        [_entry("t.py::same", 1.0), _entry("t.py::weaker", 1.0, 0.3), _entry("t.py::gone", 1.0)],
        {},
    )
    current = {
        "t.py::same": figures_of(_entry("t.py::same", 1.0)),
        "t.py::weaker": figures_of(_entry("t.py::weaker", 0.75, 0.45)),
        "t.py::new": figures_of(_entry("t.py::new", 1.0)),
    }
    rules = [parse_compare_fail("asr:5%"), parse_compare_fail("robust_accuracy:0.02")]
    result = compare(base, current, rules, name="0001_main")
    assert result.failed
    assert result.regressions == [("t.py::weaker", "asr 1 -> 0.75 (asr:5%)")]
    statuses = {nodeid: status for nodeid, status, _, _ in result.rows}
    assert statuses == {
        "t.py::gone": "not run",
        "t.py::new": "new",
        "t.py::same": "compared",
        "t.py::weaker": "compared",
    }
    lines = comparison_lines(result)
    assert lines[0].split()[:3] == ["test", "status", "verdict"]
    weaker = next(line for line in lines if line.startswith("t.py::weaker"))
    assert "REGRESSED" in weaker
    assert "1.000 -> 0.750 (-0.250)" in weaker
    assert "0.300 -> 0.450 (+0.150)" in weaker
    # Inconclusive samples as a count, as in the "attack tests" table (1 of 8 here).
    assert weaker.split()[-2:] == ["1/8", "0.50"]
    # A test of the baseline that did not run in this session is no row (no "verdict
    # None", no "not run" per test) but one line saying so.
    assert not any(line.startswith("t.py::gone") for line in lines)
    assert "None" not in "\n".join(lines)
    assert (
        "1 test(s) of the baseline not run in this session (deselected or not collected): "
        "not compared"
    ) in lines
    assert lines[-1] == "REGRESSION t.py::weaker: asr 1 -> 0.75 (asr:5%)"
    assert not compare(base, current, [], name="0001_main").failed  # no rules: report only
    # With rules, a run in which no test of the baseline ran cannot pass the gate.
    unrelated = {"t.py::new": current["t.py::new"]}
    assert compare(base, unrelated, rules, name="0001_main").regressions == [
        ("(run)", "no attack test of the baseline ran (--attack-test missing?): nothing compared")
    ]
    assert not compare(base, unrelated, [], name="0001_main").failed


def test_compare_table_inconclusive_counts_and_missing_verdicts() -> None:
    """Changed counts show as ``1/8 -> 3/8``; a test without a verdict shows ``-``."""
    more = _entry("t.py::a", 1.0)
    more["n_inconclusive"] = 3
    no_verdict = _entry("t.py::b", None)
    no_verdict["verdict"] = None
    base = baseline_document([_entry("t.py::a", 1.0), _entry("t.py::b", 1.0)], {})
    current = {e["nodeid"]: figures_of(e) for e in (more, no_verdict)}
    lines = comparison_lines(compare(base, current, [], name="0001_main"))
    row_a = next(line for line in lines if line.startswith("t.py::a"))
    row_b = next(line for line in lines if line.startswith("t.py::b"))
    assert "1/8 -> 3/8" in row_a
    assert "0.375" not in row_a  # not as a share
    assert row_b.split()[2:5] == ["passed", "->", "-"]
    assert "None" not in "\n".join(lines)
    # An old baseline file without the counts still compares (its share is shown).
    old = {
        "format": FORMAT_VERSION,
        "tests": {"t.py::a": {"verdict": "passed", "inconclusive": 0.125}},
    }
    row = comparison_lines(compare(old, {"t.py::a": figures_of(more)}, [], name="x"))[1]
    assert "0.125 -> 3/8" in row


def test_machine_id_is_a_folder_name_naming_system_python_and_cpu() -> None:
    import platform

    ident = machine_id()
    assert ident == machine_id()
    assert re.fullmatch(r"[A-Za-z0-9._-]+", ident)
    version = ".".join(platform.python_version_tuple()[:2])
    assert ident.startswith(f"{platform.system()}-{platform.python_implementation()}-{version}-")
    assert len(ident.split("-")) >= 5  # pytest-benchmark's four parts plus the CPU


def test_locate_baseline_per_machine_then_old_flat_layout(tmp_path: Path) -> None:
    storage = tmp_path / ".attacktest"
    doc = baseline_document([_entry("t.py::a", 1.0)], {})
    flat = save_baseline(storage, "main", doc)  # the layout before per-machine folders
    path, note = locate_baseline(storage, "main", "this-machine")
    assert path == flat
    assert note is not None
    assert "old flat layout" in note
    assert str(storage / "this-machine") in note
    mine = save_baseline(storage / "this-machine", "main", doc)
    assert locate_baseline(storage, "main", "this-machine") == (mine, None)
    assert locate_baseline(storage, None, "this-machine") == (mine, None)
    # Another machine's baselines are never used, but the error names them.
    save_baseline(storage / "laptop", "feature", doc)
    with pytest.raises(
        BaselineError, match=r"no baseline named 'feature'.*other machines have baselines: laptop"
    ):
        locate_baseline(storage, "feature", "this-machine")
    assert locate_baseline(storage, None, "ci-runner")[0] == flat  # old layout, any machine
    flat.unlink()
    with pytest.raises(
        BaselineError,
        match=r"no baseline stored in .*other machines have baselines: laptop, this-machine",
    ):
        locate_baseline(storage, None, "ci-runner")


def test_framework_changes_are_listed() -> None:
    base = {"metadata": {"frameworks": {"torch": "2.12.0", "numpy": "2.4.6"}}}
    assert framework_changes(base, {"torch": "2.13.0", "numpy": "2.4.6"}) == [
        "torch 2.12.0 -> 2.13.0"
    ]
    assert framework_changes(base, {"numpy": "2.4.6", "jax": "0.10.2"}) == [
        "jax absent -> 0.10.2",
        "torch 2.12.0 -> absent",
    ]
    assert framework_changes({"metadata": {}}, {"torch": "2.13.0"}) == []  # an old baseline


def test_autosave_name_is_commit_and_utc_time(tmp_path: Path) -> None:
    import datetime
    import subprocess

    now = datetime.datetime(2026, 12, 4, 20, 37, 41, tzinfo=datetime.timezone.utc)
    assert autosave_name(tmp_path, now) == "20261204T203741Z"  # not a git repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f.txt").write_text("a")
    subprocess.run([*git, "add", "f.txt"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    assert autosave_name(tmp_path, now) == f"{commit}_20261204T203741Z"
    (tmp_path / "f.txt").write_text("b")
    name = autosave_name(tmp_path, now)
    assert name == f"{commit}_20261204T203741Z_uncommitted"
    assert parse_baseline_name(name) == name  # a valid baseline name


# --------------------------------------------------------------------------- end to end

TESTS = """
    import pytest

    pytestmark = pytest.mark.attack_test(epsilon=0.1, n_validation=8, threshold=0.5)


    def test_pgd(attack_test, model, data, pgd):
        attack_test(model, *data, attack=pgd)


    @pytest.mark.attack_test(claim=0.3)
    def test_pgd_claim(attack_test, model, data, pgd):
        attack_test(model, *data, attack=pgd)
"""


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.summary_links: list[str] = []
        self._in_summary = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("id", "summary") in attrs:
            self._in_summary = True
        if tag == "a" and self._in_summary:
            self.summary_links.append(dict(attrs)["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_summary = False


def test_save_then_compare_under_xdist_fails_on_regression(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("xdist")
    path = make_project(tmp_path, TESTS)
    # The tolerance keeps the claim test about baselines: the weakened attack
    # below measures a higher robust accuracy, which alone must not fail it.
    args = ("--attack-test", "--attack-test-samples", "16", "--attack-test-claim-tolerance", "0.1")

    saved = run_pytest(path, *args, "--attack-test-save", "base")
    saved.assert_outcomes(passed=2)
    assert saved.ret == 0
    machine = machine_id()
    store = path / ".attacktest" / machine  # baselines are kept per machine
    saved.stdout.fnmatch_lines([f"*attack test baseline saved to *{machine}*0001_base.json*"])
    base = load_baseline(store / "0001_base.json")
    assert base["metadata"]["name"] == "base"
    assert base["metadata"]["samples"] == 16
    assert base["metadata"]["machine"] == machine
    assert "torch" in base["metadata"]["frameworks"]
    pgd = base["tests"]["test_attack.py::test_pgd"]
    assert pgd["asr"] == 1.0
    assert pgd["n_samples"] == 16
    assert base["tests"]["test_attack.py::test_pgd_claim"]["robust_accuracy"] is not None

    # A decoy saved later: the named comparison must not pick the newest file.
    save_baseline(store, "decoy", {"format": FORMAT_VERSION, "tests": {}})

    weak = run_pytest(
        path,
        *args,
        "-n",
        "2",
        "--attack-test-compare=base",
        "--attack-test-compare-fail",
        "asr:5%",
        "--attack-test-compare-fail",
        "robust_accuracy:0.02",
        "--attack-test-save",
        "weak",
        "--attack-test-html",
        "out/report.html",
        env={"ATTACK_WEAKEN": "1"},
    )
    weak.assert_outcomes(passed=2)  # every test passes its binarization test...
    assert weak.ret == pytest.ExitCode.TESTS_FAILED  # ...but the session fails
    weak.stdout.fnmatch_lines(
        [
            "*= attack tests compared with 0001_base (fail on: asr:5%, robust_accuracy:0.02) =*",
            "test *status*verdict*ASR*",
        ]
    )
    weak.stdout.fnmatch_lines(
        [
            "REGRESSION test_attack.py::test_pgd: asr 1 -> 0.75 (asr:5%)",
            "REGRESSION test_attack.py::test_pgd_claim: asr 1 -> 0.75 (asr:5%)",
            "FAILED: 2 regression(s) against baseline 0001_base; the session fails*",
        ]
    )
    weak.stdout.no_fnmatch_line("REGRESSION *robust_accuracy*")  # weaker attack: higher
    # The controller saved one baseline with both tests, and wrote one HTML page.
    stored = load_baseline(store / "0003_weak.json")
    assert set(stored["tests"]) == {"test_attack.py::test_pgd", "test_attack.py::test_pgd_claim"}
    assert stored["tests"]["test_attack.py::test_pgd"]["asr"] == 0.75
    assert stored["metadata"]["exitstatus"] == 1
    tags = _Tags()
    tags.feed((path / "out" / "report.html").read_text())
    assert tags.summary_links == ["#test-1", "#test-2"]


def test_autosave_per_machine_and_old_flat_layout_end_to_end(tmp_path: Path) -> None:
    """``--attack-test-autosave`` saves after each run, numbered, in this machine's folder.

    A later ``--attack-test-compare`` picks the newest autosave; a test the run
    deselects is one line, not a row. A baseline in the old flat layout is
    still read, with a note.
    """
    pytest.importorskip("torch")
    path = make_project(tmp_path, TESTS)
    args = ("--attack-test", "--attack-test-samples", "16", "--attack-test-autosave")
    first = run_pytest(path, *args)
    first.assert_outcomes(passed=2)
    store = path / ".attacktest" / machine_id()
    (saved,) = stored_baselines(store)
    assert re.fullmatch(r"0001_\d{8}T\d{6}Z\.json", saved.name)  # no git repo: the time
    assert not stored_baselines(path / ".attacktest")  # nothing in the old flat layout

    second = run_pytest(path, *args, "--attack-test-compare", "-k", "test_pgd_claim")
    second.assert_outcomes(passed=1, deselected=1)
    assert second.ret == 0
    second.stdout.fnmatch_lines(
        [
            f"*= attack tests compared with {saved.stem} (fail on: none*",
            "test_attack.py::test_pgd_claim *compared*passed*",
            "1 test(s) of the baseline not run in this session (deselected or not collected)*",
        ]
    )
    second.stdout.no_fnmatch_line("*None*")
    assert [p.name[:5] for p in stored_baselines(store)] == ["0001_", "0002_"]

    # The layout before per-machine folders: files directly in the storage folder.
    flat = path / ".attacktest" / "0001_old.json"
    flat.write_text(saved.read_text())
    for stored in stored_baselines(store):
        stored.unlink()
    listed = run_pytest(path, "--attack-test", "--attack-test-compare=old", "--collect-only", "-q")
    assert listed.ret == 0
    listed.stdout.fnmatch_lines(
        [
            "note: baseline 0001_old.json read from the old flat layout of *; new baselines "
            f"are saved per machine in *{machine_id()}"
        ]
    )


def test_usage_errors_name_the_option(tmp_path: Path) -> None:
    make_project(tmp_path, TESTS)
    no_compare = run_pytest(tmp_path, "--attack-test-compare-fail", "asr:5%")
    assert no_compare.ret == pytest.ExitCode.USAGE_ERROR
    no_compare.stderr.fnmatch_lines(
        ["*--attack-test-compare-fail needs --attack-test-compare*--attack-test-save NAME*"]
    )
    nothing = run_pytest(tmp_path, "--attack-test-compare")
    assert nothing.ret == pytest.ExitCode.USAGE_ERROR
    nothing.stderr.fnmatch_lines(["*--attack-test-compare: no baseline stored in*"])
    bad = run_pytest(tmp_path, "--attack-test-compare-fail", "speed:5%")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*invalid compare-fail 'speed:5%'*"])
