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

The design, each refusal and what the fast path cannot detect are described
in ``docs/fast_path.md``; its measured cost and speed are in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import contextlib
import pickle
import random
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import eagerpy as ep
import numpy as np

from attacks import backend, progress
from attacks.models import Model

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
    reason = _refusal(model, x)
    if reason is not None:
        return FastPathStatus(EAGER, reason, warn=True)
    return FastPathStatus(kind, "to be captured", options=options, warn=True)


def _plan_jax(setting: CompileSetting) -> FastPathStatus:
    """JAX: the step as one ``jax.jit`` program unless compilation is switched off."""
    from attacks import jaxjit

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


def _refusal(model: Model, x: ep.Tensor) -> str | None:
    """Why the model cannot be captured (training mode, randomness), or None.

    The global random generators are restored afterwards, so that the checks
    leave the draws of a randomized model, and so its eager results, as they
    would have been without them.
    """
    for module in backend.torch_modules(model, through=("native", "inner", "defended")):
        training = [name or "the model" for name, m in module.named_modules() if m.training]
        if training:
            return (
                f"the torch model is in training mode (module {training[0]!r}), where dropout "
                "draws random numbers and batch norm updates its statistics: call model.eval() "
                "to use the fast path"
            )
    saved = _RandomStates(x)
    try:
        first = model.logits(x)
        drew = saved.changed()
        second = model.logits(x)
    finally:
        saved.restore()
    if drew:
        return (
            f"the model is randomized: a forward pass draws from {' and '.join(drew)}'s global "
            "random generator, and a captured step would not draw as the model does. It runs "
            "eagerly (attack randomized models with attacks.EOT)"
        )
    if not _equal(first.raw, second.raw):
        return (
            "the model is randomized or nondeterministic: two forward passes on the same input "
            "disagree, and a captured step would not draw as the model does. It runs eagerly "
            "(attack randomized models with attacks.EOT)"
        )
    return None


class _RandomStates:
    """The global random generators (torch, torch CUDA, NumPy, Python): save, compare, restore."""

    def __init__(self, x: ep.Tensor) -> None:
        import torch

        self._device = x.raw.device
        self._torch = torch.get_rng_state()
        self._python = random.getstate()
        self._numpy = np.random.get_state()
        cuda = self._device.type == "cuda"
        self._cuda = torch.cuda.get_rng_state(self._device) if cuda else None
        self._fingerprint = self._fingerprints()

    def _fingerprints(self) -> dict[str, bytes]:
        import torch

        states = {
            "torch": torch.get_rng_state().numpy().tobytes(),
            "Python": pickle.dumps(random.getstate()),
            "NumPy": pickle.dumps(np.random.get_state()),
        }
        if self._cuda is not None:
            states["torch CUDA"] = torch.cuda.get_rng_state(self._device).numpy().tobytes()
        return states

    def changed(self) -> list[str]:
        """The generators that were drawn from since the states were saved."""
        now = self._fingerprints()
        return [name for name, state in now.items() if state != self._fingerprint[name]]

    def restore(self) -> None:
        import torch

        torch.set_rng_state(self._torch)
        random.setstate(self._python)
        np.random.set_state(self._numpy)
        if self._cuda is not None:
            torch.cuda.set_rng_state(self._cuda, self._device)


def _equal(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.equal(a, b))


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
        self._side_stream: Any = None

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
            runner = _JaxJitRunner(self._step, state)
            new = runner.run(state, 1)
            self._runner = runner
            self.status.captured = True
            self.status.reason = f"captured ({JAX_JIT})"
            return new
        if self.status.kind == CUDA_GRAPH:
            if self._warm < CUDA_WARMUP:
                self._warm += 1
                return self._cuda_warmup_step(state)
            # The eager step first, so that its activations are freed before the
            # graph's own are allocated: capture must not double peak memory (the
            # engine sizes chunks to the device). Graph replays read their
            # buffers at replay time, so checking on the recorded state is sound.
            expected = self._step(state)
            _release_cached_memory()
            return self._compare(_CudaGraphRunner(self._step, state), state, expected)
        if self._recorded is None:
            self._recorded = _CompiledRunner(self._step, state, self.status.options)
            # The check must not run on the state the step was recorded on, so
            # that a recording that kept a value of that state (or mixed up two
            # of its tensors) shows.
            return self._step(state)
        return self._compare(self._recorded, state, self._step(state))

    def _compare(self, runner: _Runner, state: State, expected: State) -> State:
        """The recording's step from ``state`` must match the eager one; then it replays."""
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

    def _cuda_warmup_step(self, state: State) -> State:
        """An eager step on a side stream, where waiting for the device raises."""
        import torch

        device = state[0].raw.device
        current = torch.cuda.current_stream(device)
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        self._side_stream.wait_stream(current)
        with torch.cuda.stream(self._side_stream), _host_syncs_are_errors():
            new = self._step(state)
        current.wait_stream(self._side_stream)
        for t in new:
            t.raw.record_stream(current)
        return new

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


def _mismatch(got: Any, expected: Any) -> float:
    """Share of elements where two tensors differ (beyond a float tolerance)."""
    import torch

    if got.shape != expected.shape or got.dtype != expected.dtype:
        return 1.0
    if got.numel() == 0:
        return 0.0
    if got.is_floating_point():
        close = torch.isclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
        differ = ~close
    else:
        differ = got != expected
    return float(differ.float().mean())


