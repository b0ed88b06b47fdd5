"""Benchmark of the analytic clipping-aware rescaling kernel against bisection and one sort.

Why this exists: ``attacks.clipping_aware_rescaling`` replaces the usual way of
finding the scale ``eta`` with ``||clip(x + eta*delta) - x||_p == epsilon`` (a
bisection on ``eta``, one clip-and-norm pass per step) by an exact solution that
costs one argsort and a few cumulative sums. That claim is only worth making if
it holds where attacks run, on batched image tensors on a GPU; two targets,
checked here on PyTorch:

* at equal accuracy, the kernel is at least 10x faster than bisection;
* the kernel costs at most 3x one ``torch.sort`` of a tensor of the same
  ``(N, D)`` shape, the lower bound of any sort-based solution.

Both targets are stated for a GPU. On a CPU the script measures the same thing;
a CPU sort is comparatively slow and a bisection step is a cheap streaming pass,
so the CPU ratios are recorded for what they are, not as a check of the targets.
Measured figures live in benchmarks/RESULTS.md.

What is compared, on the same inputs and in one run:

1. the kernel, for p = 2, p = 1 and p = inf, as users call it (PyTorch tensors
   without gradients take its PyTorch path), and the same kernel run as the
   EagerPy program that every other framework runs ("eagerpy"), with the
   number of aten operations one call dispatches (counted on the CPU with a
   ``TorchDispatchMode``, views included: launches are what bound the kernel
   on a GPU);
2. a plain-PyTorch bisection on ``eta``, batched over samples: the interval
   starts at ``[0, max_i room_i / |delta_i|]`` (at the upper end every
   coordinate is saturated) and each step computes the clipped norm of all
   samples and halves every interval. The norm is computed in the form that
   serves bisection best (see :func:`bisection_eta`), so the baseline is not
   handicapped. It runs twice: with a fixed number of steps (30 by default),
   and "at equal accuracy": with the fewest steps (up to 64, found by a binary
   search on its measured error, not timed) whose worst error is no larger
   than the kernel's, or than float32 machine epsilon if the kernel is more
   accurate than that. Where even 64 float32 steps do not get there, the
   bisection's own floor (its error after 64 steps) is used instead, and the
   row says so;
3. one ``torch.sort`` along the last axis of an ``(N, D)`` float32 tensor.

Inputs are float32: ``x`` uniform in ``[0, 1]``, ``delta`` standard normal,
bounds ``(0, 1)``. Epsilons are the usual CIFAR-10 ones at 3x32x32 (L2 1.0,
L1 10, Linf 8/255) and are scaled with the dimension D for larger inputs (L2 by
``sqrt(D / 3072)``, L1 by ``D / 3072``, Linf unchanged), so the typical
per-coordinate step, and with it the fraction of clipped coordinates, stays the
same. Every epsilon is checked to be reachable for every sample.

The accuracy column is ``max_n | ||clip(x_n + eta_n*delta_n) - x_n||_p / eps - 1 |``
evaluated in float64 from the float32 ``eta``. Times are medians over
``--repeats`` rounds after warm-up, with ``torch.cuda.synchronize()`` around
each call on CUDA. Within a round the methods run one after the other
(interleaved), so background load hits all of them alike; the ratios are also
printed from each method's fastest repeat, and the load average is recorded,
because CPU figures from a shared machine can be off by several times.

Usage (from the repository root, with the project installed)::

    python -m benchmarks.rescaling [--device cpu|cuda] [--repeats N] [--json PATH]
                                   [--sizes small|full]

``--sizes full`` (the default on CUDA) is batch 256 of 3x32x32 and batch 64 of
3x224x224. ``small`` (the default on CPU) keeps both per-sample shapes and the
3x32x32 batch but uses batch 16 of 3x224x224, since the ratios depend mostly on
the per-sample size; on an idle 2-core CPU it takes about 30 s (about 80 s with
other jobs running), and ``--sizes full --repeats 7`` takes several minutes.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as a file, not with -m: see benchmarks/_bootstrap.py
    import _bootstrap  # noqa: F401

import eagerpy as ep
import numpy as np
import torch

from attacks import rescaling as _rescaling
from attacks.rescaling import clipping_aware_rescaling
from benchmarks import common

BOUNDS = (0.0, 1.0)
FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
MAX_BISECTION_STEPS = 64
TARGET_SPEEDUP_VS_BISECTION = 10.0
TARGET_COST_RELATIVE_TO_SORT = 3.0
REFERENCE_DIM = 3 * 32 * 32


@dataclass(frozen=True)
class Case:
    """One input shape: a batch of ``batch`` images of shape ``image``."""

    batch: int
    image: tuple[int, int, int]

    @property
    def dim(self) -> int:
        return math.prod(self.image)

    @property
    def label(self) -> str:
        return f"{self.batch}x" + "x".join(str(s) for s in self.image)


@dataclass(frozen=True)
class Norm:
    """A threat model: its display name, exponent and epsilon at 3x32x32."""

    name: str
    p: float
    reference_epsilon: float

    def epsilon(self, dim: int) -> float:
        """Scale the 3x32x32 epsilon to ``dim`` so the per-coordinate step stays the same."""
        if math.isinf(self.p):
            return self.reference_epsilon
        return self.reference_epsilon * math.pow(dim / REFERENCE_DIM, 1.0 / self.p)


SIZES: dict[str, tuple[Case, ...]] = {
    "full": (Case(256, (3, 32, 32)), Case(64, (3, 224, 224))),
    "small": (Case(256, (3, 32, 32)), Case(16, (3, 224, 224))),
}
NORMS = (Norm("L2", 2.0, 1.0), Norm("L1", 1.0, 10.0), Norm("Linf", math.inf, 8.0 / 255.0))


# --------------------------------------------------------------------------- methods


def kernel_eta(x: torch.Tensor, delta: torch.Tensor, eps: float, p: float) -> torch.Tensor:
    """The project's analytic kernel."""
    eta: torch.Tensor = clipping_aware_rescaling(x, delta, eps, p, BOUNDS)
    return eta


