"""PGD and APGD throughput: ours against a hand-written torch loop, Foolbox and torchattacks.

Why this exists: ``attacks.PGD`` and ``attacks.APGD`` are written once on
EagerPy for four frameworks and add work the textbook loop does not do (every
iterate's forward pass is checked for success and the first adversarial point
is kept; the result is projected once more into the ball). Users compare
against plain PyTorch and against Foolbox and torchattacks. The targets,
stated for a GPU (ResNet-18 on 32x32, 10 classes, batch 512, 100 steps, Linf
8/255):

* ours within 1.05x of the time of a hand-written eager PyTorch PGD loop;
* ours faster than Foolbox 3 ``LinfPGD`` and torchattacks ``PGD``/``APGD``;

and for the fast path (``attacks.fast_path``: on CUDA the step captured in
a CUDA graph), same model and steps:

* at batch 512, ours within 1.15x of a hand-written CUDA-graph-captured PGD
  loop, measured in the same run;
* at batch 64, ours at least 3x faster than the hand-written eager loop.

What runs, in one process, on the same model, batch, steps and epsilon:

1. ``hand-written PGD``: the fastest reasonable plain-torch loop: a uniform
   random start, then per step ``torch.autograd.grad`` of the summed
   cross-entropy, a sign step and one ``torch.clamp`` against precomputed
   per-coordinate limits (the ball intersected with the bounds). It is the
   reference of every ratio;
2. ``ours PGD`` (``attacks.PGD``) and ``ours APGD`` (``attacks.APGD``), called
   as users call them: ``attack(model, x, y, epsilon=eps)`` on native tensors,
   with ``compile=False`` (the eager step loop);
3. ``ours PGD, fast path`` and ``ours APGD, fast path``: the same with
   ``compile="auto"`` (the default), which on CUDA captures the step in a CUDA
   graph; a row's ``fast path`` column says how the last call ran and, if it
   ran eagerly, why. On a CPU ``"auto"`` is the eager loop, so these rows run
   only on CUDA, or with ``--compile-cpu BACKEND`` (``torch.compile`` with that
   backend, its compile time paid in every call, as users would pay it);
4. on CUDA, ``hand-written PGD, CUDA graph``: the hand-written step recorded
   in a ``torch.cuda.CUDAGraph`` and replayed. Two variants: ``(replays)``
   records once, before timing, and each call copies in a fresh random start
   and replays ``steps`` times, the floor for a captured step loop;
   ``(capture per call)`` warms up, records and replays inside every call,
   as an attack that cannot keep a graph between calls must (ours does
   that);
5. ``Foolbox LinfPGD`` (``foolbox.PyTorchModel(model, bounds=(0, 1))``,
   ``attack(fmodel, x, y, epsilons=eps)``);
6. ``torchattacks PGD`` and ``torchattacks APGD`` (``--no-peers`` leaves the
   peers out).

Peers are optional: a row says "not installed" when its package is missing.
All PGDs use a random start and the same absolute step, ``2.5 * eps / steps``
(our default); the APGDs set their own step. APGD makes ``steps + 1`` gradient
evaluations against PGD's ``steps``; its ratio is still taken against the
hand-written PGD, the same amount of model work plus APGD's bookkeeping.

Timing: one warm-up call of every method, then ``--repeats`` rounds in which
every method runs once (interleaved, so slow drift of the machine affects all
alike); the table gives the median (and the minimum). On CUDA each call is
bracketed by ``torch.cuda.synchronize()``. The global torch seed is reset
before every call (Foolbox and torchattacks draw from it; ours and the
hand-written loop use their own seeded generators).

Sanity columns, from the last timed call of each method: robust accuracy (the
share of the batch still classified correctly at the returned points) and the
largest Linf distance to the clean points (must not exceed epsilon). Robust
accuracy only means something on a trained model, so:

* ``--model mlp`` (the CPU default): the digits MLP of
  ``benchmarks/binarization.py`` (64-256-10, trained for about a second on
  scikit-learn's digits), inputs shaped ``(N, 1, 8, 8)`` (torchattacks' APGD
  needs 4-d inputs) and the true labels;
* ``--model resnet18`` (the GPU default): the torchvision-free ResNet-18 of
  ``benchmarks/binarization.py`` with random weights, in eval mode, on uniform
  random 3x32x32 inputs. Its labels are its own clean predictions, so clean
  accuracy is 100% and every attack works on the whole batch (torchattacks'
  APGD attacks only the samples that start correctly classified; with random
  labels it would do a tenth of the work). Robust accuracy is then the share
  whose prediction did not flip, a check that all attacks do comparable work,
  not a measure of strength.

Usage (from the repository root, with the project installed)::

    python -m benchmarks.attack_throughput [--device cpu|cuda] [--model resnet18|mlp] [--batch N]
                                 [--steps N] [--repeats N] [--epsilon E] [--seed S]
                                 [--threads N] [--no-peers] [--compile-cpu BACKEND]
                                 [--json PATH]

The fast-path targets, on a GPU::

    python -m benchmarks.attack_throughput --device cuda --batch 512 --json pgd-cuda-512.json
    python -m benchmarks.attack_throughput --device cuda --batch 64 --json pgd-cuda-64.json

Defaults: on CUDA the targets' setting (resnet18, batch 512, 100 steps, 5
repeats); on a CPU the digits MLP, batch 512, 100 steps, 10 repeats and one
torch thread, which takes about 30 s on two cores. One thread because the
MLP's tensors are too small to gain from intra-op parallelism, and because on
a shared 2-core machine two spinning torch threads competing with other
processes made every method 20-40x slower and the timings noise. The CPU
figures are overhead figures (a step of the MLP costs about 2.5 ms, so fixed
per-step costs weigh much more than next to a ResNet-18 on a GPU); they do not
check the GPU target.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a file, not with -m: see benchmarks/_bootstrap.py
    import _bootstrap  # noqa: F401

import numpy as np
import torch

import attacks
from benchmarks import binarization as _binarization
from benchmarks import common

ResNet18, digits_mlp = _binarization.ResNet18, _binarization.digits_mlp

BOUNDS = (0.0, 1.0)
TARGET_RATIO = 1.05  #: ours / hand-written, on a GPU (ResNet-18, batch 512, 100 steps)
GRAPH_TARGET = 1.15  #: ours fast path / hand-written CUDA graph (replays), batch 512
SPEEDUP_TARGET = 3.0  #: hand-written eager / ours fast path, batch 64
REFERENCE = "hand-written PGD"
GRAPH_REPLAYS = "hand-written PGD, CUDA graph (replays)"
GRAPH_PER_CALL = "hand-written PGD, CUDA graph (capture per call)"
OURS_PGD, OURS_PGD_FAST = "ours PGD", "ours PGD, fast path"
OURS_APGD, OURS_APGD_FAST = "ours APGD", "ours APGD, fast path"
CUDA_GRAPH_WARMUP = 3  #: eager steps on a side stream before recording (PyTorch's advice)

Run = Callable[[], torch.Tensor]


@dataclass
class Method:
    """One row: an attack to time, or the reason it cannot run."""

    name: str
    family: str  # "PGD" or "APGD"
    run: Run | None
    missing: str | None = None
    times: list[float] = field(default_factory=list)
    last: torch.Tensor | None = None
    attack: Any = None  #: our attack object, whose last_fast_path the table reports


# ---------------------------------------------------------------------- the reference loop


def handwritten_pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Linf PGD in plain eager PyTorch, with as little work per step as is reasonable.

    The ball and the bounds are folded into two tensors once, so each step is
    one forward and backward pass, a sign, a fused add and one clamp.
    """
    lower = (x - eps).clamp_(*BOUNDS)
    upper = (x + eps).clamp_(*BOUNDS)
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    x_adv = torch.clamp(x + noise, lower, upper)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = torch.clamp(x_adv.add(grad.sign(), alpha=alpha), lower, upper)
    return x_adv


