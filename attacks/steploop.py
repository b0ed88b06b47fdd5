"""The shared base of attacks whose optimisation is a loop of one step function.

Why a base class: PGD and APGD run their steps through
:class:`attacks.fast_path.StepLoop`, which replays the step captured in a CUDA
graph, compiled, or as one ``jax.jit`` program. Every such attack needs the
same plumbing around it: a validated ``compile=`` setting, the decision of
how the loop runs before its first step (:func:`attacks.fast_path.plan`), a
progress counter over all its steps (:mod:`attacks.progress`), and
``last_fast_path``, which tells the user how the last call ran and why. Here
it is written once, so a new step-loop attack writes only its step.
"""

from __future__ import annotations

import eagerpy as ep

from attacks import fast_path, progress
from attacks.base import Attack, RunContext
from attacks.fast_path import CompileSetting, FastPathStatus, Step, StepLoop

#: How far up :func:`attacks.fast_path.plan`'s warning is attributed from
#: :meth:`StepLoopAttack.step_loop`: past ``step_loop`` and the attack's
#: ``run``, to the ``__call__`` the user made.
_WARNING_STACKLEVEL = 4


class StepLoopAttack(Attack):
    """An attack whose ``run`` drives a :class:`attacks.fast_path.StepLoop`.

    Subclasses call ``super().__init__(compile=compile)`` in their constructor
    where they would set ``self.compile`` (the repr lists settings in the order
    they were set), build their loop in ``run`` with :meth:`step_loop` and end
    the call with :meth:`finish`.
    """

    def __init__(self, *, compile: CompileSetting = "auto") -> None:
        self.compile = fast_path.check_setting(compile)
        self._last_fast_path: FastPathStatus | None = None

    @property
    def last_fast_path(self) -> FastPathStatus | None:
        """How the step loop of the last call ran (eager, CUDA graph, torch.compile, jax.jit)."""
        return self._last_fast_path

    def step_loop(self, step: Step, ctx: RunContext, x: ep.Tensor, total_steps: int) -> StepLoop:
        """The loop of one call: its fast path planned on ``x``, counting ``total_steps``.

        ``total_steps`` is every step the call will take (restarts and target
        classes included), the total its progress is reported against. Call it
        from ``run``: a warning that the fast path was refused is attributed to
        the user's call of the attack, two frames up.
        """
        name = type(self).__name__
        status = fast_path.plan(self.compile, ctx.model, x, name, _WARNING_STACKLEVEL)
        return StepLoop(step, status, name, progress.counter(total_steps))

    def finish(self, loop: StepLoop) -> None:
        """Record how ``loop`` ran, for :attr:`last_fast_path`."""
        self._last_fast_path = fast_path.finish(loop)
