"""Keras 3 feature-layer discovery: the final ``Dense`` layer and named layers.

Why a module of its own: the dispatcher (:mod:`pytest_attacktest.engine.features`)
is framework-agnostic; this holds what only a Keras model needs: the last
``Dense`` in call order for Sequential and functional models, layers named by
attribute path or layer name, and the two ways to read a layer's tensor (a cut
of the model's graph, or ``call`` wrapped for one forward pass). ``keras`` is
imported inside the functions only, and the dispatcher imports this module
only for a Keras model, so importing the engine imports no keras.
"""

from __future__ import annotations

from typing import Any

from pytest_attacktest.engine.features import FeatureError, FeatureFn, _flattening


def keras_extractor(model: Any, layer_name: str | None) -> FeatureFn:
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
