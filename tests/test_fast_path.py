"""The attack-loop fast path: captured steps give the eager examples; refusals are clean.

Why these tests: a captured step that is wrong would produce adversarial
examples (or miss them) that the eager attack would not, and a randomized
model replayed from one random draw would make an attack look stronger than it
is; both would be false results. On the CPU the capture is exercised through
``torch.compile`` with the ``"eager"`` backend, which needs no C++ compiler:
the step is recorded by ``make_fx`` and replayed from the recording, as a CUDA
graph replays its recording. The CUDA-graph runner's own logic (static
buffers, write-back, warm-up, check) runs with a CPU tape recorder in place
of ``torch.cuda.graph``; CUDA's capture itself needs a GPU.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from digits_models import held_out, native_mlp
from helpers import torch_threads

import attacks
from attacks import fast_path
from attacks.geometry import linf_ascent, linf_limits, project_ball, steepest_step

try:
    from torch.utils._python_dispatch import TorchDispatchMode
except ImportError:  # no torch (the module's tests skip) or a torch without it
    TorchDispatchMode = None  # type: ignore[assignment,misc]

pytestmark = pytest.mark.torch

N, EPS = 32, 0.08
COMPILED = {"backend": "eager"}  #: torch.compile without inductor: no C++ compiler needed


@pytest.fixture(scope="module")
def torch() -> Iterator[Any]:
    """PyTorch on one thread for this module (the digits MLP is tiny), restored afterwards."""
    module = pytest.importorskip("torch")
    with torch_threads(1):
        yield module


@pytest.fixture(scope="module")
def digits(torch: Any) -> tuple[Any, Any, np.ndarray]:
    x, y = held_out(N)
    return native_mlp("torch"), torch.from_numpy(x), y


def run_both(
    make: Callable[[Any], attacks.Attack],
    model: Any,
    x: Any,
    y: Any,
    eps: float = EPS,
    setting: Any = COMPILED,
) -> tuple[Any, Any, fast_path.FastPathStatus]:
    """The same attack eagerly and on the fast path (same seed): both results and the status."""
    eager = make(False)(model, x, y, epsilon=eps)
    attack = make(setting)
    fast = attack(model, x, y, epsilon=eps)
    status = attack.last_fast_path  # type: ignore[attr-defined]
    assert status is not None
    return eager, fast, status


# ---------------------------------------------------------------------- same examples


ATTACKS: dict[str, Callable[[Any], attacks.Attack]] = {
    "pgd-linf": lambda c: attacks.PGD("linf", steps=8, compile=c),
    "pgd-l2-restarts": lambda c: attacks.PGD("l2", steps=5, restarts=2, loss="margin", compile=c),
    "pgd-no-random-start": lambda c: attacks.PGD(steps=5, random_start=False, compile=c),
    "apgd-linf": lambda c: attacks.APGD("linf", steps=12, compile=c),  # checks every 1-2 steps
    "apgd-t": lambda c: attacks.APGD(
        steps=8, targeted=True, n_target_classes=2, loss="dlr", compile=c
    ),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_captured_step_gives_the_eager_examples(name: str, digits: Any, torch: Any) -> None:
    model, x, y = digits
    eager, fast, status = run_both(ATTACKS[name], model, x, y, eps=0.4 if "l2" in name else EPS)
    assert status.kind == "torch.compile", status.reason
    assert status.mismatch == 0.0
    assert torch.equal(fast, eager)
    robust = float((model(fast).argmax(1).numpy() == y).mean())
    clean = float((model(x).argmax(1).numpy() == y).mean())
    assert robust < clean - 0.1, "the attack did nothing: the comparison would prove little"


class _Tape(TorchDispatchMode if TorchDispatchMode is not None else object):  # type: ignore[misc]
    """Records every aten call (function, arguments, output) while executing it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, Any, Any, Any]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.calls.append((func, args, kwargs or {}, out))
        return out


