"""The whole binarization test, batched, against the reference's per-sample structure.

Why: the engine does each phase (sampling, features, readout fit, attack,
verification) for a whole chunk of samples at once; the reference
implementation loops over samples, fits a scikit-learn logistic regression
per sample on the CPU and attacks at batch size 1. The target, on a GPU: at
least 100x over that structure at 512 samples, with the same verdicts. This script
measures both in one run on the same model, samples and attack:

1. ours: ``pytest_attacktest.binarization_test`` on all ``--samples``, with
   the per-phase times from ``report.timings`` (and the peak GPU memory);
2. the per-sample mode of ``benchmarks/reference_baseline.py`` on the first
   ``--baseline-samples`` of them (default 128 on a CPU, 64 on a GPU: the
   loop is slow), with the same number of inner points, validation points
   and attack, its scikit-learn fits capped at torch's number of threads.
   Its time is scaled linearly to ``--samples`` when it ran on a subset (each
   sample costs the same there: nothing is shared between samples), and the
   output says so;
3. the verdicts and, per sample, whether both found the sample conclusive and
   the attack successful.

Beside every timing stand, for both modes, the share of conclusive samples,
the random success rate and the forward-pass noise and closeness the setup
applied: a run where most samples were inconclusive never attacked them, and
is flagged ``not_a_result`` (in the output and the JSON) instead of being a
speed figure. ``--baseline-setting reference`` runs the per-sample mode in
the reference's own case-study setting (49 inner points, 10 corner boundary
points, closeness 0.9999, unregularised logistic regression;
``reference_baseline.CASE_STUDY``) instead of the engine's numbers.

Models (``benchmarks/models.py``, all trained; ``--train-steps`` sets the
ResNets' training, cached under ``benchmarks/out/weights/``): ``mlp`` (the
digits MLP, the CPU default), ``resnet18`` (digits at 32x32, the CUDA
default) and ``resnet50`` (digits at 224x224); the samples are held-out
digits. The attack is ``attacks.PGD("linf")`` with
``--steps`` steps. One tiny warm-up run of each mode comes first (lazy
initialisation, cuDNN autotuning), outside the timings.

``--model-throughput`` measures the model's own no-grad throughput at its
best batch size in the same run (``benchmarks/model_speed.py``) and prints
the features phase's images per second against it (target: at least 0.9x).
``--channels-last`` converts the model to ``channels_last`` first (the
engine then feeds its inputs in that layout); ``--feature-dtype bfloat16``
runs ours with reduced-precision feature extraction, and
``--compare-feature-dtype bfloat16`` runs ours once more with it, beside the
float32 run: what it buys (features phase, total) and what it costs
(conclusive share, noise, closeness).

``--what-if-position-routing`` times ours once more with the binarized
model's routing replaced by "input i goes to sample i % S" (for the question
how much the engine's nearest-sample search per forward pass costs; it is
quadratic in the chunk size).

Usage (from the repository root)::

    python -m benchmarks.binarization                       # CPU: MLP, 512 samples
    python -m benchmarks.binarization --device cuda --model resnet18 --samples 512
    python -m benchmarks.binarization --device cuda --model resnet50 --samples 4096 \\
        --baseline-samples 16 --json resnet50-4096.json

Figures are kept in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any
from unittest import mock

if not __package__:  # run as a file, not with -m: see benchmarks/_bootstrap.py
    import _bootstrap  # noqa: F401

import eagerpy as ep
import torch

import attacks
import pytest_attacktest
from benchmarks import common, model_speed, models
from benchmarks import reference_baseline as baseline
from pytest_attacktest.engine import routing

binarization_test = pytest_attacktest.binarization_test

# benchmarks/attack_throughput.py takes its models from here.
ResNet18, digits_mlp = models.ResNet18, models.digits_mlp

TARGET_SPEEDUP = 100.0  #: over the per-sample mode at 512 samples, on a GPU
#: A run with a smaller share of conclusive samples is not a result.
MIN_CONCLUSIVE_SHARE = 0.5


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
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument(
        "--baseline-samples",
        type=int,
        default=None,
        help="samples for the per-sample mode, the first ones (0: skip it); default 128 on a "
        "CPU, 64 on CUDA; with fewer than --samples its time is scaled linearly",
    )
    parser.add_argument("--steps", type=int, default=100, help="PGD steps")
    parser.add_argument("--n-inner", type=int, default=None, help="default: the engine's")
    parser.add_argument("--n-validation", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: the engine's")
    parser.add_argument(
        "--max-iter",
        type=int,
        default=baseline.MAX_ITER,
        help="scikit-learn max_iter of the per-sample mode",
    )
    parser.add_argument(
        "--baseline-readout",
        choices=baseline.READOUTS,
        default="sklearn",
        help="the per-sample mode's readout: scikit-learn's logistic regression (the "
        "reference's) or the engine's minimum-norm formula in NumPy (same verdict rules, "
        "isolates the per-sample structure)",
    )
    parser.add_argument(
        "--baseline-setting",
        choices=baseline.SETTINGS,
        default="engine",
        help="the per-sample mode's numbers: the engine's (n_inner, one boundary point, "
        "closeness, noise rule) or the reference's case-study setting (49 inner, 10 corner "
        "points, closeness 0.9999, logistic regression; --baseline-readout is then ignored)",
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="training steps of the ResNets (default: benchmarks/models.py's TRAIN_STEPS)",
    )
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument(
        "--model-throughput",
        action="store_true",
        help="also measure the model's own no-grad throughput at its best batch size and "
        "compare the features phase with it",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="convert the model to channels_last first"
    )
    parser.add_argument(
        "--feature-dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="the engine's feature_dtype for ours (default: full precision)",
    )
    parser.add_argument(
        "--compare-feature-dtype",
        choices=("bfloat16", "float16"),
        default=None,
        help="run ours once more with this feature_dtype and compare time and conclusive share",
    )
    parser.add_argument(
        "--what-if-position-routing",
        action="store_true",
        help="also time ours with each input routed to the readout of its batch position "
        "(O(S) per forward pass instead of the engine's O(S^2) nearest-sample search); "
        "a what-if, not the engine's behaviour",
    )
    args = parser.parse_args(argv)
    if args.model is None:
        args.model = "resnet18" if str(args.device).startswith("cuda") else "mlp"
    if args.baseline_samples is None:
        args.baseline_samples = min(
            args.samples, 64 if str(args.device).startswith("cuda") else 128
        )
    if args.samples < 1 or not 0 <= args.baseline_samples <= args.samples:
        parser.error("need --samples >= 1 and 0 <= --baseline-samples <= --samples")
    return args


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Both modes on the same samples; rows per phase and a summary."""
    device = str(args.device)
    problem = models.make_problem(args.model, args.samples, args.seed, device, args.train_steps)
    if args.channels_last:
        problem.model.to(memory_format=torch.channels_last)
    attack = attacks.PGD("linf", steps=args.steps)
    shared = {
        "epsilon": problem.epsilon,
        "norm": "linf",
        "n_validation": args.n_validation,
        "seed": args.seed,
    }
    if not args.no_warmup:
        quick = attacks.PGD("linf", steps=2)
        warm = binarization_test(
            problem.model, problem.x[:2], attack=quick, n_inner=args.n_inner, **shared
        )
        if args.baseline_samples:
            baseline.per_sample_test(
                problem.model,
                problem.x[:1],
                attack=quick,
                **baseline_setting(args, warm.settings["n_inner"]),
                **shared,
            )

    _reset_peak(device)
    common.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    ours = binarization_test(
        problem.model,
        problem.x,
        problem.y,
        attack=attack,
        n_inner=args.n_inner,
        chunk_size=args.chunk_size,
        feature_dtype=args.feature_dtype,
        **shared,
    )
    common.synchronize(device)
    ours_total, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _peak_gib(device)
    speed = _speed(problem, args, attack, shared, ours, ours_total)
    what_if = None
    if args.what_if_position_routing:
        what_if = _position_routing_run(problem, attack, args, shared)

    m = args.baseline_samples
    ref = None
    ref_total = None
    ref_cpu = None
    if m:
        start, cpu = time.perf_counter(), time.process_time()
        ref = baseline.per_sample_test(
            problem.model,
            problem.x[:m],
            attack=attack,
            max_iter=args.max_iter,
            blas_threads=torch.get_num_threads(),
            **baseline_setting(args, ours.settings["n_inner"]),
            **shared,
        )
        ref_total, ref_cpu = time.perf_counter() - start, time.process_time() - cpu
    scale = args.samples / m if m else None

    rows = []
    phases = list(baseline.PHASES)
    for phase in [*phases, "total"]:
        mine = ours_total if phase == "total" else ours.timings.get(phase, 0.0)
        theirs = None if ref is None else (ref_total if phase == "total" else ref.timings[phase])
        scaled = None if theirs is None or scale is None else theirs * scale
        rows.append(
            {
                "phase": phase,
                "ours_s": mine,
                "ours_share": mine / ours_total,
                "reference_s": theirs,
                "reference_scaled_s": scaled,
                "ratio": None if scaled is None or mine <= 0 else scaled / mine,
            }
        )
    summary: dict[str, Any] = {
        "model": problem.description,
        "samples": args.samples,
        "baseline_samples": m,
        "baseline_scaled": bool(m) and m < args.samples,
        "baseline_readout": "sklearn"
        if args.baseline_setting == "reference"
        else args.baseline_readout,
        "baseline_setting": args.baseline_setting,
        "training": problem.training,
        "steps": args.steps,
        "n_inner": ours.settings["n_inner"],
        "n_validation": args.n_validation,
        "chunk_size": ours.settings["chunk_size"],
        "peak_gpu_gib": peak,
        "ours": {
            **outcome(ours),
            "total_s": ours_total,
            "cpu_s": ours_cpu,
            "ms_per_sample": 1000 * ours_total / args.samples,
        },
        "speedup": rows[-1]["ratio"],
        "what_if_position_routing": what_if,
        "target_speedup": TARGET_SPEEDUP,
        "feature_dtype": args.feature_dtype,
        "channels_last": args.channels_last,
        **speed,
    }
    if ref is not None and ref_total is not None:
        iterations = ref.settings["sklearn_iterations"]
        summary["sklearn_iterations"] = {
            "max_iter": args.max_iter,
            "blas_threads": torch.get_num_threads(),
            "mean": sum(iterations) / len(iterations) if iterations else None,
            "max": max(iterations, default=None),
        }
        summary["reference"] = {
            **outcome(ref),
            "settings": {
                k: ref.settings[k]
                for k in (
                    "n_inner",
                    "n_boundary",
                    "corners",
                    "closeness",
                    "noise_rule",
                    "balanced",
                    "rescale_logits",
                    "readout",
                )
            },
            "total_s": ref_total,
            "cpu_s": ref_cpu,
            "ms_per_sample": 1000 * ref_total / m,
        }
        summary["agreement"] = baseline.agreement(baseline.subset(ours, m), ref)
        if scale is not None and ref_cpu is not None and ours_cpu > 0:
            summary["speedup_cpu_time"] = ref_cpu * scale / ours_cpu
        if what_if is not None and rows[-1]["reference_scaled_s"] is not None:
            summary["speedup_position_routing"] = (
                rows[-1]["reference_scaled_s"] / what_if["total_s"]
            )
    summary["not_a_result"] = summary["ours"]["not_a_result"] or bool(
        summary.get("reference", {}).get("not_a_result")
    )
    for row in rows:
        row["ours_conclusive"] = summary["ours"]["conclusive_share"]
        row["reference_conclusive"] = summary.get("reference", {}).get("conclusive_share")
    return rows, summary


