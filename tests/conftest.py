"""Test-suite setup that must happen before any framework is imported.

Under pytest-xdist (CI runs ``-n 2`` on 2 cores) every worker would otherwise
start as many compute threads as there are cores, and the workers' thread
pools fight over the CPU: measured here, a torch-heavy test file ran about 4x
slower. One compute thread per worker is set through the environment, which
torch, TensorFlow and XLA read when they are first imported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

#: XLA's LLVM optimisation costs more than it saves on the tests' tiny models, and
#: JAX compiles every new shape of every operation: level 0 cut the CPU time of
#: the JAX test modules by a quarter (measured on XLA:CPU).
_XLA_FAST_COMPILE = "--xla_backend_optimization_level=0"

if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(variable, "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=false {_XLA_FAST_COMPILE}")
else:
    os.environ.setdefault("XLA_FLAGS", _XLA_FAST_COMPILE)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked ``torch``, ``tensorflow`` or ``jax`` when that framework is absent.

    Why: each tox env installs one framework (``numpy`` none), and a test that
    needs another must skip there, saying which, rather than fail on an import.
    Only the marker decides: an unmarked test that imports a missing framework
    still fails, so an accidental framework import is never hidden.
    """
    for name in ("torch", "tensorflow", "jax"):
        if item.get_closest_marker(name) is not None and importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")


@pytest.fixture
def plugin_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytester runs find the plugin through its entry point; make sure autoload is on."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of tiny models; the previous count is restored after it."""
    from helpers import torch_threads

    with torch_threads(1):
        yield
