"""A small trained ResNet on upscaled digits, identical on every machine, for PyTorch and Keras.

Why: the digits MLP on a CPU is exact to the last bit, and hides what users
meet on GPUs (convolutions, BatchNorm, forward passes that change with the
batch). This convnet has the structure of the models users test (residual
blocks with BatchNorm, global average pooling, a linear head on 64-d
features) at a size a CPU affords. Its weights are trained once by
``python tests/convnets.py`` and shipped in ``tests/data/digits_resnet.npz``:
training a convnet is not bit-identical across thread counts and CPU kinds,
and every machine must test the same model. PyTorch and Keras load the same
weights and compute the same function.

Inputs: scikit-learn's digits, bilinearly upscaled from 8x8 to 32x32 and
repeated over 3 channels, in [0, 1], layout ``(N, 3, 32, 32)`` for both
frameworks (the Keras model transposes inside).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from digits_models import digits

WEIGHTS = Path(__file__).parent / "data" / "digits_resnet.npz"
WIDTHS = (16, 32, 64)
FEATURES = WIDTHS[-1]
SIZE = 32
#: Trained on all but the last ``HELD_OUT`` digits; tests use those.
HELD_OUT = 200
BN_EPS = 1e-5


def _upscale_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear interpolation ``(n_out, n_in)``, half-pixel centres (as ``align_corners=False``)."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        lo = int(np.floor(src))
        hi = min(lo + 1, n_in - 1)
        a[i, lo] += 1 - (src - lo)
        a[i, hi] += src - lo
    return a


@functools.cache
def images() -> tuple[np.ndarray, np.ndarray]:
    """All digits as float32 ``(1797, 3, 32, 32)`` in [0, 1], and their labels."""
    x, y = digits()
    a = _upscale_matrix(8, SIZE)
    up = np.einsum("ij,njk,lk->nil", a, x.reshape(-1, 8, 8).astype(np.float64), a)
    up = np.clip(up, 0.0, 1.0)
    return np.repeat(up[:, None], 3, axis=1).astype(np.float32), y


def held_out_images(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The last ``n`` images (never trained on)."""
    x, y = images()
    return x[-n:], y[-n:]


@functools.cache
def weights() -> dict[str, np.ndarray]:
    """The shipped weights by PyTorch state-dict name."""
    with np.load(WEIGHTS) as data:
        return {k: data[k] for k in data.files}


# ---------------------------------------------------------------------- PyTorch


def _torch_classes() -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):  # type: ignore[misc]
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout, eps=BN_EPS)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS)
                )

        def forward(self, x: Any) -> Any:
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    class DigitsResNet(nn.Module):  # type: ignore[misc]
        """Stem (stride 2), three residual blocks (strides 1, 2, 2), average pool, linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, WIDTHS[0], 3, 2, 1, bias=False),
                nn.BatchNorm2d(WIDTHS[0], eps=BN_EPS),
                nn.ReLU(),
            )
            blocks, cin = [], WIDTHS[0]
            for cout, stride in zip(WIDTHS, (1, 2, 2), strict=True):
                blocks.append(Block(cin, cout, stride))
                cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(FEATURES, 10)

        def forward(self, x: Any) -> Any:
            out = self.blocks(self.stem(x))
            return self.head(out.mean(dim=(2, 3)))

    return Block, DigitsResNet


def torch_convnet() -> Any:
    """The trained convnet as a fresh ``torch.nn.Module`` in eval mode (skips without torch)."""
    torch = pytest.importorskip("torch")
    _, net_class = _torch_classes()
    net = net_class()
    state = {k: torch.from_numpy(v.copy()) for k, v in weights().items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing)
    return net.eval()


# ---------------------------------------------------------------------- Keras


def keras_convnet() -> Any:
    """The same convnet as a Keras 3 functional model on ``(N, 3, 32, 32)`` inputs."""
    keras = pytest.importorskip("keras")
    w = weights()
    layers = keras.layers

    def conv(name: str, filters: int, kernel: int, stride: int, t: Any) -> Any:
        if kernel == 3:
            t = layers.ZeroPadding2D(1)(t)  # torch's symmetric padding, not Keras's "same"
        layer = layers.Conv2D(filters, kernel, stride, padding="valid", use_bias=False)
        t = layer(t)
        layer.set_weights([w[f"{name}.weight"].transpose(2, 3, 1, 0)])
        return t

    def bn(name: str, t: Any) -> Any:
        layer = layers.BatchNormalization(epsilon=BN_EPS)
        t = layer(t)
        layer.set_weights(
            [w[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
        )
        return t

    inputs = keras.Input((3, SIZE, SIZE))
    t = layers.Permute((2, 3, 1))(inputs)
    t = layers.ReLU()(bn("stem.1", conv("stem.0", WIDTHS[0], 3, 2, t)))
    cin = WIDTHS[0]
    for i, (cout, stride) in enumerate(zip(WIDTHS, (1, 2, 2), strict=True)):
        name = f"blocks.{i}"
        out = layers.ReLU()(bn(f"{name}.bn1", conv(f"{name}.conv1", cout, 3, stride, t)))
        out = bn(f"{name}.bn2", conv(f"{name}.conv2", cout, 3, 1, out))
        short = t
        if stride != 1 or cin != cout:
            short = bn(f"{name}.shortcut.1", conv(f"{name}.shortcut.0", cout, 1, stride, t))
        t = layers.ReLU()(layers.Add()([out, short]))
        cin = cout
    t = layers.GlobalAveragePooling2D()(t)
    head = layers.Dense(10)
    outputs = head(t)
    head.set_weights([w["head.weight"].T, w["head.bias"]])
    return keras.Model(inputs, outputs)


# ---------------------------------------------------------------------- training


def train(epochs: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """Train the convnet in PyTorch (one thread, seeded) and return its state dict as NumPy.

    Run once by hand (``python tests/convnets.py``); the result is shipped.
    Light augmentation (random shifts of up to 2 pixels) keeps the features
    from collapsing onto the training set.
    """
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    _, net_class = _torch_classes()
    net = net_class()
    x, y = images()
    xt, yt = torch.from_numpy(x[:-HELD_OUT]), torch.from_numpy(y[:-HELD_OUT])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * (len(xt) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt) - 63, 64):
            batch = order[start : start + 64]
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            inputs = torch.roll(xt[batch], shifts=shift, dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(net(inputs), yt[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()
    with torch.no_grad():
        test = net(torch.from_numpy(x[-HELD_OUT:])).argmax(1).numpy()
    print(f"held-out accuracy {(test == y[-HELD_OUT:]).mean():.3f}")
    return {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}


if __name__ == "__main__":
    state = train()
    WEIGHTS.parent.mkdir(exist_ok=True)
    np.savez_compressed(WEIGHTS, **{k: v for k, v in state.items() if v.ndim > 0})
    print(f"wrote {WEIGHTS} ({WEIGHTS.stat().st_size} bytes)")
