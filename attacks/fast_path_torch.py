"""The PyTorch side of the attack-loop fast path (:mod:`attacks.fast_path`).

What it holds: the refusal checks for torch models (training mode, global
random generators drawn from, forward passes that disagree), the two torch
runners (a manual ``torch.cuda.CUDAGraph`` capture and ``torch.compile`` of a
``make_fx`` recording), the CUDA warm-up on a side stream, and the comparison
of a captured step with an eager one. Why a module of its own: planning and
the step loop are framework-agnostic, and this module imports torch at its
top; :mod:`attacks.fast_path` imports it only when a torch model's step loop
is planned or captured, so importing :mod:`attacks` does not import torch.
"""

from __future__ import annotations

import contextlib
import pickle
import random
from collections.abc import Iterator, Mapping
from typing import Any

import eagerpy as ep
import numpy as np
import torch

from attacks import backend
from attacks.fast_path import ATOL, RTOL, CaptureError, State, Step, _raw_step, _Runner
from attacks.models import Model

# ---------------------------------------------------------------------- refusals


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
        self._device = x.raw.device
        self._torch = torch.get_rng_state()
        self._python = random.getstate()
        self._numpy = np.random.get_state()
        cuda = self._device.type == "cuda"
        self._cuda = torch.cuda.get_rng_state(self._device) if cuda else None
        self._fingerprint = self._fingerprints()

    def _fingerprints(self) -> dict[str, bytes]:
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
        torch.set_rng_state(self._torch)
        random.setstate(self._python)
        np.random.set_state(self._numpy)
        if self._cuda is not None:
            torch.cuda.set_rng_state(self._cuda, self._device)


def _equal(a: Any, b: Any) -> bool:
    return bool(torch.equal(a, b))


# ---------------------------------------------------------------------- capture helpers


class _CudaWarmup:
    """Eager steps on a side stream, where waiting for the device raises.

    The warm-up steps before a CUDA graph is captured; the stream is made at
    the first step and kept for the next ones.
    """

    def __init__(self, step: Step) -> None:
        self._step = step
        self._side_stream: Any = None

    def step(self, state: State) -> State:
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


def _mismatch(got: Any, expected: Any) -> float:
    """Share of elements where two tensors differ (beyond a float tolerance)."""
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
    torch.cuda.empty_cache()


@contextlib.contextmanager
def _host_syncs_are_errors() -> Iterator[None]:
    """Within the block, a CUDA operation that waits for the device raises.

    A step that reads a value on the host (``.item()``, ``if tensor:``,
    ``nonzero``) cannot be captured; finding out in eager mode, before
    capture, avoids an invalidated capture.
    """
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


# ---------------------------------------------------------------------- runners


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