class _TapeGraph:
    """A CPU stand-in for ``torch.cuda.CUDAGraph``: replays the recorded calls in place.

    Like a CUDA graph, a replay runs the recorded operations on the recorded
    tensors: each call's output is overwritten with its new value, so later
    calls read fresh values at the addresses they were recorded with. Unlike a
    CUDA graph, recording also executes (the runner must not rely on either).
    """

    def __init__(self) -> None:
        self.tape = _Tape()

    def replay(self) -> None:
        import torch

        with torch.no_grad():  # a CUDA graph replays kernels, not autograd
            for func, args, kwargs, out in self.tape.calls:
                new = func(*args, **kwargs)
                if func._schema.is_mutable:
                    continue  # in-place and out= calls wrote already
                olds = out if isinstance(out, tuple | list) else (out,)
                news = new if isinstance(new, tuple | list) else (new,)
                for old, value in zip(olds, news, strict=True):
                    if isinstance(old, torch.Tensor) and old.data_ptr() != value.data_ptr():
                        old.copy_(value)


@pytest.fixture
def tape_cuda(torch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA-graph path of the fast path, run on the CPU with :class:`_Tape` as recorder.

    What this checks is our side: static buffers, the write-back of outputs
    that alias inputs, warm-up, the capture check and replays across restarts
    and APGD's checkpoints. CUDA itself (streams, capture rules) needs a GPU.
    """
    if TorchDispatchMode is None:
        pytest.skip("this torch has no TorchDispatchMode")

    @contextlib.contextmanager
    def record(graph: _TapeGraph, **_: Any) -> Iterator[None]:
        with graph.tape:
            yield

    class Stream:
        def __init__(self, *_: Any) -> None:
            pass

        def wait_stream(self, _: Any) -> None:
            pass

    for name, value in {
        "CUDAGraph": _TapeGraph,
        "graph": record,
        "Stream": Stream,
        "current_stream": lambda *_: Stream(),
        "stream": lambda _: contextlib.nullcontext(),
        "get_sync_debug_mode": lambda: 0,
        "set_sync_debug_mode": lambda _: None,
        "empty_cache": lambda: None,
    }.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, _: None, raising=False)
    plan = fast_path._plan

    def on_cuda(setting: Any, model: Any, x: Any) -> fast_path.FastPathStatus:
        status = plan(setting, model, x)
        if status.kind == "torch.compile":
            status.kind = "cuda-graph"
        return status

    monkeypatch.setattr(fast_path, "_plan", on_cuda)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_cuda_graph_runner_gives_the_eager_examples(
    name: str, digits: Any, torch: Any, tape_cuda: None
) -> None:
    model, x, y = digits
    eps = 0.4 if "l2" in name else EPS
    eager, fast, status = run_both(ATTACKS[name], model, x, y, eps=eps, setting=True)
    assert status.kind == "cuda-graph", status.reason
    assert status.mismatch == 0.0
    assert torch.equal(fast, eager)


def test_a_wrong_recording_is_caught_and_the_attack_runs_eagerly(
    digits: Any, torch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay that does not advance the state (a stale recording) fails the capture check."""
    model, x, y = digits

    from attacks import fast_path_torch  # imports torch: only once the fixture found it

    def stale(self: Any, state: fast_path.State, steps: int) -> fast_path.State:
        return state

    monkeypatch.setattr(fast_path_torch._CompiledRunner, "run", stale)
    with pytest.warns(RuntimeWarning, match="disagrees with the eager step"):
        eager, fast, status = run_both(ATTACKS["pgd-linf"], model, x, y)
    assert status.kind == "eager"
    assert torch.equal(fast, eager)


# ---------------------------------------------------------------------- refusals


def noisy(torch: Any, source: str) -> Any:
    """The digits MLP behind a randomized input transformation, in eval mode."""
    mlp = native_mlp("torch")
    generator = torch.Generator().manual_seed(0)

    class Noisy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = mlp
            self.dropout = torch.nn.Dropout(0.2)

        def forward(self, x: Any) -> Any:
            if source == "torch":
                x = x + 0.05 * torch.randn_like(x)
            elif source == "numpy":
                x = x + torch.from_numpy(np.random.normal(0, 0.05, x.shape).astype(np.float32))
            elif source == "private":  # a generator of its own: only the outputs tell
                x = x + 0.05 * torch.randn(x.shape, generator=generator)
            return self.mlp(self.dropout(x))

    module = Noisy().eval()
    if source == "dropout":
        module.dropout.train()
    return module


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("torch", "draws from torch's global"),
        ("numpy", "draws from NumPy's global"),
        ("private", "two forward passes on the same input disagree"),
        ("dropout", "training mode"),
    ],
)
def test_randomized_model_is_never_captured(
    source: str, reason: str, digits: Any, torch: Any
) -> None:
    _, x, y = digits
    model = noisy(torch, source)
    results = []
    for compile_ in (False, COMPILED):
        torch.manual_seed(0)
        np.random.seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            attack = attacks.PGD(steps=5, compile=compile_)
            results.append(attack(model, x, y, epsilon=EPS))
        status = attack.last_fast_path
        assert status is not None
        if compile_:
            assert status.kind == "eager"
            assert reason in status.reason
            assert any(reason in str(w.message) for w in caught)
    if source != "private":  # the checks restore the global generators: same draws
        assert torch.equal(results[0], results[1])


