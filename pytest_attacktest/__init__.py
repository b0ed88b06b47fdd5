"""pytest-attacktest: prove that an adversarial-robustness evaluation is strong enough.

The pytest plugin lives in :mod:`pytest_attacktest.plugin` and is registered
through the ``pytest11`` entry point, so pytest imports this package on every
run: it imports no ML framework (nor NumPy) until one of the engine's names is
used. ``from pytest_attacktest import binarization_test`` loads the engine.
``AttackTestFailed`` (what a weak attack's test fails with, for
``xfail(raises=...)``) imports pytest only; ``AttackTestError`` (the base of
every setup error the engine raises: bad settings, inputs, feature layers,
attack objects) imports nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AttackTestError",
    "AttackTestFailed",
    "Report",
    "SampleResult",
    "binarization_test",
]

if TYPE_CHECKING:
    from pytest_attacktest.engine.binarization import binarization_test
    from pytest_attacktest.engine.errors import AttackTestError
    from pytest_attacktest.engine.report import Report, SampleResult
    from pytest_attacktest.outcomes import AttackTestFailed


def __getattr__(name: str) -> Any:
    """Import the engine lazily (PEP 562): the plugin must stay light."""
    if name == "binarization_test":
        from pytest_attacktest.engine.binarization import binarization_test

        return binarization_test
    if name == "AttackTestError":
        from pytest_attacktest.engine.errors import AttackTestError

        return AttackTestError
    if name == "AttackTestFailed":
        from pytest_attacktest.outcomes import AttackTestFailed

        return AttackTestFailed
    if name in ("Report", "SampleResult"):
        from pytest_attacktest.engine import report

        return getattr(report, name)
    raise AttributeError(f"module 'pytest_attacktest' has no attribute {name!r}")
