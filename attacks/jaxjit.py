"""Compiled JAX gradients for the attack loops, with an eager fallback.

Why: EagerPy runs JAX op by op, and its ``value_and_grad`` traces the whole
loss (model, routing, loss) through ``jax.vjp`` again on every call: about a
tenth of a second per step for a small MLP, most of an attack's time. Tracing
the loss closure once per attack run with ``jax.jit`` and calling the compiled
function afterwards makes a step one device call.

A model is only compiled when that cannot change what the attack sees:

* tracing must succeed (a model that calls NumPy on its input, reads values
  into Python or branches on them cannot be traced);
* two traces must agree: a model with hidden randomness (``np.random``, a
  Python-side key) gives different constants per trace, and compiling it
  would freeze one draw, so EOT and randomized defenses would see a constant
  model.

Otherwise the loss runs eagerly, as before, and the decision is remembered for
that loss function, so a failing trace is not retried every step. A loss
function is recognised by its code and the identity of the values it captures,
so an attack that builds the same closure every step still compiles once. A model that keeps
traced values in Python state (a PRNG key on ``self``) is corrupted by any
trace; the error then says so. ``JAX_JIT = False`` turns compilation off.
"""

from __future__ import annotations

import functools
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar, cast

import eagerpy as ep
import numpy as np

#: Compile JAX loss closures (set to False to always run eagerly).
JAX_JIT = True

LossFn = Callable[[ep.Tensor], tuple[ep.Tensor, ep.Tensor]]
Compiled = Callable[[Any], tuple[tuple[Any, Any], Any]]


class _Entry:
    """What is known about one loss function: its compiled gradient or why it has none."""

    __slots__ = ("compiled", "reason")

    def __init__(self) -> None:
        self.compiled: Compiled | None = None
        self.reason = ""


class _Ref:
    """One object's identity in a cache key: held weakly when Python allows it.

    Equal only to a reference to the *same live object*, so a recycled ``id``
    never matches a dead entry. Objects that cannot be referenced weakly
    (numbers, tuples, None) are held strongly; the cache's size bounds that.
    """

    __slots__ = ("ident", "strong", "weak")

    def __init__(self, obj: Any) -> None:
        self.ident = id(obj)
        self.strong: Any = None
        try:
            self.weak: weakref.ref[Any] | None = weakref.ref(obj)
        except TypeError:
            self.weak, self.strong = None, obj

    def get(self) -> Any:
        """The object (None once a weakly held one is gone)."""
        return self.strong if self.weak is None else self.weak()

    @property
    def alive(self) -> bool:
        return self.weak is None or self.weak() is not None

    def __hash__(self) -> int:
        return self.ident

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Ref) or other.ident != self.ident:
            return False
        return self.alive and other.alive and self.get() is other.get()


#: Live entries, oldest first. A loss function is identified by what it computes
#: with: a closure by its code and the identity of every captured value (attacks
#: may build an equal closure every step), anything else by its identity. The key
#: holds those values weakly where it can, and an entry goes when one of them
#: dies, so a finished run's model and data are not kept alive.
_ENTRIES: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
_MAX_ENTRIES = 32
#: Per code object: ``[programs compiled since one was last reused, eager calls since]``.
#: A loss function rebuilt with new values every step would compile every step:
#: after ``_MAX_MISSES`` programs that were never reused, new ones run eagerly,
#: with one more try every ``_RETRY_AFTER`` eager calls (an attack that calls the
#: gradient once per run, FGSM, must not keep a later PGD eager for good).
_MISSES: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()
_MAX_MISSES = 3
_RETRY_AFTER = 16


def _parts(loss_fn: Any) -> tuple[Any, tuple[Any, ...]]:
    """``(code or type, key)`` of a loss function."""
    if isinstance(loss_fn, types.FunctionType):
        cells = tuple(c.cell_contents for c in loss_fn.__closure__ or ())
        defaults = loss_fn.__defaults__ or ()
        kwdefaults = tuple(sorted((loss_fn.__kwdefaults__ or {}).items()))
        values = tuple(_wrap_ref(v) for v in (*cells, *defaults))
        kw = tuple((k, _wrap_ref(v)) for k, v in kwdefaults)
        return loss_fn.__code__, (loss_fn.__code__, _Ref(loss_fn.__globals__), values, kw)
    if isinstance(loss_fn, types.MethodType):
        owner = loss_fn.__self__
        return type(owner), ("method", _Ref(owner), _Ref(loss_fn.__func__))
    return type(loss_fn), ("object", _Ref(loss_fn))


def _wrap_ref(value: Any) -> tuple[bool, _Ref]:
    """EagerPy tensors cannot be referenced weakly: refer to their native array instead."""
    if isinstance(value, ep.Tensor):
        return True, _Ref(value.raw)
    return False, _Ref(value)


