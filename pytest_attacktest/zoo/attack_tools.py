"""Small attacks the zoo's recipes need beyond the ``attacks`` library.

* :class:`RandomNoise`: a random point of the ball, the non-attack every
  evaluation must beat (the plain model's failing attack).
* :class:`LastIteratePGD`: fixed-step PGD that returns its *last* iterate, as
  most evaluation code does (``torchattacks.PGD``, hand-written loops), with an
  optional penalty term, which makes it the joint classifier-and-detector
  attack of Carlini and Wagner (2017). ``attacks.PGD`` instead returns the
  latest adversarial iterate it met, even if later iterates left the region.
* :class:`OnModel`: runs any attack on a wrapped model, e.g. ``attacks.EOT``
  around the model the attack is given (the binarized model in a test), which
  is how EOT reaches a randomized defense inside the binarization test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import torch

from attacks import backend
from attacks.base import Attack, RunContext
from attacks.models import Model


class RandomNoise(Attack):
    """One uniform random point of the Linf ball per sample: not an attack at all."""

    uses_gradient = False

    def __init__(self, seed: int | None = 0) -> None:
        self.seed = seed

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        assert ctx.epsilon is not None
        noise = ctx.random.uniform(tuple(x.shape), -1.0, 1.0)
        eps = ctx.epsilon.reshape((-1,) + (1,) * (x.ndim - 1))
        return x + noise * eps


Penalty = Callable[[torch.Tensor], torch.Tensor]


class LastIteratePGD(Attack):
    """Linf PGD on cross-entropy for a fixed number of steps; returns the final iterate.

    Args:
        steps: iterations (step size ``2.5 * epsilon / steps``, random start).
        penalty: optional ``fn(x) -> (N,)`` subtracted from the loss (PyTorch
            models only): with a detector's excess score it keeps the iterates
            where the detector accepts them (a joint attack).
        weight: factor of the penalty.
        seed: seed of the random start.
    """

    def __init__(
        self,
        steps: int = 40,
        *,
        penalty: Penalty | None = None,
        weight: float = 1000.0,
        seed: int | None = 0,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = steps
        self.penalty = penalty
        self.weight = weight
        self.seed = seed

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        assert ctx.epsilon is not None
        if backend.tensor_framework(x) != "torch":
            raise TypeError("LastIteratePGD runs on PyTorch models only")
        if target is not None:
            raise ValueError("LastIteratePGD is untargeted")
        xt, yt = x.raw, y.raw
        eps = ctx.epsilon.raw.reshape((-1,) + (1,) * (xt.ndim - 1))
        lower, upper = ctx.bounds
        generator = torch.Generator(device=xt.device)
        generator.manual_seed(0 if self.seed is None else self.seed)
        start = torch.rand(xt.shape, generator=generator, device=xt.device, dtype=xt.dtype)
        x_adv = (xt + (2 * start - 1) * eps).clamp(lower, upper)
        step = 2.5 * eps / self.steps
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            logits = ctx.model(ep.astensor(x_adv)).raw
            loss = torch.nn.functional.cross_entropy(logits, yt, reduction="sum")
            if self.penalty is not None:
                loss = loss - self.weight * self.penalty(x_adv).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + step * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, xt - eps), xt + eps).clamp(lower, upper)
        return backend.wrap(x_adv.detach())


class OnModel(Attack):
    """Run ``attack`` on ``wrap(model)`` instead of the model it is given.

    Example: ``OnModel(attacks.PGD(steps=30), lambda m: attacks.EOT(m, n=16))``
    attacks a randomized model through the mean gradient of 16 passes and
    counts a point as adversarial only if all 16 passes agree.

    Args:
        attack: the attack to run.
        wrap: ``fn(attacks.Model) -> model`` applied to the model given.
        label: how the wrapper shows in reports (``"EOT-16"``).
    """

    def __init__(self, attack: Attack, wrap: Callable[[Model], Any], label: str) -> None:
        self.attack = attack
        self.wrap = wrap
        self.label = label
        self.p = attack.p
        self.seed = attack.seed
        self.uses_gradient = attack.uses_gradient

    def __repr__(self) -> str:
        return f"OnModel({self.attack!r}, {self.label})"

    def run(
        self, ctx: RunContext, x: ep.Tensor, y: ep.Tensor, target: ep.Tensor | None
    ) -> ep.Tensor:
        assert ctx.epsilon is not None
        out = self.attack(
            self.wrap(ctx.model),
            x.raw,
            y.raw,
            epsilon=ctx.epsilon.raw,
            target=None if target is None else target.raw,
        )
        return backend.wrap(out)
