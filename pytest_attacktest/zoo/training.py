"""Zoo training in NumPy float64: the same weights on every machine and thread count.

Why not torch: a CPU matrix product in torch splits its reductions by thread
count and CPU kind, so the same seed trained other weights with 1 and 2
threads, and on another machine a discontinuous defense (k-WTA) then gave
another verdict. Here every step is a NumPy operation in float64 (its
rounding is about 1e-16 relative, far below float32's 6e-8), started from a
seeded NumPy generator, and the result is cast to float32 once at the end:
whatever order a BLAS library sums in, the weights the zoo ships are the same
float32 numbers. NumPy's BLAS splits a product across threads by output
blocks, not along the reduced dimension, and
``tests/test_zoo.py::test_zoo_training_is_independent_of_thread_count``
compares the weights of every defense trained with 1 and 2 threads bit for bit.

Every zoo network is a set of branches (a fixed input transformation, then
linear layers each followed by a 0/1-masking activation: ReLU or k-WTA)
whose last features are concatenated into one linear head, trained with
full-batch Adam on the mean cross-entropy, as ``tests/digits_models.py``
trains the tests' MLP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch

from pytest_attacktest.zoo.base import MLP, digits

#: An activation given as the 0/1 mask it multiplies its input by (ReLU, k-WTA):
#: its derivative is the same mask, so backpropagation needs nothing else.
Mask: TypeAlias = Callable[[np.ndarray], np.ndarray]
#: A fixed input transformation, drawn anew each epoch when random (its generator).
Transform: TypeAlias = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def relu_mask(pre: np.ndarray) -> np.ndarray:
    """1 where ``pre > 0`` (torch's ReLU, whose gradient at 0 is 0)."""
    return (pre > 0).astype(pre.dtype)


def k_winners_mask(k: int) -> Mask:
    """1 on the ``k`` largest entries per row, ties at the k-th value kept (the zoo's KWinners)."""

    def mask(pre: np.ndarray) -> np.ndarray:
        kth = np.partition(pre, pre.shape[1] - k, axis=1)[:, pre.shape[1] - k]
        return (pre >= kth[:, None]).astype(pre.dtype)

    return mask


def identity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """No transformation."""
    return x


@dataclass(frozen=True)
class Branch:
    """Linear layers of ``widths`` units, each followed by ``mask``, on ``transform(x)``."""

    widths: tuple[int, ...]
    mask: Mask = relu_mask
    transform: Transform = identity


#: One linear layer's float64 ``(weight (in, out), bias (out,))``.
Layer: TypeAlias = tuple[np.ndarray, np.ndarray]


@dataclass
class Trained:
    """The trained float32 layers: ``branches[i][j]`` is branch i's layer j; then the head."""

    branches: list[list[Layer]]
    head: Layer


def train(
    branches: Sequence[Branch],
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    epochs: int,
    lr: float = 1e-2,
    classes: int = 10,
) -> Trained:
    """Full-batch Adam on the mean cross-entropy; float64 throughout, float32 weights out.

    Weights and biases start uniform in ``+-1 / sqrt(fan_in)`` (``torch.nn.Linear``'s
    law) from ``numpy.random.default_rng(seed)``, which also draws the random
    transformations.
    """
    rng = np.random.default_rng(seed)
    inputs = np.asarray(x, dtype=np.float64)
    target = np.eye(classes)[np.asarray(y)]

    def layer(fan_in: int, fan_out: int) -> list[np.ndarray]:
        bound = 1 / fan_in**0.5
        return [rng.uniform(-bound, bound, (fan_in, fan_out)), rng.uniform(-bound, bound, fan_out)]

    params: list[np.ndarray] = []
    for branch in branches:
        fan_in = inputs.shape[1]
        for width in branch.widths:
            params += layer(fan_in, width)
            fan_in = width
    params += layer(sum(b.widths[-1] for b in branches), classes)
    adam = _Adam(params, lr)
    for _ in range(epochs):
        adam.step(_gradients(branches, params, inputs, target, rng))
    cast = [p.astype(np.float32) for p in params]
    layers = [(cast[i], cast[i + 1]) for i in range(0, len(cast), 2)]
    nested: list[list[Layer]] = []
    for branch in branches:
        nested.append(layers[: len(branch.widths)])
        layers = layers[len(branch.widths) :]
    return Trained(nested, layers[0])


def _gradients(
    branches: Sequence[Branch],
    params: list[np.ndarray],
    x: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Gradients of the mean cross-entropy, in ``params`` order (backpropagation by hand)."""
    layers = [(params[i], params[i + 1]) for i in range(0, len(params), 2)]
    # Forward: per branch, each layer's input and mask.
    tape: list[list[tuple[np.ndarray, np.ndarray]]] = []
    features = []
    index = 0
    for branch in branches:
        h = np.asarray(branch.transform(x, rng), dtype=np.float64)
        steps = []
        for _ in branch.widths:
            w, b = layers[index]
            index += 1
            pre = h @ w + b
            mask = branch.mask(pre)
            steps.append((h, mask))
            h = pre * mask
        tape.append(steps)
        features.append(h)
    joined = np.concatenate(features, axis=1)
    head_w, head_b = layers[index]
    logits = joined @ head_w + head_b
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    d_logits = (probs - target) / len(x)
    head_grads = [joined.T @ d_logits, d_logits.sum(axis=0)]
    d_joined = d_logits @ head_w.T
    # Backward, branch by branch.
    grads: list[np.ndarray] = []
    index = 0
    start = 0
    for branch, steps in zip(branches, tape, strict=True):
        width = branch.widths[-1]
        d_h = d_joined[:, start : start + width]
        start += width
        first = index
        index += len(branch.widths)
        branch_grads: list[list[np.ndarray]] = []
        for j in range(len(steps) - 1, -1, -1):
            h_in, mask = steps[j]
            d_pre = d_h * mask
            branch_grads.append([h_in.T @ d_pre, d_pre.sum(axis=0)])
            if j > 0:
                d_h = d_pre @ layers[first + j][0].T
        for pair in reversed(branch_grads):
            grads += pair
    return grads + head_grads


class _Adam:
    """Adam (Kingma and Ba, 2015) with the usual defaults, updating ``params`` in place."""

    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray], b1: float = 0.9, b2: float = 0.999) -> None:
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= self.lr * (m / (1 - b1**self.t)) / (np.sqrt(v / (1 - b2**self.t)) + 1e-8)


def load(linears: Sequence[torch.nn.Linear], layers: Sequence[Layer]) -> None:
    """Copy trained ``(weight (in, out), bias)`` pairs into ``torch.nn.Linear`` layers."""
    if len(linears) != len(layers):
        raise ValueError(f"{len(linears)} linear layers for {len(layers)} trained ones")
    with torch.no_grad():
        for linear, (w, b) in zip(linears, layers, strict=True):
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            linear.bias.copy_(torch.from_numpy(b))


def seed() -> int:
    """The training seed, which ``Defense.model(seed)`` gives torch (``torch.manual_seed``)."""
    return int(torch.initial_seed())


def principal_subspace(x: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(mean (64,), basis (components, 64))`` of ``x``'s top principal directions.

    In float64 from the covariance's eigenvectors; each direction's sign is
    fixed (its largest entry positive), since LAPACK libraries may return
    either sign, and entries below 1e-10 (rounding noise on pixels that never
    vary, which LAPACK kernels leave at different 1e-15s) are set to 0.
    """
    data = np.asarray(x, dtype=np.float64)
    mean = data.mean(axis=0)
    centred = data - mean
    values, vectors = np.linalg.eigh(centred.T @ centred)
    basis = vectors[:, np.argsort(values)[::-1][:components]].T
    signs = np.sign(basis[np.arange(components), np.abs(basis).argmax(axis=1)])
    basis = np.where(np.abs(basis) < 1e-10, 0.0, basis * signs[:, None])
    return mean.astype(np.float32), basis.astype(np.float32)


def training_digits() -> tuple[np.ndarray, np.ndarray]:
    """The training digits as NumPy arrays (float32 inputs, int64 labels)."""
    x, y = digits("train")
    return x.numpy(), y.numpy()


def fit_mlp(mlp: MLP, *, epochs: int, transform: Transform = identity) -> None:
    """Train an :class:`~pytest_attacktest.zoo.base.MLP` in place on ``transform(digits)``."""
    first, last = mlp.body[0], mlp.head
    assert isinstance(first, torch.nn.Linear)
    assert isinstance(last, torch.nn.Linear)
    x, y = training_digits()
    trained = train(
        [Branch((first.out_features,), transform=transform)], x, y, seed=seed(), epochs=epochs
    )
    load([first, last], [*trained.branches[0], trained.head])
