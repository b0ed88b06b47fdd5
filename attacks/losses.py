"""Per-sample attack losses: larger means more adversarial.

Why several: cross-entropy saturates when logits are large (temperature,
distillation, saturated softmax) and its gradient vanishes; the margin loss of
Carlini and Wagner does not, and its sign tells success directly; DLR (Croce
and Hein, 2020) is invariant to shifting and scaling the logits. The
binarization test's models have two classes, where DLR is undefined; the
margin loss is the natural choice there.

Every loss takes logits ``(N, K)``, labels ``y`` ``(N,)`` and an optional target
``(N,)`` and returns ``(N,)`` values to be *maximised*. Untargeted losses push
away from ``y``; targeted ones pull towards ``target``.
"""

from __future__ import annotations

from collections.abc import Callable

import eagerpy as ep

Loss = Callable[[ep.Tensor, ep.Tensor, "ep.Tensor | None"], ep.Tensor]

_LARGE = 1e9  # replaces one class's logit when taking the max over the others


def _is_class(logits: ep.Tensor, classes: ep.Tensor) -> ep.Tensor:
    """Boolean ``(N, K)``: column ``classes[n]`` of row n.

    Built on the device (EagerPy's ``onehot_like`` and indexing with ``range``
    copy host indices in on every call, which a CUDA graph cannot record).
    """
    columns = ep.arange(logits, logits.shape[-1]).astype(classes.dtype).reshape((1, -1))
    return columns == classes.reshape((-1, 1))


def _other_max(logits: ep.Tensor, classes: ep.Tensor) -> ep.Tensor:
    """max_{i != c} z_i per sample."""
    return ep.where(_is_class(logits, classes), logits - _LARGE, logits).max(axis=-1)


def _pick(logits: ep.Tensor, classes: ep.Tensor) -> ep.Tensor:
    """z_c per sample (exactly: a sum of z_c and zeros)."""
    return ep.where(_is_class(logits, classes), logits, ep.zeros_like(logits)).sum(axis=-1)


def margin(logits: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None = None) -> ep.Tensor:
    """C&W margin ``max_{i!=y} z_i - z_y``, > 0 iff misclassified.

    Targeted: ``z_t - max_{i!=t} z_i``, > 0 iff classified as the target.
    """
    if target is None:
        return _other_max(logits, y) - _pick(logits, y)
    return _pick(logits, target) - _other_max(logits, target)


def soft_margin(logits: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None = None) -> ep.Tensor:
    """The margin with the max over competing classes replaced by a log-sum-exp.

    Untargeted ``log sum_{i!=y} exp(z_i) - z_y`` (the log-odds of not predicting
    y); targeted ``z_t - log sum_{i!=t} exp(z_i)``. Why: its gradient is the
    cross-entropy gradient divided by ``1 - p_y`` (``1 - p_t``), so it weighs
    every competing class by its softmax share instead of following the
    runner-up only, yet, unlike cross-entropy, it does not vanish when the
    softmax saturates (it tends to the margin there). With two classes it is
    the margin. Untargeted it bounds the margin from above, targeted from
    below, so its sign alone does not decide success: the callers decide
    success, and C&W which samples to push, on the margin itself.
    """
    own = target if target is not None else y
    is_own = _is_class(logits, own)
    others = ep.where(is_own, logits - _LARGE, logits)
    top = others.max(axis=-1, keepdims=True)
    lse = (others - top).exp().sum(axis=-1).log() + top[:, 0]
    z_own = ep.where(is_own, logits, ep.zeros_like(logits)).sum(axis=-1)
    return z_own - lse if target is not None else lse - z_own


def cross_entropy(logits: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None = None) -> ep.Tensor:
    """Cross-entropy of the true class (untargeted) or minus that of the target (targeted)."""
    if target is None:
        return ep.crossentropy(logits, y)
    return -ep.crossentropy(logits, target)


def dlr(logits: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None = None) -> ep.Tensor:
    """Difference of logits ratio (Croce and Hein, 2020), scale- and shift-invariant.

    Untargeted: ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, with ``pi`` the classes in
    decreasing logit order.

    Raises:
        ValueError: fewer than 3 classes (4 when targeted): the denominator
            would reuse the classes in the numerator. Use ``margin`` instead.
    """
    classes = logits.shape[-1]
    needed = 3 if target is None else 4
    if classes < needed:
        kind = "targeted DLR" if target is not None else "DLR"
        raise ValueError(
            f"{kind} needs at least {needed} classes, the model has {classes}; "
            "use loss='margin' (the default for two-class models such as the binarization test's)"
        )
    ordered = logits.sort(axis=-1)  # ascending
    top1 = ordered[:, -1]
    eps = 1e-12
    if target is None:
        return -(_pick(logits, y) - _other_max(logits, y)) / (top1 - ordered[:, -3] + eps)
    denominator = top1 - (ordered[:, -3] + ordered[:, -4]) / 2 + eps
    return -(_pick(logits, y) - _pick(logits, target)) / denominator


LOSSES: dict[str, Loss] = {
    "ce": cross_entropy,
    "margin": margin,
    "soft_margin": soft_margin,
    "dlr": dlr,
}


def get_loss(name: str | Loss) -> Loss:
    """A loss by name (``"ce"``, ``"margin"``, ``"soft_margin"``, ``"dlr"``).

    A callable is passed through.
    """
    if callable(name):
        return name
    key = name.lower().replace("-", "_")
    aliases = {"cross_entropy": "ce", "crossentropy": "ce", "cw": "margin"}
    key = aliases.get(key, key)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: use one of {sorted(LOSSES)} or a callable")
    return LOSSES[key]


def is_adversarial(logits: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None = None) -> ep.Tensor:
    """Boolean ``(N,)``: misclassified (untargeted) or classified as the target."""
    predicted = logits.argmax(axis=-1)
    if target is None:
        return predicted != y
    return predicted == target