def _speed(
    problem: Any,
    args: argparse.Namespace,
    attack: Any,
    shared: dict[str, Any],
    ours: Any,
    ours_total: float,
) -> dict[str, Any]:
    """The model's own throughput beside the features phase, and the reduced-precision run."""
    out: dict[str, Any] = {}
    sample = problem.x[: min(64, problem.x.shape[0])]
    if args.model_throughput:
        throughput = model_speed.model_throughput(problem.model, sample, dtype=args.feature_dtype)
        out["model_throughput"] = throughput
        out["features_vs_model"] = model_speed.feature_ratio(ours, throughput)
    dtype = args.compare_feature_dtype
    if dtype:
        device = str(args.device)
        common.synchronize(device)
        start = time.perf_counter()
        other = binarization_test(
            problem.model,
            problem.x,
            problem.y,
            attack=attack,
            n_inner=args.n_inner,
            chunk_size=args.chunk_size,
            feature_dtype=dtype,
            **shared,
        )
        common.synchronize(device)
        total = time.perf_counter() - start
        comparison: dict[str, Any] = {
            "dtype": dtype,
            "total_s": total,
            "features_s": other.timings["features"],
            "features_speedup": ours.timings["features"] / max(other.timings["features"], 1e-12),
            "total_speedup": ours_total / total,
            "outcome": outcome(other),
            "float32_outcome": outcome(ours),
        }
        if args.model_throughput:
            throughput = model_speed.model_throughput(problem.model, sample, dtype=dtype)
            comparison["model_throughput"] = throughput
            comparison["features_vs_model"] = model_speed.feature_ratio(other, throughput)
        out["feature_dtype_comparison"] = comparison
    return out


