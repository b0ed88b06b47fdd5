"""Steps done inside an attack call, for whoever shows progress (optional, off by default).

Why: one call of a strong attack (APGD with restarts on a chunk of samples)
can run for minutes, and the caller sees nothing of it: a progress line that
only changes between calls stands still for the whole attack. Our iterative
attacks count their steps (restarts and APGD-T's target classes included)
against the call's whole budget and tell a *sink*, ``sink(done, total)``,
that the caller installs around the call with :func:`reporting`.

Why a context variable and not an argument: the attack's signature is the
same for every attack and every caller (the binarization test calls it on
its binarized model, a user calls it directly), and wrappers such as
:class:`attacks.Ensemble` call members through the same ``__call__``. A
context variable reaches every attack run inside the ``with`` block and is
local to the thread (and asyncio task) that set it.

Cost: without a sink, an attack asks once per call (:func:`counter` returns
``None``) and its loops test one ``None``; nothing is counted. The fast
paths (a CUDA graph replay, a ``lax.fori_loop`` under ``jax.jit``) run many
steps in one call; their steps are reported per call, after it, never from
inside the captured or traced step. A sink gets host integers only and must
not touch the attack's tensors. This module imports nothing but the standard
library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["Counter", "Sink", "counter", "reporting"]

#: ``sink(done, total)``: steps of the current attack call done so far, of ``total``.
Sink = Callable[[int, int], None]

_SINK: ContextVar[Sink | None] = ContextVar("attacks_progress_sink", default=None)


@contextmanager
def reporting(sink: Sink | None) -> Iterator[None]:
    """Within the block, our attacks report their steps to ``sink`` (``None``: to nobody).

    Nested blocks replace the sink for their duration; the previous one is
    restored on exit, also when the block raises.
    """
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


class Counter:
    """The steps of one attack call: ``sink(0, total)`` at once, then as steps are done."""

    __slots__ = ("done", "sink", "total")

    def __init__(self, sink: Sink, total: int) -> None:
        self.sink = sink
        self.total = max(1, int(total))
        self.done = 0
        sink(0, self.total)  # the call starts: lets the sink time the steps that follow

    def advance(self, steps: int = 1) -> None:
        """``steps`` more steps are done (capped at the total: budgets are estimates)."""
        if steps <= 0:
            return
        self.done = min(self.total, self.done + steps)
        self.sink(self.done, self.total)

    def at(self, done: int) -> None:
        """The call got to step ``done`` (a loop that left a run early skips to the next)."""
        if done > self.done:
            self.advance(done - self.done)


def counter(total: int) -> Counter | None:
    """A counter of ``total`` steps for the current call, or ``None`` when nobody listens."""
    sink = _SINK.get()
    return None if sink is None else Counter(sink, total)
