"""The pytest plugin: ``--attack-test``, the ``attack_test`` marker and fixture.

Registered through the ``pytest11`` entry point as ``attacktest`` (so
``-p no:attacktest`` turns it off), which means pytest imports this module on
*every* run in an environment where the package is installed. It therefore
imports no ML framework (torch, tensorflow, jax, eagerpy, numpy) and not the
``attacks`` package at module level; the fixture imports the binarization
engine when it is called, as Hypothesis does for its own pytest plugin.

State lives in ``config.stash`` (the run's options under :data:`session_key`,
the merged results under :data:`results_key`) and in ``item.stash`` (each
test's settings and fixture), not in module globals: pytester runs pytest
in-process several times, and xdist workers each build their own config.

How results reach the summary and the JSON: the fixture keeps each call's
report as a plain dict; ``pytest_runtest_makereport`` attaches them to the
test report (pytest serialises a report's extra attributes, so under xdist
they travel to the controller with the report); the process that logs
reports (the controller, or the only process) merges them in
:class:`~pytest_attacktest.session.RunResults`, prints the "attack tests"
section and writes ``--attack-test-json``. Workers print and write nothing.

The same process runs what needs the whole run: the baseline comparison
(``--attack-test-compare``, which can fail the session through its exit
status), the baseline save (``--attack-test-save``) and the HTML page
(``--attack-test-html``); see :mod:`pytest_attacktest.baselines` and
:mod:`pytest_attacktest.html_report`. A test's ``claim`` (the claim gate,
:mod:`pytest_attacktest.claims`) is checked by the fixture, in the test.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from pytest_attacktest import bench, progress
from pytest_attacktest.baselines import (
    DEFAULT_STORAGE,
    BaselineError,
    CompareFail,
    Comparison,
    autosave_name,
    baseline_document,
    compare,
    comparison_lines,
    figures_of,
    framework_changes,
    framework_versions,
    load_baseline,
    locate_baseline,
    machine_id,
    parse_baseline_name,
    parse_compare_fail,
    parse_compare_name,
    save_baseline,
)
from pytest_attacktest.claims import DEFAULT_CLAIM_TOLERANCE, ClaimResult
from pytest_attacktest.devices import (
    WORKER_OUTPUT_KEY,
    early_value,
    mapping_lines,
    pin_xdist_worker,
    record_xdist_worker,
)
from pytest_attacktest.options import (
    CORE_KEYS,
    DEFAULT_NORM,
    DEFAULT_SAMPLES,
    DEFAULT_THRESHOLD,
    ENGINE_KEYS,
    AttackTestSettings,
    SettingsError,
    apply_kwargs,
    parse_claim_tolerance,
    parse_device,
    parse_json_path,
    parse_samples,
    parse_seed,
    parse_threshold,
    resolve_settings,
)
from pytest_attacktest.outcomes import AttackTestFailed
from pytest_attacktest.session import AttackTestSession, RunResults, phase_outcome, plain
from pytest_attacktest.terminal import summary_rows

if TYPE_CHECKING:
    from pytest_attacktest.report import Report

__all__ = [
    "AUTOSAVE_FLAG",
    "CLAIM_TOLERANCE_FLAG",
    "COMPARE_FAIL_FLAG",
    "COMPARE_FLAG",
    "DEVICE_FLAG",
    "ERROR_VERDICT",
    "FLAG",
    "HTML_FLAG",
    "INI_CLAIM_TOLERANCE",
    "INI_DEVICE",
    "INI_ENABLE",
    "INI_HTML",
    "INI_JAX_CACHE",
    "INI_JSON",
    "INI_SAMPLES",
    "INI_SEED",
    "INI_STORAGE",
    "INI_THRESHOLD",
    "JAX_CACHE_FLAG",
    "JSON_FLAG",
    "MARKER",
    "NEVER_CALLED",
    "SAMPLES_FLAG",
    "SAVE_FLAG",
    "SEED_FLAG",
    "SKIP_REASON",
    "STORAGE_FLAG",
    "THRESHOLD_FLAG",
    "AttackTestFixture",
    "AttackTestSession",
    "attack_test_reports",
    "fixture_key",
    "get_session",
    "marker_error_key",
    "results_key",
    "session_key",
    "settings_key",
]

MARKER = "attack_test"
FLAG = "--attack-test"
SEED_FLAG = "--attack-test-seed"
SAMPLES_FLAG = "--attack-test-samples"
THRESHOLD_FLAG = "--attack-test-threshold"
DEVICE_FLAG = "--attack-test-device"
JSON_FLAG = "--attack-test-json"
CLAIM_TOLERANCE_FLAG = "--attack-test-claim-tolerance"
HTML_FLAG = "--attack-test-html"
SAVE_FLAG = "--attack-test-save"
AUTOSAVE_FLAG = "--attack-test-autosave"
COMPARE_FLAG = "--attack-test-compare"
COMPARE_FAIL_FLAG = "--attack-test-compare-fail"
STORAGE_FLAG = "--attack-test-storage"
JAX_CACHE_FLAG = "--attack-test-jax-cache"
INI_ENABLE = "attack_test"
INI_SEED = "attack_test_seed"
INI_SAMPLES = "attack_test_samples"
INI_THRESHOLD = "attack_test_threshold"
INI_DEVICE = "attack_test_device"
INI_JSON = "attack_test_json"
INI_CLAIM_TOLERANCE = "attack_test_claim_tolerance"
INI_HTML = "attack_test_html"
INI_STORAGE = "attack_test_storage"
INI_JAX_CACHE = "attack_test_jax_cache"

SKIP_REASON = f"attack test: run with {FLAG} (or set {INI_ENABLE} = true in the ini file) to run it"

NEVER_CALLED = (
    "attack_test fixture was requested but never called: nothing was tested. Call "
    "attack_test(model, x, y, attack=...) in the test, or drop the fixture"
)

ERROR_VERDICT = (
    "attack_test: the binarization test could not be set up on this model (too many "
    "inconclusive samples), so the attack was NOT tested; this is no verdict on the "
    "attack's strength. Fix the setup (see the likely causes: e.g. features=, n_inner=, "
    "feature_passes=) and rerun."
)

#: The name of the extra attribute that carries a test's results on its pytest report.
REPORT_ATTRIBUTE = "attack_test"

#: Where :class:`AttackTestSession` lives: ``config.stash[session_key]``.
session_key = pytest.StashKey[AttackTestSession]()

#: Where the merged results live, on the process that logs reports.
results_key = pytest.StashKey[RunResults]()

#: Where each attack test's resolved settings live: ``item.stash[settings_key]``,
#: filled at collection for every item that carries the marker or uses the fixture.
settings_key = pytest.StashKey[AttackTestSettings]()

#: Message for a test whose marker became invalid after collection (see
#: ``pytest_collection_modifyitems``); such a test errors at setup.
marker_error_key = pytest.StashKey[str]()


def get_session(config: pytest.Config) -> AttackTestSession:
    """Return the run's :class:`AttackTestSession` (set in ``pytest_configure``)."""
    return config.stash[session_key]


