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
    if framework == "torch":
        return _torch_extractor(model, features, probe)
    if _is_keras(model):
        return _keras_extractor(model, features)
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


def _torch_extractor(model: Any, layer: str | None, probe: Any = None) -> FeatureFn:
    """Capture a torch layer's input (default: the final nn.Linear) or a named layer's output.

    The default layer is found by tracing a forward pass (:func:`_final_linear`),
    eagerly on ``probe`` when given, else on the first batch extracted.
    """
    import torch

    if layer is not None:
        try:
            named = model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise FeatureError(
                f"{type(model).__name__} has no submodule {layer!r}; it has {names[:20]}"
            ) from None
        return _torch_capture(model, named, layer, use_input=False, call=-1)
    if not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
        raise FeatureError(
            f"{type(model).__name__} has no torch.nn.Linear layer to replace: pass "
            "features='name.of.layer' (its output is used) or features=callable(x) -> (N, d)"
        )
    resolved: list[FeatureFn] = []

    def resolve(x: Any) -> FeatureFn:
        if not resolved:
            name, module, call = _final_linear(model, x)
            resolved.append(_torch_capture(model, module, name, use_input=True, call=call))
        return resolved[0]

    if probe is not None:
        resolve(probe)
    return lambda x: resolve(x)(x)


def _torch_capture(model: Any, module: Any, name: str, *, use_input: bool, call: int) -> FeatureFn:
    """Run ``model`` hooked at ``module``: its ``call``-th call's input or output, flattened."""
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
                f"the feature layer {name!r} ({type(module).__name__}) of "
                f"{type(model).__name__} was not called in this forward pass: pass "
                "features='name.of.layer' naming a layer the forward pass uses (its output "
                "is used) or features=callable(x) -> (N, d)"
            )
        out = captured[call] if -len(captured) <= call < len(captured) else captured[-1]
        captured.clear()
        return out.reshape(out.shape[0], -1)

    return extract