def speed_lines(summary: dict[str, Any]) -> list[str]:
    """The features phase against the model's own speed; the reduced-precision run."""
    lines = []
    if summary.get("features_vs_model"):
        name = f"ours ({summary.get('feature_dtype') or 'float32'})"
        lines.append(model_speed.ratio_line(name, summary["features_vs_model"]))
    c = summary.get("feature_dtype_comparison")
    if c:
        share, base = c["outcome"]["conclusive_share"], c["float32_outcome"]["conclusive_share"]
        lines.append(
            f"feature_dtype={c['dtype']}: total {c['total_s']:.2f} s ({c['total_speedup']:.3f}x "
            f"the first run), features {c['features_s']:.2f} s ({c['features_speedup']:.3f}x); "
            f"conclusive {100 * share:.1f}% vs {100 * base:.1f}% "
            f"({100 * (share - base):+.1f} points), verdict {c['outcome']['verdict']}"
        )
        lines.append(outcome_line(f"ours, feature_dtype={c['dtype']}", c["outcome"]))
        if c.get("features_vs_model"):
            lines.append(model_speed.ratio_line(f"ours ({c['dtype']})", c["features_vs_model"]))
    return lines


def baseline_setting(args: argparse.Namespace, n_inner: int) -> dict[str, Any]:
    """The per-sample mode's keyword arguments: the engine's numbers or the case study's."""
    if args.baseline_setting == "reference":
        return dict(baseline.CASE_STUDY)
    return {"n_inner": n_inner, "readout": args.baseline_readout}