class GraphedPGD:
    """The hand-written Linf PGD step recorded in a CUDA graph: the floor for a captured loop.

    The step reads and writes one static iterate buffer, so a replay is a
    whole step (forward, backward, sign step, clamp) and ``steps`` replays are
    the attack. Recording follows PyTorch's recipe: eager warm-up steps on a
    side stream, then ``torch.cuda.graph``; the warm-up steps count as steps.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        alpha: float,
        start: torch.Tensor,
    ) -> None:
        self.lower = (x - eps).clamp_(*BOUNDS)
        self.upper = (x + eps).clamp_(*BOUNDS)
        self.model, self.y, self.alpha = model, y, alpha
        self.x_adv = start.clone()
        side = torch.cuda.Stream(x.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(CUDA_GRAPH_WARMUP):
                self.step()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def step(self) -> None:
        x_adv = self.x_adv.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(self.model(x_adv), self.y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            self.x_adv.copy_(
                torch.clamp(x_adv.add(grad.sign(), alpha=self.alpha), self.lower, self.upper)
            )

    def replay(self, start: torch.Tensor, steps: int) -> torch.Tensor:
        self.x_adv.copy_(start)
        for _ in range(steps):
            self.graph.replay()
        return self.x_adv.clone()


def random_start(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """The hand-written loops' uniform random start (inside the ball and the bounds)."""
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    return torch.clamp(x + noise, (x - eps).clamp(*BOUNDS), (x + eps).clamp(*BOUNDS))


