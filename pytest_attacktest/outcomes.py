"""The exception a weak attack fails its test with: :class:`AttackTestFailed`.

Why a type of its own: a test that documents a known-weak evaluation is marked
``@pytest.mark.xfail(strict=True)``, and a bare ``xfail`` is satisfied by *any*
failure: a norm that differs between the attack and the marker, a feature layer
that cannot be found, a typo. Each of those would show as a green XFAIL while
the attack was never tested. ``xfail(strict=True, raises=AttackTestFailed)``
expects exactly the failure the test documents (the attack missed the
guaranteed adversarials, verdict ``"failed"``); anything else is a failure.

It subclasses pytest's own ``Failed`` (what ``pytest.fail`` raises), so it is
reported the same way, without a traceback, and like it is a ``BaseException``
that ``except Exception`` in a test cannot swallow. Importing it imports
pytest, and no ML framework.
"""

from __future__ import annotations

import pytest

__all__ = ["AttackTestFailed"]


class AttackTestFailed(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """The attack is too weak: it missed the binarization test's guaranteed adversarials.

    Raised by the ``attack_test`` fixture only for the verdict ``"failed"``;
    a test that could not be set up (verdict ``"error"``), a failed claim gate
    alone, and invalid settings fail otherwise, so that
    ``xfail(raises=AttackTestFailed)`` never mistakes them for a weak attack.
    """