def outcome(report: Any) -> dict[str, Any]:
    """What a run found, to stand beside its time: verdict, conclusive share, noise.

    ``not_a_result``: most samples were inconclusive (never attacked), so the
    run's time is not the time of a test.
    """
    n = report.n_samples
    conclusive = n - report.n_inconclusive
    share = conclusive / n if n else 0.0
    noise = [s.noise for s in report.samples if math.isfinite(s.noise)]
    applied = [s.closeness for s in report.samples if math.isfinite(s.closeness)]
    reasons: dict[str, int] = {}
    for s in report.samples:
        if not s.conclusive:
            reasons[s.reason] = reasons.get(s.reason, 0) + 1
    settings = report.settings
    return {
        "verdict": report.verdict,
        "asr": report.asr,
        "inconclusive": report.n_inconclusive,
        "conclusive": conclusive,
        "conclusive_share": share,
        "random_success_rate": report.random_success_rate,
        "not_a_result": share < MIN_CONCLUSIVE_SHARE,
        "inconclusive_reasons": reasons,
        "forward_noise_median": settings.get(
            "forward_noise_median", _median(noise) if noise else None
        ),
        "forward_noise_max": settings.get("forward_noise_max", max(noise, default=None)),
        "closeness_applied_min": settings.get("closeness_applied_min", min(applied, default=None)),
        "closeness_applied_median": settings.get(
            "closeness_applied_median", _median(applied) if applied else None
        ),
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def outcome_line(name: str, o: dict[str, Any]) -> str:
    """One line: conclusive share, random success, noise and closeness, and the flag."""

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    return (
        f"{name}: conclusive {o['conclusive']}/{o['conclusive'] + o['inconclusive']} "
        f"({100 * o['conclusive_share']:.1f}%), random success {o['random_success_rate']:.3f}, "
        f"forward noise median {num(o['forward_noise_median'], '.2e')} max "
        f"{num(o['forward_noise_max'], '.2e')}, closeness applied min "
        f"{num(o['closeness_applied_min'], '.4f')} median "
        f"{num(o['closeness_applied_median'], '.4f')}"
        + (
            " -- NOT A RESULT: most samples were inconclusive (never attacked); reasons "
            + "; ".join(f"{k} ({v})" for k, v in o["inconclusive_reasons"].items())
            if o["not_a_result"]
            else ""
        )
    )


def _position_route(self: Any, x: Any) -> Any:
    """Route input ``i`` to sample ``i % S``: no distance matrix."""
    return ep.arange(x, x.shape[0]) % self.clean.shape[0]


def _position_routing_run(
    problem: Any, attack: Any, args: argparse.Namespace, shared: dict[str, Any]
) -> dict[str, Any]:
    """Ours again, with position routing (see ``--what-if-position-routing``).

    Valid for PGD, which keeps the batch order and projects into each ball, so
    every input already goes to its own sample's readout and the adversarial
    examples are the same; verification never routes (it names each sample's
    readout), so the verdicts cannot change either.
    """
    device = str(args.device)
    with mock.patch.object(routing.BinarizedModel, "route", _position_route):
        common.synchronize(device)
        start, cpu = time.perf_counter(), time.process_time()
        report = binarization_test(
            problem.model,
            problem.x,
            attack=attack,
            n_inner=args.n_inner,
            chunk_size=args.chunk_size,
            **shared,
        )
        common.synchronize(device)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "total_s": total,
        "cpu_s": cpu,
        "attack_s": report.timings["attack"],
        "verdict": report.verdict,
        "asr": report.asr,
        "inconclusive": report.n_inconclusive,
    }


