"""GPU-like numerics on a CPU: forward passes that change with the batch.

Why: on a GPU the same input gives slightly different outputs depending on
the batch it is in (cuDNN picks algorithms by batch size, TF32 convolutions,
reduced-precision autocast). The binarization test fits readouts in one set
of forward passes and verifies in others, so a test suite run on exact CPU
arithmetic cannot show whether its margins survive that. This helper adds a
deterministic relative perturbation to the output of every convolution and
linear layer: Gaussian noise of size ``r`` times the layer output's mean
magnitude, seeded by the layer, the batch's shape and a digest of the batch's
contents. The same batch gives the same outputs (as on a GPU with a fixed
algorithm); the same point in another batch (size, composition or order)
gives other outputs. The perturbation carries no gradient.

Calibrated against an H200 (PyTorch defaults, a ResNet-18 trained on digits):
``r = 4e-3`` on every conv output leaves as many setups inconclusive at the
old defaults as TF32 did there; bf16 autocast is harsher.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

#: The level that stands for TF32 convolutions (see the module docstring).
TF32_LIKE = 4e-3


def _seed(layer: int, shape: tuple[int, ...], digest: float) -> int:
    text = f"{layer}:{shape}:{digest:.6e}".encode()
    return zlib.crc32(text)


@contextlib.contextmanager
def torch_gpu_like(model: Any, r: float) -> Iterator[Any]:
    """Within the block, every ``Conv*d`` and ``Linear`` output of ``model`` is perturbed.

    The seed comes from the model's input batch (exact on every machine), not
    from a layer's input, whose last bits depend on the CPU: the same test
    sees the same perturbations everywhere. Forward hooks, removed on exit:
    the model is unchanged afterwards.
    """
    import torch

    handles = []
    layers = [
        m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.modules.conv._ConvNd)
    ]
    batch: dict[str, Any] = {}

    def record(module: Any, inputs: Any) -> None:
        x = inputs[0].detach().double()
        batch["shape"] = tuple(x.shape)
        batch["digest"] = float(x.sum()) + float(x.abs().sum() * 0.5) + float(x[0].sum())

    def hook(index: int) -> Any:
        def perturb(module: Any, inputs: Any, output: Any) -> Any:
            with torch.no_grad():
                seed = _seed(index, batch["shape"], batch["digest"])
                generator = torch.Generator().manual_seed(seed)
                noise = torch.randn(output.shape, generator=generator, dtype=torch.float64)
                scale = r * float(output.detach().abs().mean())
                noise = (noise * scale).to(output.dtype)
            return output + noise

        return perturb

    try:
        handles.append(model.register_forward_pre_hook(record))
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(hook(i)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def keras_gpu_like(model: Any, r: float) -> Any:
    """A copy of a Keras functional model with perturbed ``Conv2D`` and hidden ``Dense`` outputs.

    The copy shares the original's weights; the original is not changed.
    """
    import keras
    import tensorflow as tf

    counter = iter(range(10**6))

    class Perturbed(keras.layers.Layer):  # type: ignore[misc]
        def __init__(self, inner: Any, index: int) -> None:
            super().__init__(name=f"gpu_like_{inner.name}")
            self.inner, self.index = inner, index

        def call(self, x: Any) -> Any:
            out = self.inner(x)
            stop = tf.stop_gradient
            flat = tf.cast(stop(x), tf.float64)
            digest = tf.reduce_sum(flat) + tf.reduce_sum(tf.abs(flat))
            mixed = tf.cast(tf.math.floormod(digest * 1e6, 2.0**31), tf.int64)
            seed = tf.stack([tf.cast(self.index * 7919 + tf.shape(x)[0], tf.int64), mixed])
            noise = tf.random.stateless_normal(tf.shape(out), seed, dtype=tf.float64)
            scale = r * tf.reduce_mean(tf.abs(tf.cast(stop(out), tf.float64)))
            return out + tf.cast(noise * scale, out.dtype)

    # The output layer stays as it is: the binarization test replaces it, and
    # its feature finder looks for a plain final Dense.
    head = model.layers[-1]

    def clone(layer: Any) -> Any:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense) and layer is not head:
            return Perturbed(layer, next(counter))
        return layer

    return keras.models.clone_model(model, clone_function=clone)


def relative_noise(reference: np.ndarray, other: np.ndarray) -> float:
    """Largest difference of two logit arrays, relative to the reference's largest magnitude."""
    return float(np.abs(reference - other).max() / max(np.abs(reference).max(), 1e-30))
