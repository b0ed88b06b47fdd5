"""The attack-loop fast path: a gradient attack's whole step, captured once and replayed.

Why: on a GPU a small batch is launch-bound (the time goes into launching a
few hundred kernels from Python, not into running them), and PGD and APGD
repeat one step with fixed shapes, which is what a CUDA graph replays in one
launch. The step (forward pass, gradient, the tracker's success check, the
ascent step and the projection; APGD's momentum and best-point bookkeeping)
maps a tuple of state tensors to a new tuple of the same shapes; checkpoints,
restarts and random starts stay in Python between replays.

Three runners: a manual ``torch.cuda.CUDAGraph`` capture (the default on
CUDA), ``torch.compile`` of the step recorded with ``make_fx`` (opt-in), and
JAX's ``jax.jit`` with the steps in one ``lax.fori_loop`` (opt-in). Capture is
refused, and the attack runs eagerly from where it is, for models that are not
torch or JAX, torch modules in training mode, randomized models, steps that
cannot be recorded, and recorded steps that disagree with an eager step from
the same state. Why it fell back is kept in ``attack.last_fast_path``.

This module plans the loop and drives it for every framework; the torch
refusal checks and runners are in :mod:`attacks.fast_path_torch`, the JAX
planning and runner in :mod:`attacks.fast_path_jax`. Each is imported only
when a model of its framework is planned or captured, so that importing
:mod:`attacks` imports neither torch nor JAX.

The design, each refusal and what the fast path cannot detect are described
in ``docs/fast_path.md``; its measured cost and speed are in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import eagerpy as ep

from attacks import backend, progress
from attacks.models import Model

if TYPE_CHECKING:
    from attacks.fast_path_torch import _CudaWarmup

State = tuple[ep.Tensor, ...]
Step = Callable[[State], State]
CompileSetting = bool | Literal["auto"] | Mapping[str, Any]

#: Eager steps before a CUDA graph is captured (cuBLAS/cuDNN handles, autograd
#: threads and the caching allocator are set up by then, as PyTorch advises).
CUDA_WARMUP = 2
#: Largest share of elements of a state tensor where the captured step may
#: differ from the eager step (fused kernels round differently; some CUDA
#: backward kernels use atomics). A wrong capture differs almost everywhere.
MISMATCH_SHARE = 1e-3
RTOL, ATOL = 1e-4, 1e-6

EAGER, CUDA_GRAPH, TORCH_COMPILE, JAX_JIT = "eager", "cuda-graph", "torch.compile", "jax.jit"


@dataclass
class FastPathStatus:
    """How an attack's step loop ran: ``kind`` and why.

    ``kind`` is ``"eager"``, ``"cuda-graph"``, ``"torch.compile"`` or
    ``"jax.jit"``; ``reason`` says why the step was (not) captured.
    ``mismatch`` is the largest share of elements where the captured step
    differed from the eager one when it was checked (0.0 for bit-exact
    backends; None when nothing was compared: nothing captured, or a JAX
    program, whose trace is the step itself).
    """

    kind: str
    reason: str
    mismatch: float | None = None
    #: Whether the loop replayed a captured step (else it ran eagerly throughout).
    captured: bool = False
    #: torch.compile keyword arguments (only for kind "torch.compile").
    options: dict[str, Any] = field(default_factory=dict)
    #: Whether a fallback to eager deserves a warning (the user asked for speed).
    warn: bool = False


class CaptureError(RuntimeError):
    """The step could not be captured; the message says why."""


def check_setting(value: Any) -> CompileSetting:
    """Validate an attack's ``compile`` argument (at construction, before any run)."""
    if isinstance(value, bool) or value == "auto":
        return value  # type: ignore[no-any-return]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("compile options must be a dict of torch.compile keyword arguments")
        return value
    raise ValueError(
        f"compile must be 'auto', True, False or a dict of torch.compile keyword arguments "
        f"(e.g. {{'backend': 'aot_eager'}}), got {value!r}"
    )


# ---------------------------------------------------------------------- planning


