"""PyTorch feature-layer discovery: forward hooks and the search for the final ``nn.Linear``.

Why a module of its own: the dispatcher (:mod:`pytest_attacktest.engine.features`)
is framework-agnostic; this holds what only a ``torch.nn.Module`` needs: the
default feature layer found by tracing one forward pass back from the output
(:func:`_final_linear`) and a forward hook that captures a layer's input or
output (:func:`_torch_capture`). ``torch`` is imported inside the functions
only, and the dispatcher imports this module only for a torch model, so
importing the engine imports no torch.
"""

from __future__ import annotations

from typing import Any

from pytest_attacktest.engine.features import FeatureError, FeatureFn


def torch_extractor(model: Any, layer: str | None, probe: Any = None) -> FeatureFn:
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
