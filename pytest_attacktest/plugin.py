"""The pytest plugin: ``--attack-test``, the ``attack_test`` marker and fixture.

Registered through the ``pytest11`` entry point as ``attacktest`` (so
``-p no:attacktest`` turns it off), which means pytest imports this module on
*every* run in an environment where the package is installed. It therefore
imports no ML framework (torch, tensorflow, jax, eagerpy, numpy) and not the
``attacks`` package at module level; the fixture imports the binarization
engine when it is called, as Hypothesis does for its own pytest plugin.

This module holds the hooks; each delegates to the module of its concept:

- :mod:`~pytest_attacktest.cli_options`: the options table (flags, ini
  names, parsers, defaults, help), their registration, and their resolution
  into the run's :class:`~pytest_attacktest.session.AttackTestSession`;
- :mod:`~pytest_attacktest.collection`: which tests are attack tests, their
  markers checked at collection, skipped when attack tests are off;
- :mod:`~pytest_attacktest.fixture`: the ``attack_test`` fixture;
- :mod:`~pytest_attacktest.reporting`: the results, merged where reports
  are logged, compared with a baseline, saved, printed and written.

State lives in ``config.stash`` (the run's options under
:data:`~pytest_attacktest.session.session_key`, the merged results under
:data:`~pytest_attacktest.session.results_key`) and in ``item.stash`` (each
test's settings and fixture), not in module globals: pytester runs pytest
in-process several times, and xdist workers each build their own config.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from pytest_attacktest import bench, cli_options, progress
from pytest_attacktest.cli_options import (
    AUTOSAVE_FLAG,
    CLAIM_TOLERANCE_FLAG,
    COMPARE_FAIL_FLAG,
    COMPARE_FLAG,
    DEVICE_FLAG,
    FLAG,
    HTML_FLAG,
    INI_CLAIM_TOLERANCE,
    INI_DEVICE,
    INI_ENABLE,
    INI_HTML,
    INI_JAX_CACHE,
    INI_JSON,
    INI_SAMPLES,
    INI_SEED,
    INI_STORAGE,
    INI_THRESHOLD,
    JAX_CACHE_FLAG,
    JSON_FLAG,
    MARKER,
    SAMPLES_FLAG,
    SAVE_FLAG,
    SEED_FLAG,
    STORAGE_FLAG,
    THRESHOLD_FLAG,
)
from pytest_attacktest.collection import (
    SKIP_REASON,
    add_bare_marker,
    check_markers,
    marker_error_key,
    prepare_items,
    settings_key,
    setup_error,
)
from pytest_attacktest.devices import early_value, pin_xdist_worker, record_xdist_worker
from pytest_attacktest.engine.options import (
    DEFAULT_NORM,
    DEFAULT_SAMPLES,
    DEFAULT_THRESHOLD,
    ENGINE_KEYS,
)
from pytest_attacktest.fixture import (
    ERROR_VERDICT,
    NEVER_CALLED,
    AttackTestFixture,
    attack_test_reports,
    fixture_key,
)

# Imported under its fixture name's function so that pytest, which looks for
# fixtures on the registered plugin module, finds it here.
from pytest_attacktest.fixture import attack_test_fixture as attack_test_fixture
from pytest_attacktest.reporting import ResultsReporter, attach_results
from pytest_attacktest.session import (
    AttackTestSession,
    RunResults,
    get_session,
    results_key,
    session_key,
)

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
    "RunResults",
    "attack_test_reports",
    "fixture_key",
    "get_session",
    "marker_error_key",
    "results_key",
    "session_key",
    "settings_key",
]


def _is_worker(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker (which reports to a controller)."""
    return hasattr(config, "workerinput")


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

    jax_cache.enable(cli_options.resolve_path(config, str(raw), from_cli))


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Pin the worker's GPU and set JAX's cache before any conftest file imports a framework."""
    _pin_gpu(early_config)
    _jax_cache(early_config)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the flags and their ini twins, from the table in :mod:`.cli_options`."""
    cli_options.addoption(parser)


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
    session = cli_options.resolve_session(config)
    _pin_gpu(config)  # when the plugin was registered too late for the early hook
    session = record_xdist_worker(config, session, is_worker=_is_worker(config))
    config.stash[session_key] = session
    config.stash[results_key] = RunResults()
    if not _is_worker(config):
        config.pluginmanager.register(ResultsReporter(config), ResultsReporter.name)
    progress.configure(
        config,
        enabled=session.enabled,
        is_worker=_is_worker(config),
        mode=cli_options.value(config, "attack_test_progress"),
        interval=cli_options.value(config, "attack_test_progress_interval"),
    )
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


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Turn invalid ``attack_test`` markers into a collection error of their module."""
    report = yield
    check_markers(report)
    return report


def pytest_itemcollected(item: pytest.Item) -> None:
    """Give tests that use the fixture without the marker a bare marker, for ``-m``."""
    add_bare_marker(item)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Store each attack test's settings and skip attack tests when disabled.

    Runs last so that markers added by conftest files or other plugins in this
    hook count too (:func:`~pytest_attacktest.collection.prepare_items`).
    """
    prepare_items(config, items)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Error a test whose ``attack_test`` marker, added after collection, is invalid."""
    setup_error(item)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail a passing test whose fixture tested nothing, and attach its results.

    ``tryfirst`` makes this the outermost wrapper, so it sees the report after
    other plugins (xfail handling included) have shaped it.
    """
    report = yield
    attach_results(item, call, report)
    return report
