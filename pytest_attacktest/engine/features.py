"""Feature extractors: the defended model up to the layer the readout replaces.

Why: the binarization test keeps the whole defended pipeline (preprocessing,
randomness, detectors, the backbone) and swaps only the final linear layer for
a new readout. By default the features are the *input* of the model's final
linear layer, found automatically for PyTorch (the ``nn.Linear`` whose output
the forward pass returns, found by tracing one pass) and for Keras 3
Sequential and functional models (the last ``keras.layers.Dense`` in call
order). A named layer (its output: the attribute path, as for torch,
or for Keras a layer name too) or a user callable works too. A JAX or
NumPy model is a function whose inside nothing can see, so it needs the
callable, as does a subclassed Keras model's default
(its call order is Python code, not a graph).

An extractor maps a native batch to a native ``(N, d)`` feature tensor and must
stay differentiable, since attacks backpropagate through it.

This module is the framework-agnostic dispatcher (BPDA and EOT wrappers, user
callables, flattening, the errors and their advice); the layer discovery is per
framework: :mod:`pytest_attacktest.engine.torch_features` (forward hooks, the
final ``nn.Linear`` found by tracing) and
:mod:`pytest_attacktest.engine.keras_features` (the final ``Dense``, named
layers, graph cuts and call wrapping).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import eagerpy as ep

from attacks.backend import model_framework
from pytest_attacktest.engine.errors import AttackTestError

FeatureFn = Callable[[Any], Any]


class FeatureError(AttackTestError, ValueError):
    """No usable feature layer: says what was looked for and how to pass one."""


def feature_extractor(model: Any, features: str | FeatureFn | None, probe: Any = None) -> FeatureFn:
    """A callable ``x -> (N, d)`` features for ``model``.

    Args:
        model: the defended model: native, an :class:`attacks.Model`, an
            :class:`attacks.BPDA` (the inner model's features at the
            straight-through preprocessed input), or an :class:`attacks.EOT`
            (the inner model's features averaged over the EOT's ``n`` passes;
            a callable is then the inner model's, averaged the same way).
        features: ``None`` (the input of the final ``torch.nn.Linear`` or
            ``keras.layers.Dense``), the name of a layer (its flattened output;
            dotted for nested ones: ``"block.fc"``; for Keras, the attribute path
            of a subclassed model's layer, ``"block.dense"``, or a layer name), or
            a callable: the defended
            model up to its final linear layer (the engine checks that the
            logits are an affine function of it). The attack's gradients flow
            through the features only. For an :class:`attacks.BPDA` model the
            callable is the *inner* model's and receives the preprocessed input
            (straight-through), so the BPDA gradient is kept.
        probe: a few native inputs; where the default layer is found by tracing
            a forward pass (PyTorch), it is found on these now, so that an
            unusable model fails here. Without it, on the first batch extracted.

    Raises:
        FeatureError: nothing usable was found, with the way to pass features.
    """
    from attacks.adaptive import BPDA, EOT
    from attacks.models import Model

    if isinstance(model, EOT):
        # The wrapped model's features, averaged over the EOT's passes: the
        # logits of the mean features are the EOT's mean logits (the head is
        # affine), so the binarized model sees what EOT(model) computes.
        return _averaged(feature_extractor(model.inner, features, probe), model)
    if callable(features):
        if isinstance(model, BPDA):
            # The callable is the inner model's features: it receives the
            # straight-through preprocessed input, so the BPDA gradient flows.
            user = features
            return _flattening(lambda x: user(model.through(x)))
        return _flattening(features)

    if isinstance(model, BPDA):
        # Features of the inner model at the straight-through preprocessed input:
        # same values as the defense, BPDA gradients for the attack.
        inner = feature_extractor(model.inner, features, probe)
        return lambda x: inner(model.through(x))
    known: str | None = None
    if isinstance(model, Model):
        if type(model) is not Model:
            raise FeatureError(
                f"cannot find a feature layer inside {type(model).__name__}: pass "
                "features=callable(x) -> (N, d)"
            )
        known = model.framework
        model = model.native
    framework = model_framework(model) or known
    # Each framework's discovery lives in its own module, imported only for a
    # model of that framework (importing the engine imports no torch or keras).
    if framework == "torch":
        from pytest_attacktest.engine.torch_features import torch_extractor

        return torch_extractor(model, features, probe)
    if _is_keras(model):
        from pytest_attacktest.engine.keras_features import keras_extractor

        return keras_extractor(model, features)
    if isinstance(features, str):
        raise FeatureError(
            f"features={features!r} names a layer, which works for PyTorch modules and Keras "
            f"models; for a {framework or 'plain-function'} model pass "
            f"features=callable(x) -> (N, d){_ADVICE.get(framework or '', '')}"
        )
    raise FeatureError(
        f"cannot find a feature layer in a {framework or 'plain-function'} model: pass "
        "features=callable(x) -> (N, d) returning the penultimate representation "
        f"(the input of the final linear layer){_ADVICE.get(framework or '', '')}"
    )


def _averaged(inner: FeatureFn, eot: Any) -> FeatureFn:
    """``inner``'s features averaged over ``eot.n`` passes, as :class:`attacks.EOT` averages logits.

    Differentiable (the attack's gradient is that of the mean features, as
    EOT's is that of the mean logits); with ``batch_passes`` the passes run as
    one batch of ``n * N`` inputs, as the EOT runs them.
    """
    n = int(eot.n)

    def extract(x: Any) -> Any:
        if eot.batch_passes:
            batch = ep.astensor(x)
            out = ep.astensor(inner(ep.concatenate([batch] * n, axis=0).raw))
            return out.reshape((n, batch.shape[0], out.shape[-1])).mean(axis=0).raw
        total = ep.astensor(inner(x))
        for _ in range(n - 1):
            total = total + ep.astensor(inner(x))
        return (total / n).raw

    return extract


#: What a features callable is, per framework whose models are plain functions.
_ADVICE = {
    "jax": (
        "; for JAX, the model's function up to its final linear layer (split the "
        "network so that model(x) = head(features(x)))"
    ),
    "numpy": "; NumPy models also need gradient-free attacks (attacks.Square, attacks.HopSkipJump)",
}


def _is_keras(model: Any) -> bool:
    """A Keras 3 layer or model (keras is imported only if the user already has)."""
    keras = sys.modules.get("keras")
    layer = getattr(getattr(keras, "layers", None), "Layer", None)
    return layer is not None and isinstance(model, layer)


def _flattening(
    fn: FeatureFn, source: str = "the features callable", advice: str = ""
) -> FeatureFn:
    """``fn``'s output as ``(N, d)`` in its own framework (EagerPy: TF tensors have no reshape)."""

    def extract(x: Any) -> Any:
        out = fn(x)
        if not hasattr(out, "shape") or len(out.shape) < 2:
            raise FeatureError(
                f"{source} must return one (N, d) tensor, got {type(out).__name__}"
                f" of shape {getattr(out, 'shape', None)}{advice}"
            )
        if len(out.shape) == 2:
            return out
        return ep.astensor(out).reshape((-1, math.prod(out.shape[1:]))).raw

    return extract
