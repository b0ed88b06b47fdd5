"""The plugin's options as one table, and how a run's options are resolved from it.

Why a table: each option is a command-line flag, often an ini twin, a parser
shared by both, a default and a help text. Spelled out by hand they drift
apart (a flag without its ini twin, a help that names a stale default, a
resolution that forgets the ini file). Here each option is one
:class:`CliOption` row of :data:`OPTIONS`; :func:`addoption` registers the
flags and ini names from it, and :func:`lookup` resolves any of them the same
way: the command line wins over the ini file, which wins over the default.
Path options resolve relative to where they were given (:func:`resolve_path`).

The flags default to ``None`` so "not given" differs from "given", as in
pytest-timeout. Values go through the parsers of
:mod:`pytest_attacktest.engine.options` (and the progress and baseline parsers), so
a bad value is a usage error naming the flag or the ini option. Options
without an ini name are the run's actions (save, compare, bench), not
settings a project keeps in its ini file.

Nothing here imports an ML framework.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from pytest_attacktest.baselines import (
    DEFAULT_STORAGE,
    CompareFail,
    autosave_name,
    parse_baseline_name,
    parse_compare_fail,
    parse_compare_name,
)
from pytest_attacktest.engine.claims import DEFAULT_CLAIM_TOLERANCE
from pytest_attacktest.engine.options import (
    DEFAULT_SAMPLES,
    DEFAULT_THRESHOLD,
    parse_claim_tolerance,
    parse_device,
    parse_json_path,
    parse_samples,
    parse_seed,
    parse_threshold,
)
from pytest_attacktest.progress import (
    DEFAULT_INTERVAL,
    INI_INTERVAL,
    INI_PROGRESS,
    PROGRESS_FLAG,
    parse_interval,
    parse_mode,
)
from pytest_attacktest.session import AttackTestSession

__all__ = [
    "AUTOSAVE_FLAG",
    "BENCH_FLAG",
    "BENCH_JSON_FLAG",
    "BENCH_MD_FLAG",
    "CLAIM_TOLERANCE_FLAG",
    "COMPARE_FAIL_FLAG",
    "COMPARE_FLAG",
    "DEVICE_FLAG",
    "FLAG",
    "GROUP",
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
    "OPTIONS",
    "SAMPLES_FLAG",
    "SAVE_FLAG",
    "SEED_FLAG",
    "STORAGE_FLAG",
    "THRESHOLD_FLAG",
    "CliOption",
    "addoption",
    "lookup",
    "option_named",
    "path_value",
    "resolve_path",
    "resolve_session",
    "value",
]

MARKER = "attack_test"
GROUP = "attacktest"
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
BENCH_FLAG = "--attack-bench"
BENCH_JSON_FLAG = "--attack-bench-json"
BENCH_MD_FLAG = "--attack-bench-md"
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


@dataclass(frozen=True)
class CliOption:
    """One option: its flag and ini twin, how its value is parsed, its default and help.

    Attributes:
        dest: the name in ``config.option`` (also the key of :func:`lookup`).
        flag: the command-line flag, or ``None`` for an ini-only option.
        ini: the ini name, or ``None`` for a command-line-only option.
        help: the flag's help (or the ini's, for an ini-only option).
        ini_help: the ini option's help.
        parse: parses a value given as text, on the command line and in the
            ini file alike; raises ``argparse.ArgumentTypeError``. ``None``
            keeps the text.
        default: the value when neither the command line nor the ini file gives one.
        path: a path, made absolute by :func:`resolve_path`.
        action, nargs, const, metavar: as for ``argparse``.
        ini_type: pytest's ini type ("string" or "bool").
    """

    dest: str
    flag: str | None
    ini: str | None
    help: str
    ini_help: str = ""
    parse: Callable[[str], Any] | None = None
    default: Any = None
    path: bool = False
    action: str = "store"
    nargs: str | None = None
    const: str | None = None
    metavar: str | None = None
    ini_type: Literal["string", "bool"] = "string"


OPTIONS: tuple[CliOption, ...] = (
    CliOption(
        "attack_test",
        FLAG,
        INI_ENABLE,
        action="store_true",
        ini_type="bool",
        default=False,
        help=f"Run tests marked {MARKER} or using the {MARKER} fixture; "
        f"without it they are skipped. Same as ini {INI_ENABLE} = true.",
        ini_help=f"Run attack tests, as {FLAG} does. Default: false.",
    ),
    CliOption(
        "attack_test_seed",
        SEED_FLAG,
        INI_SEED,
        parse=parse_seed,
        default=0,
        metavar="SEED",
        help=f"Seed for sampling and attacks, an integer >= 0; overrides ini {INI_SEED}. "
        "Default: 0.",
        ini_help=f"Seed for attack tests, overridden by {SEED_FLAG}. Default: 0.",
    ),
    CliOption(
        "attack_test_samples",
        SAMPLES_FLAG,
        INI_SAMPLES,
        parse=parse_samples,
        default=DEFAULT_SAMPLES,
        metavar="N",
        help="Clean samples per attack test (the fixture uses the first N of the inputs it "
        f"gets); a marker's samples= wins. Overrides ini {INI_SAMPLES}. "
        f"Default: {DEFAULT_SAMPLES}.",
        ini_help=f"Clean samples per attack test, overridden by {SAMPLES_FLAG}. "
        f"Default: {DEFAULT_SAMPLES}.",
    ),
    CliOption(
        "attack_test_threshold",
        THRESHOLD_FLAG,
        INI_THRESHOLD,
        parse=parse_threshold,
        default=DEFAULT_THRESHOLD,
        metavar="T",
        help="Minimum attack success rate in (0, 1] for an attack test to pass; a marker's "
        f"threshold= wins. Overrides ini {INI_THRESHOLD}. Default: {DEFAULT_THRESHOLD}.",
        ini_help=f"Minimum attack success rate, overridden by {THRESHOLD_FLAG}. "
        f"Default: {DEFAULT_THRESHOLD}.",
    ),
    CliOption(
        "attack_test_device",
        DEVICE_FLAG,
        INI_DEVICE,
        parse=parse_device,
        metavar="DEVICE",
        help="Move PyTorch models and tensors to DEVICE (cpu, cuda, cuda:1) before each "
        "attack test; under xdist 'cuda' gives each worker its own GPU. Not applied to "
        f"other frameworks yet. Overrides ini {INI_DEVICE}. Default: leave them where they are.",
        ini_help=f"Device for PyTorch models in attack tests, overridden by {DEVICE_FLAG}.",
    ),
    CliOption(
        "attack_test_json",
        JSON_FLAG,
        INI_JSON,
        parse=parse_json_path,
        path=True,
        metavar="PATH",
        help="Write a JSON report of all attack tests (metadata, and per test its outcome "
        f"and binarization report) to PATH. Overrides ini {INI_JSON}.",
        ini_help=f"JSON report path (relative to the ini file), overridden by {JSON_FLAG}.",
    ),
    CliOption(
        "attack_test_claim_tolerance",
        CLAIM_TOLERANCE_FLAG,
        INI_CLAIM_TOLERANCE,
        parse=parse_claim_tolerance,
        default=DEFAULT_CLAIM_TOLERANCE,
        metavar="TOL",
        help=f"How far the robust accuracy measured by a test with {MARKER}(claim=...) may "
        "differ from the claim beyond its 95%% interval (on either side), in [0, 1). "
        f"Overrides ini {INI_CLAIM_TOLERANCE}. "
        f"Default: {DEFAULT_CLAIM_TOLERANCE:g}.",
        ini_help=f"Tolerance of claim gates, overridden by {CLAIM_TOLERANCE_FLAG}. "
        f"Default: {DEFAULT_CLAIM_TOLERANCE:g}.",
    ),
    CliOption(
        "attack_test_html",
        HTML_FLAG,
        INI_HTML,
        parse=parse_json_path,
        path=True,
        metavar="PATH",
        help="Write a self-contained HTML report (summary table, histograms, per-sample rows, "
        f"pictures of image inputs) to PATH. Overrides ini {INI_HTML}.",
        ini_help=f"HTML report path (relative to the ini file), overridden by {HTML_FLAG}.",
    ),
    CliOption(
        "attack_test_save",
        SAVE_FLAG,
        None,
        parse=parse_baseline_name,
        metavar="NAME",
        help="Save this run's attack-test figures as baseline NAME (NNNN_NAME.json in this "
        "machine's folder of the storage folder).",
    ),
    CliOption(
        "attack_test_autosave",
        AUTOSAVE_FLAG,
        None,
        action="store_true",
        help=f"Save a baseline after every run, named after the commit and the UTC time "
        f"(NNNN_<commit>_<time>.json, as pytest-benchmark's autosave); {SAVE_FLAG} NAME wins.",
    ),
    CliOption(
        "attack_test_compare",
        COMPARE_FLAG,
        None,
        parse=parse_compare_name,
        nargs="?",
        const="",
        metavar="NAME",
        help="Compare this run with the newest saved baseline, or with the newest one named "
        f"NAME (or its number); write {COMPARE_FLAG}=NAME before test paths.",
    ),
    CliOption(
        "attack_test_compare_fail",
        COMPARE_FAIL_FLAG,
        None,
        parse=parse_compare_fail,
        action="append",
        metavar="FIELD:LIMIT",
        help=f"With {COMPARE_FLAG}: fail the session when FIELD (asr, robust_accuracy, "
        "inconclusive, time) got worse than the baseline by more than LIMIT: N%% of the "
        "baseline's value, or an absolute number. Repeatable.",
    ),
    CliOption(
        "attack_test_jax_cache",
        JAX_CACHE_FLAG,
        INI_JAX_CACHE,
        path=True,
        metavar="DIR",
        help="Keep JAX's compiled programs in DIR across runs (XLA's persistent cache: the "
        "first JAX attack test of a run then compiles little). Process-wide, so your own "
        f"JAX programs are cached too. Overrides ini {INI_JAX_CACHE}.",
        ini_help=f"XLA compilation cache folder for JAX (relative to the ini file), overridden "
        f"by {JAX_CACHE_FLAG}.",
    ),
    CliOption(
        "attack_test_storage",
        STORAGE_FLAG,
        INI_STORAGE,
        parse=parse_json_path,
        path=True,
        metavar="DIR",
        help=f"Folder of saved baselines. Overrides ini {INI_STORAGE}. "
        f"Default: {DEFAULT_STORAGE} in the rootdir.",
        ini_help=f"Baseline folder (relative to the ini file), overridden by {STORAGE_FLAG}. "
        f"Default: {DEFAULT_STORAGE} in the rootdir.",
    ),
    CliOption(
        "attack_bench",
        BENCH_FLAG,
        None,
        metavar="SPEC",
        help="With --attack-test: run every defense of the zoo against every attack in SPEC "
        "(comma-separated: attacks classes with literal keywords such as PGD(steps=50), "
        "'adaptive', 'weak', or pkg.module:name) instead of the collected tests, and print a "
        "strength table. Samples: --attack-test-samples (at most 200).",
    ),
    CliOption(
        "attack_bench_json",
        BENCH_JSON_FLAG,
        None,
        path=True,
        metavar="PATH",
        help=f"With {BENCH_FLAG}: write the table as JSON to PATH.",
    ),
    CliOption(
        "attack_bench_md",
        BENCH_MD_FLAG,
        None,
        path=True,
        metavar="PATH",
        help=f"With {BENCH_FLAG}: write the table as Markdown to PATH.",
    ),
    CliOption(
        "attack_test_progress",
        PROGRESS_FLAG,
        INI_PROGRESS,
        parse=parse_mode,
        default="auto",
        nargs="?",
        const="on",
        metavar="MODE",
        help="Live progress of attack tests (phase, samples done, ETA): auto (on a terminal "
        "without -q), on (the flag alone), off. Under xdist the controller prints a line per "
        f"finished attack test instead. Overrides ini {INI_PROGRESS}. Default: auto.",
        ini_help=f"Live progress of attack tests: auto, on, off; overridden by {PROGRESS_FLAG}.",
    ),
    CliOption(
        "attack_test_progress_interval",
        None,
        INI_INTERVAL,
        parse=parse_interval,
        default=DEFAULT_INTERVAL,
        help=f"Seconds between a test's progress lines. Default: {DEFAULT_INTERVAL:g}.",
        ini_help=f"Seconds between a test's progress lines. Default: {DEFAULT_INTERVAL:g}.",
    ),
)

_BY_DEST = {option.dest: option for option in OPTIONS}


def option_named(dest: str) -> CliOption:
    """The row of :data:`OPTIONS` whose ``dest`` is ``dest`` (``KeyError`` if none)."""
    return _BY_DEST[dest]


def addoption(parser: pytest.Parser) -> None:
    """Register every flag of :data:`OPTIONS` in the plugin's group, then every ini name.

    Flags default to ``None`` (so :func:`lookup` tells "not given" from
    "given") and stay plain values, which xdist serialises. Ini options are
    "string", not "int", so that pytest 8 before 8.4 works; their text goes
    through the same parser as the command line's.
    """
    group = parser.getgroup(GROUP, "attacktest (binarization test of adversarial attacks)")
    for option in OPTIONS:
        if option.flag is None:
            continue
        kwargs: dict[str, Any] = {
            "action": option.action,
            "default": None,
            "dest": option.dest,
            "help": option.help,
        }
        if option.action != "store_true":
            kwargs["metavar"] = option.metavar
            if option.parse is not None:
                kwargs["type"] = option.parse
            if option.nargs is not None:
                kwargs["nargs"] = option.nargs
                kwargs["const"] = option.const
        group.addoption(option.flag, **kwargs)
    for option in OPTIONS:
        if option.ini is None:
            continue
        parser.addini(
            option.ini,
            type=option.ini_type,
            default=False if option.ini_type == "bool" else "",
            help=option.ini_help or option.help,
        )


def lookup(config: pytest.Config, dest: str) -> tuple[Any, str | None]:
    """The option's value and where it came from: ``"cli"``, ``"ini"`` or ``None`` (default).

    The command line wins over the ini file, the ini file over the default. An
    ini value that does not parse is a usage error naming the ini option.
    """
    option = _BY_DEST[dest]
    if option.flag is not None:
        cli = config.getoption(dest)
        if cli is not None:
            return cli, "cli"
    if option.ini is None:
        return option.default, None
    raw = config.getini(option.ini)
    if option.ini_type == "bool":
        return bool(raw), "ini"
    text = str(raw)
    if not text.strip():
        return option.default, None
    if option.parse is None:
        return text, "ini"
    try:
        return option.parse(text), "ini"
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"ini option {option.ini}: {exc}") from None


def value(config: pytest.Config, dest: str) -> Any:
    """The option's value: command line, else ini file, else the table's default."""
    return lookup(config, dest)[0]


def path_value(config: pytest.Config, dest: str) -> Path | None:
    """A path option made absolute (:func:`resolve_path`), or ``None`` when not given."""
    raw, source = lookup(config, dest)
    if raw is None:
        return None
    return resolve_path(config, str(raw), from_cli=source == "cli")


def resolve_path(config: pytest.Config, value: str, from_cli: bool) -> Path:
    """A path option's value made absolute.

    Relative to the invocation dir when it came from the command line, else to
    the ini file's dir (the invocation dir when there is no ini file).
    """
    base = config.invocation_params.dir
    if not from_cli and config.inipath is not None:
        base = config.inipath.parent
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _name(config: pytest.Config, dest: str) -> str:
    """How an error names the option: its flag when given on the command line, else its ini."""
    option = _BY_DEST[dest]
    if option.flag is not None and config.getoption(dest) is not None:
        return option.flag
    return f"ini option {option.ini}"


def unwritable_folder(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (created if missing), or ``None``.

    Checked before the first test, so that a report or baseline that cannot be
    written is a usage error at the start, not a loss at the end of a long
    run. Nothing is created here: the folder's nearest existing ancestor must
    be a folder this process may write into. A failure that this cannot
    foresee (a full disk) is still reported at the end (the results reporter).
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


def unwritable_file(path: Path) -> str | None:
    """Why the report file ``path`` cannot be written, or ``None`` (see ``unwritable_folder``)."""
    try:
        exists = path.exists()
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc})"
    if exists and not os.access(path, os.W_OK):
        return "the file exists and is not writable"
    return None if exists else unwritable_folder(path.parent)


def _file_option(config: pytest.Config, dest: str, example: str) -> Path | None:
    """A report file path; a directory or a path that cannot be written is a usage error.

    The error names the option (or ini option), the path and the problem.
    """
    path = path_value(config, dest)
    if path is None:
        return None
    name = _name(config, dest)
    if path.is_dir():
        raise pytest.UsageError(
            f"{name}: {path} is a directory; give a file name such as {example}"
        )
    problem = unwritable_file(path)
    if problem is not None:
        raise pytest.UsageError(
            f"{name}: cannot write the report to {path}: {problem}; give a path in a folder "
            "you can write to"
        )
    return path


def resolve_session(config: pytest.Config) -> AttackTestSession:
    """The run's :class:`AttackTestSession`, from the options; usage errors before any test."""
    enabled, source = lookup(config, "attack_test")
    enabled_by = FLAG if source == "cli" else ("ini" if enabled else None)
    seed: int = value(config, "attack_test_seed")
    samples: int = value(config, "attack_test_samples")
    threshold: float = value(config, "attack_test_threshold")
    tolerance: float = value(config, "attack_test_claim_tolerance")
    compare_name: str | None = value(config, "attack_test_compare")
    compare_fail: list[CompareFail] = value(config, "attack_test_compare_fail") or []
    if compare_fail and compare_name is None:
        raise pytest.UsageError(
            f"{COMPARE_FAIL_FLAG} needs {COMPARE_FLAG} (the baseline to compare with); save one "
            f"first with {SAVE_FLAG} NAME"
        )
    storage = path_value(config, "attack_test_storage")
    if storage is None:
        storage = config.rootpath / DEFAULT_STORAGE
    save_name: str | None = value(config, "attack_test_save")
    if save_name is None and value(config, "attack_test_autosave"):
        save_name = autosave_name(config.rootpath)
    problem = None if save_name is None else unwritable_folder(storage)
    if problem is not None:
        raise pytest.UsageError(
            f"{SAVE_FLAG} {save_name}: cannot save the baseline in {storage}: {problem}; "
            f"point {STORAGE_FLAG} at a folder you can write to"
        )
    return AttackTestSession(
        enabled=bool(enabled),
        enabled_by=enabled_by,
        seed=seed,
        samples=samples,
        threshold=threshold,
        device=value(config, "attack_test_device"),
        json_path=_file_option(config, "attack_test_json", "attack-tests.json"),
        claim_tolerance=tolerance,
        html_path=_file_option(config, "attack_test_html", "attack-tests.html"),
        storage=storage,
        save_name=save_name,
        compare=compare_name,
        compare_fail=tuple(compare_fail),
    )
