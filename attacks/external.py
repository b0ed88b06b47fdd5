"""Adapters that run third-party attacks through our interface, unchanged.

Why: a defense is usually evaluated with someone else's attack (torchattacks,
AutoAttack, Foolbox, a paper's own script). The binarization test must check
*that* attack, not a reimplementation of it, so these adapters hand the
third-party code the native model and native tensors and leave its algorithm
alone. What they add is what :class:`attacks.Attack` adds to every attack:
input checks, conversion, and the final projection into the bounds and the
epsilon ball. Third-party success flags are ignored; callers verify results
themselves (the binarization engine does, in fresh forward passes).

Common behaviour of every adapter:

* ``run`` calls the third-party code on ``ctx.model.native``, ``x.raw`` and
  ``y.raw`` (torch labels are cast to int64, which torch losses require).
* The result may be a tensor of the model's framework or a NumPy array;
  anything else is a clear ``TypeError``. Samples whose result holds NaN or
  infinity are replaced by their clean point (a broken result must never
  count as a success, nor poison the projection).
* Libraries that take one scalar epsilon (torchattacks, AutoAttack, Foolbox)
  receive per-sample budgets by running once per distinct epsilon value on
  that subset of the batch, then reassembling the batch in order. The common
  case of one shared epsilon is a single call on the whole batch.
* Randomness inside third-party code comes from the frameworks' global
  RNGs. An adapter's ``seed`` is ``None`` by default: the binarization test
  then seeds those RNGs with the test's seed around the call
  (:mod:`attacks.seeding`), so ``--attack-test-seed`` reproduces the verdict.
  Set ``adapter.seed = n`` to have the adapter seed them itself (for runs
  outside the test); either way their states are restored afterwards.
* Third-party libraries are imported lazily; a missing one is an
  ``ImportError`` that names the ``pip install`` command.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import eagerpy as ep
import numpy as np

from attacks import backend, frameworks, seeding
from attacks.base import Attack, RunContext
from attacks.geometry import atleast_kd
from attacks.models import Model
from attacks.norms import parse_p

#: A call of the third-party code on one group of samples sharing one epsilon:
#: (x, y, target or None, epsilon) -> adversarial x, all native tensors.
_RunOne = Callable[[Any, Any, Any, float], Any]

_PIP = {
    "foolbox": "pip install foolbox==3.3.4",
    "torchattacks": "pip install torchattacks  (add --no-deps to keep your torch build)",
    "torch": "pip install torch",
}


def _import(module: str, needed_by: str) -> Any:
    """Import ``module`` or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{needed_by} needs the '{module}' package, which is not installed: {_PIP[module]}"
        ) from error


def _set_uses_gradient(attack: Attack, value: bool) -> None:
    """Per-instance ``uses_gradient`` (the base class declares it a ClassVar).

    Adapters wrap code whose needs are only known at construction; writing the
    instance dict keeps mypy's ClassVar rule while letting the base class's
    check (gradient attack on a NumPy model) see the right value.
    """
    vars(attack)["uses_gradient"] = bool(value)


# ---------------------------------------------------------------------- shared helpers


def _native_labels(model: Model, labels: ep.Tensor | None) -> Any:
    """Native labels; int64 for torch, whose losses reject other integer types."""
    if labels is None:
        return None
    if model.framework == "torch":
        return labels.raw.long()
    return labels.raw