def plan(
    setting: CompileSetting, model: Model, x: ep.Tensor, name: str, stacklevel: int = 3
) -> FastPathStatus:
    """Decide, before the first step, whether the step loop of an attack call is captured.

    Runs two no-grad forward passes on ``x`` to check for randomness, but only
    when capture is otherwise possible (never for ``compile=False`` or on a CPU
    under ``"auto"``). A refusal the user should hear about is also a warning
    (``name`` is the attack's), attributed ``stacklevel`` frames up (by default
    the caller of the attack's ``run``, its ``__call__``).
    """
    status = _plan(setting, model, x)
    if status.kind == EAGER and status.warn:
        warnings.warn(f"{name}: the step runs eagerly: {status.reason}", RuntimeWarning, stacklevel)
    return status


def _plan(setting: CompileSetting, model: Model, x: ep.Tensor) -> FastPathStatus:
    if setting is False:
        return FastPathStatus(EAGER, "compile=False")
    explicit = setting is True or isinstance(setting, Mapping)
    if model.framework == "jax":
        from attacks.fast_path_jax import _plan_jax

        return _plan_jax(setting)
    if model.framework != "torch":
        return FastPathStatus(
            EAGER,
            f"the model is a {model.framework} model; the fast path is for PyTorch and JAX models",
            warn=explicit,
        )
    device = x.raw.device
    options: dict[str, Any] = {}
    if isinstance(setting, Mapping):
        kind, options = TORCH_COMPILE, dict(setting)
    elif device.type == "cuda":
        kind = CUDA_GRAPH
    elif setting is True:
        kind = TORCH_COMPILE
    else:
        return FastPathStatus(
            EAGER,
            f"compile='auto' captures the step only on CUDA; on {device.type} the step is "
            "bound by its kernels and compiling costs seconds (compile=True forces torch.compile)",
        )
    from attacks.fast_path_torch import _refusal

    reason = _refusal(model, x)
    if reason is not None:
        return FastPathStatus(EAGER, reason, warn=True)
    return FastPathStatus(kind, "to be captured", options=options, warn=True)


# ---------------------------------------------------------------------- the loop