def eagerpy_eta(x: torch.Tensor, delta: torch.Tensor, eps: float, p: float) -> torch.Tensor:
    """The same kernel run as the EagerPy program (the path of NumPy, TensorFlow and JAX)."""
    switches = vars(_rescaling)
    switches["TORCH_PATH"] = False
    try:
        eta: torch.Tensor = clipping_aware_rescaling(x, delta, eps, p, BOUNDS)
    finally:
        switches["TORCH_PATH"] = True
    return eta


def count_ops(fn: Callable[[], Any]) -> int:
    """Aten operations one call of ``fn`` dispatches (on the CPU: a property of the code)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):  # type: ignore[no-untyped-call]
        count = 0

        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            self.count += 1
            return func(*args, **(kwargs or {}))

    with Counter() as counter:  # type: ignore[no-untyped-call]
        fn()
    return int(counter.count)


def bisection_eta(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: float,
    p: float,
    steps: int,
    trace: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Bisect on ``eta`` for all samples at once; return the midpoint of the final interval.

    The clipped norm is non-decreasing in ``eta``; at ``hi = max_i room_i/|delta_i|``
    every coordinate is saturated, so ``[0, hi]`` brackets the solution whenever
    epsilon is reachable. ``trace``, when given, receives the estimate after each step.

    Each step evaluates ``|clip(x + eta*delta) - x|`` as ``min(eta*|delta|, room)``
    (equal in exact arithmetic, free of the cancellation in ``(x + step) - x``)
    and compares a plain sum (pairwise summation) against ``eps**p``. Both
    matter at float32: ``torch.linalg.vector_norm(ord=1)`` over 150528 terms was
    measured 7e-6 off (a plain sum 1e-7) on the CPU, and the literal
    ``clip(x + eta*delta) - x`` left a 1e-6 floor for L-infinity (6e-8 here).
    """
    lo_b, hi_b = BOUNDS
    xf = x.flatten(1)
    df = delta.flatten(1)
    room = torch.where(df >= 0, hi_b - xf, xf - lo_b).clamp_min_(0.0)
    a = df.abs()
    moving = a > 0
    ratio = torch.where(moving, room / torch.where(moving, a, 1.0), 0.0)
    hi = ratio.amax(dim=1)
    lo = torch.zeros_like(hi)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        moved = torch.minimum(mid[:, None] * a, room)
        below = power_sum(moved, p) < target_power(eps, p)
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
        if trace is not None:
            trace.append(0.5 * (lo + hi))
    return 0.5 * (lo + hi)


