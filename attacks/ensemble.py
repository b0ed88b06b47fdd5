"""A cascade of attacks with the per-sample worst case, as AutoAttack evaluates.

Why: no single attack is strongest on every sample; a defense is robust on a
sample only if *every* attack fails there. Users who report the mean of
per-attack accuracies overstate robustness (AutoAttack issues #45, #52, #85);
the right number is the per-sample worst case. Running the attacks in order,
each on the samples that all earlier ones failed on, gives that number at the
cost of the first (cheapest) attack on the whole batch and the later ones on
what remains, which is why cheap attacks go first.

Success is decided here, by a fresh forward pass of the model on every
returned point (never by a member's own bookkeeping), and under the labels of
the batch being attacked, so that an :class:`attacks.adaptive.EOT` model
counts a point only if it is adversarial in all of its passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import eagerpy as ep
import numpy as np

from attacks import backend
from attacks.adaptive import label_scope
from attacks.base import Attack, RunContext, success
from attacks.models import Model


class Ensemble(Attack):
    """Run ``attacks`` in order, each only on the samples not fooled yet.

    Per sample the result is the first point, in the order of ``attacks``,
    that fools the model in a fresh forward pass; a sample the model already
    misclassifies keeps its clean point; a sample no attack fooled gets the
    last attack's try. Every member is called through its public ``__call__``
    on the same :class:`attacks.Model`, so its own checks and projection apply.

    Args:
        attacks: the member attacks, cheapest first. They must share one
            threat-model norm: the ensemble has one epsilon ball.

    Raises:
        ValueError: no attacks, or members with different norms.
        TypeError: a member is not an :class:`attacks.Attack`.
    """

    def __init__(self, attacks: Sequence[Attack]) -> None:
        members = list(attacks)
        if not members:
            raise ValueError("Ensemble needs at least one attack, got an empty sequence")
        for member in members:
            if not isinstance(member, Attack):
                raise TypeError(
                    f"Ensemble members must be attacks.Attack instances, got "
                    f"{type(member).__name__}; wrap third-party code with attacks.external"
                )
        if len({member.p for member in members}) > 1:
            listing = ", ".join(f"{type(m).__name__} ({m.norm})" for m in members)
            raise ValueError(
                f"the attacks of an Ensemble must share one norm (its result lies in one "
                f"epsilon ball), got {listing}; build one Ensemble per norm"
            )
        self.attacks = members
        self.p = members[0].p
        # ``uses_gradient`` is a ClassVar of Attack; the instance dict gives the
        # per-instance value the base class's check reads.
        vars(self)["uses_gradient"] = any(member.uses_gradient for member in members)

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        n = x.shape[0]
        with label_scope(ctx.model, y, target):
            fooled = _host_bool(success(ctx.model, x, y, target))
        result = x
        for attack in self.attacks:
            remaining = np.flatnonzero(~fooled)  # host copy from the last check
            if remaining.size == 0:
                break
            x_s, y_s = x[remaining], y[remaining]
            t_s = None if target is None else target[remaining]
            eps_s = None if ctx.epsilon is None else ctx.epsilon[remaining].raw
            with label_scope(ctx.model, y_s, t_s):
                adv = _run_member(attack, ctx.model, x_s, y_s, t_s, eps_s)
                ok = _host_bool(success(ctx.model, adv, y_s, t_s))
            # Fooled samples take the member's point for good; unfooled ones take
            # it as the current best try (a later member may replace it).
            result = _scatter_rows(result, adv, remaining)
            fooled[remaining[ok]] = True
        assert result.shape[0] == n
        return result


def _run_member(
    attack: Attack,
    model: Model,
    x: ep.Tensor,
    y: ep.Tensor,
    target: ep.Tensor | None,
    epsilon: object,
) -> ep.Tensor:
    raw = attack(
        model, x.raw, y.raw, epsilon=epsilon, target=None if target is None else target.raw
    )
    return backend.wrap(raw).astype(x.dtype)


def _host_bool(t: ep.Tensor) -> np.ndarray:
    return np.array(backend.to_numpy(t), dtype=bool).reshape(-1)  # writable copy


def _scatter_rows(full: ep.Tensor, rows: ep.Tensor, index: np.ndarray) -> ep.Tensor:
    """``full`` with its rows ``index`` replaced by ``rows``, by one gather.

    A gather from ``concatenate([rows, full])`` avoids EagerPy's
    ``index_update``, which is broken on current JAX.
    """
    n = full.shape[0]
    gather = np.arange(n) + len(index)
    gather[index] = np.arange(len(index))
    return ep.concatenate([rows, full], axis=0)[gather]
