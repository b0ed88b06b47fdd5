"""Which tests are attack tests, and their ``attack_test`` markers checked at collection.

A test is an attack test when it carries the ``attack_test`` marker or uses
the ``attack_test`` fixture. Its markers (module, class, function: the closest
wins) are merged into its :class:`~pytest_attacktest.engine.options.AttackTestSettings`
at collection, so a typo in a marker shows up in the everyday run, not only in
the run that finally enables attack tests. The hooks in
:mod:`pytest_attacktest.plugin` call the functions here. Nothing here imports
an ML framework.
"""

from __future__ import annotations

import pytest

from pytest_attacktest.cli_options import FLAG, INI_ENABLE, MARKER
from pytest_attacktest.engine.options import (
    CORE_KEYS,
    AttackTestSettings,
    SettingsError,
    resolve_settings,
)
from pytest_attacktest.session import AttackTestSession, get_session

__all__ = [
    "SKIP_REASON",
    "add_bare_marker",
    "check_markers",
    "is_attack_test",
    "item_settings",
    "marker_error",
    "marker_error_key",
    "prepare_items",
    "settings_key",
    "setup_error",
]

SKIP_REASON = f"attack test: run with {FLAG} (or set {INI_ENABLE} = true in the ini file) to run it"

#: Where each attack test's resolved settings live: ``item.stash[settings_key]``,
#: filled at collection for every item that carries the marker or uses the fixture.
settings_key = pytest.StashKey[AttackTestSettings]()

#: Message for a test whose marker became invalid after collection (see
#: :func:`prepare_items`); such a test errors at setup.
marker_error_key = pytest.StashKey[str]()


def is_attack_test(item: pytest.Item) -> bool:
    """True for a test that carries the ``attack_test`` marker or uses the fixture."""
    fixturenames: tuple[str, ...] | list[str] = getattr(item, "fixturenames", ())
    return item.get_closest_marker(MARKER) is not None or MARKER in fixturenames


def item_settings(item: pytest.Item, session: AttackTestSession | None) -> AttackTestSettings:
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


def marker_error(item: pytest.Item, exc: SettingsError) -> str:
    """The error of a test whose marker is invalid: its id, then what is wrong."""
    return f"{item.nodeid}: invalid {MARKER} marker: {exc}"


def check_markers(report: pytest.CollectReport) -> None:
    """Turn invalid ``attack_test`` markers into a collection error of their module.

    Markers are checked even when attack tests are off: a typo must show up in
    the everyday run, not only in the run that finally enables them. A
    collection error (rather than a ``UsageError`` from a later hook) names each
    bad test, stops the run before anything expensive starts, and reaches the
    controller intact under pytest-xdist, where workers collect.
    """
    if not report.passed:
        return
    errors: list[str] = []
    for node in report.result:
        if isinstance(node, pytest.Item) and is_attack_test(node):
            try:
                item_settings(node, None)
            except SettingsError as exc:
                errors.append(marker_error(node, exc))
    if errors:
        report.outcome = "failed"
        report.longrepr = "\n".join(errors)
        report.result = []


def add_bare_marker(item: pytest.Item) -> None:
    """Give a test that uses the fixture without the marker a bare ``attack_test`` marker.

    So ``-m attack_test`` selects every attack test (and ``-m "not
    attack_test"`` none): pytest's ``-m`` sees markers only, and deselects in
    ``pytest_collection_modifyitems``, after ``pytest_itemcollected``. A bare
    marker has no keywords, so the test's settings are unchanged. A test that
    gets the fixture only through ``request.getfixturevalue`` cannot be seen here.
    """
    if is_attack_test(item) and item.get_closest_marker(MARKER) is None:
        item.add_marker(MARKER)


def prepare_items(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Store each attack test's settings and skip attack tests when disabled.

    Called last in ``pytest_collection_modifyitems`` so that markers added by
    conftest files or other plugins in that hook count too. Such late markers
    were not seen at collection, so an invalid one makes its test error at
    setup (:func:`setup_error`) rather than be skipped or run on settings the
    author did not write.
    """
    run = get_session(config)
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if not is_attack_test(item):
            continue
        try:
            item.stash[settings_key] = item_settings(item, run)
        except SettingsError as exc:
            item.stash[marker_error_key] = marker_error(item, exc)
            continue
        if not run.enabled:
            item.add_marker(skip)


def setup_error(item: pytest.Item) -> None:
    """Error a test whose ``attack_test`` marker, added after collection, is invalid."""
    error = item.stash.get(marker_error_key, None)
    if error is not None:
        pytest.fail(error, pytrace=False)
