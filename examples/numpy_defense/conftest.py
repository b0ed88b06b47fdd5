"""Fixtures of the NumPy example defense: the model and held-out test data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from numpy_defense import QuantizedMLP, digits, load_model


@pytest.fixture(scope="session")
def model() -> QuantizedMLP:
    return load_model()


@pytest.fixture(scope="session")
def data() -> tuple[np.ndarray, np.ndarray]:
    """64 held-out digits (never seen in training) and their labels."""
    x, y = digits()
    return x[-64:], y[-64:]
