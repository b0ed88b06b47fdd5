"""The JAX side of the attack-loop fast path (:mod:`attacks.fast_path`).

What it holds: the planning of a JAX model's step loop (``jax.jit`` unless
compilation is switched off or left at ``"auto"``) and the ``jax.jit`` runner.
Why a module of its own: planning and the step loop are framework-agnostic,
and this module imports JAX at its top; :mod:`attacks.fast_path` imports it
only for a JAX model, so importing :mod:`attacks` does not import JAX.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from attacks import backend, jaxjit
from attacks.fast_path import (
    EAGER,
    JAX_JIT,
    CaptureError,
    CompileSetting,
    FastPathStatus,
    State,
    Step,
    _raw_step,
    _Runner,
)


def _plan_jax(setting: CompileSetting) -> FastPathStatus:
    """JAX: the step as one ``jax.jit`` program unless compilation is switched off."""
    if isinstance(setting, Mapping):
        return FastPathStatus(
            EAGER,
            "a dict of torch.compile arguments is for PyTorch models; for JAX use "
            "compile='auto' or True (jax.jit)",
            warn=True,
        )
    if not jaxjit.JAX_JIT:
        return FastPathStatus(EAGER, "attacks.jaxjit.JAX_JIT is False", warn=setting is True)
    if setting == "auto":
        return FastPathStatus(
            EAGER,
            "compile='auto' keeps JAX steps eager (the gradient is compiled, attacks.jaxjit): "
            "compiling the whole step costs about a second per attack call on XLA:CPU, more "
            "than it saved on the digits MLP; compile=True compiles it (jax.jit)",
        )
    return FastPathStatus(JAX_JIT, "to be captured", warn=True)


class _JaxJitRunner(_Runner):
    """The step as one ``jax.jit`` program; ``steps`` steps in a ``lax.fori_loop``.

    Why: EagerPy runs JAX op by op, and XLA compiles every operation once per
    shape (about 50 ms each on XLA:CPU) and dispatches it from Python at every
    step; compiled whole, a run of steps is one device call with nothing read
    back to the host in between. The step is traced twice first: if the two
    programs differ (the model draws from ``np.random`` or a Python-side key)
    compiling would freeze one draw, so the loop stays eager.
    """

    def __init__(self, step: Step, state: State) -> None:
        raw_step = _raw_step(step)
        raws = tuple(t.raw for t in state)
        first = jax.make_jaxpr(lambda *r: raw_step(*r))(*raws)
        second = jax.make_jaxpr(lambda *r: raw_step(*r))(*raws)
        if not jaxjit.same_trace(first, second):
            raise CaptureError(
                "two traces of the step differ (hidden randomness or state in the model, "
                "e.g. np.random): a compiled step would freeze one draw"
            )
        out = first.out_avals
        if len(out) != len(raws) or any(
            tuple(a.shape) != tuple(r.shape) or a.dtype != r.dtype
            for a, r in zip(out, raws, strict=True)
        ):
            raise CaptureError("the step changes the shapes or dtypes of the attack's state")

        def body(_: Any, carry: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(raw_step(*carry))

        def loop(carry: tuple[Any, ...], steps: Any) -> tuple[Any, ...]:
            return tuple(jax.lax.fori_loop(0, steps, body, carry))

        self._loop = jax.jit(loop)

    def run(self, state: State, steps: int) -> State:
        raws = self._loop(tuple(t.raw for t in state), steps)
        return tuple(backend.wrap(t) for t in raws)