def _adopt_result(x: ep.Tensor, out: Any, who: str) -> ep.Tensor:
    """The third-party result as an EagerPy tensor like ``x``; non-finite samples -> clean.

    Accepts a tensor of x's framework or a NumPy array (converted); torch
    results are detached and moved to x's device.
    """
    if isinstance(out, tuple | list) or not hasattr(out, "shape"):
        raise TypeError(
            f"{who} must return one tensor of adversarial inputs shaped like x, got "
            f"{type(out).__name__}"
        )
    framework = backend.tensor_framework(x)
    try:
        source = backend.tensor_framework(out)
    except TypeError:
        source = type(out).__name__
    if source == "numpy" and framework != "numpy":
        out = backend.from_numpy_like(np.asarray(out), x)
    elif source != framework:
        raise TypeError(
            f"{who} returned a {source} for {framework} inputs; return a {framework} tensor "
            "or a NumPy array"
        )
    result = backend.wrap(frameworks.named(framework).adopt(out, x.raw))
    if tuple(result.shape) != tuple(x.shape):
        raise ValueError(f"{who} returned shape {tuple(result.shape)}, expected {tuple(x.shape)}")
    result = result.astype(x.dtype)
    broken = ep.logical_or(ep.isnan(result), ep.isinf(result)).flatten(start=1).any(axis=1)
    return ep.where(atleast_kd(broken, x.ndim), x, result)


def _by_epsilon(
    ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None, run_one: _RunOne
) -> Any:
    """Run ``run_one`` once per distinct epsilon on that subset; reassemble in order.

    One host read of epsilon, before any attack runs. Returns a native tensor
    (or whatever ``run_one`` returned for a single group).
    """
    assert ctx.epsilon is not None
    values = backend.to_numpy(ctx.epsilon)
    unique = np.unique(values)
    labels = _native_labels(ctx.model, y)
    targets = _native_labels(ctx.model, target)
    if unique.size == 1:
        return run_one(x.raw, labels, targets, float(unique[0]))
    parts, order = [], []
    for value in unique:
        idx = np.flatnonzero(values == value)
        sub_t = None if target is None else _native_labels(ctx.model, target[idx])
        out = run_one(x[idx].raw, _native_labels(ctx.model, y[idx]), sub_t, float(value))
        parts.append(_adopt_result(x[idx], out, "the attack"))
        order.append(idx)
    inverse = np.argsort(np.concatenate(order))
    return ep.concatenate(parts, axis=0)[inverse].raw


def _torch_module(model: Model, device: Any) -> Any:
    """The model as a ``torch.nn.Module``, as torchattacks and Foolbox require.

    An ``nn.Module`` is passed through unchanged (the library then sees the
    user's own model, its training mode included). A plain torch callable is
    wrapped in a module that calls it through :class:`attacks.Model`; the
    wrapper holds one empty, frozen parameter so that libraries that read the
    device from ``next(model.parameters())`` find the right one.
    """
    torch = _import("torch", "a PyTorch attack")
    if isinstance(model.native, torch.nn.Module):
        return model.native

    module_base: Any = torch.nn.Module

    class _CallableModule(module_base):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._device_marker = torch.nn.Parameter(
                torch.empty(0, device=device), requires_grad=False
            )

        def forward(self, inputs: Any) -> Any:
            return model(backend.wrap(inputs)).raw

    return _CallableModule()


def _native_callable(model: Model) -> Callable[[Any], Any]:
    """A native-in, native-out function that calls the model through :class:`Model`.

    Keras models then run with ``training=False`` and outputs are checked, as
    in our own attacks.
    """
    return lambda inputs: model(backend.wrap(inputs)).raw


@contextlib.contextmanager
def _parameter_grads_kept(native: Any) -> Iterator[None]:
    """Restore the ``.grad`` of a torch module's parameters on exit.

    Foolbox 3 differentiates through EagerPy, whose PyTorch backend calls
    ``loss.backward()``: every attack step adds into the model's parameter
    gradients, which a user's training loop would then pick up.
    """
    params = list(native.parameters()) if hasattr(native, "parameters") else []
    saved = [p.grad for p in params]
    try:
        yield
    finally:
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad


def _check_unit_bounds(ctx: RunContext, library: str) -> None:
    if tuple(ctx.bounds) != (0.0, 1.0):
        raise ValueError(
            f"{library} assumes inputs in [0, 1] (it clips there), but the model's bounds are "
            f"{tuple(ctx.bounds)}; wrap a model that takes [0, 1] inputs "
            "(lambda x: model(lo + (hi - lo) * x), epsilon / (hi - lo)) or use FromFoolbox, "
            "FromFunction or our own attacks"
        )


