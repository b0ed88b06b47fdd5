"""Checks of what the user hands the engine: inputs, model outputs, masks, attack results.

Why a module of its own: "never a false pass" fails quietly when a hostile or
careless input is read as something it is not: an attack that writes into
the clean points it was given (distances then measured from the moved
points), a detector returning scores read as "all valid", NaN logits, labels
outside the classes. Each check here turns such a case into either a clear
error naming the fix or a warning the report keeps, and the engine
(:mod:`pytest_attacktest.engine.binarization`) only calls them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import eagerpy as ep
import numpy as np

from attacks import backend, frameworks
from pytest_attacktest.engine.blocks import Blocks
from pytest_attacktest.engine.errors import AttackError, InputError

__all__ = [
    "AFFINE_POINTS_MAX",
    "AFFINE_TOLERANCE",
    "attack_result",
    "boolean_mask",
    "check_affine_features",
    "check_attack",
    "private_copy",
    "same_values",
]

#: Largest relative residual of the least-squares fit of the logits on
#: ``[features, 1]`` for a features callable to be accepted (float32 logits:
#: an exact affine head leaves about 1e-6; half precision gets 4 half-ulps).
#: A features callable that skips a BatchNorm of a small trained convnet
#: leaves about 3e-2, so neither widening may reach that.
AFFINE_TOLERANCE = 1e-3
#: The most that measured forward-pass noise may widen that tolerance.
AFFINE_NOISE_MAX = 0.01
#: Points the affine check may use; a feature dimension needing more is not checked.
AFFINE_POINTS_MAX = 4096
#: Points beyond the ``d + 1`` unknowns of the fit (its degrees of freedom).
_AFFINE_SPARE = 32


def private_copy(x: ep.Tensor) -> ep.Tensor:
    """A copy of ``x`` that shares no memory with it (and no autograd history).

    The engine keeps its own copy of the clean points and gives the attack
    another one, so that neither the user's data nor the points distances are
    measured from can be changed by an attack (or a model) writing in place.
    TensorFlow and JAX arrays are immutable: they are returned as they are.
    """
    return backend.wrap(frameworks.of(x).private_copy(x.raw))


def same_values(a: ep.Tensor, b: ep.Tensor) -> bool:
    """Whether two tensors hold the same values (NaN equal to NaN)."""
    left = np.asarray(backend.to_numpy(a))
    right = np.asarray(backend.to_numpy(b))
    return left.shape == right.shape and bool(np.array_equal(left, right, equal_nan=True))


def boolean_mask(mask: object, n: int, like: ep.Tensor | None = None) -> ep.Tensor:
    """The detector's answer as a boolean ``(n,)`` tensor, or an error saying what it was.

    With ``like``, a mask of another framework (a NumPy mask for torch inputs)
    is moved to ``like``'s framework and device.

    Why booleans only: scores (``0.2`` meaning "reject") cast to bool are all
    ``True``, so a detector would silently accept every adversarial and a
    weak attack pass. Torch, NumPy, TensorFlow and JAX boolean arrays are
    accepted; anything else is refused.
    """
    if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
        raise TypeError(
            f"valid_input must return a boolean array of shape ({n},), got "
            f"{type(mask).__name__}: return e.g. scores < threshold"
        )
    if "bool" not in str(mask.dtype):
        raise TypeError(
            f"valid_input must return a boolean mask (True: valid), got dtype {mask.dtype}: "
            "scores or 0/1 numbers are not read as a mask; return a comparison such as "
            "score < threshold"
        )
    if tuple(mask.shape) != (n,):
        raise InputError(
            f"valid_input must return a boolean mask of shape ({n},), got shape {tuple(mask.shape)}"
        )
    out = backend.wrap(mask)
    if like is not None and backend.tensor_framework(out) != backend.tensor_framework(like):
        out = backend.wrap(backend.from_numpy_like(backend.to_numpy(out), like))
    return out


def check_affine_features(
    logits: Callable[[ep.Tensor], ep.Tensor],
    extractor: Callable[[Any], Any],
    points: Callable[[int], ep.Tensor],
    blocks: Blocks,
    probe: ep.Tensor,
    seed: int,
) -> tuple[float | None, str | None]:
    """Check that the model's logits are an affine function of a features callable.

    Why: the binarization test replaces only the model's final linear layer;
    its attack differentiates the *features*. A callable that is not the
    model up to that layer (``lambda t: t.flatten(1)``, one that skips the
    defense's preprocessing) tests another model than the defended one, and
    a gradient-masked defense then passes a weak attack. If the features are
    the input of the model's final linear layer, ``logits = W f + b`` holds
    exactly; least squares of the logits on ``[f, 1]`` in float64 on enough
    points (more than ``d + 1``) must leave a residual that is tiny next to
    the logits' spread.

    Args:
        logits: the model's logits of an EagerPy batch.
        extractor: the features callable (native in, native ``(N, d)`` out).
        points: ``points(m)``: ``m`` or more inputs to check on (clean points
            and random points of their epsilon balls).
        blocks: the test's forward-pass blocks (memory-sized).
        probe: one input, to learn the feature dimension.
        seed: both calls of a block draw the same torch randomness from it
            (randomized defenses; :func:`same_randomness`).

    Returns:
        ``(relative residual, None)``, or ``(None, why not checked)``.

    Raises:
        FeatureError: the residual is too large, with its value.
    """
    from pytest_attacktest.engine.features import FeatureError

    d = int(np.prod(np.asarray(backend.to_numpy(backend.wrap(extractor(probe.raw)))).shape[1:]))
    m = d + 1 + _AFFINE_SPARE
    if m > AFFINE_POINTS_MAX:
        return None, (
            f"the features callable's {d} dimensions are too many to check that the model's "
            "logits are an affine function of them; make sure it is the model up to its final "
            "linear layer"
        )
    batch = points(m)

    dtypes: set[str] = set()

    def both(i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        block = batch[i:j]
        with same_randomness(block, seed) as reseed:
            reseed()
            f = backend.wrap(extractor(block.raw))
            reseed()
            zs = logits(block)
            dtypes.update((str(f.dtype), str(zs.dtype)))
            return np.asarray(backend.to_numpy(f)), np.asarray(backend.to_numpy(zs))

    parts = blocks.run(both, batch.shape[0])
    features = np.concatenate([f.reshape(f.shape[0], -1) for f, _ in parts])
    z = np.concatenate([zs.reshape(zs.shape[0], -1) for _, zs in parts])
    noise = _logit_noise(logits, batch, blocks, z, seed)
    features, z = features.astype(np.float64), z.astype(np.float64)
    if not (np.isfinite(features).all() and np.isfinite(z).all()):
        raise FeatureError("the features callable or the model returned NaN or inf")
    design = np.concatenate([features, np.ones((features.shape[0], 1))], axis=1)
    coef, _, rank, _ = np.linalg.lstsq(design, z, rcond=None)
    if design.shape[0] - int(rank) < _AFFINE_SPARE // 2:
        return None, (
            "the features callable could not be checked (its features of the sampled points "
            "span as many dimensions as there are points)"
        )
    spread = float(np.linalg.norm(z - z.mean(axis=0)))
    if spread == 0.0:
        return None, "the features callable could not be checked (constant logits)"
    residual = float(np.linalg.norm(z - design @ coef)) / spread
    # Half precision anywhere (the input, the features, the logits: autocast,
    # Keras mixed precision) rounds the logits by up to half an ulp; forward
    # passes that change with the batch (GPUs) move them by the measured
    # noise. Neither may refuse a correct callable; both are bounded so a
    # wrong one still stands out.
    dtypes.add(str(probe.dtype))
    ulps = [ulp for ulp in map(backend.half_precision_ulp, dtypes) if ulp is not None]
    rounding = max(ulps) / 4 if ulps else 6e-8  # half an ulp at 0.5
    tolerance = max(AFFINE_TOLERANCE, 4 * rounding, min(3 * noise / spread, AFFINE_NOISE_MAX))
    if not residual <= tolerance:
        raise FeatureError(
            f"the model's logits are not an affine function of the features callable's output: "
            f"the least-squares residual is {residual:.3g} of the logits' spread (at most "
            f"{tolerance:g} expected) on {design.shape[0]} points. The features must be the "
            "defended model up to its final linear layer (logits = W @ features + b), with "
            "every preprocessing step and defense component before it: the attack's gradients "
            "flow through features only, so a callable that skips part of the model tests "
            "another model. With attacks.BPDA, pass the inner model's features (they receive "
            "the preprocessed input)"
        )
    return residual, None


def _logit_noise(
    logits: Callable[[ep.Tensor], ep.Tensor],
    batch: ep.Tensor,
    blocks: Blocks,
    z: np.ndarray,
    seed: int,
) -> float:
    """Norm of the change of ``z`` when the batch is evaluated in another composition.

    The batch rotated by half and in blocks of half the size: on a GPU that
    changes the convolution algorithms and the rounding, as the attack's and
    the verification's passes will. Each block draws the same torch
    randomness as before, so a randomized defense shows little here.
    """
    n = batch.shape[0]
    half = n // 2
    rotated = ep.concatenate([batch[half:], batch[:half]], axis=0)
    other = Blocks(max(1, min(blocks.size, n) // 2))

    def again(i: int, j: int) -> np.ndarray:
        block = rotated[i:j]
        with same_randomness(block, seed) as reseed:
            reseed()
            return np.asarray(backend.to_numpy(logits(block)))

    parts = other.run(again, n)
    z2 = np.concatenate([p.reshape(p.shape[0], -1) for p in parts]).astype(np.float64)
    z2 = np.concatenate([z2[n - half :], z2[: n - half]])
    return float(np.linalg.norm(z.astype(np.float64) - z2))


@contextlib.contextmanager
def same_randomness(like: ep.Tensor, seed: int) -> Iterator[Callable[[], None]]:
    """A ``reseed()`` that puts torch's global RNG at ``seed``; the RNG is restored on exit.

    Why: a randomized torch defense draws its noise from the global RNG; the
    features callable and the model must see the same draws for their
    outputs to be compared. Other frameworks' randomness is explicit or not
    reachable: ``reseed`` does nothing there.
    """
    with frameworks.of(like).same_randomness(seed) as reseed:
        yield reseed


def ball_points(
    x: ep.Tensor, m: int, epsilon: float, p: float, bounds: tuple[float, float], seed: int
) -> ep.Tensor:
    """At least ``m`` points: clean samples and random points of their epsilon balls.

    Where the readout will be fitted and attacked, spread over as many
    samples as there are (a fit on one ball alone could miss a nonlinearity
    between samples).
    """
    from pytest_attacktest.engine.sampling import inner_points

    s = min(int(x.shape[0]), m)
    clean = x[:s]
    k = max(1, -(-m // s) - 1)
    random = backend.RandomSource(seed, clean)
    eps = ep.ones(clean, (s,)) * epsilon
    inner = inner_points(clean, k, eps, p, bounds, random, 1.0)
    flat = inner.reshape((s * k, *tuple(x.shape[1:])))
    return ep.concatenate([clean, flat], axis=0)


# ---------------------------------------------------------------------- model outputs and labels


def check_logits(logits: ep.Tensor, n: int) -> int:
    """Check the model's output for ``n`` clean inputs; return the number of classes.

    Why: a ``(N, 10, 1)`` output read with ``argmax(axis=1)`` or NaN logits
    give a wrong clean accuracy (and a wrong readout target) without a word.
    """
    shape = tuple(int(d) for d in logits.shape)
    if len(shape) == 1:
        raise InputError(
            f"the model returned shape {shape}: one number per input. Return logits of shape "
            "(N, classes); for a binary classifier with one logit z, return stack([-z, z], 1)"
        )
    if len(shape) != 2 or shape[0] != n:
        hint = " (squeeze the trailing axes)" if len(shape) > 2 and shape[0] == n else ""
        raise InputError(
            f"the model returned shape {shape} for {n} inputs: it must return logits of shape "
            f"({n}, classes){hint}"
        )
    if shape[1] < 2:
        raise InputError(
            f"the model returned {shape[1]} logit per input: return (N, classes) logits with "
            "at least 2 classes (for one logit z, return stack([-z, z], 1))"
        )
    values = np.asarray(backend.to_numpy(logits))
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise InputError(
            f"the model returned NaN or inf logits for {int(bad.sum())} of the {n} clean inputs "
            f"(first at index {int(np.flatnonzero(bad)[0])}): fix the model (or its inputs' "
            "range and dtype) before testing an attack on it"
        )
    return shape[1]


def check_labels(y: Any, n: int, classes: int) -> np.ndarray:
    """The labels as ``(n,)`` class indices in ``[0, classes)``, or an error saying what's wrong."""
    try:
        labels = np.asarray(backend.to_numpy(backend.wrap(y)))
    except TypeError:
        labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape == (n, classes):
        raise InputError(
            f"the labels have shape {labels.shape}, one-hot or scores: pass class indices of "
            f"shape ({n},) (labels.argmax(1))"
        )
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(
            f"the labels have shape {labels.shape} for {n} inputs: pass one class index per "
            f"input, shape ({n},)"
        )
    if labels.dtype.kind == "f":
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise InputError("the labels must be integer class indices, got non-integer numbers")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iu":
        raise InputError(f"the labels must be integer class indices, got dtype {labels.dtype}")
    outside = (labels < 0) | (labels >= classes)
    if outside.any():
        raise InputError(
            f"{int(outside.sum())} labels are outside [0, {classes}) (the model has {classes} "
            f"logits), e.g. {labels[outside][:5].tolist()}: pass class indices of this model"
        )
    return labels


# ---------------------------------------------------------------------- forward passes


def forward_guard(fn: Callable[[Any], Any], max_batch: int | None) -> Callable[[Any], Any]:
    """``fn`` (native ``(N, ...)`` in and out) on at most ``max_batch`` inputs at once.

    Why: a model that refuses large batches (a fixed-batch graph, a server)
    needs every forward pass capped, the attack's included; and a framework
    error raised deep inside the user's model (a dtype or device mismatch,
    batch norm in training mode on one input) must say what to change.
    Batches are split along the first axis and the parts concatenated, which
    keeps gradients.
    """

    def call(x: Any) -> Any:
        n = int(x.shape[0])
        if max_batch is None or n <= max_batch:
            return _translated(fn, x)
        parts = [
            backend.wrap(_translated(fn, x[i : i + max_batch])) for i in range(0, n, max_batch)
        ]
        return ep.concatenate(parts, axis=0).raw

    return call


def _translated(fn: Callable[[Any], Any], x: Any) -> Any:
    try:
        return fn(x)
    except Exception as error:  # re-raised, translated or with a note
        translated = translate_forward_error(error, x)
        if translated is None:
            note = getattr(error, "add_note", None)
            if note is not None and not getattr(error, "_attacktest_noted", False):
                note(
                    f"(pytest-attacktest: while running the model on a batch of {x.shape[0]} "
                    f"inputs of shape {tuple(x.shape[1:])} and dtype {x.dtype}; if the model "
                    "takes only smaller batches, pass max_batch=...)"
                )
                error._attacktest_noted = True  # type: ignore[attr-defined]
            raise
        raise translated from error


def translate_forward_error(error: BaseException, x: Any) -> Exception | None:
    """A clear error for a framework error we recognise in the model's forward pass, else None."""
    from pytest_attacktest.engine.blocks import is_out_of_memory

    if is_out_of_memory(error):  # the blocks halve the batch on these
        return None
    text = str(error)
    n, dtype = int(x.shape[0]), x.dtype
    if "Expected more than 1 value per channel" in text:
        return ValueError(
            f"the model failed on a batch of {n} input(s): batch norm in training mode needs more "
            "than one input per batch. Call model.eval() before testing (the defense at "
            "inference), or give a model whose batch norm uses running statistics"
        )
    dtype_markers = (
        "expected scalar type",
        "must have the same dtype",
        "should be the same",
        "expected m1 and m2 to have the same dtype",
        "was expected to be a",
        "found dtype",
        "Expected tensor for argument",
    )
    if any(marker in text for marker in dtype_markers) and "device" not in text:
        return TypeError(
            f"the model and the inputs have different dtypes (inputs: {dtype}): convert the "
            "inputs to the model's dtype (e.g. x.double() or x.astype(np.float64)) or the model "
            f"to the inputs' (model.float()). Framework error: {text.splitlines()[0]}"
        )
    if "same device" in text or ("device" in text and "Expected" in text):
        return TypeError(
            "the model and the inputs are on different devices: move the inputs to the model's "
            "device, or pass NumPy arrays (moved to the model's device automatically). "
            f"Framework error: {text.splitlines()[0]}"
        )
    return None


# ---------------------------------------------------------------------- attack results


#: What to pass for an attack object of another library (by its top-level module).
_ADAPTERS = {
    "torchattacks": (
        "torchattacks binds the model it attacks when the attack object is built, and the "
        "test attacks another model (the binarized one): pass the class through the adapter, "
        "attack=attacks.FromTorchattacks(torchattacks.{name}, steps=...), without model and eps"
    ),
    "foolbox": (
        "Foolbox attacks take (fmodel, x, criterion, epsilons=...): pass "
        "attack=attacks.FromFoolbox(<the attack object>)"
    ),
}


def check_attack(attack: object) -> None:
    """Refuse, before any work, an ``attack`` the engine cannot call: saying what to pass.

    Why up front: an attack is first called after the samples are drawn, the
    features extracted and the readouts fitted, and an attack object of
    another library called as ``attack(model, x, y, epsilon)`` fails deep in
    its own code with a ``TypeError`` that says nothing about the fix.

    Raises:
        AttackError: a class instead of an instance, an object of a library
            that needs an adapter (torchattacks, Foolbox), or not callable.
    """
    from attacks.base import Attack

    library = (type(attack).__module__ or "").split(".")[0]
    if isinstance(attack, type):
        library = (attack.__module__ or "").split(".")[0]
        if issubclass(attack, Attack):
            raise AttackError(
                f"attack={attack.__name__} is a class: pass an instance, "
                f"attack={attack.__name__}(...)"
            )
        if library in _ADAPTERS:
            raise AttackError(
                f"attack={library}.{attack.__name__} is a class of another library: "
                + _ADAPTERS[library].format(name=attack.__name__)
            )
        return  # a callable class of the user's own: called like a function
    if library in _ADAPTERS:
        raise AttackError(
            f"attack= got a {library} attack object ({type(attack).__name__}), which the "
            "test cannot call as attack(model, x, y, epsilon): "
            + _ADAPTERS[library].format(name=type(attack).__name__)
        )
    if not callable(attack):
        raise AttackError(
            f"attack= must be an attacks.Attack or a function (model, x, y, epsilon) -> x_adv, "
            f"got {type(attack).__name__}"
        )


def attack_result(out: object, x: ep.Tensor, who: str) -> ep.Tensor:
    """A user attack's result as a tensor like ``x`` (framework, device, dtype, shape).

    A NumPy array for a model of another framework is moved there (NumPy is
    what many attack scripts return); ``None``, a class, a list, a tuple or a
    tensor of a third framework get an error saying what to return.
    """
    expected = f"return the adversarial inputs: one array of shape {tuple(x.shape)} like x"
    if out is None:
        raise AttackError(f"{who} returned None: {expected} (a missing return statement?)")
    if isinstance(out, type):
        raise AttackError(f"{who} returned the class {out.__name__}, not a tensor: {expected}")
    try:
        source = backend.tensor_framework(out)
    except TypeError:
        raise AttackError(f"{who} returned {type(out).__name__}: {expected}") from None
    target = backend.tensor_framework(x)
    if source != target:
        if source != "numpy":
            raise AttackError(
                f"{who} returned a {source} tensor for {target} inputs: {expected} "
                f"(a {target} tensor or a NumPy array)"
            )
        out = backend.from_numpy_like(np.asarray(out), x)
    adv = backend.wrap(out)
    if tuple(adv.shape) != tuple(x.shape):
        raise InputError(
            f"{who} returned shape {tuple(adv.shape)} for inputs of shape {tuple(x.shape)}: "
            f"{expected}"
        )
    return adv.astype(x.dtype)
