"""How the engine's forward passes reach the model: memory format and opt-in reduced precision.

Why: feature extraction is most of a test's time at ImageNet size (hundreds
of forward passes per sample), so it should run at the model's own speed.

- **Memory format.** A torch model converted to ``channels_last`` (the fast
  layout for convolutions on tensor cores) gets its inputs in that layout
  too; otherwise every block would be converted inside the first
  convolution. The values are the same; only the strides differ.
- **Reduced precision** (``feature_dtype="bfloat16"`` or ``"float16"``, off
  by default): the training points' features are extracted under
  ``torch.autocast``, returned in the input's dtype. Only those: the noise
  measurement, the guarantee, the attack and the verification keep full
  precision, so the difference between the reduced-precision features the
  readout is fitted on and the full-precision ones the attack meets is part
  of the measured forward-pass noise, and the readout's margins cover it. A
  sample whose margins cannot cover it is inconclusive, never a false pass.
  PyTorch only: JAX and Keras models choose their precision themselves.

Nothing here imports torch unless the model is a torch module already.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["FEATURE_DTYPES", "channels_last_inputs", "reduced_precision", "uses_channels_last"]

#: Accepted ``feature_dtype`` values (``None`` and ``"float32"``: full precision).
FEATURE_DTYPES = (None, "float32", "bfloat16", "float16")

Forward = Callable[[Any], Any]


def _torch_module(model: Any) -> Any:
    """The torch module behind ``model`` (native, an :class:`attacks.Model`, a wrapper), or None."""
    from attacks import backend

    return backend.torch_module(model)


def uses_channels_last(model: Any) -> bool:
    """Whether a torch model's convolution weights are in ``channels_last`` layout.

    A weight counts when it is channels-last contiguous and not plain
    contiguous (a 1x1 kernel is both, and says nothing).
    """
    module = _torch_module(model)
    if module is None:
        return False
    import torch

    return any(
        param.ndim == 4
        and not param.is_contiguous()
        and param.is_contiguous(memory_format=torch.channels_last)
        for param in module.parameters()
    )


def channels_last_inputs(model: Any, forward: Forward) -> Forward:
    """``forward``, given its 4-D torch inputs in ``channels_last`` when the model is.

    Returns ``forward`` itself for every other model, so nothing changes there.
    """
    if not uses_channels_last(model):
        return forward
    import torch

    def run(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return forward(x)

    return run


def reduced_precision(model: Any, forward: Forward, dtype: str | None) -> Forward:
    """``forward`` under ``torch.autocast(dtype)``, its output cast back to the input's dtype.

    ``dtype`` ``None`` or ``"float32"`` returns ``forward`` unchanged.

    Raises:
        ValueError: a reduced ``dtype`` for a model that is not a torch module,
            or an unknown ``dtype``; saying what to do.
    """
    if dtype not in FEATURE_DTYPES:
        raise ValueError(
            f"feature_dtype must be one of {', '.join(map(repr, FEATURE_DTYPES))}, got {dtype!r}"
        )
    if dtype is None or dtype == "float32":
        return forward
    if _torch_module(model) is None and getattr(model, "framework", None) != "torch":
        raise ValueError(
            f"feature_dtype={dtype!r} runs feature extraction under torch.autocast, for PyTorch "
            "models; for a JAX or Keras model leave it unset (full precision) or run the model "
            "in reduced precision yourself"
        )
    import torch

    autocast_dtype = getattr(torch, dtype)

    def run(x: Any) -> Any:
        with torch.autocast(x.device.type, dtype=autocast_dtype):
            out = forward(x)
        return out.to(x.dtype) if out.is_floating_point() else out

    return run
