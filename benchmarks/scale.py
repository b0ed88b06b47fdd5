"""How the binarization test scales with samples: time curve, peak memory, chunk sizes.

Why: time should grow linearly with the number of samples (64 to 4096), and
chunking over samples should keep peak memory bounded and stated, so that
4096 samples of 224x224 run on one 80 GB GPU. This script measures
the first two and checks the third by the engine's own arithmetic:

1. **Curve.** ``binarization_test`` on the first N samples for each N of
   ``--sizes``, with a fixed ``--chunk-size`` (default 512, so runs beyond it
   have several equal chunks; ``auto`` uses the engine's choice). For each
   run: wall time, process CPU time (on a shared CPU the steadier of the
   two: it does not count time spent waiting for a core), the per-phase
   times, the peak memory (CUDA:
   ``torch.cuda.max_memory_allocated`` after a reset; CPU: the process's peak
   resident set size after resetting it through ``/proc/self/clear_refs``,
   and its growth over the resident size before the run). With equal chunks,
   the run's peak is the peak of one chunk. A least-squares line
   ``t = a + b N`` and the largest relative deviation from it say how linear
   the curve is. Per chunk (through the engine's progress callback): its
   wall time, time per sample and peak memory (``chunk_peaks`` in the JSON,
   the largest per run in the table), and per run the features phase's
   images per second. ``--offset K`` takes the samples from the K-th on, so
   that a size too long for one 10-minute call runs as pieces of equal
   chunks (e.g. 4096 as 0..2047 and 2048..4095: each piece is a run of its
   own, the sum of their times is the whole).
2. **Chunk arithmetic.** What ``auto_chunk_size`` (pytest_attacktest/
   binarization.py) picks for ResNet-18 at 32x32 and ResNet-50 at 224x224
   with 4096 samples on a GPU with ``--gpu-free-gib`` free (default 79, an
   80 GB H100), what its budget covers (the chunk's sampled points, counted
   three times for temporaries), the block of forward passes
   (``pytest_attacktest.engine.blocks.device_block_size``: half the memory the
   chunk leaves, activations estimated, at most 4096 points) and
   what it does not count (the activations of a block, the attack's forward
   and backward pass on the chunk; both are halved on out-of-memory).
   ``--routing-sizes`` times the binarized model's routing search (nearest
   clean sample of every input, per forward pass) against the model's
   forward and backward pass. ``--probe`` measures those two per image on
   the current device, from two batch sizes so that fixed costs cancel (on a CPU from the
   peak resident set of fresh processes: about a minute for ResNet-50).

Usage (from the repository root)::

    python -m benchmarks.scale                          # CPU: digits MLP, 64..4096, PGD-20
    python -m benchmarks.scale --device cuda --model resnet18 --steps 100
    python -m benchmarks.scale --device cuda --model resnet50 --sizes 64,256,1024,4096 --probe

Figures are kept in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import functools
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file, not with -m: see benchmarks/_bootstrap.py
    import _bootstrap  # noqa: F401

import eagerpy as ep
import torch

import attacks
import pytest_attacktest.engine.binarization as engine
from benchmarks import common, model_speed, models
from pytest_attacktest.engine import blocks, routing

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
MIB = 2**20


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak resident set size of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class ChunkPeaks:
    """Per chunk of one ``binarization_test``: wall time and peak memory, from its progress calls.

    A chunk starts with the ``"sampling"`` phase and ends where the next one
    starts (or at ``"done"``); the peak is reset at each start (CUDA:
    ``torch.cuda.reset_peak_memory_stats``; CPU: the peak resident set).
    """

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.chunks: list[dict[str, Any]] = []
        self._start: float | None = None
        self._done = 0

    def _peak_mib(self) -> float | None:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / MIB
        hwm = _status_kib("VmHWM")
        return None if hwm is None else hwm / 1024

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()

    def _close(self, done: int) -> None:
        if self._start is None:
            return
        samples = done - self._done
        elapsed = time.perf_counter() - self._start
        self.chunks.append(
            {
                "first_sample": self._done,
                "samples": samples,
                "seconds": elapsed,
                "ms_per_sample": 1000 * elapsed / max(1, samples),
                "peak_mib": self._peak_mib(),
            }
        )
        self._start = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase == "sampling" or phase == "done":
            if self.cuda:
                torch.cuda.synchronize()
            self._close(done)
            if phase == "sampling":
                self._done = done
                self._reset()
                self._start = time.perf_counter()

    @property
    def largest_mib(self) -> float | None:
        peaks = [c["peak_mib"] for c in self.chunks if c["peak_mib"] is not None]
        return max(peaks) if peaks else None


class PeakMemory:
    """Peak memory of what runs inside ``with``: CUDA allocations, or the CPU resident set."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak_mib: float | None = None
        self.growth_mib: float | None = None
        self.how = "torch.cuda.max_memory_allocated" if self.cuda else "peak RSS (VmHWM)"

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._before = torch.cuda.memory_allocated()
        else:
            if not reset_peak_rss():
                self.how = "unavailable (no /proc/self/clear_refs)"
            self._before = (_status_kib("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            hwm = _status_kib("VmHWM")
            if hwm is None or self.how.startswith("unavailable"):
                return
            peak = hwm * 1024
        self.peak_mib = peak / MIB
        self.growth_mib = (peak - self._before) / MIB


# --------------------------------------------------------------------------- curve


def run_curve(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = str(args.device)
    problem = models.make_problem(args.model, args.offset + max(args.sizes), args.seed, device)
    if args.channels_last:
        problem.model.to(memory_format=torch.channels_last)
    attack = attacks.PGD("linf", steps=args.steps)
    chunk = None if args.chunk_size == "auto" else int(args.chunk_size)
    shared = {
        "epsilon": problem.epsilon,
        "norm": "linf",
        "n_inner": args.n_inner,
        "n_validation": args.n_validation,
        "seed": args.seed,
        "feature_dtype": args.feature_dtype,
    }
    x_all = problem.x[args.offset :]
    engine.binarization_test(
        problem.model, problem.x[:2], attack=attacks.PGD("linf", steps=2), **shared
    )  # warm-up, not timed
    rows = []
    for n in args.sizes:
        chunks = ChunkPeaks(device)
        with PeakMemory(device) as memory:
            common.synchronize(device)
            start, cpu = time.perf_counter(), time.process_time()
            report = engine.binarization_test(
                problem.model,
                x_all[:n],
                attack=attack,
                chunk_size=chunk,
                progress=chunks,
                **shared,
            )
            common.synchronize(device)
            total, cpu = time.perf_counter() - start, time.process_time() - cpu
        size = int(report.settings["chunk_size"])
        rows.append(
            {
                "samples": n,
                "chunk_size": size,
                "chunks": math.ceil(n / size),
                "total_s": total,
                "cpu_s": cpu,
                "ms_per_sample": 1000 * total / n,
                **{f"{phase}_s": report.timings.get(phase, 0.0) for phase in PHASES},
                "peak_mib": memory.peak_mib,
                "growth_mib": memory.growth_mib,
                "chunk_peak_mib": chunks.largest_mib,
                "chunk_peaks": chunks.chunks,
                "features_per_s": model_speed.features_per_s(report),
                "forward_block": report.settings.get("forward_block"),
                "conclusive_share": 1 - report.n_inconclusive / max(1, report.n_samples),
                "offset": args.offset,
                "verdict": report.verdict,
                "asr": report.asr,
                "n_inner": report.settings["n_inner"],
            }
        )
        print(
            f"  {n:5d} samples: {total:8.2f} s, peak {memory.peak_mib or float('nan'):.0f} MiB",
            flush=True,
        )
    return rows


PHASES = ("sampling", "features", "fit", "attack", "verification")


def linearity(rows: list[dict[str, Any]], key: str = "total_s") -> dict[str, Any]:
    """Least-squares ``t = a + b N`` of ``row[key]``, its R^2 and the largest relative residual."""
    n = [float(r["samples"]) for r in rows]
    t = [float(r[key]) for r in rows]
    if len(rows) < 2:
        return {}
    mean_n, mean_t = sum(n) / len(n), sum(t) / len(t)
    var = sum((v - mean_n) ** 2 for v in n)
    slope = sum((a - mean_n) * (b - mean_t) for a, b in zip(n, t, strict=True)) / var
    intercept = mean_t - slope * mean_n
    fitted = [intercept + slope * v for v in n]
    ss_res = sum((a - b) ** 2 for a, b in zip(t, fitted, strict=True))
    ss_tot = sum((a - mean_t) ** 2 for a in t)
    return {
        "intercept_s": intercept,
        "ms_per_sample": 1000 * slope,
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None,
        "max_relative_residual": max(abs(a - b) / a for a, b in zip(t, fitted, strict=True)),
        "ratio_largest_to_smallest": t[-1] / t[0],
        "samples_ratio": n[-1] / n[0],
    }


# --------------------------------------------------------------------------- arithmetic


def chunk_plan(
    shape: tuple[int, ...],
    feature_dim: int,
    samples: int,
    free_bytes: float,
    *,
    n_boundary: int = 1,
    n_validation: int = 32,
    feature_passes: int = 1,
    itemsize: int = 4,
) -> dict[str, Any]:
    """``auto_chunk_size``'s arithmetic on a CUDA device with ``free_bytes`` free.

    Mirrors ``pytest_attacktest.engine.binarization`` (checked against it by
    ``tests/test_benchmarks.py`` through its CPU budget): points per sample
    ``1 + n_inner + n_boundary + 2 * n_validation`` (times the feature
    passes), three copies of them per sample, half of the free memory.
    """
    n_inner = engine.default_inner_points(feature_dim, n_boundary)
    points = (1 + n_inner + n_boundary + 2 * n_validation) * feature_passes
    image = math.prod(shape) * itemsize
    per_sample = 3 * points * image
    budget = free_bytes // 2
    chunk = int(max(1, min(engine.MAX_CHUNK, samples, budget // per_sample)))
    train_points = chunk * (1 + n_inner + n_boundary)
    return {
        "input": "x".join(map(str, shape)),
        "feature_dim": feature_dim,
        "n_inner": n_inner,
        "points_per_sample": points,
        "per_sample_gib": per_sample / GIB,
        "budget_gib": budget / GIB,
        "chunk_size": chunk,
        "chunks": math.ceil(samples / chunk),
        "chunk_points_gib": chunk * per_sample / GIB,
        "train_points_per_chunk": train_points,
        # The engine sizes forward blocks from what is free when a pass starts:
        # at least what the chunk's points (counted three times) leave.
        "forward_block": (
            block := blocks.device_block_size(shape, itemsize, int(free_bytes - chunk * per_sample))
        ),
        "feature_blocks_per_chunk": math.ceil(train_points / block),
    }


SCENARIOS = {
    "resnet18": ((3, 32, 32), 512),
    "resnet50": ((3, 224, 224), 2048),
}


def _growth_mib(name: str, device: str, batch: int, backward: bool) -> float:
    """Peak memory growth of one forward (no grad) or forward and backward pass at ``batch``."""
    problem = models.make_problem(name, batch, 0, device)
    x = problem.x.clone().requires_grad_(backward)
    with PeakMemory(device) as memory:
        if backward:
            loss = problem.model(x).logsumexp(dim=1).sum()
            (grad,) = torch.autograd.grad(loss, x)
            del grad, loss
        else:
            with torch.no_grad():
                problem.model(x)
    return math.nan if memory.growth_mib is None else memory.growth_mib


def _growth_in_child(name: str, batch: int, backward: bool) -> float:
    """:func:`_growth_mib` on the CPU in a fresh process (freed memory stays resident)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        "--probe-child",
        name,
        str(batch),
        str(int(backward)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return float(done.stdout.strip().splitlines()[-1])


def probe(name: str, device: str, small: int, large: int) -> dict[str, Any]:
    """Activation memory per image of ``name``: no-grad forward, and forward and backward.

    Measured at two batch sizes and differenced, so that what does not grow
    with the batch (weights, reordered weights, workspaces) cancels out. On
    a CPU each measurement runs in a fresh process, from its peak resident set.
    """
    out: dict[str, Any] = {"model": name, "batches": [small, large]}
    for key, backward in (("forward", False), ("forward_backward", True)):
        if device.startswith("cuda"):
            low, high = (_growth_mib(name, device, b, backward) for b in (small, large))
        else:
            low, high = (_growth_in_child(name, b, backward) for b in (small, large))
        out[f"{key}_mib_per_image"] = (high - low) / (large - small)
        out[f"{key}_mib_at_{large}"] = high
    out["how"] = PeakMemory(device).how
    return out


def _forward_backward(model: torch.nn.Module, x: torch.Tensor) -> None:
    torch.autograd.grad(model(x).logsumexp(dim=1).sum(), x)


def routing_cost(name: str, device: str, sizes: list[int], seed: int) -> list[dict[str, Any]]:
    """The binarized model's Linf routing search per forward pass, next to the model's pass.

    ``BinarizedModel.route`` computes, on every forward pass, each input's
    nearest clean sample: an ``S x S`` distance matrix over the input
    dimension, so its cost grows with the square of the chunk size while the
    model's grows linearly. Times are the fastest of five, after one warm-up
    (the least disturbed by other jobs on a shared machine).
    """
    rows = []
    for size in sizes:
        problem = models.make_problem(name, size, seed, device)
        x = ep.astensor(problem.x)
        xg = problem.x.clone().requires_grad_(True)

        model = problem.model
        search = functools.partial(routing._nearest, x, x, math.inf)
        step = functools.partial(_forward_backward, model, xg)
        times = {}
        for label, fn in (("routing", search), ("model", step)):
            fn()
            laps = []
            for _ in range(5):
                common.synchronize(device)
                start = time.perf_counter()
                fn()
                common.synchronize(device)
                laps.append(time.perf_counter() - start)
            times[label] = min(laps)
        rows.append(
            {
                "chunk": size,
                "routing_ms": 1000 * times["routing"],
                "model_ms": 1000 * times["model"],
                "ratio": times["routing"] / times["model"],
            }
        )
    return rows


ROUTING_COLUMNS = [
    common.Column("chunk (inputs per forward)", "chunk"),
    common.Column("Linf routing search ms", "routing_ms", common.fixed(1)),
    common.Column("model forward+backward ms", "model_ms", common.fixed(1)),
    common.Column("routing / model", "ratio", common.ratio),
]


# --------------------------------------------------------------------------- output


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


CURVE_COLUMNS = [
    common.Column("samples", "samples"),
    common.Column("chunk", "chunk_size"),
    common.Column("chunks", "chunks"),
    common.Column("total s", "total_s", common.fixed(2)),
    common.Column("CPU s", "cpu_s", common.fixed(2)),
    common.Column("ms/sample", "ms_per_sample", common.fixed(2)),
    common.Column("features s", "features_s", common.fixed(2)),
    common.Column("fit s", "fit_s", common.fixed(2)),
    common.Column("attack s", "attack_s", common.fixed(2)),
    common.Column("verify s", "verification_s", common.fixed(2)),
    common.Column("peak MiB", "peak_mib", _mib),
    common.Column("chunk peak MiB", "chunk_peak_mib", _mib),
    common.Column("growth MiB", "growth_mib", _mib),
    common.Column("features img/s", "features_per_s", common.fixed(0)),
    common.Column("block", "forward_block"),
    common.Column("conclusive", "conclusive_share", common.fixed(3)),
    common.Column("verdict", "verdict", right=False),
]

PLAN_COLUMNS = [
    common.Column("input", "input", right=False),
    common.Column("d", "feature_dim"),
    common.Column("n_inner", "n_inner"),
    common.Column("points/sample", "points_per_sample"),
    common.Column("GiB/sample (x3)", "per_sample_gib", common.fixed(3)),
    common.Column("budget GiB", "budget_gib", common.fixed(1)),
    common.Column("chunk", "chunk_size"),
    common.Column("chunks for 4096", "chunks"),
    common.Column("chunk points GiB", "chunk_points_gib", common.fixed(1)),
    common.Column("forward block", "forward_block"),
    common.Column("feature blocks/chunk", "feature_blocks_per_chunk"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    common.add_common_arguments(parser, default_device="cuda" if cuda else "cpu")
    parser.add_argument(
        "--model",
        choices=models.MODELS,
        default=None,
        help="default: mlp on a CPU, resnet18 on CUDA",
    )
    parser.add_argument(
        "--sizes",
        default="64,128,256,512,1024,2048,4096",
        help="comma-separated sample counts, or 'none' for no curve",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="PGD steps (default: 20 on a CPU, 100 on CUDA)"
    )
    parser.add_argument("--n-inner", type=int, default=None)
    parser.add_argument("--n-validation", type=int, default=32)
    parser.add_argument("--chunk-size", default="512", help="samples per chunk, or 'auto'")
    parser.add_argument(
        "--offset",
        type=int,
        default=0,
        help="take the samples from this one on (a long run in pieces of equal chunks)",
    )
    parser.add_argument(
        "--feature-dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="the engine's feature_dtype (default: full precision)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="convert the model to channels_last first"
    )
    parser.add_argument(
        "--gpu-free-gib",
        type=float,
        default=79.0,
        help="free GPU memory for the chunk arithmetic (default 79)",
    )
    parser.add_argument(
        "--routing-sizes",
        default="none",
        help="chunk sizes at which to time the routing search against the model's forward "
        "and backward pass, e.g. 512,2048 (default: none)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="measure activation memory per image of ResNet-18 and ResNet-50",
    )
    parser.add_argument(
        "--probe-batches",
        default=None,
        help="the two batch sizes of the probe, e.g. 2,8 (default: 2,8 on a CPU, 16,64 on CUDA)",
    )
    args = parser.parse_args(argv)
    cuda_run = str(args.device).startswith("cuda")
    args.model = args.model or ("resnet18" if cuda_run else "mlp")
    args.steps = args.steps or (100 if cuda_run else 20)
    small, large = (args.probe_batches or ("16,64" if cuda_run else "2,8")).split(",")
    args.probe_batches = (int(small), int(large))
    args.sizes = [] if args.sizes == "none" else sorted(int(v) for v in args.sizes.split(","))
    if args.chunk_size != "auto" and not args.chunk_size.isdigit():
        parser.error("--chunk-size takes a positive number or 'auto'")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe-child"]:  # one measurement of probe(), in its own process
        torch.set_num_threads(1)
        name, batch, backward = argv[1], int(argv[2]), argv[3] == "1"
        print(_growth_mib(name, "cpu", batch, backward))
        return 0
    args = parse_args(argv)
    common.set_threads(args)
    meta = common.metadata("binarization test, scaling with samples", args, vars(args))
    for line in common.header_lines(meta):
        print(line)
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if args.sizes:
        print(f"curve: {args.model}, PGD-{args.steps}, chunk size {args.chunk_size}")
        rows = run_curve(args)
        print()
        print(common.markdown_table(rows, CURVE_COLUMNS))
        print()
        for key, what in (("total_s", "wall time"), ("cpu_s", "process CPU time")):
            fit = linearity(rows, key)
            extra[f"linearity_{key}"] = fit
            if fit:
                print(
                    f"{what}: t = {fit['intercept_s']:.2f} s + {fit['ms_per_sample']:.2f} ms x "
                    f"samples; R^2 {fit['r2']:.4f}; largest deviation "
                    f"{100 * fit['max_relative_residual']:.1f}%; t({rows[-1]['samples']}) / "
                    f"t({rows[0]['samples']}) = {fit['ratio_largest_to_smallest']:.1f} for "
                    f"{fit['samples_ratio']:.0f}x samples"
                )
    free = args.gpu_free_gib * GIB
    plans = [chunk_plan(shape, d, 4096, free) for shape, d in SCENARIOS.values()]
    extra["chunk_plans"] = plans
    print(f"\nauto_chunk_size for 4096 samples with {args.gpu_free_gib:g} GiB free on CUDA:\n")
    print(common.markdown_table(plans, PLAN_COLUMNS))
    if args.routing_sizes != "none":
        sizes = [int(v) for v in args.routing_sizes.split(",")]
        routes = routing_cost(args.model, str(args.device), sizes, args.seed)
        extra["routing"] = routes
        print(f"\nrouting search per forward pass, {args.model}:\n")
        print(common.markdown_table(routes, ROUTING_COLUMNS))
    if args.probe:
        probes = [probe(name, str(args.device), *args.probe_batches) for name in SCENARIOS]
        extra["probes"] = probes
        print()
        for p, plan in zip(probes, plans, strict=True):
            # What the arithmetic leaves out: the activations of one block of
            # forward passes, and the attack's forward and backward pass on a chunk.
            block = plan["forward_block"]
            p["feature_block_gib"] = p["forward_mib_per_image"] * block / 1024
            p["attack_chunk_gib"] = p["forward_backward_mib_per_image"] * plan["chunk_size"] / 1024
            print(
                f"{p['model']}: {p['forward_mib_per_image']:.2f} MiB per image for a no-grad "
                f"forward ({p['feature_block_gib']:.1f} GiB for a block of {block}), "
                f"{p['forward_backward_mib_per_image']:.2f} MiB forward+backward "
                f"({p['attack_chunk_gib']:.1f} GiB for an attack on a chunk of "
                f"{plan['chunk_size']}); batches {p['batches']}, {p['how']}"
            )
    common.finish(meta, rows, args.json, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