def _unwrap_ref(part: tuple[bool, _Ref]) -> Any:
    wrapped, ref = part
    value = ref.get()
    return ep.astensor(value) if wrapped else value


def _rebuild(key: tuple[Any, ...]) -> LossFn:
    """The loss function a key stands for, from its (live) parts."""
    if key[0] == "method":
        return cast(LossFn, types.MethodType(key[2].get(), key[1].get()))
    if key[0] == "object":
        return cast(LossFn, key[1].get())
    code, globals_, values, kw = key
    n_cells = len(code.co_freevars)
    resolved = [_unwrap_ref(v) for v in values]
    fn = types.FunctionType(
        code,
        globals_.get(),
        code.co_name,
        tuple(resolved[n_cells:]) or None,
        tuple(types.CellType(v) for v in resolved[:n_cells]),
    )
    fn.__kwdefaults__ = {k: _unwrap_ref(v) for k, v in kw} or None
    return fn


def _entry(loss_fn: LossFn) -> tuple[Any, tuple[Any, ...], _Entry | None]:
    """``(code, key, entry or None)`` for ``loss_fn``; a found entry becomes the newest."""
    code, key = _parts(loss_fn)
    entry = _ENTRIES.get(key)
    if entry is not None:
        _ENTRIES.move_to_end(key)
    return code, key, entry


def _add(key: tuple[Any, ...]) -> _Entry:
    """A new newest entry, dropped (with its compiled program) when a part of its key dies."""
    entry = _ENTRIES[key] = _Entry()
    for obj in _weak_parts(key):
        _watch(obj, key)
    while len(_ENTRIES) > _MAX_ENTRIES:
        _ENTRIES.popitem(last=False)
    return entry


#: id -> (weak reference with a callback, keys of the entries that mention the object).
_WATCHED: dict[int, tuple[weakref.ref[Any], list[tuple[Any, ...]]]] = {}


def _watch(obj: Any, key: tuple[Any, ...]) -> None:
    ident = id(obj)
    item = _WATCHED.get(ident)
    if item is None or item[0]() is not obj:
        item = (weakref.ref(obj, functools.partial(_forget, ident)), [])
        _WATCHED[ident] = item
    item[1][:] = [k for k in item[1] if k in _ENTRIES]  # long-lived objects: no growth
    item[1].append(key)


def _forget(ident: int, ref: weakref.ref[Any]) -> None:
    """Weak-reference callback: drop every entry whose key mentioned the dead object."""
    item = _WATCHED.get(ident)
    if item is not None and item[0] is ref:
        del _WATCHED[ident]
        for key in item[1]:
            _ENTRIES.pop(key, None)


def _weak_parts(key: tuple[Any, ...]) -> list[Any]:
    """The live objects a key refers to weakly."""
    refs: list[_Ref] = []
    for item in key:
        for sub in item if isinstance(item, tuple) else (item,):
            ref = sub[1] if isinstance(sub, tuple) else sub
            if isinstance(ref, _Ref) and ref.weak is not None:
                refs.append(ref)
    return [obj for obj in (r.get() for r in refs) if obj is not None]


def fallback_reason(loss_fn: LossFn) -> str | None:
    """Why ``loss_fn`` runs eagerly: '' if compiled, None if never seen (tests, debugging)."""
    _, _, entry = _entry(loss_fn)
    return None if entry is None else entry.reason


