"""Feature extractors: the defended model up to the layer the readout replaces.

Why: the binarization test keeps the whole defended pipeline (preprocessing,
randomness, detectors, the backbone) and swaps only the final linear layer for
a new readout. By default the features are the *input* of the model's final
linear layer (PyTorch: found automatically, the last ``nn.Linear`` registered);
a named layer (its output) or a user callable works too, and NumPy models need
the callable because nothing can be found inside a function.

An extractor maps a native batch to a native ``(N, d)`` feature tensor and must
stay differentiable, since attacks backpropagate through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attacks.backend import model_framework

FeatureFn = Callable[[Any], Any]


class FeatureError(ValueError):
    """No usable feature layer: says what was looked for and how to pass one."""


def feature_extractor(model: Any, features: str | FeatureFn | None) -> FeatureFn:
    """A callable ``x -> (N, d)`` features for ``model``.

    Args:
        model: the defended model: native, an :class:`attacks.Model`, or an
            :class:`attacks.BPDA` (the inner model's features at the
            straight-through preprocessed input).
        features: ``None`` (PyTorch: the input of the final ``nn.Linear``), the
            name of a submodule (its flattened output), or a callable.

    Raises:
        FeatureError: nothing usable was found, with the way to pass features.
    """
    if callable(features):
        return _flattening(features)
    from attacks.adaptive import BPDA
    from attacks.models import Model

    if isinstance(model, BPDA):
        # Features of the inner model at the straight-through preprocessed input:
        # same values as the defense, BPDA gradients for the attack.
        inner = feature_extractor(model.inner, features)
        return lambda x: inner(model.through(x))
    if isinstance(model, Model):
        if type(model) is not Model:
            raise FeatureError(
                f"cannot find a feature layer inside {type(model).__name__}: pass "
                "features=callable(x) -> (N, d)"
            )
        model = model.native
    framework = model_framework(model)
    if framework == "torch":
        return _torch_extractor(model, features)
    if isinstance(features, str):
        raise FeatureError(
            f"features={features!r} names a layer, which works for PyTorch modules; for a "
            f"{framework or 'plain function'} model pass features=callable(x) -> (N, d)"
        )
    raise FeatureError(
        f"cannot find a feature layer in a {framework or 'plain-function'} model: pass "
        "features=callable(x) -> (N, d) returning the penultimate representation "
        "(the input of the final linear layer)"
    )


def _flattening(fn: FeatureFn) -> FeatureFn:
    def extract(x: Any) -> Any:
        out = fn(x)
        if not hasattr(out, "shape") or len(out.shape) < 2:
            raise FeatureError(
                f"the features callable must return a (N, d) tensor, got {type(out).__name__}"
                f" of shape {getattr(out, 'shape', None)}"
            )
        return out.reshape((out.shape[0], -1)) if len(out.shape) > 2 else out

    return extract


def _torch_extractor(model: Any, layer: str | None) -> FeatureFn:
    """Capture a torch layer's input (default: final nn.Linear) or a named layer's output."""
    import torch

    if layer is None:
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise FeatureError(
                f"{type(model).__name__} has no torch.nn.Linear layer to replace: pass "
                "features='name.of.layer' (its output is used) or features=callable(x) -> (N, d)"
            )
        module, use_input = linears[-1], True
    else:
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise FeatureError(
                f"{type(model).__name__} has no submodule {layer!r}; it has {names[:20]}"
            ) from None
        use_input = False

    captured: list[Any] = []

    def hook(_module: Any, inputs: tuple[Any, ...], output: Any) -> None:
        captured.append(inputs[0] if use_input else output)

    def extract(x: Any) -> Any:
        handle = module.register_forward_hook(hook)
        try:
            captured.clear()
            model(x)
        finally:
            handle.remove()
        if not captured:
            raise FeatureError(
                f"the feature layer {type(module).__name__} was not called in the forward pass"
            )
        out = captured[-1]
        captured.clear()
        return out.reshape(out.shape[0], -1)

    return extract
