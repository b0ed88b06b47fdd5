"""Small helpers shared by the test modules, kept in one place so they cannot drift.

Why: the same no-op attack, the same pytester runner and the same one-thread
setting were copied into many modules; a copy that changed (a runner that
forgot ``-p no:cacheprovider``, a thread setting never restored) would make one
module behave unlike the others.
"""

from __future__ import annotations

import contextlib
import importlib.util
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest


def identity(model: Any, x: Any, y: Any, epsilon: float) -> Any:
    """No attack at all: returns the inputs unchanged, so it must never pass."""
    return x


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads and restore the previous count.

    Why: the tests' models are tiny, so torch's thread pool costs more than it
    saves (several times slower on a loaded 2-core machine), and a test must not
    leave a global setting changed for the tests after it. Without torch it does
    nothing.
    """
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- pytester runs of the plugin

# Two tests that must be skipped without the flag, one that must always run. With the
# flag, the fixture's call fails before the engine (no epsilon anywhere): no ML import.
MARKED_AND_FIXTURE = """
    import pytest

    @pytest.mark.attack_test(epsilon=8/255, norm="linf")
    def test_marked():
        pass

    def test_uses_fixture(attack_test):
        attack_test(object(), [0.0], [0], attack=object())

    def test_plain():
        pass
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest in a subprocess in ``pytester.path``, plugin loaded by entry point.

    Use it with the ``plugin_autoload`` fixture (tests/conftest.py), which makes
    sure the entry point is loaded.
    """
    return pytester.runpytest_subprocess(
        "-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args
    )


def write(pytester: pytest.Pytester, source: str, name: str = "test_attack") -> None:
    """Write ``source`` (dedented) as the inner run's test module ``name``."""
    pytester.makepyfile(**{name: textwrap.dedent(source)})