def _is_worker(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker (which reports to a controller)."""
    return hasattr(config, "workerinput")


def _worker_index(config: pytest.Config) -> int | None:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    worker_id = str(workerinput.get("workerid", ""))
    return int(worker_id[2:]) if worker_id[2:].isdigit() else None


def _pin_gpu(config: pytest.Config) -> None:
    """Under xdist with ``--attack-test-device cuda``: this worker takes its own GPU (once)."""
    pin_xdist_worker(
        config, enable=("attack_test", INI_ENABLE), device=("attack_test_device", INI_DEVICE)
    )


def _jax_cache(config: pytest.Config) -> None:
    """With ``--attack-test-jax-cache DIR`` in a run of attack tests: XLA's persistent cache."""
    raw = early_value(config, "attack_test_jax_cache", INI_JAX_CACHE)
    if not raw or not early_value(config, "attack_test", INI_ENABLE):
        return
    from_cli = getattr(config.known_args_namespace, "attack_test_jax_cache", None) is not None
    from pytest_attacktest import jax_cache

    jax_cache.enable(_resolve_path(config, str(raw), from_cli))


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Pin the worker's GPU and set JAX's cache before any conftest file imports a framework."""
    _pin_gpu(early_config)
    _jax_cache(early_config)


# --------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the command-line options and their ini twins (same names, ``_`` for ``-``).

    The command-line options default to ``None`` so ``pytest_configure`` can
    tell "not given" from "given", and let the command line override the ini
    file, as pytest-timeout does. Defaults stay plain values: xdist serialises
    options. Values go through the parsers of :mod:`pytest_attacktest.options`,
    so a bad one is a usage error naming the option.
    """
    group = parser.getgroup("attacktest", "attacktest (binarization test of adversarial attacks)")
    group.addoption(
        FLAG,
        action="store_true",
        default=None,
        dest="attack_test",
        help=f"Run tests marked {MARKER} or using the {MARKER} fixture; "
        f"without it they are skipped. Same as ini {INI_ENABLE} = true.",
    )
    group.addoption(
        SEED_FLAG,
        action="store",
        type=parse_seed,
        default=None,
        dest="attack_test_seed",
        metavar="SEED",
        help=f"Seed for sampling and attacks, an integer >= 0; overrides ini {INI_SEED}. "
        "Default: 0.",
    )
    group.addoption(
        SAMPLES_FLAG,
        action="store",
        type=parse_samples,
        default=None,
        dest="attack_test_samples",
        metavar="N",
        help="Clean samples per attack test (the fixture uses the first N of the inputs it "
        f"gets); a marker's samples= wins. Overrides ini {INI_SAMPLES}. "
        f"Default: {DEFAULT_SAMPLES}.",
    )
    group.addoption(
        THRESHOLD_FLAG,
        action="store",
        type=parse_threshold,
        default=None,
        dest="attack_test_threshold",
        metavar="T",
        help="Minimum attack success rate in (0, 1] for an attack test to pass; a marker's "
        f"threshold= wins. Overrides ini {INI_THRESHOLD}. Default: {DEFAULT_THRESHOLD}.",
    )
    group.addoption(
        DEVICE_FLAG,
        action="store",
        type=parse_device,
        default=None,
        dest="attack_test_device",
        metavar="DEVICE",
        help="Move PyTorch models and tensors to DEVICE (cpu, cuda, cuda:1) before each "
        "attack test; under xdist 'cuda' gives each worker its own GPU. Not applied to "
        f"other frameworks yet. Overrides ini {INI_DEVICE}. Default: leave them where they are.",
    )
    group.addoption(
        JSON_FLAG,
        action="store",
        type=parse_json_path,
        default=None,
        dest="attack_test_json",
        metavar="PATH",
        help="Write a JSON report of all attack tests (metadata, and per test its outcome "
        f"and binarization report) to PATH. Overrides ini {INI_JSON}.",
    )
    group.addoption(
        CLAIM_TOLERANCE_FLAG,
        action="store",
        type=parse_claim_tolerance,
        default=None,
        dest="attack_test_claim_tolerance",
        metavar="TOL",
        help=f"How far the robust accuracy measured by a test with {MARKER}(claim=...) may "
        "differ from the claim beyond its 95%% interval (on either side), in [0, 1). "
        f"Overrides ini {INI_CLAIM_TOLERANCE}. "
        f"Default: {DEFAULT_CLAIM_TOLERANCE:g}.",
    )
    group.addoption(
        HTML_FLAG,
        action="store",
        type=parse_json_path,
        default=None,
        dest="attack_test_html",
        metavar="PATH",
        help="Write a self-contained HTML report (summary table, histograms, per-sample rows, "
        f"pictures of image inputs) to PATH. Overrides ini {INI_HTML}.",
    )
    group.addoption(
        SAVE_FLAG,
        action="store",
        type=parse_baseline_name,
        default=None,
        dest="attack_test_save",
        metavar="NAME",
        help="Save this run's attack-test figures as baseline NAME (NNNN_NAME.json in this "
        "machine's folder of the storage folder).",
    )
    group.addoption(
        AUTOSAVE_FLAG,
        action="store_true",
        default=None,
        dest="attack_test_autosave",
        help=f"Save a baseline after every run, named after the commit and the UTC time "
        f"(NNNN_<commit>_<time>.json, as pytest-benchmark's autosave); {SAVE_FLAG} NAME wins.",
    )
    group.addoption(
        COMPARE_FLAG,
        action="store",
        nargs="?",
        const="",
        type=parse_compare_name,
        default=None,
        dest="attack_test_compare",
        metavar="NAME",
        help="Compare this run with the newest saved baseline, or with the newest one named "
        f"NAME (or its number); write {COMPARE_FLAG}=NAME before test paths.",
    )
    group.addoption(
        COMPARE_FAIL_FLAG,
        action="append",
        type=parse_compare_fail,
        default=None,
        dest="attack_test_compare_fail",
        metavar="FIELD:LIMIT",
        help=f"With {COMPARE_FLAG}: fail the session when FIELD (asr, robust_accuracy, "
        "inconclusive, time) got worse than the baseline by more than LIMIT: N%% of the "
        "baseline's value, or an absolute number. Repeatable.",
    )
    group.addoption(
        JAX_CACHE_FLAG,
        action="store",
        default=None,
        dest="attack_test_jax_cache",
        metavar="DIR",
        help="Keep JAX's compiled programs in DIR across runs (XLA's persistent cache: the "
        "first JAX attack test of a run then compiles little). Process-wide, so your own "
        f"JAX programs are cached too. Overrides ini {INI_JAX_CACHE}.",
    )
    group.addoption(
        STORAGE_FLAG,
        action="store",
        type=parse_json_path,
        default=None,
        dest="attack_test_storage",
        metavar="DIR",
        help=f"Folder of saved baselines. Overrides ini {INI_STORAGE}. "
        f"Default: {DEFAULT_STORAGE} in the rootdir.",
    )
    bench.addoption(group)
    progress.addoption(parser, group)
    parser.addini(
        INI_ENABLE,
        type="bool",
        default=False,
        help=f"Run attack tests, as {FLAG} does. Default: false.",
    )
    # "string", not "int": pytest>=8 is supported and "int" arrived in 8.4; the
    # values go through the same parsers as the command line's.
    parser.addini(
        INI_SEED,
        type="string",
        default="0",
        help=f"Seed for attack tests, overridden by {SEED_FLAG}. Default: 0.",
    )
    parser.addini(
        INI_SAMPLES,
        type="string",
        default="",
        help=f"Clean samples per attack test, overridden by {SAMPLES_FLAG}. "
        f"Default: {DEFAULT_SAMPLES}.",
    )
    parser.addini(
        INI_THRESHOLD,
        type="string",
        default="",
        help=f"Minimum attack success rate, overridden by {THRESHOLD_FLAG}. "
        f"Default: {DEFAULT_THRESHOLD}.",
    )
    parser.addini(
        INI_DEVICE,
        type="string",
        default="",
        help=f"Device for PyTorch models in attack tests, overridden by {DEVICE_FLAG}.",
    )
    parser.addini(
        INI_JSON,
        type="string",
        default="",
        help=f"JSON report path (relative to the ini file), overridden by {JSON_FLAG}.",
    )
    parser.addini(
        INI_CLAIM_TOLERANCE,
        type="string",
        default="",
        help=f"Tolerance of claim gates, overridden by {CLAIM_TOLERANCE_FLAG}. "
        f"Default: {DEFAULT_CLAIM_TOLERANCE:g}.",
    )
    parser.addini(
        INI_HTML,
        type="string",
        default="",
        help=f"HTML report path (relative to the ini file), overridden by {HTML_FLAG}.",
    )
    parser.addini(
        INI_JAX_CACHE,
        type="string",
        default="",
        help=f"XLA compilation cache folder for JAX (relative to the ini file), overridden by "
        f"{JAX_CACHE_FLAG}.",
    )
    parser.addini(
        INI_STORAGE,
        type="string",
        default="",
        help=f"Baseline folder (relative to the ini file), overridden by {STORAGE_FLAG}. "
        f"Default: {DEFAULT_STORAGE} in the rootdir.",
    )


T = TypeVar("T")


def _option(config: pytest.Config, dest: str, ini: str, parse: Callable[[str], T]) -> T | None:
    """The command line's value, else the ini file's parsed (``None`` when neither is set)."""
    cli: T | None = config.getoption(dest)
    if cli is not None:
        return cli
    raw = str(config.getini(ini))
    if not raw.strip():
        return None
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"ini option {ini}: {exc}") from None