# ---------------------------------------------------------------------- the rows


def build_methods(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    seed: int,
    *,
    peers: bool = True,
    compile_cpu: str | None = None,
) -> list[Method]:
    """Every attack as a zero-argument callable returning adversarial points."""
    alpha = 2.5 * eps / steps
    device = x.device
    generator = torch.Generator(device=device)

    def reference() -> torch.Tensor:
        generator.manual_seed(seed)
        return handwritten_pgd(model, x, y, eps, alpha, steps, generator)

    methods = [Method(REFERENCE, "PGD", reference)]
    methods += graph_methods(model, x, y, eps, alpha, steps, seed)
    for name, family, attack in our_attacks(x, eps, steps, seed, compile_cpu):
        methods.append(Method(name, family, call(attack, model, x, y, eps), attack=attack))
    if peers:
        methods += peer_methods(model, x, y, eps, alpha, steps, seed)
    return methods


def call(attack: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> Run:
    return lambda: attack(model, x, y, epsilon=eps)


def our_attacks(
    x: torch.Tensor, eps: float, steps: int, seed: int, compile_cpu: str | None
) -> list[tuple[str, str, Any]]:
    """Ours eagerly, and on the fast path where it applies (CUDA, or --compile-cpu)."""
    alpha = 2.5 * eps / steps
    rows: list[tuple[str, str, Any]] = [
        (
            OURS_PGD,
            "PGD",
            attacks.PGD("linf", steps=steps, abs_stepsize=alpha, seed=seed, compile=False),
        ),
        (OURS_APGD, "APGD", attacks.APGD("linf", steps=steps, loss="ce", seed=seed, compile=False)),
    ]
    fast: Any = "auto" if x.device.type == "cuda" else None
    if compile_cpu is not None and x.device.type != "cuda":
        fast = {"backend": compile_cpu}
    if fast is not None:
        rows.insert(
            1,
            (
                OURS_PGD_FAST,
                "PGD",
                attacks.PGD("linf", steps=steps, abs_stepsize=alpha, seed=seed, compile=fast),
            ),
        )
        rows.append(
            (
                OURS_APGD_FAST,
                "APGD",
                attacks.APGD("linf", steps=steps, loss="ce", seed=seed, compile=fast),
            )
        )
    return rows


def graph_methods(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    seed: int,
) -> list[Method]:
    """The hand-written CUDA-graph loops (CUDA only; a row saying so elsewhere)."""
    if x.device.type != "cuda":
        return [
            Method(GRAPH_REPLAYS, "PGD", None, "needs CUDA"),
            Method(GRAPH_PER_CALL, "PGD", None, "needs CUDA"),
        ]
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    recorded = GraphedPGD(model, x, y, eps, alpha, random_start(x, eps, generator))

    def replays() -> torch.Tensor:
        generator.manual_seed(seed)
        return recorded.replay(random_start(x, eps, generator), steps)

    def per_call() -> torch.Tensor:
        generator.manual_seed(seed)
        graphed = GraphedPGD(model, x, y, eps, alpha, random_start(x, eps, generator))
        return graphed.replay(graphed.x_adv.clone(), steps - CUDA_GRAPH_WARMUP)

    return [Method(GRAPH_REPLAYS, "PGD", replays), Method(GRAPH_PER_CALL, "PGD", per_call)]


def peer_methods(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    seed: int,
) -> list[Method]:
    """Foolbox and torchattacks, or rows saying they are not installed."""
    device = x.device
    methods: list[Method] = []
    foolbox = optional("foolbox")
    if isinstance(foolbox, str):
        methods.append(Method("Foolbox LinfPGD", "PGD", None, foolbox))
    else:
        fmodel = foolbox.PyTorchModel(model, bounds=BOUNDS, device=device)
        fb_pgd = foolbox.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)

        def fb_run() -> torch.Tensor:
            _, clipped, _ = fb_pgd(fmodel, x, y, epsilons=eps)
            return clipped  # type: ignore[no-any-return]

        methods.append(Method("Foolbox LinfPGD", "PGD", fb_run))

    torchattacks = optional("torchattacks")
    if isinstance(torchattacks, str):
        methods.append(Method("torchattacks PGD", "PGD", None, torchattacks))
        methods.append(Method("torchattacks APGD", "APGD", None, torchattacks))
    else:
        ta_pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        ta_apgd = torchattacks.APGD(
            model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce"
        )
        methods.append(Method("torchattacks PGD", "PGD", lambda: ta_pgd(x, y)))
        methods.append(Method("torchattacks APGD", "APGD", lambda: ta_apgd(x, y)))
    return methods


