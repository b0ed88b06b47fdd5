"""Snapshot and restore of a user's PyTorch model state around code we do not control.

Why: the binarization test runs the user's attack, and third-party libraries,
on the user's own module. Those may call ``.eval()`` or ``.train()``, switch
``requires_grad`` off, or update batch-norm statistics; a defense left in
another mode changes every later test of the session, so a verdict would
depend on test order. "Never change the user's model": everything reachable
from the model is recorded before and put back after.

Only PyTorch modules carry such state in a way we can see; Keras models are
always called with ``training=False`` and JAX and NumPy models are functions.
Parameter values themselves are not copied (a model's weights can be large,
and no attack path writes them); their ``requires_grad`` and ``.grad`` are.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["preserved", "state_of", "torch_modules"]


def torch_modules(model: Any) -> list[Any]:
    """The torch modules inside ``model``, looking through ``attacks.Model`` wrappers.

    Follows ``.native`` (``attacks.Model``), ``.inner``, ``.preprocess`` and
    ``.surrogate`` (``attacks.BPDA``, EOT and similar wrappers), ``.defended``
    (the binarized model) and a bound method's ``__self__``, so a model given
    in any of the forms the engine accepts is found.
    """
    if "torch" not in sys.modules:
        return []  # no model can hold a torch module; and no need to import attacks
    from attacks import backend

    return backend.torch_modules(model)


class _Snapshot:
    """Training flags, parameter flags and gradients, and buffer values of torch modules."""

    def __init__(self, modules: list[Any]) -> None:
        import torch

        self.training: list[tuple[Any, bool]] = []
        self.parameters: list[tuple[Any, str, Any, bool, Any]] = []
        self.buffers: list[tuple[Any, str, Any, Any]] = []
        seen: set[int] = set()
        with torch.no_grad():
            for root in modules:
                for module in root.modules():
                    if id(module) in seen:
                        continue
                    seen.add(id(module))
                    self.training.append((module, module.training))
                    for name, param in module._parameters.items():
                        if param is not None:
                            self.parameters.append(
                                (module, name, param, param.requires_grad, param.grad)
                            )
                    for name, buffer in module._buffers.items():
                        if buffer is not None:
                            self.buffers.append((module, name, buffer, buffer.detach().clone()))

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for module, training in self.training:
                module.training = training
            for module, name, param, requires_grad, grad in self.parameters:
                module._parameters[name] = param
                if param.requires_grad != requires_grad:
                    param.requires_grad_(requires_grad)
                param.grad = grad
            for module, name, buffer, value in self.buffers:
                module._buffers[name] = buffer
                if buffer.shape == value.shape:
                    buffer.copy_(value)
                else:  # resized in place (rare): give the original tensor its old value back
                    buffer.set_(value)


@contextlib.contextmanager
def preserved(model: Any) -> Iterator[None]:
    """Put every torch module inside ``model`` back as it was on exit (errors included)."""
    modules = torch_modules(model)
    if not modules:
        yield
        return
    snapshot = _Snapshot(modules)
    try:
        yield
    finally:
        snapshot.restore()


def state_of(model: Any) -> dict[str, Any]:
    """A comparable summary of the torch state inside ``model`` (for tests and checks).

    Training flag per module, ``requires_grad`` per parameter, and buffer
    values (as nested lists), keyed by qualified name.
    """
    state: dict[str, Any] = {}
    for k, root in enumerate(torch_modules(model)):
        for name, module in root.named_modules():
            state[f"{k}:{name}:training"] = module.training
        for name, param in root.named_parameters():
            state[f"{k}:{name}:requires_grad"] = param.requires_grad
        for name, buffer in root.named_buffers():
            state[f"{k}:{name}"] = buffer.detach().cpu().tolist()
    return state
