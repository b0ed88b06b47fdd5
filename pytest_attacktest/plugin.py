"""The pytest plugin: ``--attack-test``, the ``attack_test`` marker and fixture.

Registered through the ``pytest11`` entry point as ``attacktest`` (so
``-p no:attacktest`` turns it off), which means pytest imports this module on
*every* run in an environment where the package is installed. It therefore
imports no ML framework (torch, tensorflow, jax, eagerpy, numpy) and not the
``attacks`` package at module level; whatever needs them is imported inside the
function that uses it, as Hypothesis does for its own pytest plugin.

State lives in a :class:`AttackTestSession` kept in ``config.stash`` under
:data:`session_key`, and per-test settings in ``item.stash`` under
:data:`settings_key`, not in module globals: pytester runs pytest in-process
several times, and xdist workers each build their own config.

This version resolves options, validates markers and skips attack tests unless
enabled. The binarization engine is not here yet, so calling the fixture fails
the test instead of passing it: never a false pass.
"""

from __future__ import annotations

import argparse
from collections.abc import Generator
from dataclasses import dataclass
from typing import NoReturn

import pytest

from pytest_attacktest.options import (
    DEFAULT_NORM,
    DEFAULT_SAMPLES,
    DEFAULT_THRESHOLD,
    MARKER_KEYS,
    AttackTestSettings,
    SettingsError,
    apply_kwargs,
    parse_seed,
    resolve_settings,
)

__all__ = [
    "FLAG",
    "INI_ENABLE",
    "INI_SEED",
    "MARKER",
    "NOT_AVAILABLE",
    "SEED_FLAG",
    "SKIP_REASON",
    "AttackTestFixture",
    "AttackTestSession",
    "get_session",
    "marker_error_key",
    "session_key",
    "settings_key",
]

MARKER = "attack_test"
FLAG = "--attack-test"
SEED_FLAG = "--attack-test-seed"
INI_ENABLE = "attack_test"
INI_SEED = "attack_test_seed"

SKIP_REASON = f"attack test: run with {FLAG} (or set {INI_ENABLE} = true in the ini file) to run it"

NOT_AVAILABLE = (
    "attack_test: the binarization engine is not available in this version of "
    "pytest-attacktest, so the attack was NOT tested; this test fails rather than "
    "pass without evidence"
)


@dataclass(frozen=True)
class AttackTestSession:
    """Options of one pytest run, resolved once in ``pytest_configure``.

    Later parts (engine, reports, xdist merging) add their state here rather than
    to module globals, so two configs in one process never share it.

    Attributes:
        enabled: attack tests run (``--attack-test`` or ini ``attack_test = true``).
        enabled_by: what enabled them: ``"--attack-test"``, ``"ini"`` or ``None``.
        seed: the run's seed, from ``--attack-test-seed`` or ini ``attack_test_seed``.
    """

    enabled: bool
    enabled_by: str | None
    seed: int


#: Where :class:`AttackTestSession` lives: ``config.stash[session_key]``.
session_key = pytest.StashKey[AttackTestSession]()

#: Where each attack test's resolved settings live: ``item.stash[settings_key]``,
#: filled at collection for every item that carries the marker or uses the fixture.
settings_key = pytest.StashKey[AttackTestSettings]()

#: Message for a test whose marker became invalid after collection (see
#: ``pytest_collection_modifyitems``); such a test errors at setup.
marker_error_key = pytest.StashKey[str]()


def get_session(config: pytest.Config) -> AttackTestSession:
    """Return the run's :class:`AttackTestSession` (set in ``pytest_configure``)."""
    return config.stash[session_key]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--attack-test``, ``--attack-test-seed`` and their ini options.

    Both CLI options default to ``None`` so ``pytest_configure`` can tell "not
    given" from "given", and let the command line override the ini file, as
    pytest-timeout does. Defaults stay plain values: xdist serialises options.
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
    parser.addini(
        INI_ENABLE,
        type="bool",
        default=False,
        help=f"Run attack tests, as {FLAG} does. Default: false.",
    )
    # "string", not "int": pytest>=8 is supported and "int" arrived in 8.4; the
    # value goes through parse_seed like the command line's.
    parser.addini(
        INI_SEED,
        type="string",
        default="0",
        help=f"Seed for attack tests, overridden by {SEED_FLAG}. Default: 0.",
    )


