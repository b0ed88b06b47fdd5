"""``--attack-test-device``: move torch models and inputs before the test.

Why: a test file written on a laptop (``model = Net()``, CPU tensors) should
run on the CI's GPU unchanged, and under pytest-xdist each worker should take
its own GPU. Only PyTorch is handled: a module moves in place with
``.to(device)``. TensorFlow and JAX place arrays through their own device
scopes, which a plugin cannot apply around a user's model without wrapping
it; for those the option is not applied, and a warning says so once.

Nothing here imports torch: an object can only be a torch module or tensor
when torch is already in ``sys.modules``.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["DeviceError", "DeviceNotAppliedWarning", "spread_device", "to_device"]


class DeviceError(RuntimeError):
    """The model or the inputs cannot be moved to the requested device."""


class DeviceNotAppliedWarning(UserWarning):
    """``--attack-test-device`` was given but the model is not a torch module."""


def spread_device(device: str, worker_index: int | None, device_count: int) -> str:
    """Give each pytest-xdist worker its own GPU: bare ``"cuda"`` becomes ``cuda:i``.

    Worker ``gw<i>`` takes ``cuda:(i % device_count)``. An explicit index
    (``cuda:1``), another device type, a run without xdist or no visible GPU
    leave ``device`` unchanged.
    """
    if device != "cuda" or worker_index is None or device_count < 1:
        return device
    return f"cuda:{worker_index % device_count}"


def _torch_module(model: Any) -> Any:
    """The torch module to move: ``model`` itself or the one an ``attacks.Model`` wraps."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    models = sys.modules.get("attacks.models")
    if models is not None and isinstance(model, models.Model):
        model = model.native
    return model if isinstance(model, torch.nn.Module) else None


def to_device(
    model: Any, x: Any, y: Any, device: str, worker_index: int | None = None
) -> tuple[Any, Any, Any, str | None]:
    """Move a torch model (in place, as ``Module.to`` does) and torch inputs to ``device``.

    Returns:
        ``(model, x, y, used)``: ``used`` is the device moved to (after
        :func:`spread_device`), or ``None`` when the model is not a torch
        module and nothing was moved.

    Raises:
        DeviceError: the device does not exist for torch (e.g. ``cuda`` on a
            machine without a GPU), with what to do.
    """
    module = _torch_module(model)
    if module is None:
        return model, x, y, None
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"--attack-test-device {device}: torch sees no CUDA device "
            "(torch.cuda.is_available() is False); run on a machine with a GPU or pass "
            "--attack-test-device cpu"
        )
    if device.startswith("cuda"):
        device = spread_device(device, worker_index, torch.cuda.device_count())
    try:
        target = torch.device(device)
        module.to(target)
        moved = [v.to(target) if isinstance(v, torch.Tensor) else v for v in (x, y)]
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise DeviceError(f"--attack-test-device {device}: cannot move to it: {exc}") from exc
    return model, moved[0], moved[1], device