def _release_cached_memory() -> None:
    """Return the caching allocator's free blocks, so that a graph's private pool can use them."""
    import torch

    torch.cuda.empty_cache()


@contextlib.contextmanager
def _host_syncs_are_errors() -> Iterator[None]:
    """Within the block, a CUDA operation that waits for the device raises.

    A step that reads a value on the host (``.item()``, ``if tensor:``,
    ``nonzero``) cannot be captured; finding out in eager mode, before
    capture, avoids an invalidated capture.
    """
    import torch

    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


# ---------------------------------------------------------------------- runners


class _Runner:
    def run(self, state: State, steps: int) -> State:
        raise NotImplementedError


def _raw_step(step: Step) -> Callable[..., tuple[Any, ...]]:
    """``step`` on native torch tensors, for recorders that see only native tensors."""

    def raw(*tensors: Any) -> tuple[Any, ...]:
        return tuple(t.raw for t in step(tuple(backend.wrap(t) for t in tensors)))

    return raw


def _distinct(tensors: tuple[Any, ...]) -> tuple[Any, ...]:
    """The tensors, each with memory of its own (later ones that share memory are copied).

    A recorder sees the state's tensors as inputs; one tensor in two places of
    the state (an iterate that is also the best point so far) would be one
    input, read where the other is meant.
    """
    seen: set[int] = set()
    out = []
    for t in tensors:
        pointer = t.untyped_storage().data_ptr()
        out.append(t.clone() if pointer in seen else t)
        seen.add(pointer)
    return tuple(out)


def _check_shapes(state: tuple[Any, ...], new: tuple[Any, ...]) -> None:
    if len(new) != len(state) or any(
        a.shape != b.shape or a.dtype != b.dtype for a, b in zip(state, new, strict=True)
    ):
        raise CaptureError("the step changes the shapes or dtypes of the attack's state")


class _CudaGraphRunner(_Runner):
    """The step recorded in a ``torch.cuda.CUDAGraph`` that updates its buffers in place."""

    def __init__(self, step: Step, state: State) -> None:
        import torch

        raw_step = _raw_step(step)
        self._static = tuple(t.raw.clone() for t in state)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            new = raw_step(*self._static)
            _check_shapes(self._static, new)
            # An output that shares memory with an input (a state entry passed
            # through, APGD's previous iterate) is copied first, so that the
            # write-back below never reads a buffer it has already overwritten.
            inputs = {t.untyped_storage().data_ptr() for t in self._static}
            new = tuple(t.clone() if t.untyped_storage().data_ptr() in inputs else t for t in new)
            for buffer, value in zip(self._static, new, strict=True):
                buffer.copy_(value)

    def run(self, state: State, steps: int) -> State:
        for buffer, value in zip(self._static, state, strict=True):
            if buffer.data_ptr() != value.raw.data_ptr():
                buffer.copy_(value.raw)
        for _ in range(steps):
            self._graph.replay()
        return tuple(backend.wrap(t.clone()) for t in self._static)


class _CompiledRunner(_Runner):
    """The step recorded by ``make_fx`` (aten ops only), then ``torch.compile``-d."""

    def __init__(self, step: Step, state: State, options: Mapping[str, Any]) -> None:
        import torch
        from torch.fx.experimental.proxy_tensor import make_fx

        raws = _distinct(tuple(t.raw for t in state))
        try:
            tracer = make_fx(_raw_step(step), tracing_mode="fake", _allow_non_fake_inputs=True)
        except TypeError:  # a torch without the keyword: constants must then be fake too
            tracer = make_fx(_raw_step(step), tracing_mode="fake")
        graph = tracer(*raws)
        random_ops = sorted(
            {
                str(node.target)
                for node in graph.graph.nodes
                if node.op == "call_function"
                and torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())
            }
        )
        if random_ops:
            raise CaptureError(
                f"the step draws random numbers ({', '.join(random_ops)}); a captured step "
                "would not be the model the eager path attacks"
            )
        arguments = {"fullgraph": True, "dynamic": False, **options}
        self._compiled = torch.compile(graph, **arguments)
        self._cuda_graphs = "reduce-overhead" in str(arguments.get("mode", ""))

    def run(self, state: State, steps: int) -> State:
        import torch

        raws = tuple(t.raw for t in state)
        for _ in range(steps):
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
            new = tuple(self._compiled(*raws))
            _check_shapes(raws, new)
            raws = new
        if self._cuda_graphs:  # outputs live in the graph's memory: copy them out
            raws = tuple(t.clone() for t in raws)
        return tuple(backend.wrap(t) for t in raws)


def finish(loop: StepLoop | None) -> FastPathStatus:
    """The status to publish after an attack call (eager when no loop ran)."""
    if loop is None:
        return FastPathStatus(EAGER, "no step loop ran")
    status = loop.status
    if status.kind != EAGER and not status.captured:
        status.kind, status.reason = EAGER, "the run was too short to capture the step"
    return status


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
        import jax

        from attacks.jaxjit import same_trace

        raw_step = _raw_step(step)
        raws = tuple(t.raw for t in state)
        first = jax.make_jaxpr(lambda *r: raw_step(*r))(*raws)
        second = jax.make_jaxpr(lambda *r: raw_step(*r))(*raws)
        if not same_trace(first, second):
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