def test_data_dependent_model_is_not_captured(digits: Any, torch: Any) -> None:
    """Python control flow on a tensor's value cannot be recorded; the attack runs eagerly."""
    mlp, x, y = digits

    class Branchy(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            if x.mean() > 0.3:  # decided on the host, per call
                x = x * 0.9
            return mlp(x)

    with pytest.warns(RuntimeWarning, match="capture failed"):
        eager, fast, status = run_both(ATTACKS["pgd-linf"], Branchy().eval(), x, y)
    assert status.kind == "eager"
    assert torch.equal(fast, eager)


def test_tensorflow_model_runs_eagerly(torch: Any) -> None:
    tf = pytest.importorskip("tensorflow")
    model = native_mlp("tensorflow")
    x, y = held_out(N)
    xt = tf.convert_to_tensor(x)
    eager = attacks.PGD(steps=5, compile=False)(model, xt, y, epsilon=EPS)
    attack = attacks.PGD(steps=5, compile=True)
    with pytest.warns(RuntimeWarning, match="the fast path is for PyTorch and JAX models"):
        fast = attack(model, xt, y, epsilon=EPS)
    assert attack.last_fast_path is not None
    assert attack.last_fast_path.kind == "eager"
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(eager))


def test_auto_on_a_cpu_is_the_plain_eager_loop(digits: Any, torch: Any) -> None:
    """The CPU default costs nothing: no check passes, no warning, one forward pass per step."""
    mlp, x, y = digits
    calls = []

    class Counted(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            calls.append(1)
            return mlp(x)

    attack = attacks.PGD(steps=5)  # compile="auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attack(Counted().eval(), x, y, epsilon=EPS)
    assert len(calls) == 5 + 1  # the steps and the final success check
    assert attack.last_fast_path is not None
    assert attack.last_fast_path.kind == "eager"
    assert "only on CUDA" in attack.last_fast_path.reason


@pytest.mark.parametrize("value", ["yes", 1.5, None])
def test_bad_compile_setting_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="compile must be 'auto', True, False or a dict"):
        attacks.APGD(compile=value)


# ---------------------------------------------------------------------- the cheaper eager step


def test_fused_linf_step_is_the_step_then_the_projection(torch: Any) -> None:
    """One clamp against precomputed limits lands where step-then-project lands (to an ulp)."""
    import eagerpy as ep

    gen = torch.Generator().manual_seed(0)
    x = ep.astensor(torch.rand(64, 3, 5, 5, generator=gen))
    x_adv = ep.clip(x + 0.05 * ep.astensor(torch.randn(64, 3, 5, 5, generator=gen)), 0.0, 1.0)
    grad = ep.astensor(torch.randn(64, 3, 5, 5, generator=gen))
    eps = ep.astensor(torch.full((64,), 0.03))
    step = ep.astensor(torch.rand(64, generator=gen) * 0.05)
    lower, upper = linf_limits(x, eps, (0.0, 1.0))
    fused = linf_ascent(x_adv, grad, step, lower, upper).raw
    reference = project_ball(
        x, steepest_step(x_adv, grad, step, np.inf, (0.0, 1.0)), eps, np.inf, (0.0, 1.0)
    ).raw
    assert torch.allclose(fused, reference, rtol=0, atol=1e-7)
    assert ((fused - x.raw).abs() <= 0.03 + 1e-7).all()
    assert (fused == reference).float().mean() > 0.9  # most coordinates bit for bit
