"""pytest-attacktest: prove that an adversarial-robustness evaluation is strong enough.

The pytest plugin lives in :mod:`pytest_attacktest.plugin` and is registered
through the ``pytest11`` entry point; importing this package imports no ML
framework.
"""

__version__ = "0.1.0"