class StepLoop:
    """Runs an attack's step ``steps`` times: eagerly, or captured once and replayed.

    ``step`` maps a state (a tuple of tensors) to the next state of the same
    shapes and dtypes and must not mutate its input. The loop is made for one
    attack call (captured graphs hold that call's inputs) and may be run
    several times (restarts, APGD's checkpoints). Capture takes the first few
    steps, over as many runs as needed, each a real step of the attack done
    eagerly. On CUDA: ``CUDA_WARMUP`` warm-up steps (on a side stream, where
    host synchronisation raises), then one step done eagerly and by the
    recording, which must agree. With ``torch.compile``: the step is recorded
    on the current state, one step moves away from it, and one step is done
    both ways. Any failure makes the rest of the call eager, from the last
    eager state.
    """

    def __init__(
        self,
        step: Step,
        status: FastPathStatus,
        name: str = "attack",
        counter: progress.Counter | None = None,
    ) -> None:
        self._step = step
        self.status = status
        self._name = name
        #: Told of every step done (:mod:`attacks.progress`): per eager step,
        #: per replayed run of steps (one CUDA-graph or ``lax.fori_loop`` call).
        self.counter = counter
        self._runner: _Runner | None = None  # checked: replays from here on
        self._recorded: _Runner | None = None  # recorded, not yet checked
        self._warm = 0
        self._warmup: _CudaWarmup | None = None

    def run(self, state: State, steps: int) -> State:
        """``steps`` steps from ``state``; returns fresh tensors (never the loop's buffers)."""
        counter = self.counter
        while steps > 0 and self._runner is None and self.status.kind != EAGER:
            state = self._capture_step(state)
            steps -= 1
            if counter is not None:
                counter.advance()
        if self._runner is not None and steps > 0:
            state = self._runner.run(state, steps)
            if counter is not None:
                counter.advance(steps)
            return state
        if counter is None:
            for _ in range(steps):
                state = self._step(state)
            return state
        for _ in range(steps):
            state = self._step(state)
            counter.advance()
        return state

    def _capture_step(self, state: State) -> State:
        """One step of the capture sequence; on failure, the step eagerly and no capture."""
        try:
            return self._advance_capture(state)
        except Exception as exc:  # any failure of capture means: run eagerly
            self._recorded = None
            self._fall_back(_describe(exc))
            return self._step(state)  # the step is pure: doing it again is safe

    def _advance_capture(self, state: State) -> State:
        if self.status.kind == JAX_JIT:
            # No eager reference step: jax.jit runs the traced step itself, the
            # purity check guards against frozen randomness, and one eager JAX
            # step costs the per-operation compilations this path avoids.
            from attacks.fast_path_jax import _JaxJitRunner

            runner = _JaxJitRunner(self._step, state)
            new = runner.run(state, 1)
            self._runner = runner
            self.status.captured = True
            self.status.reason = f"captured ({JAX_JIT})"
            return new
        from attacks import fast_path_torch

        if self.status.kind == CUDA_GRAPH:
            if self._warm < CUDA_WARMUP:
                self._warm += 1
                if self._warmup is None:
                    self._warmup = fast_path_torch._CudaWarmup(self._step)
                return self._warmup.step(state)
            # The eager step first, so that its activations are freed before the
            # graph's own are allocated: capture must not double peak memory (the
            # engine sizes chunks to the device). Graph replays read their
            # buffers at replay time, so checking on the recorded state is sound.
            expected = self._step(state)
            fast_path_torch._release_cached_memory()
            graph = fast_path_torch._CudaGraphRunner(self._step, state)
            return self._compare(graph, state, expected)
        if self._recorded is None:
            self._recorded = fast_path_torch._CompiledRunner(self._step, state, self.status.options)
            # The check must not run on the state the step was recorded on, so
            # that a recording that kept a value of that state (or mixed up two
            # of its tensors) shows.
            return self._step(state)
        return self._compare(self._recorded, state, self._step(state))

    def _compare(self, runner: _Runner, state: State, expected: State) -> State:
        """The recording's step from ``state`` must match the eager one; then it replays.

        Only torch runners are compared (a JAX program is the step itself).
        """
        from attacks.fast_path_torch import _mismatch

        got = runner.run(state, 1)
        mismatch = max(_mismatch(g.raw, e.raw) for g, e in zip(got, expected, strict=True))
        if mismatch > MISMATCH_SHARE:
            raise CaptureError(
                f"the captured step disagrees with the eager step on {mismatch:.1%} of the "
                "elements of a state tensor"
            )
        self._runner, self._recorded = runner, None
        self.status.mismatch = mismatch
        self.status.captured = True
        self.status.reason = f"captured ({self.status.kind})"
        return expected

    def _fall_back(self, reason: str) -> None:
        self.status.reason = f"capture failed, the step runs eagerly: {reason}"
        self.status.kind = EAGER
        if self.status.warn:
            warnings.warn(f"{self._name}: {self.status.reason}", RuntimeWarning, stacklevel=5)


def _describe(exc: BaseException) -> str:
    """A one-line reason from a capture failure, with what it means where that is known."""
    text = str(exc).strip().splitlines()
    first = (text[0] if text else "")[:300]
    if isinstance(exc, CaptureError):
        return first
    name = type(exc).__name__
    if "DataDependent" in name or "synchroniz" in first:
        return (
            "the step waits for a tensor's value on the host (data-dependent control flow, "
            f".item(), float(tensor), host data copied in), which a recording cannot replay "
            f"({name}: {first})"
        )
    return f"{name}: {first}"


# ---------------------------------------------------------------------- runners


class _Runner:
    """A captured step: ``run`` replays it ``steps`` times (the runners are per framework)."""

    def run(self, state: State, steps: int) -> State:
        raise NotImplementedError


def _raw_step(step: Step) -> Callable[..., tuple[Any, ...]]:
    """``step`` on native tensors, for recorders that see only native tensors (torch, JAX)."""

    def raw(*tensors: Any) -> tuple[Any, ...]:
        return tuple(t.raw for t in step(tuple(backend.wrap(t) for t in tensors)))

    return raw


def finish(loop: StepLoop | None) -> FastPathStatus:
    """The status to publish after an attack call (eager when no loop ran)."""
    if loop is None:
        return FastPathStatus(EAGER, "no step loop ran")
    status = loop.status
    if status.kind != EAGER and not status.captured:
        status.kind, status.reason = EAGER, "the run was too short to capture the step"
    return status