# ---------------------------------------------------------------------- adapters


class FromFunction(Attack):
    """A plain function ``fn(native_model, x, y, epsilon) -> x_adv`` as an attack.

    ``x`` and ``y`` are native tensors of the model's framework (``y`` int64
    for torch). ``epsilon`` is a Python float when all samples share one
    budget (the usual case), otherwise a native ``(N,)`` tensor of x's dtype.
    For a targeted call (``attack(..., target=t)``) the function is called
    with the extra keyword ``target=`` (native ``(N,)`` labels); a function
    without that parameter then fails with Python's own ``TypeError``.

    Args:
        fn: the attack function. Its result may leave the ball and the bounds;
            it is projected back, like every attack's.
        norm: the threat model the function attacks in (``"linf"``, ``"l2"``, ...).
        uses_gradient: whether it needs autodiff; ``False`` lets it run on
            NumPy models.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        norm: str | float = "linf",
        *,
        uses_gradient: bool = True,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be a function (model, x, y, epsilon) -> x_adv, got {fn!r}")
        self.fn = fn
        self.p = parse_p(norm)
        self.seed = None  # global RNGs: seeded by the caller (attacks.seeding)
        _set_uses_gradient(self, uses_gradient)

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        assert ctx.epsilon is not None
        values = backend.to_numpy(ctx.epsilon)
        epsilon: Any = float(values[0]) if np.all(values == values[0]) else ctx.epsilon.raw
        labels = _native_labels(ctx.model, y)
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        with seeding.seeded(self.seed):
            if target is None:
                out = self.fn(ctx.model.native, x.raw, labels, epsilon)
            else:
                targets = _native_labels(ctx.model, target)
                out = self.fn(ctx.model.native, x.raw, labels, epsilon, target=targets)
        return _adopt_result(x, out, f"the attack function {name}")


class FromTorchattacks(Attack):
    """A torchattacks attack, built per call on the model being attacked.

    torchattacks binds the model (and the budget) when an attack object is
    constructed, so this adapter takes the class or a factory and builds
    ``factory(model, **{eps_arg: epsilon}, **kwargs)`` for each call, e.g.
    ``FromTorchattacks(torchattacks.PGD, steps=10, alpha=0.01)``. With
    ``target=`` the attack runs in torchattacks' targeted-by-label mode.

    Args:
        factory: a torchattacks attack class or a callable ``(model, **kw) -> attack``
            whose result is called as ``attack(x, labels)``.
        norm: the attack's threat model; must match what it attacks in
            (``torchattacks.PGDL2`` is ``"l2"``), since the result is projected
            onto that ball.
        eps_arg: the keyword that receives epsilon (``"eps"`` for torchattacks);
            ``None`` for attacks without a budget (CW, DeepFool), whose result
            is then only projected.
        **kwargs: passed to the factory (``steps``, ``alpha``, ...). Absolute
            sizes such as ``alpha`` are in input units.

    torchattacks takes one scalar epsilon and inputs in ``[0, 1]``: per-sample
    budgets run once per distinct value; other bounds are an error. It needs a
    PyTorch model; a plain torch callable is wrapped in an ``nn.Module``.
    """

    def __init__(
        self,
        factory: Callable[..., Any],
        norm: str | float = "linf",
        *,
        eps_arg: str | None = "eps",
        **kwargs: Any,
    ) -> None:
        if not callable(factory):
            raise TypeError(
                f"factory must be a torchattacks attack class or a callable (model, ...) -> "
                f"attack, got {factory!r}"
            )
        if hasattr(factory, "forward") and not isinstance(factory, type):
            raise TypeError(
                "pass the torchattacks attack class (torchattacks.PGD) or a factory, not an "
                "attack object: torchattacks binds the model at construction, and the adapter "
                "must bind the model it is run on"
            )
        if eps_arg is not None and eps_arg in kwargs:
            raise ValueError(f"{eps_arg}= is set per call from epsilon; do not pass it in kwargs")
        self.factory = factory
        self.p = parse_p(norm)
        self.eps_arg = eps_arg
        self.kwargs = kwargs
        self.seed = None  # torchattacks draws from torch's global RNG (attacks.seeding)
        _import("torchattacks", "FromTorchattacks")

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        if ctx.model.framework != "torch":
            raise TypeError(
                f"torchattacks attacks PyTorch models only, but the model is a "
                f"{ctx.model.framework} model; use FromFoolbox (PyTorch, TensorFlow, JAX) or "
                "the attacks of this library"
            )
        _check_unit_bounds(ctx, "torchattacks")
        module = _torch_module(ctx.model, x.raw.device)

        def run_one(xs: Any, ys: Any, ts: Any, eps: float) -> Any:
            budget = {} if self.eps_arg is None else {self.eps_arg: eps}
            attack = self.factory(module, **budget, **self.kwargs)
            if ts is None:
                return attack(xs, ys)
            if "targeted" not in getattr(attack, "supported_mode", ["targeted"]):
                raise ValueError(f"{type(attack).__name__} has no targeted mode in torchattacks")
            attack.set_mode_targeted_by_label(quiet=True)
            return attack(xs, ts)

        with seeding.seeded(self.seed):
            out = _by_epsilon(ctx, x, y, target, run_one)
        return _adopt_result(x, out, f"torchattacks via {self.factory!r}")


class FromAutoAttack(Attack):
    """AutoAttack (fra31/auto-attack) or any attack of the same shape.

    AutoAttack binds model and epsilon at construction, so this adapter takes
    a factory ``(native_model, epsilon: float) -> attack`` and builds it per
    call, e.g.::

        FromAutoAttack(lambda model, eps: AutoAttack(
            model, norm="Linf", eps=eps, version="standard", device="cpu"))

    The built object either has ``run_standard_evaluation(x, y, bs=...) ->
    x_adv`` (AutoAttack's API; called with ``bs=batch_size``) or is a plain
    callable ``(x, y) -> x_adv``; both take and return native tensors of the
    model's framework (AutoAttack itself is PyTorch). Untargeted only: AutoAttack's
    targeted parts choose their own target classes.

    Args:
        factory: ``(model, eps) -> attack`` as above.
        norm: the threat model of the attack the factory builds (``"linf"``,
            ``"l2"``, ``"l1"``); the result is projected onto that ball.
        batch_size: ``bs`` for ``run_standard_evaluation`` (AutoAttack's default 250).

    AutoAttack clips to ``[0, 1]``, so other model bounds are an error;
    per-sample budgets run once per distinct value.
    """

    def __init__(
        self,
        factory: Callable[[Any, float], Any],
        norm: str | float = "linf",
        *,
        batch_size: int = 250,
    ) -> None:
        if hasattr(factory, "run_standard_evaluation"):
            raise TypeError(
                "pass a factory, not an AutoAttack object: lambda model, eps: AutoAttack(model, "
                "norm=..., eps=eps, ...); AutoAttack binds model and epsilon at construction, "
                "and the adapter must bind the model and budget it is run with"
            )
        if not callable(factory):
            raise TypeError(f"factory must be a callable (model, eps) -> attack, got {factory!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.factory = factory
        self.p = parse_p(norm)
        self.batch_size = batch_size
        self.seed = None  # AutoAttack seeds itself (its own `seed` argument)

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        if target is not None:
            raise ValueError(
                "FromAutoAttack runs untargeted only (AutoAttack's targeted attacks pick their "
                "own targets); call it without target="
            )
        _check_unit_bounds(ctx, "AutoAttack")

        def run_one(xs: Any, ys: Any, ts: Any, eps: float) -> Any:
            attack = self.factory(ctx.model.native, eps)
            if hasattr(attack, "run_standard_evaluation"):
                return attack.run_standard_evaluation(xs, ys, bs=self.batch_size)
            if callable(attack):
                return attack(xs, ys)
            raise TypeError(
                f"the factory must build an object with run_standard_evaluation(x, y, bs=...) "
                f"or a callable (x, y) -> x_adv, got {type(attack).__name__}"
            )

        with seeding.seeded(self.seed):
            out = _by_epsilon(ctx, x, y, None, run_one)
        return _adopt_result(x, out, "the AutoAttack-style attack")


class FromFoolbox(Attack):
    """A Foolbox 3 attack: ``attack(fmodel, x, criterion, epsilons=eps)``.

    The native model is wrapped as ``foolbox.PyTorchModel`` (on the model's
    own device, never moved), ``TensorFlowModel``, ``JAXModel`` or
    ``NumPyModel`` with the model's bounds; the adapter returns Foolbox's
    ``clipped`` result and ignores its success flags. With ``target=`` the
    criterion is ``TargetedMisclassification``.

    Args:
        attack: a Foolbox attack object, e.g. ``foolbox.attacks.LinfPGD(steps=40)``.
        norm: the threat model; by default the attack's own ``distance``
            (Foolbox's LinfPGD is Linf). A norm that contradicts it is an error.
        uses_gradient: ``False`` for Foolbox's decision-based attacks, which
            then also run on NumPy models.

    Foolbox takes one scalar epsilon: per-sample budgets run once per distinct
    value. Foolbox's PyTorch gradients go through ``loss.backward()`` and would
    pile up in the model's parameters; the adapter restores their ``.grad``.
    """

    def __init__(
        self, attack: Any, norm: str | float | None = None, *, uses_gradient: bool = True
    ) -> None:
        if not callable(attack):
            raise TypeError(f"attack must be a Foolbox 3 attack object, got {attack!r}")
        _import("foolbox", "FromFoolbox")
        own = getattr(getattr(attack, "distance", None), "p", None)
        own_p = None if own is None else float(own)
        if norm is None:
            if own_p is None:
                raise ValueError(
                    f"cannot tell the norm of {attack!r}; pass norm='linf', 'l2' or 'l1'"
                )
            self.p = own_p
        else:
            self.p = parse_p(norm)
            if own_p is not None and own_p != self.p:
                raise ValueError(
                    f"norm={norm!r} contradicts {type(attack).__name__}, which attacks in "
                    f"L{own_p:g}; leave norm out or pick the matching Foolbox attack"
                )
        self.attack = attack
        self.seed = None  # Foolbox draws from the framework's global RNG (attacks.seeding)
        _set_uses_gradient(self, uses_gradient)

    def _fmodel(self, fb: Any, ctx: RunContext, x: ep.Tensor) -> Any:
        framework, bounds = ctx.model.framework, ctx.bounds
        if framework == "torch":
            device = (
                backend.torch_device(ctx.model.native)
                if hasattr(ctx.model.native, "parameters")
                else x.raw.device
            )
            return fb.PyTorchModel(_torch_module(ctx.model, device), bounds, device=device)
        if framework == "tensorflow":
            return fb.TensorFlowModel(_native_callable(ctx.model), bounds, device=x.raw.device)
        if framework == "jax":
            return fb.JAXModel(_native_callable(ctx.model), bounds)
        return fb.models.NumPyModel(_native_callable(ctx.model), bounds)

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        fb = _import("foolbox", "FromFoolbox")
        fmodel = self._fmodel(fb, ctx, x)

        def run_one(xs: Any, ys: Any, ts: Any, eps: float) -> Any:
            criterion = ys if ts is None else fb.criteria.TargetedMisclassification(ts)
            _, clipped, _ = self.attack(fmodel, xs, criterion, epsilons=eps)
            return clipped

        with _parameter_grads_kept(ctx.model.native), seeding.seeded(self.seed):
            out = _by_epsilon(ctx, x, y, target, run_one)
        return _adopt_result(x, out, f"Foolbox's {type(self.attack).__name__}")
