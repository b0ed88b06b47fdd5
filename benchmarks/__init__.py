"""The project's benchmarks: scripts that measure the engine and the attacks.

Run each from the repository root as a module, ``python -m benchmarks.<name>``
(``python benchmarks/<name>.py`` works too); the scripts import each other
as ``from benchmarks import common``. Not installed with the package: it
measures a checkout. Figures, with their commands, are in
``benchmarks/RESULTS.md``.
"""