def _path_option(config: pytest.Config, dest: str, ini: str, flag: str) -> Path | None:
    """A path option: relative to the invocation dir (CLI) or the ini file's dir."""
    cli: str | None = config.getoption(dest)
    if cli is not None:
        return _resolve_path(config, cli, from_cli=True)
    raw = _option(config, dest, ini, parse_json_path)
    return None if raw is None else _resolve_path(config, raw, from_cli=False)


def _resolve_path(config: pytest.Config, value: str, from_cli: bool) -> Path:
    """A path option's value made absolute.

    Relative to the invocation dir when it came from the command line, else to
    the ini file's dir (the invocation dir when there is no ini file).
    """
    base = config.invocation_params.dir
    if not from_cli and config.inipath is not None:
        base = config.inipath.parent
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _unwritable_folder(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (created if missing), or ``None``.

    Checked before the first test, so that a report or baseline that cannot be
    written is a usage error at the start, not a loss at the end of a long
    run. Nothing is created here: the folder's nearest existing ancestor must
    be a folder this process may write into. A failure that this cannot
    foresee (a full disk) is still reported at the end (``_ResultsReporter``).
    """
    existing = folder
    try:
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is not a folder"
    except OSError as exc:
        return f"{existing} cannot be read ({exc.strerror or exc})"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    return None


def _unwritable_file(path: Path) -> str | None:
    """Why the report file ``path`` cannot be written, or ``None`` (see ``_unwritable_folder``)."""
    try:
        exists = path.exists()
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc})"
    if exists and not os.access(path, os.W_OK):
        return "the file exists and is not writable"
    return None if exists else _unwritable_folder(path.parent)


def _file_option(
    config: pytest.Config, dest: str, ini: str, flag: str, example: str
) -> Path | None:
    """A report file path; a directory or a path that cannot be written is a usage error.

    The error names the option (or ini option), the path and the problem.
    """
    path = _path_option(config, dest, ini, flag)
    if path is None:
        return None
    name = flag if config.getoption(dest) is not None else f"ini option {ini}"
    if path.is_dir():
        raise pytest.UsageError(
            f"{name}: {path} is a directory; give a file name such as {example}"
        )
    problem = _unwritable_file(path)
    if problem is not None:
        raise pytest.UsageError(
            f"{name}: cannot write the report to {path}: {problem}; give a path in a folder "
            "you can write to"
        )
    return path


def _json_path(config: pytest.Config) -> Path | None:
    """Where to write the JSON: relative to the invocation dir (CLI) or the ini file's dir."""
    return _file_option(config, "attack_test_json", INI_JSON, JSON_FLAG, "attack-tests.json")


def _resolve_session(config: pytest.Config) -> AttackTestSession:
    cli_enable: bool | None = config.getoption("attack_test")
    enabled_by: str | None
    if cli_enable:
        enabled, enabled_by = True, FLAG
    else:
        ini_enable = bool(config.getini(INI_ENABLE))
        enabled, enabled_by = ini_enable, ("ini" if ini_enable else None)
    seed = _option(config, "attack_test_seed", INI_SEED, parse_seed)
    samples = _option(config, "attack_test_samples", INI_SAMPLES, parse_samples)
    threshold = _option(config, "attack_test_threshold", INI_THRESHOLD, parse_threshold)
    tolerance = _option(
        config, "attack_test_claim_tolerance", INI_CLAIM_TOLERANCE, parse_claim_tolerance
    )
    compare_name: str | None = config.getoption("attack_test_compare")
    compare_fail: list[CompareFail] = config.getoption("attack_test_compare_fail") or []
    if compare_fail and compare_name is None:
        raise pytest.UsageError(
            f"{COMPARE_FAIL_FLAG} needs {COMPARE_FLAG} (the baseline to compare with); save one "
            f"first with {SAVE_FLAG} NAME"
        )
    storage = _path_option(config, "attack_test_storage", INI_STORAGE, STORAGE_FLAG)
    if storage is None:
        storage = config.rootpath / DEFAULT_STORAGE
    save_name: str | None = config.getoption("attack_test_save")
    if save_name is None and config.getoption("attack_test_autosave"):
        save_name = autosave_name(config.rootpath)
    problem = None if save_name is None else _unwritable_folder(storage)
    if problem is not None:
        raise pytest.UsageError(
            f"{SAVE_FLAG} {save_name}: cannot save the baseline in {storage}: {problem}; "
            f"point {STORAGE_FLAG} at a folder you can write to"
        )
    return AttackTestSession(
        enabled=enabled,
        enabled_by=enabled_by,
        seed=0 if seed is None else seed,
        samples=DEFAULT_SAMPLES if samples is None else samples,
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        device=_option(config, "attack_test_device", INI_DEVICE, parse_device),
        json_path=_json_path(config),
        claim_tolerance=DEFAULT_CLAIM_TOLERANCE if tolerance is None else tolerance,
        html_path=_file_option(
            config, "attack_test_html", INI_HTML, HTML_FLAG, "attack-tests.html"
        ),
        storage=storage,
        save_name=save_name,
        compare=compare_name,
        compare_fail=tuple(compare_fail),
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, resolve the session, and start collecting results.

    The marker is registered even when attack tests are off, so
    ``--strict-markers`` accepts marked tests that are then skipped. Results
    are collected where reports are logged: not in an xdist worker, whose
    reports go to the controller.
    """
    config.addinivalue_line(
        "markers",
        f"{MARKER}(epsilon=None, norm={DEFAULT_NORM!r}, threshold={DEFAULT_THRESHOLD}, "
        f"samples={DEFAULT_SAMPLES}, claim=None, **engine): "
        "binarization test of an adversarial attack (epsilon: threat-model radius; "
        "norm: 'l1', 'l2', 'linf' or p >= 1; threshold: minimum attack success "
        "rate in (0, 1]; samples: number of clean samples; claim: robust accuracy to "
        "check (claim gate); engine keywords: "
        f"{', '.join(ENGINE_KEYS)}). Skipped unless {FLAG} or ini {INI_ENABLE} = true.",
    )
    session = _resolve_session(config)
    _pin_gpu(config)  # when the plugin was registered too late for the early hook
    session = record_xdist_worker(config, session, is_worker=_is_worker(config))
    config.stash[session_key] = session
    config.stash[results_key] = RunResults()
    if not _is_worker(config):
        config.pluginmanager.register(_ResultsReporter(config), _ResultsReporter.name)
    progress.configure(config, enabled=session.enabled, is_worker=_is_worker(config))
    bench.configure(config, enabled=session.enabled, samples=session.samples, seed=session.seed)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say in the header that attack tests run, and with what, to reproduce a run."""
    session = config.stash.get(session_key, None)
    if session is None or not session.enabled:
        return []
    line = (
        f"attacktest: enabled, seed={session.seed}, samples={session.samples}, "
        f"threshold={session.threshold:g}"
    )
    if session.device is not None:
        line += f", device={session.device}"
    if session.claim_tolerance:
        line += f", claim tolerance={session.claim_tolerance:g}"
    return [line]


# --------------------------------------------------------------------------- collection


def _is_attack_test(item: pytest.Item) -> bool:
    fixturenames: tuple[str, ...] | list[str] = getattr(item, "fixturenames", ())
    return item.get_closest_marker(MARKER) is not None or MARKER in fixturenames


def _item_settings(item: pytest.Item, session: AttackTestSession | None) -> AttackTestSettings:
    """Merge the item's markers (module, class, function: closest wins) over the defaults.

    Raises:
        SettingsError: naming the problem; the caller adds the test id.
    """
    # iter_markers yields the closest marker first; apply the farthest first.
    markers = list(item.iter_markers(MARKER))[::-1]
    for mark in markers:
        if mark.args:
            raise SettingsError(
                f"positional argument(s) {mark.args!r} are not accepted; "
                f"use keywords: {', '.join(CORE_KEYS)} (and engine keywords)"
            )
    base = session.base_settings() if session is not None else None
    seed = session.seed if session is not None else 0
    return resolve_settings((mark.kwargs for mark in markers), seed=seed, base=base)


def _marker_error(item: pytest.Item, exc: SettingsError) -> str:
    return f"{item.nodeid}: invalid {MARKER} marker: {exc}"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Turn invalid ``attack_test`` markers into a collection error of their module.

    Markers are checked even when attack tests are off: a typo must show up in
    the everyday run, not only in the run that finally enables them. A
    collection error (rather than a ``UsageError`` from a later hook) names each
    bad test, stops the run before anything expensive starts, and reaches the
    controller intact under pytest-xdist, where workers collect.
    """
    report = yield
    if report.passed:
        errors: list[str] = []
        for node in report.result:
            if isinstance(node, pytest.Item) and _is_attack_test(node):
                try:
                    _item_settings(node, None)
                except SettingsError as exc:
                    errors.append(_marker_error(node, exc))
        if errors:
            report.outcome = "failed"
            report.longrepr = "\n".join(errors)
            report.result = []
    return report


def pytest_itemcollected(item: pytest.Item) -> None:
    """Give tests that use the fixture without the marker a bare ``attack_test`` marker.

    So ``-m attack_test`` selects every attack test (and ``-m "not
    attack_test"`` none): pytest's ``-m`` sees markers only, and deselects in
    ``pytest_collection_modifyitems``, after this hook. A bare marker has no
    keywords, so the test's settings are unchanged. A test that gets the
    fixture only through ``request.getfixturevalue`` cannot be seen here.
    """
    if _is_attack_test(item) and item.get_closest_marker(MARKER) is None:
        item.add_marker(MARKER)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Store each attack test's settings and skip attack tests when disabled.

    Runs last so that markers added by conftest files or other plugins in this
    hook count too. Such late markers were not seen at collection, so an invalid
    one makes its test error at setup (see ``pytest_runtest_setup``) rather than
    be skipped or run on settings the author did not write.
    """
    run = get_session(config)
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if not _is_attack_test(item):
            continue
        try:
            item.stash[settings_key] = _item_settings(item, run)
        except SettingsError as exc:
            item.stash[marker_error_key] = _marker_error(item, exc)
            continue
        if not run.enabled:
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Error a test whose ``attack_test`` marker, added after collection, is invalid."""
    error = item.stash.get(marker_error_key, None)
    if error is not None:
        pytest.fail(error, pytrace=False)


# --------------------------------------------------------------------------- fixture


class AttackTestFixture:
    """What the ``attack_test`` fixture returns: the test's settings, and a callable.

    ``attack_test(model, x, y, attack=..., **overrides)`` runs the binarization
    test of ``attack`` and fails the test unless the attack passes it.

    Attributes:
        settings: the resolved :class:`AttackTestSettings` (marker kwargs merged
            over the run's defaults, plus the session seed).
        calls: how many times the fixture was called in this test.
        reports: the :class:`~pytest_attacktest.report.Report` of each call that
            finished (passed or not), for hooks and conftest code.
        records: the same as plain dicts (``Report.to_dict()`` plus ``seconds``,
            and ``claim`` when the test makes one), which travel to the xdist
            controller and into the JSON.
    """

    def __init__(
        self,
        settings: AttackTestSettings,
        *,
        node: pytest.Item | None = None,
        session: AttackTestSession | None = None,
        results: RunResults | None = None,
        worker_index: int | None = None,
    ) -> None:
        self.settings = settings
        self.calls = 0
        self.reports: list[Report] = []
        self.records: list[dict[str, Any]] = []
        self._node = node
        self._session = session
        self._results = results
        self._worker_index = worker_index

    @property
    def epsilon(self) -> float | None:
        """Threat-model radius, ``None`` when the marker gives none."""
        return self.settings.epsilon

    @property
    def norm(self) -> str:
        """Canonical norm name ("linf", "l2", ...)."""
        return self.settings.norm

    @property
    def p(self) -> float:
        """Exponent of the norm (``math.inf`` for Linf)."""
        return self.settings.p

    @property
    def threshold(self) -> float:
        """Minimum attack success rate for the test to pass."""
        return self.settings.threshold

    @property
    def samples(self) -> int:
        """Number of clean samples (the first ones of the inputs)."""
        return self.settings.samples

    @property
    def seed(self) -> int:
        """The session seed."""
        return self.settings.seed

    def __repr__(self) -> str:
        return f"AttackTestFixture({self.settings!r})"

    def __call__(
        self, model: Any, x: Any, y: Any = None, *, attack: Any, **overrides: object
    ) -> Report:
        """Run the binarization test of ``attack`` on ``model`` at the first samples of ``x``.

        ``overrides`` take the marker's keys (epsilon, norm, threshold,
        samples, claim, and the engine keywords of ``binarization_test``) and
        win over the marker. They are validated first, so a typo is reported
        as such.

        With a ``claim`` (the claim gate), the attack also runs on the real
        model at the same samples and the test passes only when the attack
        passes the binarization test *and* the robust accuracy measured by the
        plugin agrees with the claim (its 95% interval reaches
        ``[claim - tolerance, claim + tolerance]``;
        :mod:`pytest_attacktest.claims`); the failure says which check
        failed, or both.

        Returns:
            the :class:`~pytest_attacktest.report.Report`, when the test passed.

        Raises:
            SettingsError: invalid overrides, or no epsilon anywhere.
            AttackTestFailed: the attack missed (verdict "failed"), with or
                without a failed claim gate; a subclass of ``pytest.fail.Exception``.
            pytest.fail.Exception: the test could not be set up (verdict
                "error"), or the claim gate failed on an attack that passed.
        """
        self.calls += 1
        settings = apply_kwargs(self.settings, overrides)
        if settings.epsilon is None:
            raise SettingsError(
                "epsilon is missing: give it in the marker "
                "(@pytest.mark.attack_test(epsilon=8/255)) or in the call "
                "(attack_test(model, x, y, attack=..., epsilon=8/255))"
            )
        if settings.claim is not None and y is None:
            raise SettingsError(
                f"claim={settings.claim:g} needs the true labels to measure robust accuracy: "
                "call attack_test(model, x, y, attack=...) with y"
            )
        given = _length(x)
        x = x[: settings.samples]
        y = None if y is None else y[: settings.samples]
        fewer = _fewer_samples(settings.samples, given)
        if fewer is not None:
            from pytest_attacktest.errors import FewerSamplesWarning

            warnings.warn(FewerSamplesWarning(fewer), stacklevel=2)
        model, x, y = self._to_device(model, x, y)

        from pytest_attacktest.binarization import binarization_test

        tracker = self._progress()
        if tracker is not None:
            tracker.hold_done = settings.claim is not None  # the claim's attack comes first
        start = time.perf_counter()
        report = binarization_test(
            model,
            x,
            y,
            attack=attack,
            epsilon=settings.epsilon,
            norm=settings.norm,
            threshold=settings.threshold,
            seed=settings.seed,
            stacklevel=3,  # warnings point at the test that called the fixture
            progress=tracker,
            **settings.engine,  # type: ignore[arg-type]
        )
        if fewer is not None:
            report.warnings.append(fewer)
        claim = None
        if settings.claim is not None:
            claim = self._claim(model, x, y, attack, settings, report.verdict, tracker)
        seconds = time.perf_counter() - start
        self._record(report, seconds, claim)
        # A weak attack (verdict "failed") raises AttackTestFailed, also when a
        # claim failed with it: xfail(raises=AttackTestFailed) matches it and
        # nothing else (a setup error, a claim gate alone, bad settings).
        fail = AttackTestFailed if report.verdict == "failed" else pytest.fail.Exception
        if claim is not None and not claim.passed:
            setup = f"{ERROR_VERDICT}\n" if report.verdict == "error" else ""
            raise fail(f"{claim.summary()}\n{setup}{report.summary()}", pytrace=False)
        if report.verdict == "error":
            pytest.fail(f"{ERROR_VERDICT}\n{report.summary()}", pytrace=False)
        if not report.passed:
            raise AttackTestFailed(report.summary(), pytrace=False)
        return report

    def _claim(
        self,
        model: Any,
        x: Any,
        y: Any,
        attack: Any,
        settings: AttackTestSettings,
        verdict: str,
        tracker: progress.Tracker | None = None,
    ) -> ClaimResult:
        """The claim gate: measure robust accuracy on the real model, combine with ``verdict``.

        Its attack runs on every sample again, as long as the test's own; with
        live progress it shows as the phase "claim", before the test's "done".
        """
        from pytest_attacktest.claims import check_claim, measure_robust_accuracy

        assert settings.claim is not None
        assert settings.epsilon is not None
        passes = settings.engine.get("verify_passes", 1)
        with progress.claim_phase(tracker, int(x.shape[0])):
            measurement = measure_robust_accuracy(
                model,
                x,
                y,
                attack=attack,
                epsilon=settings.epsilon,
                p=settings.p,
                verify_passes=passes if isinstance(passes, int) else 1,
                valid_input=settings.engine.get("valid_input"),
            )
        tolerance = (
            DEFAULT_CLAIM_TOLERANCE if self._session is None else self._session.claim_tolerance
        )
        return check_claim(settings.claim, tolerance, measurement, verdict)

    def _progress(self) -> progress.Tracker | None:
        """The engine's progress callback when live progress shows in this run."""
        if self._node is None:
            return None
        return progress.tracker_for(self._node.config, self._node.nodeid)

    def _to_device(self, model: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
        device = None if self._session is None else self._session.device
        if device is None:
            return model, x, y
        from pytest_attacktest.devices import (
            DeviceError,
            DeviceNotAppliedWarning,
            to_device,
        )

        try:
            model, x, y, used = to_device(model, x, y, device, self._worker_index)
        except DeviceError as exc:
            pytest.fail(str(exc), pytrace=False)
        if used is None and self._results is not None and not self._results.device_warned:
            self._results.device_warned = True
            warnings.warn(
                DeviceNotAppliedWarning(
                    f"{DEVICE_FLAG} {device} is applied to PyTorch models only (a "
                    f"torch.nn.Module or an attacks.Model wrapping one); this "
                    f"{type(model).__name__} model runs where it is. Place TensorFlow and "
                    "JAX models on the device yourself. (Shown once per run.)"
                ),
                stacklevel=3,
            )
        return model, x, y

    def _record(self, report: Report, seconds: float, claim: ClaimResult | None = None) -> None:
        self.reports.append(report)
        record: dict[str, Any] = {**report.to_dict(), "seconds": seconds}
        if claim is not None:
            record["claim"] = claim.to_dict()
        self.records.append(plain(record))
        if self._node is not None and claim is not None:
            robust = claim.robust_accuracy
            self._node.user_properties.extend(
                [
                    ("attack_test_claim", claim.claim),
                    (
                        "attack_test_robust_accuracy",
                        "nan" if math.isnan(robust) else round(robust, 4),
                    ),
                    ("attack_test_claim_verdict", claim.verdict),
                ]
            )
        if self._node is not None:
            asr = report.asr
            self._node.user_properties.extend(
                [
                    ("attack_test_verdict", report.verdict),
                    ("attack_test_asr", "nan" if math.isnan(asr) else round(asr, 4)),
                    ("attack_test_n_inconclusive", report.n_inconclusive),
                    ("attack_test_seconds", round(seconds, 3)),
                ]
            )

    def problem(self) -> str | None:
        """Why a test that passed must fail anyway, or ``None``.

        A test passes only through a call that returned a passing report. The
        fixture's own failures cannot be caught by ``except Exception``
        (``pytest.fail`` raises a ``BaseException``), but an engine error can,
        and a test that never calls the fixture tests nothing.
        """
        if self.calls == 0:
            return NEVER_CALLED
        if len(self.records) < self.calls:
            return (
                f"attack_test was called {self.calls} time(s) but only {len(self.records)} "
                "call(s) finished: the test caught an exception raised by attack_test, so "
                "the attack was NOT tested"
            )
        failing = [r["verdict"] for r in self.records if r["verdict"] != "passed"]
        if failing:
            return (
                f"attack_test: {len(failing)} binarization test(s) did not pass "
                f"(verdict {', '.join(failing)}) but the test caught the failure"
            )
        claims = [r["claim"] for r in self.records if r.get("claim")]
        if any(c["verdict"] != "passed" for c in claims):
            return "attack_test: a claim gate failed but the test caught the failure"
        return None


def _length(x: Any) -> int | None:
    """How many inputs ``x`` holds (its first axis), or ``None`` when it cannot tell."""
    shape = getattr(x, "shape", None)
    if shape is not None and len(shape) > 0 and shape[0] is not None:
        return int(shape[0])
    try:
        return len(x)
    except TypeError:
        return None


def _fewer_samples(asked: int, given: int | None) -> str | None:
    """The note for a test given fewer inputs than ``samples`` asks for, or ``None``.

    Why said: a verdict (and a claim gate's interval) from 20 samples is much
    weaker evidence than one from the 64 the settings promise, and nothing
    else in the report tells that the inputs ran out.
    """
    if given is None or given >= asked:
        return None
    return (
        f"samples={asked} asked, {given} given: the binarization test (and a claim gate) "
        f"ran on {given} samples; pass at least {asked} inputs, or set samples={given} to "
        "mean it"
    )


#: Where the fixture of a test lives: ``item.stash[fixture_key]``, for the report hooks.
fixture_key = pytest.StashKey[AttackTestFixture]()


def attack_test_reports(item: pytest.Item) -> list[Report]:
    """The reports of ``item``'s fixture calls (empty when it made none), for conftest hooks."""
    fixture = item.stash.get(fixture_key, None)
    return [] if fixture is None else list(fixture.reports)


@pytest.fixture(name=MARKER)
def attack_test_fixture(request: pytest.FixtureRequest) -> AttackTestFixture:
    """The ``attack_test`` fixture; see :class:`AttackTestFixture`.

    Tests that request it are skipped at collection when attack tests are off;
    the skip here also covers ``request.getfixturevalue("attack_test")``, which
    collection cannot see. A test that requests it and never calls it fails.
    """
    run = get_session(request.config)
    if not run.enabled:
        pytest.skip(SKIP_REASON)
    node: pytest.Item = request.node
    settings = node.stash.get(settings_key, None)
    if settings is None:
        # Requested dynamically, so collection did not resolve it.
        try:
            settings = _item_settings(node, run)
        except SettingsError as exc:
            pytest.fail(_marker_error(node, exc), pytrace=False)
    fixture = AttackTestFixture(
        settings,
        node=node,
        session=run,
        results=request.config.stash[results_key],
        worker_index=_worker_index(request.config),
    )
    node.stash[fixture_key] = fixture
    return fixture


# --------------------------------------------------------------------------- reports


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail a passing test whose fixture tested nothing, and attach its results.

    ``tryfirst`` makes this the outermost wrapper, so it sees the report after
    other plugins (xfail handling included) have shaped it. The results go on
    the report as plain data so that xdist carries them to the controller.
    """
    report = yield
    fixture = item.stash.get(fixture_key, None)
    if fixture is None and not _is_attack_test(item):
        return report
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
    return report


def _user_error(call: pytest.CallInfo[None]) -> str | None:
    """The message of an :class:`~pytest_attacktest.errors.AttackTestError` the phase raised.

    Why only these: their message says what to change (no epsilon, no such
    feature layer, an attack object of another library), and a traceback
    through the engine would bury it. Any other exception may be a bug, in
    the plugin or in the user's model or attack, and keeps its traceback.
    """
    from pytest_attacktest.errors import AttackTestError

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


class _ResultsReporter:
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