def value_and_grad(loss_fn: LossFn, x: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
    """``(loss, aux, d loss / d x)`` for a JAX ``loss_fn(x) -> (scalar, aux)``, compiled if safe."""
    if not JAX_JIT or _is_tracer(x.raw):
        # Inside a trace (a whole attack step compiled by attacks.fast_path) the
        # plain gradient is traced into that program: nothing to cache here.
        return eager_value_and_grad(loss_fn, x)
    code, key, entry = _entry(loss_fn)
    misses = _MISSES.setdefault(code, [0, 0])
    if entry is None:
        if misses[0] >= _MAX_MISSES:
            misses[1] += 1
            if misses[1] < _RETRY_AFTER:
                return eager_value_and_grad(loss_fn, x)  # rebuilt with new values every call
            misses[1] = 0
        misses[0] += 1
        entry = _add(key)
        try:
            entry.compiled = _compile(key, x)
        except _Impure as error:
            entry.reason = str(error)
        except Exception as error:  # any trace failure means: run eagerly
            entry.reason = f"not traceable: {type(error).__name__}: {error}"
    else:
        misses[:] = [0, 0]
    if entry.compiled is not None:
        try:
            (loss, aux), grad = entry.compiled(x.raw)
        except Exception as error:  # e.g. a new shape that does not trace
            entry.compiled, entry.reason = None, f"{type(error).__name__}: {error}"
        else:
            return ep.astensor(loss), ep.astensor(aux), ep.astensor(grad)
    return eager_value_and_grad(loss_fn, x)


def eager_value_and_grad(loss_fn: LossFn, x: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
    """EagerPy's own JAX gradient (a trace per call), with a hint for leaked tracers."""
    import jax

    try:
        loss, aux, grad = ep.value_aux_and_grad(loss_fn, x)
    except jax.errors.UnexpectedTracerError as error:
        raise RuntimeError(
            "the JAX model keeps traced values in Python state (for example a PRNG key "
            "stored on the model and split in every call); attacks trace the model, so write "
            "it as a pure function, or pass randomness in another way"
        ) from error
    return loss, aux, grad


def _is_tracer(raw: Any) -> bool:
    import jax

    return isinstance(raw, jax.core.Tracer)


class _Impure(Exception):
    """Two traces of the loss differ: the model has hidden randomness or state."""


def _compile(key: tuple[Any, ...], x: ep.Tensor) -> Compiled:
    """``jax.jit(jax.value_and_grad(...))`` of the loss on raw arrays, after a purity check."""
    import jax

    def forward(raw: Any) -> tuple[Any, Any]:
        loss, aux = _rebuild(key)(ep.astensor(raw))
        return loss.raw, aux.raw

    # A fresh wrapper per trace: JAX caches traces per function object, and a
    # cached second trace would compare the first with itself.
    first = jax.make_jaxpr(lambda raw: forward(raw))(x.raw)
    second = jax.make_jaxpr(lambda raw: forward(raw))(x.raw)
    if not same_trace(first, second):
        raise _Impure(
            "two traces of the model differ (hidden randomness or state, e.g. np.random): "
            "compiling would freeze one draw"
        )
    compiled: Compiled = jax.jit(jax.value_and_grad(forward, has_aux=True))
    return compiled


def same_trace(a: Any, b: Any) -> bool:
    """Whether two closed jaxprs are the same program with the same constants."""
    import jax

    if str(a.jaxpr) != str(b.jaxpr) or len(a.consts) != len(b.consts):
        return False
    with jax.transfer_guard("allow"):  # a one-off check before the loop, not a per-step copy
        for c, d in zip(a.consts, b.consts, strict=True):
            if c is d:
                continue
            c_, d_ = np.asarray(c), np.asarray(d)
            if c_.shape != d_.shape or c_.dtype != d_.dtype or c_.tobytes() != d_.tobytes():
                return False
    return True


# ---------------------------------------------------------------------- pure library functions

F = TypeVar("F", bound=Callable[..., Any])

_DYNAMIC = object()  # marks the positions of tensor arguments in a call's static signature


def for_jax(fn: F) -> F:
    """Decorate a pure tensor function so that JAX calls run compiled, one program per signature.

    Why: eager JAX compiles every operation once per shape (about 50 ms of CPU
    each on XLA:CPU), so a kernel of forty EagerPy operations costs two seconds
    the first time a shape is seen; compiled whole it costs one compilation.
    EagerPy tensor arguments are traced; every other argument (norms, bounds,
    flags) is static, so it must be hashable (else the call runs eagerly) and
    each distinct value compiles once. Calls without JAX tensors, and every
    call while ``JAX_JIT`` is off, run ``fn`` unchanged. ``fn`` must not read
    tensor values into Python (no ``.item()``, no host copies).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = (*args, *kwargs.values())
        if not JAX_JIT or not any(isinstance(v, ep.JAXTensor) for v in values):
            return fn(*args, **kwargs)
        spec = tuple(_DYNAMIC if isinstance(a, ep.Tensor) else a for a in args)
        kwspec = tuple((k, _DYNAMIC if isinstance(v, ep.Tensor) else v) for k, v in kwargs.items())
        tensors = [v for v in values if isinstance(v, ep.Tensor)]
        try:
            compiled = _compiled(fn, spec, kwspec)
        except TypeError:  # an unhashable static argument (an array as bounds): run eagerly
            return fn(*args, **kwargs)
        return compiled(*tensors)

    return cast(F, wrapper)


@functools.lru_cache(maxsize=256)
def _compiled(
    fn: Callable[..., Any], spec: tuple[Any, ...], kwspec: tuple[tuple[str, Any], ...]
) -> Callable[..., Any]:
    """``fn`` with its static arguments bound, jitted over its tensor arguments."""
    import jax

    def call(*tensors: Any) -> Any:
        it = iter(tensors)
        args = [next(it) if a is _DYNAMIC else a for a in spec]
        kwargs = {k: next(it) if v is _DYNAMIC else v for k, v in kwspec}
        return fn(*args, **kwargs)

    return jax.jit(call)