def power_sum(moved: torch.Tensor, p: float) -> torch.Tensor:
    """``sum_i moved_i**p`` per row (``max_i moved_i`` for p = inf) of a non-negative tensor."""
    if math.isinf(p):
        return moved.amax(dim=1)
    if p == 1:
        return moved.sum(dim=1)
    if p == 2:
        return (moved * moved).sum(dim=1)
    return moved.pow(p).sum(dim=1)


def target_power(eps: float, p: float) -> float:
    """``eps**p``, the value :func:`power_sum` must reach (``eps`` for p = inf)."""
    return eps if math.isinf(p) else math.pow(eps, p)


def sort_lower_bound(t: torch.Tensor) -> torch.Tensor:
    """One sort along the last axis of an (N, D) tensor."""
    return torch.sort(t, dim=1).values


# --------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], torch.Tensor]], device: torch.device, warmup: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Time every function ``repeats`` times, round-robin, after ``warmup`` untimed rounds.

    Interleaving puts every method under the same background load, so the
    ratios stay meaningful on a shared machine even when absolute times drift.
    Returns the times and each function's last output.
    """
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(warmup):
        for name, fn in fns.items():
            outputs[name] = fn()
            synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            outputs[name] = fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times, outputs


class Accuracy:
    """Worst relative norm error of a scale ``eta``, evaluated in float64."""

    def __init__(self, x: torch.Tensor, delta: torch.Tensor, eps: float, p: float) -> None:
        self.x = x.flatten(1).double()
        self.delta = delta.flatten(1).double()
        self.eps = eps
        self.p = p

    def __call__(self, eta: torch.Tensor) -> float:
        moved = torch.clamp(self.x + eta.double()[:, None] * self.delta, *BOUNDS) - self.x
        total = power_sum(moved.abs(), self.p)
        norm = total if math.isinf(self.p) else total ** (1.0 / self.p)
        return float((norm / self.eps - 1.0).abs().max().item())


def steps_for_accuracy(
    x: torch.Tensor, delta: torch.Tensor, eps: float, p: float, target: float, accuracy: Accuracy
) -> tuple[int, float, bool]:
    """Fewest bisection steps (binary search over 1..64) whose worst error is <= ``target``.

    If 64 steps do not reach ``target``, the bisection has hit its float32
    floor; the target becomes that floor (the error after 64 steps) and the
    step count the fewest that reach it. Returns (steps, target used, whether
    the original target was reached).
    """
    trace: list[torch.Tensor] = []
    bisection_eta(x, delta, eps, p, MAX_BISECTION_STEPS, trace)
    errors: dict[int, float] = {}

    def error(steps: int) -> float:
        if steps not in errors:
            errors[steps] = accuracy(trace[steps - 1])
        return errors[steps]

    reached = error(MAX_BISECTION_STEPS) <= target
    if not reached:
        target = error(MAX_BISECTION_STEPS)
    lo, hi = 1, MAX_BISECTION_STEPS
    while lo < hi:
        mid = (lo + hi) // 2
        if error(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo, target, reached


def summarize(times: list[float], error: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
    }
    if error is not None:
        out["max_rel_error"] = error
    return out


def run_case(
    case: Case,
    device: torch.device,
    generator: torch.Generator,
    warmup: int,
    repeats: int,
    bisection_steps: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Measure every norm on one input shape; return one row per norm."""
    shape = (case.batch, *case.image)
    # Drawn on the CPU so a seed gives the same inputs on every device.
    x = torch.rand(shape, generator=generator, dtype=torch.float32).to(device)
    delta = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    to_sort = torch.randn((case.batch, case.dim), generator=generator).to(device)

    fns: dict[str, Callable[[], torch.Tensor]] = {"sort": lambda: sort_lower_bound(to_sort)}
    setups: dict[str, dict[str, Any]] = {}
    for norm in NORMS:
        eps = norm.epsilon(case.dim)
        p = norm.p
        _, reachable = clipping_aware_rescaling(x, delta, eps, p, BOUNDS, return_reachable=True)
        if not bool(reachable.all()):
            raise RuntimeError(f"{norm.name} epsilon {eps} is not reachable for some samples")
        accuracy = Accuracy(x, delta, eps, p)
        kernel_error = accuracy(kernel_eta(x, delta, eps, p))
        log(f"{case.label} {norm.name}: bisection steps for the kernel's accuracy (untimed)")
        steps, target, reached = steps_for_accuracy(
            x, delta, eps, p, max(kernel_error, FLOAT32_EPS), accuracy
        )
        setups[norm.name] = {
            "eps": eps,
            "accuracy": accuracy,
            "steps": steps,
            "target": target,
            "reached": reached,
        }
        fns[f"{norm.name}/kernel"] = functools.partial(kernel_eta, x, delta, eps, p)
        fns[f"{norm.name}/eagerpy"] = functools.partial(eagerpy_eta, x, delta, eps, p)
        xc, dc = x[:2].cpu(), delta[:2].cpu()
        setups[norm.name]["ops"] = count_ops(functools.partial(kernel_eta, xc, dc, eps, p))
        setups[norm.name]["ops_eagerpy"] = count_ops(functools.partial(eagerpy_eta, xc, dc, eps, p))
        fns[f"{norm.name}/bisection"] = functools.partial(
            bisection_eta, x, delta, eps, p, bisection_steps
        )
        fns[f"{norm.name}/bisection_equal_accuracy"] = functools.partial(
            bisection_eta, x, delta, eps, p, steps
        )

    log(f"{case.label}: timing (warmup {warmup}, {repeats} interleaved repeats)")
    times, outputs = time_interleaved(fns, device, warmup, repeats)

    sort_median = statistics.median(times["sort"])
    rows = []
    for norm in NORMS:
        setup = setups[norm.name]
        accuracy = setup["accuracy"]
        k_times = times[f"{norm.name}/kernel"]
        g_times = times[f"{norm.name}/eagerpy"]
        b_times = times[f"{norm.name}/bisection"]
        e_times = times[f"{norm.name}/bisection_equal_accuracy"]
        k_median = statistics.median(k_times)
        rows.append(
            {
                "input": case.label,
                "batch": case.batch,
                "image_shape": list(case.image),
                "dim": case.dim,
                "norm": norm.name,
                "p": "inf" if math.isinf(norm.p) else norm.p,
                "epsilon": setup["eps"],
                "kernel": {
                    "ops_per_call": setup["ops"],
                    **summarize(k_times, accuracy(outputs[f"{norm.name}/kernel"])),
                },
                "eagerpy": {
                    "ops_per_call": setup["ops_eagerpy"],
                    **summarize(g_times, accuracy(outputs[f"{norm.name}/eagerpy"])),
                },
                "eagerpy_relative_to_kernel": statistics.median(g_times) / k_median,
                "bisection": {
                    "steps": bisection_steps,
                    **summarize(b_times, accuracy(outputs[f"{norm.name}/bisection"])),
                },
                "bisection_equal_accuracy": {
                    "steps": setup["steps"],
                    "target_max_rel_error": setup["target"],
                    "kernel_accuracy_reached": setup["reached"],
                    **summarize(
                        e_times, accuracy(outputs[f"{norm.name}/bisection_equal_accuracy"])
                    ),
                },
                "sort": summarize(times["sort"]),
                "speedup_vs_bisection": statistics.median(b_times) / k_median,
                "speedup_vs_bisection_equal_accuracy": statistics.median(e_times) / k_median,
                "cost_relative_to_sort": k_median / sort_median,
                # The same ratios from each method's fastest repeat: on a shared
                # machine the least disturbed run, a check on the medians.
                "from_fastest_repeat": {
                    "eagerpy_relative_to_kernel": min(g_times) / min(k_times),
                    "speedup_vs_bisection": min(b_times) / min(k_times),
                    "speedup_vs_bisection_equal_accuracy": min(e_times) / min(k_times),
                    "cost_relative_to_sort": min(k_times) / min(times["sort"]),
                },
            }
        )
    return rows