def _resolve_session(config: pytest.Config) -> AttackTestSession:
    cli_enable: bool | None = config.getoption("attack_test")
    enabled_by: str | None
    if cli_enable:
        enabled, enabled_by = True, FLAG
    else:
        ini_enable = bool(config.getini(INI_ENABLE))
        enabled, enabled_by = ini_enable, ("ini" if ini_enable else None)

    cli_seed: int | None = config.getoption("attack_test_seed")
    if cli_seed is not None:
        seed = cli_seed
    else:
        ini_seed: str = config.getini(INI_SEED)
        try:
            seed = parse_seed(ini_seed)
        except argparse.ArgumentTypeError as exc:
            raise pytest.UsageError(f"ini option {INI_SEED}: {exc}") from None
    return AttackTestSession(enabled=enabled, enabled_by=enabled_by, seed=seed)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and resolve the session.

    The marker is registered even when attack tests are off, so
    ``--strict-markers`` accepts marked tests that are then skipped.
    """
    config.addinivalue_line(
        "markers",
        f"{MARKER}(epsilon=None, norm={DEFAULT_NORM!r}, threshold={DEFAULT_THRESHOLD}, "
        f"samples={DEFAULT_SAMPLES}): "
        "binarization test of an adversarial attack (epsilon: threat-model radius; "
        "norm: 'l1', 'l2', 'linf' or p >= 1; threshold: minimum attack success "
        "rate in (0, 1]; samples: number of clean samples). "
        f"Skipped unless {FLAG} or ini {INI_ENABLE} = true.",
    )
    config.stash[session_key] = _resolve_session(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say in the header that attack tests run, and with which seed, to reproduce a run."""
    session = config.stash.get(session_key, None)
    if session is None or not session.enabled:
        return []
    return [f"attacktest: enabled, seed={session.seed}"]


def _is_attack_test(item: pytest.Item) -> bool:
    fixturenames: tuple[str, ...] | list[str] = getattr(item, "fixturenames", ())
    return item.get_closest_marker(MARKER) is not None or MARKER in fixturenames


def _item_settings(item: pytest.Item, seed: int) -> AttackTestSettings:
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
                f"use keywords: {', '.join(MARKER_KEYS)}"
            )
    return resolve_settings((mark.kwargs for mark in markers), seed=seed)


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
                    _item_settings(node, seed=0)
                except SettingsError as exc:
                    errors.append(_marker_error(node, exc))
        if errors:
            report.outcome = "failed"
            report.longrepr = "\n".join(errors)
            report.result = []
    return report


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
            item.stash[settings_key] = _item_settings(item, run.seed)
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


class AttackTestFixture:
    """What the ``attack_test`` fixture returns: the test's settings, and a callable.

    ``attack_test(model, x, y, attack=..., **overrides)`` will run the
    binarization test of ``attack`` and fail the test when the attack misses.
    In this version the engine is missing and the call fails the test.

    Attributes:
        settings: the resolved :class:`AttackTestSettings` (marker kwargs merged
            over the defaults, plus the session seed).
        calls: how many times the fixture was called in this test.
    """

    def __init__(self, settings: AttackTestSettings) -> None:
        self.settings = settings
        self.calls = 0

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
        """Number of clean samples."""
        return self.settings.samples

    @property
    def seed(self) -> int:
        """The session seed."""
        return self.settings.seed

    def __repr__(self) -> str:
        return f"AttackTestFixture({self.settings!r})"

    def __call__(
        self, model: object, x: object, y: object, *, attack: object, **overrides: object
    ) -> NoReturn:
        """Run the binarization test of ``attack`` on ``model`` at ``x``, ``y``.

        ``overrides`` take the marker's keys and win over the marker. They are
        validated first, so a typo is reported as such.

        Raises:
            SettingsError: for invalid overrides.
            pytest.fail.Exception: always, in this version: the engine is missing.
        """
        del model, x, y, attack
        self.calls += 1
        apply_kwargs(self.settings, overrides)
        pytest.fail(NOT_AVAILABLE, pytrace=False)


@pytest.fixture(name=MARKER)
def attack_test_fixture(request: pytest.FixtureRequest) -> AttackTestFixture:
    """The ``attack_test`` fixture; see :class:`AttackTestFixture`.

    Tests that request it are skipped at collection when attack tests are off;
    the skip here also covers ``request.getfixturevalue("attack_test")``, which
    collection cannot see.
    """
    run = get_session(request.config)
    if not run.enabled:
        pytest.skip(SKIP_REASON)
    settings = request.node.stash.get(settings_key, None)
    if settings is None:
        # Requested dynamically, so collection did not resolve it.
        try:
            settings = _item_settings(request.node, run.seed)
        except SettingsError as exc:
            pytest.fail(_marker_error(request.node, exc), pytrace=False)
    return AttackTestFixture(settings)