COLUMNS = [
    common.Column("phase", "phase", right=False),
    common.Column("ours s", "ours_s", common.fixed(3)),
    common.Column("share", "ours_share", lambda v: f"{100 * v:.1f}%"),
    common.Column("per-sample s (measured)", "reference_s", common.fixed(2)),
    common.Column("per-sample s (all samples)", "reference_scaled_s", common.fixed(1)),
    common.Column("per-sample / ours", "ratio", common.ratio),
    common.Column("conclusive ours", "ours_conclusive", lambda v: f"{100 * v:.1f}%"),
    common.Column(
        "conclusive per-sample",
        "reference_conclusive",
        lambda v: "-" if v is None else f"{100 * v:.1f}%",
    ),
]


def summary_lines(summary: dict[str, Any]) -> list[str]:
    ours = summary["ours"]
    lines = [
        f"{summary['model']}; {summary['samples']} samples, PGD-{summary['steps']}, "
        f"n_inner={summary['n_inner']}, n_validation={summary['n_validation']}, "
        f"chunk_size={summary['chunk_size']}"
        + (
            f", peak GPU memory {summary['peak_gpu_gib']:.2f} GiB"
            if summary["peak_gpu_gib"]
            else ""
        ),
        f"ours: {ours['total_s']:.2f} s ({ours['ms_per_sample']:.2f} ms/sample; process CPU "
        f"time {ours['cpu_s']:.2f} s), verdict "
        f"{ours['verdict']}, ASR {ours['asr']:.3f}, inconclusive {ours['inconclusive']}",
        outcome_line("ours", ours),
        *speed_lines(summary),
    ]
    if summary["training"].get("test_accuracy") is not None:
        t = summary["training"]
        lines.append(
            f"model trained {t['steps']} steps (held-out accuracy {t['test_accuracy']:.3f}"
            + (", from the cache)" if t["cached"] else f", {t['train_s']:.1f} s)")
        )
    what_if = summary.get("what_if_position_routing")
    if what_if is not None:
        lines.append(
            f"what-if, position routing: {what_if['total_s']:.2f} s (attack "
            f"{what_if['attack_s']:.2f} s; CPU time {what_if['cpu_s']:.2f} s), verdict "
            f"{what_if['verdict']}, ASR {what_if['asr']:.3f}"
            + (
                f"; speed-up over the per-sample mode {summary['speedup_position_routing']:.1f}x"
                if summary.get("speedup_position_routing")
                else ""
            )
        )
    ref = summary.get("reference")
    if ref is None:
        lines.append("per-sample mode skipped (--baseline-samples 0)")
        return [*lines, *_flag(summary)]
    agree = summary["agreement"]
    its = summary["sklearn_iterations"]
    how = (
        f"measured on the first {summary['baseline_samples']} samples and scaled linearly"
        if summary["baseline_scaled"]
        else "measured on all samples"
    )
    return [
        *lines,
        f"per-sample mode ({how}): {ref['total_s']:.2f} s for {summary['baseline_samples']} "
        f"({ref['ms_per_sample']:.1f} ms/sample; CPU time {ref['cpu_s']:.2f} s), verdict "
        f"{ref['verdict']}, ASR {ref['asr']:.3f}, inconclusive {ref['inconclusive']}, "
        f"setting {summary['baseline_setting']}; "
        + (
            f"scikit-learn iterations mean {its['mean']:.0f}, max {its['max']} (max_iter "
            f"{its['max_iter']}, {its['blas_threads']} BLAS threads)"
            if summary["baseline_readout"] == "sklearn"
            else "readout: the engine's minimum-norm formula, per sample in NumPy"
        ),
        f"speed-up: {summary['speedup']:.1f}x in wall time, "
        f"{summary.get('speedup_cpu_time') or math.nan:.1f}x in process CPU time (target >= "
        f"{summary['target_speedup']:.0f}x at 512 samples)",
        f"on the same {agree['samples']} samples: verdict ours {agree['verdict_ours']} vs "
        f"per-sample {agree['verdict_reference']} (ASR {agree['asr_ours']:.3f} vs "
        f"{agree['asr_reference']:.3f}); conclusive status agrees on {agree['conclusive_same']}, "
        f"attack success on {agree['success_same']} of {agree['conclusive_both']} conclusive in "
        f"both (only ours {agree['success_only_ours']}, only per-sample "
        f"{agree['success_only_reference']})",
        outcome_line("per-sample", ref),
        *_flag(summary),
    ]


def _flag(summary: dict[str, Any]) -> list[str]:
    if not summary["not_a_result"]:
        return []
    return [
        "NOT A RESULT: most samples of a mode were inconclusive; its time is not the time "
        "of a test (see the reasons above)"
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.set_threads(args)
    meta = common.metadata("binarization test, batched vs per-sample", args, vars(args))
    for line in common.header_lines(meta):
        print(line)
    rows, summary = run(args)
    print()
    print(common.markdown_table(rows, COLUMNS))
    print()
    for line in summary_lines(summary):
        print(line)
    common.finish(meta, rows, args.json, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