# --------------------------------------------------------------------------- reporting


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["capability"] = list(torch.cuda.get_device_capability(device))
        info["cuda"] = torch.version.cuda
    else:
        info["name"] = cpu_name()
        info["cpu_count"] = os.cpu_count()
        info["torch_threads"] = torch.get_num_threads()
    return info


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not available on Windows
        return None


def metadata(args: argparse.Namespace, device: torch.device, warmup: int) -> dict[str, Any]:
    return {
        "benchmark": "clipping-aware rescaling",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": common.command(),
        "seed": args.seed,
        "device": device_info(device),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "eagerpy": ep.__version__,
            "platform": platform.platform(),
        },
        "git_commit": git_commit(),
        # Other processes on the machine skew times (badly on a small CPU); recorded to judge.
        "load_average_at_start": load_average(),
        "settings": {
            "sizes": args.sizes,
            "warmup": warmup,
            "repeats": args.repeats,
            "bisection_steps": args.bisection_steps,
            "max_bisection_steps": MAX_BISECTION_STEPS,
            "dtype": "float32",
            "bounds": list(BOUNDS),
        },
        "targets": {
            "speedup_vs_bisection_equal_accuracy_at_least": TARGET_SPEEDUP_VS_BISECTION,
            "cost_relative_to_sort_at_most": TARGET_COST_RELATIVE_TO_SORT,
            "stated_for": "cuda",
        },
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds >= 0.01 else f"{seconds * 1e3:.2f}"