def _final_linear(model: Any, x: Any) -> tuple[str, Any, int]:
    """The ``nn.Linear`` (name, module, call index) whose output becomes the model's output.

    Why traced, not by registration order: the order in which ``__init__``
    declares layers says nothing about the order ``forward`` uses them. A
    model ``head(round(body(x)))`` that declares ``head`` first would
    otherwise lose its quantization to the readout replacement, and a weak
    attack would pass. One forward pass of a few inputs runs with a hook on
    every Linear; then the autograd graph is walked back from the output to
    the Linear outputs it reaches first. Exactly one must be reached: the
    model's output is that layer's output, or computed from it alone
    (a temperature, a softmax). None (the output does not come from a
    Linear) or several (heads summed, a Linear after a detached branch) is
    refused, naming the candidates. The probe pass leaves the model's
    buffers and the global torch RNG as they were.
    """
    import torch

    from pytest_attacktest.engine.modelstate import preserved

    names = {id(m): n or "(the model itself)" for n, m in model.named_modules()}
    calls: list[tuple[Any, Any]] = []  # (module, output) per Linear call, in call order

    def hook(module: Any, _inputs: tuple[Any, ...], output: Any) -> None:
        calls.append((module, output))

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]
    probe = x[: min(8, len(x))].detach().clone().requires_grad_(True)
    devices = [probe.device] if probe.device.type == "cuda" else []
    try:
        with preserved(model), torch.random.fork_rng(devices=devices), torch.enable_grad():
            out = model(probe)
    finally:
        for handle in handles:
            handle.remove()
    described = [f"{names[id(m)]!r}" for m in dict.fromkeys(m for m, _ in calls)]
    advice = (
        "pass features='name' naming the layer whose output is the penultimate "
        "representation (its output is used), or features=callable(x) -> (N, d)"
    )
    if not calls:
        raise FeatureError(
            f"none of the torch.nn.Linear layers of {type(model).__name__} is called in its "
            f"forward pass, so there is no final linear layer to replace: {advice}"
        )
    if not isinstance(out, torch.Tensor):
        raise FeatureError(
            f"{type(model).__name__} returned {type(out).__name__}, not one logits tensor: "
            "wrap the model so that it returns the logits (lambda x: model(x)[0])"
        )
    by_node: dict[Any, int] = {}
    for index, (_module, output) in enumerate(calls):
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            by_node.setdefault(output.grad_fn, index)
    reached: set[int] = set()
    for index, (_module, output) in enumerate(calls):
        if output is out:
            reached.add(index)
    if not reached and out.grad_fn is not None:
        stack, seen = [out.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in by_node:
                reached.add(by_node[node])
                continue
            stack.extend(next_node for next_node, _ in node.next_functions)
    modules = list(dict.fromkeys(calls[i][0] for i in sorted(reached)))
    if len(modules) != 1:
        found = [f"{names[id(m)]!r}" for m in modules]
        what = (
            f"the output comes from several Linear layers ({', '.join(found)})"
            if modules
            else "the output is not computed from any Linear layer's output"
        )
        raise FeatureError(
            f"cannot tell which torch.nn.Linear of {type(model).__name__} produces its logits: "
            f"{what}; Linear layers called: {', '.join(described)}. {advice[0].upper()}{advice[1:]}"
        )
    module = modules[0]
    own_calls = [i for i, (m, _) in enumerate(calls) if m is module]
    call = own_calls.index(max(i for i in reached if calls[i][0] is module))
    return names[id(module)], module, call


# ---------------------------------------------------------------------- Keras 3


def _keras_extractor(model: Any, layer_name: str | None) -> FeatureFn:
    """A Keras layer's input (default: final Dense) or a named layer's output, flattened.

    Why two ways: in a Sequential or functional model the layer's tensor is a
    node of the model's graph, so ``keras.Model(model.inputs, tensor)`` is the
    exact sub-network, computed without the layers after it and without
    touching the model. Where there is no graph to cut (a layer inside a
    nested model, a layer called several times, a subclassed model, an
    unbuilt Sequential), the layer's ``call`` is wrapped for the duration of
    one forward pass of the whole model, like a torch forward hook.
    """
    if layer_name is None:
        layer, use_input = _final_dense(model), True
    else:
        layer, use_input = _named_layer(model, layer_name), False
    extract = _keras_submodel(model, layer, use_input) or _keras_capture(model, layer, use_input)
    advice = "; pass features=callable(x) -> (N, d)"
    return _flattening(extract, f"the layer {layer.name!r}", advice)


def _has_graph(model: Any) -> bool:
    """Whether ``model`` is a Sequential or functional model (layers in call order)."""
    import keras

    if isinstance(model, keras.Sequential):
        return True
    try:
        from keras.src.models.functional import Functional
    except ImportError:  # pragma: no cover - a Keras 3 layout change
        return False
    return isinstance(model, Functional)


def _dense_layers(model: Any) -> list[Any]:
    """Dense layers of a graph model in call order, nested graph models included.

    A nested model without a graph that holds Dense layers is listed itself:
    where its Dense layers fall in the call order is unknown.
    """
    import keras

    found: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            found.append(layer)
        elif isinstance(layer, keras.Model) and _has_graph(layer):
            found.extend(_dense_layers(layer))
        elif any(isinstance(sub, keras.layers.Dense) for sub in _sublayers(layer)):
            found.append(layer)
    return found


def _sublayers(layer: Any) -> list[Any]:
    """All layers tracked inside ``layer``, recursively (Keras' own bookkeeping)."""
    flatten = getattr(layer, "_flatten_layers", None)
    return list(flatten(include_self=False)) if callable(flatten) else []


def _final_dense(model: Any) -> Any:
    import keras

    name = f"{type(model).__name__} {model.name!r}"
    if not _has_graph(model):
        raise FeatureError(
            f"{name} is a subclassed Keras model: the order in which its call() uses its "
            "layers is unknown, so its final Dense layer cannot be found; pass "
            "features='attribute.path' (that layer's output is used, e.g. the one before the "
            f"final Dense; its layers' attributes: {_attribute_paths(model)}) or "
            "features=callable(x) -> (N, d)"
        )
    dense = _dense_layers(model)
    if not dense:
        raise FeatureError(
            f"{name} has no keras.layers.Dense layer to replace: pass features='layer_name' "
            f"(its output is used; layers: {_names(model)}) or features=callable(x) -> (N, d)"
        )
    if not isinstance(dense[-1], keras.layers.Dense):
        raise FeatureError(
            f"the final Dense layer of {name} is inside {type(dense[-1]).__name__} "
            f"{dense[-1].name!r}, a subclassed layer whose call order is unknown: pass "
            "features='outer.inner' naming the layer whose output to use, or "
            "features=callable(x) -> (N, d)"
        )
    return dense[-1]


def _children(container: Any) -> list[Any]:
    """The layers directly inside a model (``.layers``) or a custom layer."""
    layers = getattr(container, "layers", None)
    if layers is not None:
        return list(layers)
    flatten = getattr(container, "_flatten_layers", None)
    return list(flatten(include_self=False, recursive=False)) if callable(flatten) else []


def _names(container: Any) -> list[str]:
    return [layer.name for layer in _children(container)][:20]


def _named_layer(model: Any, name: str) -> Any:
    """The layer ``name`` stands for: an attribute path or a layer name.

    Why both: Keras generates layer names from a per-process counter
    (``dense``, then ``dense_4`` once other models were built), so a
    subclassed model's layers are named by the order in which a test session
    happened to build models. Its attributes (``model.head``,
    ``model.block.dense``) do not change, and are what ``features=`` means for
    a PyTorch module. Layer names keep working (``"dense"`` or nested
    ``"outer.inner"``, the only way to name a layer of a Sequential or
    functional model). A name that means one layer as an attribute path and
    another as a layer name is refused: which one was meant depends on the
    order models were built.
    """
    by_attribute = _attribute_layer(model, name)
    by_name = _layer_by_name(model, name)
    if by_attribute is not None and by_name is not None and by_attribute is not by_name:
        raise FeatureError(
            f"features={name!r} is ambiguous in {type(model).__name__} {model.name!r}: the "
            f"attribute {name!r} is {type(by_attribute).__name__} {by_attribute.name!r}, but the "
            f"layer named {name!r} is another one ({type(by_name).__name__}); Keras generates "
            "layer names in build order, so give the layer a name of its own "
            f"(keras.layers.Dense(..., name='...')) or pass features=callable(x) -> (N, d)"
        )
    found = by_attribute if by_attribute is not None else by_name
    if found is None:
        raise FeatureError(
            f"{type(model).__name__} {model.name!r} has no layer {name!r}: pass an attribute "
            f"path (for subclassed models; it has {_attribute_paths(model)}) or a layer name "
            f"(its layers are {_names(model)}; nested ones as 'outer.inner'), or "
            "features=callable(x) -> (N, d)"
        )
    return found


def _attribute_layer(model: Any, path: str) -> Any:
    """``model.a.b`` (``model.blocks[0]`` for ``"blocks.0"``) when that is one of its layers."""
    import keras

    target = model
    for part in path.split("."):
        if isinstance(target, list | tuple) and part.isdigit():
            target = target[int(part)] if int(part) < len(target) else None
        elif part.isidentifier() and not part.startswith("_"):
            target = vars(target).get(part) if hasattr(target, "__dict__") else None
        else:
            return None
        if target is None:
            return None
    if not isinstance(target, keras.layers.Layer) or target is model:
        return None
    # Only a layer the model tracks: an attribute may hold an unrelated layer.
    return target if any(target is sub for sub in _sublayers(model)) else None


def _attribute_paths(model: Any, limit: int = 20) -> list[str]:
    """Attribute paths of the layers inside a model (``head``, ``block.dense``, ``parts.0``)."""
    import keras

    paths: list[str] = []
    seen = {id(model)}

    def visit(obj: Any, prefix: str, depth: int) -> None:
        items = (
            [(str(i), v) for i, v in enumerate(obj)]
            if isinstance(obj, list | tuple)
            else [(k, v) for k, v in vars(obj).items() if not k.startswith("_")]
        )
        for key, value in items:
            if len(paths) >= limit:
                return
            if isinstance(value, keras.layers.Layer) and id(value) not in seen:
                seen.add(id(value))
                paths.append(f"{prefix}{key}")
                if depth < 3:
                    visit(value, f"{prefix}{key}.", depth + 1)
            elif isinstance(value, list | tuple) and depth < 3:
                visit(value, f"{prefix}{key}.", depth + 1)

    visit(model, "", 0)
    return paths


def _layer_by_name(model: Any, name: str) -> Any:
    """The layer called ``name`` (``"a.b"``: ``b`` inside nested layer ``a``), or None."""
    path = [name] if any(layer.name == name for layer in _children(model)) else None
    container = model
    for part in path or name.split("."):
        matches = [layer for layer in _children(container) if layer.name == part]
        if not matches:
            return None
        container = matches[0]
    return container


def _keras_submodel(model: Any, layer: Any, use_input: bool) -> FeatureFn | None:
    """``x -> tensor`` as a cut of the model's graph, or None where there is no graph to cut."""
    import keras

    if not _has_graph(model) or all(layer is not top for top in model.layers):
        return None
    if len(getattr(layer, "_inbound_nodes", [])) != 1:
        return None  # called several times: which call is meant is decided at run time
    try:
        inputs = model.inputs
        tensor = layer.input if use_input else layer.output
        sub = keras.Model(inputs, tensor)
    except (AttributeError, ValueError):  # an unbuilt Sequential, several outputs, ...
        return None
    return lambda x: sub(x, training=False)


def _keras_capture(model: Any, layer: Any, use_input: bool) -> FeatureFn:
    """Run the whole model once with ``layer.call`` wrapped; return what it saw or gave."""
    captured: list[Any] = []

    def extract(x: Any) -> Any:
        own = layer.__dict__.get("call")
        original = layer.call

        def spy(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            captured.append((args[0] if args else kwargs.get("inputs")) if use_input else out)
            return out

        # object.__setattr__: Keras and tf.Module track attributes set on layers.
        object.__setattr__(layer, "call", spy)
        try:
            captured.clear()
            model(x, training=False)
        finally:
            if own is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own)
        if not captured:
            raise FeatureError(
                f"the feature layer {type(layer).__name__} {layer.name!r} was not called in the "
                f"forward pass of {type(model).__name__} {model.name!r}"
            )
        out = captured[-1]
        captured.clear()
        return out

    return extract
