"""Lets ``python benchmarks/<name>.py`` run like ``python -m benchmarks.<name>``.

Run as a file, a script has ``benchmarks/`` first on ``sys.path`` (where its
modules would shadow packages of the same name) and not the repository root
(so ``from benchmarks import common`` fails, and so do ``attacks`` and
``pytest_attacktest`` in a checkout without ``pip install -e .``). Each script
imports this module first when it has no package; it swaps the one folder for
the other. Under ``python -m`` it is never imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
