"""Fixtures of the example defense: the model and held-out test data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from torch_defense import QuantizedMLP, digits, load_model


@pytest.fixture(scope="session")
def model() -> QuantizedMLP:
    return load_model()


@pytest.fixture(scope="session")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """64 held-out digits (never seen in training) and their labels."""
    x, y = digits()
    return torch.from_numpy(x[-64:]), torch.from_numpy(y[-64:])