def format_table(rows: list[dict[str, Any]], bisection_steps: int) -> str:
    header = [
        "input",
        "norm",
        "eps",
        "kernel ops",
        "kernel ms",
        "kernel err",
        "eagerpy ops",
        "eagerpy ms",
        "eagerpy / kernel",
        f"bisect{bisection_steps} ms",
        f"bisect{bisection_steps} err",
        "eq-acc steps",
        "bisect eq-acc ms",
        "bisect eq-acc err",
        "sort ms",
        f"bisect{bisection_steps} / kernel",
        "bisect eq-acc / kernel",
        "kernel / sort",
    ]
    lines = []
    for row in rows:
        eq = row["bisection_equal_accuracy"]
        steps = str(eq["steps"]) + ("" if eq["kernel_accuracy_reached"] else " (floor)")
        lines.append(
            [
                row["input"],
                row["norm"],
                f"{row['epsilon']:.4g}",
                str(row["kernel"]["ops_per_call"]),
                ms(row["kernel"]["median_s"]),
                f"{row['kernel']['max_rel_error']:.1e}",
                str(row["eagerpy"]["ops_per_call"]),
                ms(row["eagerpy"]["median_s"]),
                f"{row['eagerpy_relative_to_kernel']:.2f}x",
                ms(row["bisection"]["median_s"]),
                f"{row['bisection']['max_rel_error']:.1e}",
                steps,
                ms(eq["median_s"]),
                f"{eq['max_rel_error']:.1e}",
                ms(row["sort"]["median_s"]),
                f"{row['speedup_vs_bisection']:.2f}x",
                f"{row['speedup_vs_bisection_equal_accuracy']:.2f}x",
                f"{row['cost_relative_to_sort']:.2f}x",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines)])


