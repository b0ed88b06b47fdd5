"""The binarized model: the defended features, then the readout of the right sample.

Why routing: the binarization test gives every test sample its own readout,
but an attack sees one model. Each input is sent to the readout of the clean
sample whose epsilon ball contains it (the same batch position when that
holds, else the nearest clean sample in the threat norm). So an attack may
reorder, subset or repeat the batch, as AutoAttack does, and still attack the
right readout. Routing is computed on the device for every forward pass, with
no host round trip, and its cost (one distance matrix) is small next to the
model's forward pass.

``BinarizedModel`` is an ``attacks.Model``; :meth:`BinarizedModel.as_native`
gives the same function as a native model of the user's framework (a
``torch.nn.Module`` for PyTorch, a ``keras.Model`` for TensorFlow, a pure
function for JAX), so third-party attacks run on it unchanged.
Logits are ``[-z, z]``: class 1 (adversarial) iff ``z > 0``.
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep

from attacks import backend, frameworks
from attacks.geometry import lp_norms
from attacks.models import Model
from pytest_attacktest.engine.features import FeatureFn
from pytest_attacktest.engine.readout import Readouts

#: Points this far outside a ball (relative) still route to its sample.
ROUTING_TOLERANCE = 1e-4


def _nearest(x: ep.Tensor, clean: ep.Tensor, p: float) -> tuple[ep.Tensor, ep.Tensor]:
    """Index of the nearest clean sample for every input, and the Lp distance to it.

    The candidate is the nearest clean sample in L2 (one matrix product); the
    distance returned is the exact Lp distance to that candidate. Why not an
    exact Lp search: it needs an (N, S, D) difference per
    forward pass, hundreds of times the cost of a small model's own pass at
    S = 512, and routing needs only to find the ball an input lies in. Balls of
    distinct test samples at attack epsilons are far apart, so a point inside
    one ball is nearest to its centre in L2 as well; a point whose L2
    candidate's ball does not contain it is treated as outside every ball.
    Routing never decides a verdict (verification uses each sample's own
    readout), so this shapes only what attacks see.
    """
    xf, cf = x.flatten(start=1), clean.flatten(start=1)
    squares = xf.square().sum(axis=1, keepdims=True) + cf.square().sum(axis=1).expand_dims(0)
    d2 = squares - 2 * (xf @ cf.transpose())
    index = d2.argmin(axis=1)
    # The distance itself is exact, whatever the candidate search cost: the
    # matrix product may run in reduced precision (TF32 on GPUs, JAX's default
    # matmul precision there), and its cancellation loses the small distances
    # that decide whether a point lies inside a ball.
    return index, lp_norms(xf - cf[index], p)


class BinarizedModel(Model):
    """Features of the defended model followed by per-sample routed readouts."""

    def __init__(
        self,
        model: Model,
        extractor: FeatureFn,
        clean: ep.Tensor,
        epsilon: ep.Tensor,
        p: float,
        readouts: Readouts,
    ) -> None:
        self.defended = model
        self.extractor = extractor
        self.clean = clean
        self.epsilon = epsilon
        self.p = p
        self.readouts = readouts
        #: Per sample, the boundary training point that the readout classifies
        #: adversarial: the example whose existence the test guarantees (set by
        #: the engine once checked in this model; for tests and diagnostics).
        self.guaranteed: ep.Tensor | None = None
        bounds = (model.bounds.lower, model.bounds.upper)
        super().__init__(self._forward_native, bounds=bounds, framework=model.framework)

    def route(self, x: ep.Tensor) -> ep.Tensor:
        """Sample index for each input.

        - Inside the ball of the sample at its batch position (modulo S, for
          attacks that send several candidates per sample, as HopSkipJump
          does): that sample.
        - Else inside another sample's ball (a reordered or subset batch, as
          AutoAttack sends): the nearest sample.
        - Else, outside every ball, the position's sample when the batch is a
          multiple of S (the per-sample model an attack expects), the nearest
          otherwise.
        Points outside a sample's ball never decide a verdict (verification
        uses each sample's own readout), so this only shapes what attacks see.
        """
        n, s = x.shape[0], self.clean.shape[0]
        nearest, distance = _nearest(x, self.clean, self.p)
        if n % s:
            return nearest
        position = ep.arange(nearest, n).astype(nearest.dtype) % s
        own = lp_norms(x - ep.tile(self.clean, (n // s,) + (1,) * (x.ndim - 1)), self.p)
        radius = self.epsilon[0] * (1 + ROUTING_TOLERANCE)
        in_own = own <= radius
        in_other = distance <= radius
        return ep.where(in_own, position, ep.where(in_other, nearest, position))

    def readout_logit(self, x: ep.Tensor, index: ep.Tensor | None = None) -> ep.Tensor:
        """``z`` at ``x`` with the readouts of ``index`` (default: routed)."""
        features = backend.wrap(self.extractor(x.raw))
        if index is None:
            index = self.route(x)
        return self.readouts.logits(features, index)

    def _forward_native(self, x: Any) -> Any:
        z = self.readout_logit(backend.wrap(x))
        return ep.stack([-z, z], axis=1).raw

    def as_native(self) -> Any:
        """The binarized model in the user's framework, for third-party attacks.

        - PyTorch: an ``nn.Module`` in eval mode (the defended module registered;
          its ``.train()``/``.eval()`` leave the defended module's mode alone).
        - TensorFlow: a ``keras.Model`` (``model(x)``, ``model(x, training=False)``,
          ``tf.GradientTape``, ``tf.function`` at a fixed batch size); with Keras
          on another backend than TensorFlow, a callable taking the same arguments.
        - JAX: a pure function ``x -> logits``, differentiable with ``jax.grad``
          and traceable by ``jax.jit`` (the routing reads only static shapes;
          the features callable must be jittable too).
        - NumPy: the function itself.
        """
        if self.framework is None or self.framework == "numpy":
            return self._forward_native
        native = frameworks.named(self.framework)
        return native.native_model(self._forward_native, _defended_native(self), "binarized_model")


def _defended_native(binarized: BinarizedModel) -> Any:
    """The user's native model, looking through ``attacks.Model`` wrappers such as BPDA."""
    model: Any = binarized.defended
    while isinstance(model, Model):
        model = model.native if type(model) is Model else getattr(model, "inner", None)
    return model
