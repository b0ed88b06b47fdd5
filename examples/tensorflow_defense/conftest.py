"""Fixtures of the example defense: the model and held-out test data."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).parent))

from tf_defense import digits, load_model


@pytest.fixture(scope="session")
def model() -> keras.Sequential:
    return load_model()


@pytest.fixture(scope="session")
def data() -> tuple[tf.Tensor, tf.Tensor]:
    """64 held-out digits (never seen in training) and their labels."""
    x, y = digits()
    return tf.constant(x[-64:]), tf.constant(y[-64:])
