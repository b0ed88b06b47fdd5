"""The layers of the code base, checked: attacks/ <- pytest_attacktest/engine/ <- the pytest side.

``attacks`` knows nothing of pytest or of this package; the engine
(``pytest_attacktest.engine``) is usable without pytest and imports nothing of
the plugin's side. Checked on the source (every import statement, also those
inside functions) and, for the engine, on what importing it loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (absolute imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _is_pytest(name: str) -> bool:
    return name.split(".")[0] in ("pytest", "_pytest", "xdist")


@pytest.mark.parametrize("path", _sources("attacks"), ids=lambda p: p.name)
def test_attacks_import_neither_pytest_nor_the_plugin(path: Path) -> None:
    bad = sorted(n for n in _imports(path) if _is_pytest(n) or n.startswith("pytest_attacktest"))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", _sources("pytest_attacktest/engine"), ids=lambda p: p.name)
def test_the_engine_imports_neither_pytest_nor_the_pytest_side(path: Path) -> None:
    own = [n for n in _imports(path) if n.startswith("pytest_attacktest")]
    outside = [n for n in own if not n.startswith("pytest_attacktest.engine")]
    # ``from pytest_attacktest import engine`` names the package itself: allowed.
    outside = [n for n in outside if n not in ("pytest_attacktest", "pytest_attacktest.engine")]
    bad = sorted(n for n in _imports(path) if _is_pytest(n)) + sorted(outside)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_running_the_engine_loads_no_pytest() -> None:
    code = (
        "import sys\n"
        "import pytest_attacktest.engine.binarization, pytest_attacktest.engine.claims\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
