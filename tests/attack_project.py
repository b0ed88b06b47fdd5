"""A small defense repository for end-to-end runs of ``pytest --attack-test``.

Shared by the plugin end-to-end, claim-gate, baseline and HTML-report tests: a conftest that
trains a digits MLP in PyTorch (the idea of ``tests/digits_models.py``; the
generated project cannot import our tests folder) and a helper that runs
pytest on it in a subprocess, with the plugin loaded through its entry point
as users get it. The attack's strength can be turned down from the outside
(``ATTACK_WEAKEN=1``): the attack then leaves every fourth sample untouched,
which still clears a 0.5 threshold but is a clear regression against a
baseline of the full attack.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

CONFTEST = """
    import functools
    import os

    import numpy as np
    import pytest


    @functools.cache
    def _digits():
        import torch
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = torch.from_numpy((x / 16.0).astype(np.float32))
        return x, torch.from_numpy(y.astype(np.int64))


    @functools.cache
    def _model():
        import torch

        torch.set_num_threads(1)
        torch.manual_seed(0)
        x, y = _digits()
        net = torch.nn.Sequential(
            torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(150):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[:-200]), y[:-200]).backward()
            opt.step()
        return net.eval()


    @pytest.fixture
    def model():
        return _model()


    @pytest.fixture
    def data():
        x, y = _digits()
        return x[-64:], y[-64:]


    @pytest.fixture
    def pgd():
        import attacks

        attack = attacks.PGD("linf", steps=10)
        if not os.environ.get("ATTACK_WEAKEN"):
            return attack

        def weakened(model, x, y, epsilon):
            adv = attack(model, x, y, epsilon=epsilon)
            adv[::4] = x[::4]  # every fourth sample left alone
            return adv

        return weakened
"""


def make_project(path: Path, tests: str) -> Path:
    """Write the conftest, ``test_attack.py`` (from ``tests``) and an empty ini file."""
    (path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (path / "test_attack.py").write_text(textwrap.dedent(tests))
    (path / "pytest.ini").write_text("[pytest]\n")
    return path


def run_pytest(
    path: Path, *args: str, env: dict[str, str] | None = None, new_session: bool = False
) -> pytest.RunResult:
    """``python -m pytest`` in ``path``, plugin from its entry point, repo options left out.

    ``new_session``: run it in a process group of its own, so a test inside may
    send SIGINT to its group (what Ctrl-C in a terminal does) without reaching us.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    environ.pop("ATTACK_WEAKEN", None)
    environ.update(env or {})
    cmd = [sys.executable, "-m", "pytest", "-p", "no:hypothesispytest", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    proc = subprocess.run(
        [*cmd, *args],
        cwd=path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=new_session,
    )
    return pytest.RunResult(
        proc.returncode,
        proc.stdout.splitlines(),
        proc.stderr.splitlines(),
        time.perf_counter() - start,
    )
