"""A persistent XLA compilation cache for JAX attack tests (``--attack-test-jax-cache DIR``).

Why: JAX compiles every eager operation once per shape and every jitted
program of the engine and the attacks once per process, and a pytest run is a
new process each time, so a short JAX attack test spends most of a fresh
process compiling (figures in ``benchmarks/RESULTS.md``). Opt-in, because
the setting is process-wide: it also caches the user's own JAX programs, in a
folder the user chose.

JAX reads these settings from the environment when it is imported, so the
plugin calls :func:`enable` before conftest files load (they may import JAX);
when JAX is already imported its config is updated as well. Nothing here
imports JAX.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["SETTINGS", "enable"]

#: JAX config name -> value; each is also read from the upper-case environment
#: variable. Every program is cached: the engine's are small and quick to
#: compile, below JAX's default thresholds (1 s of compilation), yet together
#: they are most of a first run's time.
SETTINGS = {
    "jax_persistent_cache_min_compile_time_secs": "0",
    "jax_persistent_cache_min_entry_size_bytes": "0",
}


def enable(folder: Path) -> None:
    """Cache XLA programs in ``folder`` (created if needed) for this process and its children."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {"jax_compilation_cache_dir": str(folder), **SETTINGS}
    for name, value in values.items():
        os.environ[name.upper()] = value
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.config.update("jax_compilation_cache_dir", str(folder))
        for name, value in SETTINGS.items():
            jax.config.update(name, float(value) if "secs" in name else int(value))