def format_fastest(rows: list[dict[str, Any]], bisection_steps: int) -> str:
    """The ratios again, from each method's fastest repeat instead of the median."""
    lines = [
        f"ratios from the fastest repeat (input, norm: eagerpy / kernel, "
        f"bisect{bisection_steps} / kernel, bisect eq-acc / kernel, kernel / sort):"
    ]
    for row in rows:
        fast = row["from_fastest_repeat"]
        lines.append(
            f"  {row['input']} {row['norm']}: {fast['eagerpy_relative_to_kernel']:.2f}x, "
            f"{fast['speedup_vs_bisection']:.2f}x, "
            f"{fast['speedup_vs_bisection_equal_accuracy']:.2f}x, "
            f"{fast['cost_relative_to_sort']:.2f}x"
        )
    return "\n".join(lines)


def format_targets(rows: list[dict[str, Any]], device: torch.device) -> str:
    speedups = [row["speedup_vs_bisection_equal_accuracy"] for row in rows]
    costs = [row["cost_relative_to_sort"] for row in rows]
    fast = all(s >= TARGET_SPEEDUP_VS_BISECTION for s in speedups)
    cheap = all(c <= TARGET_COST_RELATIVE_TO_SORT for c in costs)
    lines = [
        f"speedup vs bisection at equal accuracy >= {TARGET_SPEEDUP_VS_BISECTION:g}x: "
        f"{'met' if fast else 'NOT met'} (min {min(speedups):.2f}x)",
        f"kernel cost <= {TARGET_COST_RELATIVE_TO_SORT:g}x one sort: "
        f"{'met' if cheap else 'NOT met'} (max {max(costs):.2f}x)",
    ]
    if device.type != "cuda":
        lines.append("(the targets are stated for a GPU; this run is on the CPU)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description="Time attacks.clipping_aware_rescaling against bisection and one sort.",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if cuda else "cpu",
        help="default: cuda when available, else cpu",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per method (default: 20 cuda, 3 cpu)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed runs first (default: 3 cuda, 1 cpu)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write rows and metadata here")
    parser.add_argument(
        "--sizes",
        choices=tuple(SIZES),
        default=None,
        help="full: 256x3x32x32 and 64x3x224x224; small: batch 16 at 224 (default: full "
        "on cuda, small on cpu)",
    )
    parser.add_argument("--bisection-steps", type=int, default=30, help="fixed bisection steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    on_cuda = args.device == "cuda"
    if on_cuda and not cuda:
        parser.error("--device cuda: torch.cuda.is_available() is False")
    if args.repeats is None:
        args.repeats = 20 if on_cuda else 3
    if args.warmup is None:
        args.warmup = 3 if on_cuda else 1
    if args.sizes is None:
        args.sizes = "full" if on_cuda else "small"
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be at least 1")
    if not 1 <= args.bisection_steps <= MAX_BISECTION_STEPS:
        parser.error(f"--bisection-steps must be in [1, {MAX_BISECTION_STEPS}]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    meta = metadata(args, device, args.warmup)

    def log(message: str) -> None:
        print(f"  ... {message}", file=sys.stderr, flush=True)

    info = meta["device"]
    threads = f", {info['torch_threads']} torch threads" if "torch_threads" in info else ""
    print(f"device: {info['type']} ({info['name']}{threads})")
    versions = meta["versions"]
    print(
        f"python {versions['python']}, torch {versions['torch']}, numpy {versions['numpy']}, "
        f"eagerpy {versions['eagerpy']}; {meta['date_utc']}; seed {args.seed}; "
        f"warmup {args.warmup}, median of {args.repeats}; "
        f"load average {meta['load_average_at_start']}"
    )
    load = meta["load_average_at_start"]
    if device.type == "cpu" and load is not None and load[0] > 0.5 * (os.cpu_count() or 1):
        log(f"warning: load average {load[0]} on {os.cpu_count()} CPUs; CPU times will be noisy")
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for case in SIZES[args.sizes]:
            rows.extend(
                run_case(
                    case, device, generator, args.warmup, args.repeats, args.bisection_steps, log
                )
            )
    meta["load_average_at_end"] = load_average()
    print()
    print(format_table(rows, args.bisection_steps))
    print()
    print(format_fastest(rows, args.bisection_steps))
    print()
    print(format_targets(rows, device))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"metadata": meta, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