def optional(name: str) -> Any:
    """The module, or the text of the table row when it cannot be imported."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        return f"not installed ({exc})"


# ---------------------------------------------------------------------- models and data


def make_problem(
    name: str, batch: int, seed: int, device: torch.device
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    """Model in eval mode, inputs in [0, 1], labels, and a note on where the labels come from."""
    if name == "mlp":
        net, x_all, y_all = digits_mlp()
        model: torch.nn.Module = torch.nn.Sequential(torch.nn.Flatten(), net).eval()
        reps = -(-batch // len(x_all))
        x = torch.from_numpy(np.tile(x_all, (reps, 1))[:batch]).reshape(batch, 1, 8, 8)
        y = torch.from_numpy(np.tile(y_all, reps)[:batch])
        note = "digits (scikit-learn), true labels; the MLP was trained on them"
    else:
        torch.manual_seed(seed)
        model = ResNet18(classes=10).eval()
        x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            y = model(x).argmax(dim=1)
        note = "uniform random images; labels = the random-weight model's clean predictions"
    for p in model.parameters():
        p.requires_grad_(False)  # what users do when attacking; every method sees the same
    return model.to(device), x.to(device), y.to(device), note


# ---------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(method: Method, device: torch.device, seed: int) -> float:
    assert method.run is not None
    torch.manual_seed(seed)
    synchronize(device)
    start = time.perf_counter()
    out = method.run()
    synchronize(device)
    elapsed = time.perf_counter() - start
    method.last = out.detach()
    return elapsed


def measure(methods: list[Method], device: torch.device, repeats: int, seed: int) -> None:
    runnable = [m for m in methods if m.run is not None]
    for m in runnable:  # warm-up: allocator, kernels, lazy imports
        timed_call(m, device, seed)
    for _ in range(repeats):
        for m in runnable:
            m.times.append(timed_call(m, device, seed))


def robust_accuracy(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(dim=1) == y).float().mean())


def summarize(
    methods: list[Method],
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
) -> list[dict[str, Any]]:
    reference = next(m for m in methods if m.name == REFERENCE)
    ref_median = statistics.median(reference.times)
    rows: list[dict[str, Any]] = []
    for m in methods:
        row: dict[str, Any] = {"method": m.name, "family": m.family}
        if m.run is None or m.last is None:
            row["missing"] = m.missing
            rows.append(row)
            continue
        median = statistics.median(m.times)
        status = getattr(m.attack, "last_fast_path", None)
        if status is not None:
            row["fast_path"] = {
                "kind": status.kind,
                "reason": status.reason,
                "mismatch": status.mismatch,
            }
        row.update(
            median_s=median,
            min_s=min(m.times),
            ms_per_step=1000 * median / steps,
            ratio_to_handwritten=median / ref_median,
            robust_accuracy=robust_accuracy(model, m.last, y),
            max_linf=float((m.last - x).abs().max()),
            times_s=m.times,
        )
        rows.append(row)
    return rows


def ratio(rows: list[dict[str, Any]], a: str, b: str) -> float | None:
    """median(a) / median(b), or None when either did not run."""
    by_name = {r["method"]: r for r in rows}
    if "median_s" not in by_name.get(a, {}) or "median_s" not in by_name.get(b, {}):
        return None
    return float(by_name[a]["median_s"] / by_name[b]["median_s"])


def headline(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    fast_speedup = ratio(rows, REFERENCE, OURS_PGD_FAST)
    return {
        "ours_pgd_fast/graph_replays": ratio(rows, OURS_PGD_FAST, GRAPH_REPLAYS),
        "ours_pgd_fast/graph_per_call": ratio(rows, OURS_PGD_FAST, GRAPH_PER_CALL),
        "handwritten/ours_pgd_fast": fast_speedup,
        "ours_pgd_fast/ours_pgd": ratio(rows, OURS_PGD_FAST, OURS_PGD),
        "ours_apgd_fast/ours_apgd": ratio(rows, OURS_APGD_FAST, OURS_APGD),
        "ours_pgd/handwritten": ratio(rows, "ours PGD", REFERENCE),
        "ours_pgd/foolbox_pgd": ratio(rows, "ours PGD", "Foolbox LinfPGD"),
        "ours_pgd/torchattacks_pgd": ratio(rows, "ours PGD", "torchattacks PGD"),
        "ours_apgd/handwritten_pgd": ratio(rows, "ours APGD", REFERENCE),
        "ours_apgd/torchattacks_apgd": ratio(rows, "ours APGD", "torchattacks APGD"),
    }


# ---------------------------------------------------------------------- metadata and output


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def metadata(device: torch.device, seed: int, argv: list[str]) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({cpu_name()}, {torch.get_num_threads()} torch threads)"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": name,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "eagerpy": version("eagerpy"),
        "foolbox": version("foolbox"),
        "torchattacks": version("torchattacks"),
        "attacks": attacks.__version__,
        "git_commit": git_commit(),
        "seed": seed,
        "command": common.command(argv),
    }


def print_report(result: dict[str, Any]) -> None:
    meta, cfg = result["meta"], result["config"]
    print(f"device: {meta['device']}; date (UTC) {meta['date']}; seed {meta['seed']}")
    print(
        f"python {meta['python']}, torch {meta['torch']}, numpy {meta['numpy']}, eagerpy "
        f"{meta['eagerpy']}, foolbox {meta['foolbox']}, torchattacks {meta['torchattacks']}, "
        f"attacks {meta['attacks']} ({meta['git_commit']})"
    )
    print(f"command: {meta['command']}")
    print(
        f"model {cfg['model']}, batch {cfg['batch']}, {cfg['steps']} steps, Linf eps "
        f"{cfg['epsilon']:.5f}, PGD step {cfg['pgd_step']:.5f}, {cfg['repeats']} repeats "
        f"(median), clean accuracy {cfg['clean_accuracy']:.3f}; data: {cfg['data']}"
    )
    print()
    print(
        "| method | median s | min s | ms/step | ratio to hand-written | robust acc | max Linf "
        "| fast path |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in result["rows"]:
        if "median_s" not in r:
            print(f"| {r['method']} | {r['missing']} | | | | | | |")
            continue
        fast = r.get("fast_path", {}).get("kind", "")
        print(
            f"| {r['method']} | {r['median_s']:.4f} | {r['min_s']:.4f} | {r['ms_per_step']:.3f} "
            f"| {r['ratio_to_handwritten']:.2f}x | {r['robust_accuracy']:.3f} "
            f"| {r['max_linf']:.5f} | {fast} |"
        )
    for r in result["rows"]:
        status = r.get("fast_path")
        if status and status["kind"] == "eager" and "compile=False" not in status["reason"]:
            print(f"\n{r['method']} ran eagerly: {status['reason']}")
    print()
    h = result["headline"]

    def fmt(v: float | None) -> str:
        return "n/a (not run)" if v is None else f"{v:.3f}x"

    graph = h["ours_pgd_fast/graph_replays"]
    speedup = h["handwritten/ours_pgd_fast"]
    per_call = h["ours_pgd_fast/graph_per_call"]
    print(
        f"ours PGD fast path / hand-written CUDA graph (replays): {fmt(graph)} (target <= "
        f"{GRAPH_TARGET}x at batch 512); / (capture per call): {fmt(per_call)}"
    )
    print(
        f"hand-written eager PGD / ours PGD fast path: {fmt(speedup)} (target >= "
        f"{SPEEDUP_TARGET}x at batch 64)"
    )
    print(
        f"ours fast path / ours eager: PGD {fmt(h['ours_pgd_fast/ours_pgd'])}, "
        f"APGD {fmt(h['ours_apgd_fast/ours_apgd'])}"
    )

    mine = h["ours_pgd/handwritten"]
    verdict = "within" if mine is not None and mine <= TARGET_RATIO else "NOT within"
    print(
        f"ours PGD / hand-written PGD: {fmt(mine)} ({verdict} {TARGET_RATIO}x in this run; the "
        "target is stated for a GPU, ResNet-18, batch 512, 100 steps)"
    )
    print(f"ours PGD / Foolbox LinfPGD: {fmt(h['ours_pgd/foolbox_pgd'])} (< 1: ours faster)")
    print(f"ours PGD / torchattacks PGD: {fmt(h['ours_pgd/torchattacks_pgd'])}")
    print(f"ours APGD / hand-written PGD: {fmt(h['ours_apgd/handwritten_pgd'])}")
    print(f"ours APGD / torchattacks APGD: {fmt(h['ours_apgd/torchattacks_apgd'])}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else ["benchmarks/attack_throughput.py", *argv]
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=["resnet18", "mlp"], default=None)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--epsilon", type=float, default=8 / 255)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads on a CPU (default 1; 0: torch's own choice)",
    )
    parser.add_argument(
        "--no-peers", action="store_true", help="leave Foolbox and torchattacks out"
    )
    parser.add_argument(
        "--compile-cpu",
        default=None,
        metavar="BACKEND",
        help="off CUDA, also time ours with torch.compile and this backend (inductor, aot_eager)",
    )
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args(argv[1:])
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    threads = args.threads if args.threads is not None else (0 if on_gpu else 1)
    if threads > 0:
        torch.set_num_threads(threads)
    model_name = args.model or ("resnet18" if on_gpu else "mlp")
    steps = 100 if args.steps is None else args.steps
    repeats = (5 if on_gpu else 10) if args.repeats is None else args.repeats
    if args.batch < 1 or steps < 1 or repeats < 1 or not args.epsilon > 0:
        parser.error("--batch, --steps and --repeats must be >= 1 and --epsilon > 0")

    model, x, y, note = make_problem(model_name, args.batch, args.seed, device)
    methods = build_methods(
        model,
        x,
        y,
        args.epsilon,
        steps,
        args.seed,
        peers=not args.no_peers,
        compile_cpu=args.compile_cpu,
    )
    print(f"timing {sum(m.run is not None for m in methods)} attacks ...", file=sys.stderr)
    measure(methods, device, repeats, args.seed)
    rows = summarize(methods, model, x, y, steps)
    with torch.no_grad():
        clean = float((model(x).argmax(dim=1) == y).float().mean())
    result: dict[str, Any] = {
        "meta": metadata(device, args.seed, argv),
        "config": {
            "model": model_name,
            "batch": args.batch,
            "steps": steps,
            "epsilon": args.epsilon,
            "pgd_step": 2.5 * args.epsilon / steps,
            "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
            "clean_accuracy": clean,
            "data": note,
        },
        "rows": rows,
        "headline": headline(rows),
        "target": {
            "ours_pgd/handwritten_max": TARGET_RATIO,
            "ours_pgd_fast/graph_replays_max": GRAPH_TARGET,
            "handwritten/ours_pgd_fast_min": SPEEDUP_TARGET,
            "on": "GPU, resnet18, 100 steps; batch 512 (first two), batch 64 (third)",
        },
    }
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
