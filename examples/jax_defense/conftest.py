"""Fixtures of the example JAX defense: the model and held-out test data."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from jax_defense import QuantizedMLP, digits, load_model


@pytest.fixture(scope="session")
def model() -> QuantizedMLP:
    return load_model()


@pytest.fixture(scope="session")
def data() -> tuple[jax.Array, jax.Array]:
    """64 held-out digits (never seen in training) and their labels."""
    x, y = digits()
    return jnp.asarray(x[-64:]), jnp.asarray(y[-64:])
