"""GPU acceptance of the binarization test under the numerics users run.

Why: a GPU's forward passes change with the batch (TF32 convolutions and
matmuls, cuDNN's algorithm choice with ``cudnn.benchmark``, reduced-precision
autocast), and the test fits its readouts in one set of passes and verifies
in others. This script runs the test at the engine's default settings on
trained models under those numerics and checks these targets:

- configuration ``tf32``: ``torch.backends.cuda.matmul.allow_tf32``,
  ``torch.backends.cudnn.allow_tf32`` and ``torch.backends.cudnn.benchmark``
  all True;
- configuration ``bf16``: the same flags, and the model wrapped in a module
  whose forward runs under ``torch.autocast(device, dtype=torch.bfloat16)``
  (as users put autocast inside their model's forward).

Per model and configuration (``benchmarks/models.py``'s trained ``resnet18``
at 32x32 and ``resnet50`` at 224x224 by default; the samples are held-out
digits), targets in brackets:

- PGD-100 (``attacks.PGD("linf", steps=100)``): conclusive share (>= 95%),
  random success rate (<= 5%), verdict (``passed``), ASR, time per sample;
- FGSM (``attacks.FGSM("linf")``), a weaker attack on the same samples: its
  ASR (below PGD's);
- the reference's structure and case-study setting
  (``reference_baseline.per_sample_test(**CASE_STUDY)``: per sample, 49 inner
  and 10 corner points, closeness 0.9999, logistic regression) with PGD-100
  on the first ``--reference-samples``: its time per sample, conclusive share,
  ASR and random success (reported, no target).

Prints a table, writes JSON (``--json``, default ``$OUT/gpu-numerics.json``
when ``$OUT`` is set) and exits 1 when a target is missed. The global torch
flags it sets are restored at the end.

Usage (repository root)::

    python -m benchmarks.gpu_numerics --device cuda            # both models, both configs
    python -m benchmarks.gpu_numerics --device cpu --model resnet18 --samples 16 \\
        --train-steps 20 --configs tf32 --emulate-noise 4e-3   # a CPU smoke test

``--emulate-noise R`` (for CPU runs) perturbs every conv and linear output by
``R`` times its mean magnitude, seeded by the batch (``tests/gpu_numerics.py``;
4e-3 stands for TF32), so that a CPU run meets GPU-like noise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if not __package__:  # run as a file, not with -m: see benchmarks/_bootstrap.py
    import _bootstrap  # noqa: F401

import torch

import attacks
import pytest_attacktest
from benchmarks import binarization, common, models
from benchmarks import reference_baseline as baseline

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ("tf32", "bf16")
MIN_CONCLUSIVE = 0.95
MAX_RANDOM_SUCCESS = 0.05
#: Default samples per model: what fits the part's 10 minutes on an H200.
SAMPLES = {"mlp": 256, "resnet18": 256, "resnet50": 64}
REFERENCE_SAMPLES = {"mlp": 16, "resnet18": 16, "resnet50": 8}


class Autocast(torch.nn.Module):
    """``model`` with its forward under ``torch.autocast(device_type, dtype)``.

    The logits come out in the autocast dtype, as from a user's model with
    autocast inside its forward (``float_logits``: cast to float32 after).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device_type: str,
        dtype: torch.dtype,
        float_logits: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype
        self.float_logits = float_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out: torch.Tensor = self.model(x)
        return out.float() if self.float_logits else out


@contextlib.contextmanager
def gpu_flags() -> Iterator[None]:
    """TF32 for matmuls and convolutions and ``cudnn.benchmark`` on; the old values after."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
        ) = saved


def _emulation(model: torch.nn.Module, r: float | None) -> Any:
    """``tests/gpu_numerics.py``'s GPU-like noise on ``model`` (None: exact)."""
    if not r:
        return contextlib.nullcontext()
    helper = ROOT / "tests" / "gpu_numerics.py"  # tests/ is not a package
    spec = importlib.util.spec_from_file_location("_benchmarks_tests_gpu_numerics", helper)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.torch_gpu_like(model, r)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    common.add_common_arguments(parser, default_device="cuda" if cuda else "cpu")
    parser.add_argument(
        "--model",
        default="resnet18,resnet50",
        help="comma-separated, of " + ", ".join(models.MODELS) + " (default resnet18,resnet50)",
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: tf32, bf16")
    parser.add_argument(
        "--samples", type=int, default=None, help="per model (default resnet18 256, resnet50 64)"
    )
    parser.add_argument(
        "--reference-samples",
        type=int,
        default=None,
        help="samples of the reference's per-sample run (default resnet18 16, resnet50 8; 0: skip)",
    )
    parser.add_argument("--steps", type=int, default=100, help="PGD steps")
    parser.add_argument("--n-inner", type=int, default=None, help="default: the engine's")
    parser.add_argument("--train-steps", type=int, default=None, help="see benchmarks/models.py")
    parser.add_argument(
        "--emulate-noise",
        type=float,
        default=None,
        metavar="R",
        help="perturb conv/linear outputs by R (tests/gpu_numerics.py; for CPU runs)",
    )
    parser.add_argument(
        "--float-logits",
        action="store_true",
        help="bf16: cast the wrapper's logits to float32 (default: bf16 logits, as a model "
        "with autocast inside its forward returns them)",
    )
    args = parser.parse_args(argv)
    args.models = [m for m in args.model.split(",") if m]
    args.config_list = [c for c in args.configs.split(",") if c]
    for m in args.models:
        if m not in models.MODELS:
            parser.error(f"unknown model {m!r}; choose from {', '.join(models.MODELS)}")
    for c in args.config_list:
        if c not in CONFIGS:
            parser.error(f"unknown configuration {c!r}; choose from {', '.join(CONFIGS)}")
    if args.samples is not None and args.samples < 1:
        parser.error("--samples must be >= 1")
    if args.json is None and os.environ.get("OUT"):
        args.json = Path(os.environ["OUT"]) / "gpu-numerics.json"
    return args


def _run(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Any,
    epsilon: float,
    args: argparse.Namespace,
) -> tuple[Any, float]:
    common.synchronize(str(args.device))
    start = time.perf_counter()
    report = pytest_attacktest.binarization_test(
        model, x, y, attack=attack, epsilon=epsilon, n_inner=args.n_inner, seed=args.seed
    )
    common.synchronize(str(args.device))
    return report, time.perf_counter() - start


def measure(problem: Any, config: str, args: argparse.Namespace) -> dict[str, Any]:
    """One model under one configuration: PGD, FGSM and the reference; the targets' checks."""
    device = str(args.device)
    kind = torch.device(device).type
    model = problem.model
    if config == "bf16":
        model = Autocast(model, kind, torch.bfloat16, args.float_logits).eval()
    pgd = attacks.PGD("linf", steps=args.steps)
    n = problem.x.shape[0]
    m = min(
        n,
        REFERENCE_SAMPLES.get(problem.name, 8)
        if args.reference_samples is None
        else args.reference_samples,
    )
    with gpu_flags(), _emulation(problem.model, args.emulate_noise):
        # Warm-up (lazy initialisation, cuDNN autotuning), outside the timings.
        pytest_attacktest.binarization_test(
            model,
            problem.x[:2],
            attack=attacks.PGD("linf", steps=2),
            epsilon=problem.epsilon,
            n_inner=args.n_inner,
        )
        ours, ours_s = _run(model, problem.x, problem.y, pgd, problem.epsilon, args)
        fgsm, _ = _run(model, problem.x, problem.y, attacks.FGSM("linf"), problem.epsilon, args)
        reference = None
        ref_s = None
        if m:
            common.synchronize(device)
            start = time.perf_counter()
            reference = baseline.per_sample_test(
                model,
                problem.x[:m],
                attack=pgd,
                epsilon=problem.epsilon,
                seed=args.seed,
                **baseline.CASE_STUDY,
            )
            common.synchronize(device)
            ref_s = time.perf_counter() - start
    o = binarization.outcome(ours)
    checks = {
        "conclusive_share": o["conclusive_share"] >= MIN_CONCLUSIVE,
        "random_success": o["random_success_rate"] <= MAX_RANDOM_SUCCESS,
        "pgd_passes": ours.verdict == "passed",
        "fgsm_below_pgd": fgsm.asr < ours.asr,
    }
    row: dict[str, Any] = {
        "model": problem.name,
        "config": config,
        "samples": n,
        "test_accuracy": problem.training.get("test_accuracy"),
        "conclusive_share": o["conclusive_share"],
        "random_success_rate": o["random_success_rate"],
        "pgd_verdict": ours.verdict,
        "pgd_asr": ours.asr,
        "fgsm_verdict": fgsm.verdict,
        "fgsm_asr": fgsm.asr,
        "fgsm_conclusive_share": binarization.outcome(fgsm)["conclusive_share"],
        "ms_per_sample": 1000 * ours_s / n,
        "reference_samples": m,
        "reference_ms_per_sample": None if ref_s is None else 1000 * ref_s / m,
        "reference_conclusive_share": None,
        "reference_asr": None,
        "reference_random_success_rate": None,
        "reference_verdict": None,
        "forward_noise_median": o["forward_noise_median"],
        "forward_noise_max": o["forward_noise_max"],
        "closeness_applied_min": o["closeness_applied_min"],
        "closeness_applied_median": o["closeness_applied_median"],
        "inconclusive_reasons": o["inconclusive_reasons"],
        "checks": checks,
        "ok": all(checks.values()),
    }
    if reference is not None:
        r = binarization.outcome(reference)
        row.update(
            reference_conclusive_share=r["conclusive_share"],
            reference_asr=reference.asr,
            reference_random_success_rate=r["random_success_rate"],
            reference_verdict=reference.verdict,
        )
    return row


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


COLUMNS = [
    common.Column("model", "model", right=False),
    common.Column("config", "config", right=False),
    common.Column("n", "samples", str),
    common.Column("acc", "test_accuracy", common.fixed(3)),
    common.Column("conclusive", "conclusive_share", _pct),
    common.Column("random", "random_success_rate", _pct),
    common.Column("PGD", "pgd_verdict", str, right=False),
    common.Column("PGD ASR", "pgd_asr", common.fixed(3)),
    common.Column("FGSM ASR", "fgsm_asr", common.fixed(3)),
    common.Column("ms/sample", "ms_per_sample", common.fixed(1)),
    common.Column("ref ms/sample", "reference_ms_per_sample", common.fixed(1)),
    common.Column("ref conclusive", "reference_conclusive_share", _pct),
    common.Column("ref ASR", "reference_asr", common.fixed(3)),
    common.Column("ref random", "reference_random_success_rate", _pct),
    common.Column(
        "noise median", "forward_noise_median", lambda v: "-" if v is None else f"{v:.1e}"
    ),
    common.Column("closeness min", "closeness_applied_min", common.fixed(4)),
    common.Column("targets", "ok", lambda v: "met" if v else "MISSED", right=False),
]


def _write_partial(path: Path | None, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The rows so far, so that a run cut off by a time limit still leaves them."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    document = common._plain({"metadata": meta, "rows": rows, "summary": {"partial": True}})
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.set_threads(args)
    meta = common.metadata("binarization test under GPU numerics", args, vars(args))
    for line in common.header_lines(meta):
        print(line)
    rows = []
    for name in args.models:
        samples = args.samples or SAMPLES[name]
        problem = models.make_problem(name, samples, args.seed, str(args.device), args.train_steps)
        print(f"{problem.description}; training {problem.training}")
        for config in args.config_list:
            try:
                row = measure(problem, config, args)
            except Exception as error:  # a configuration that errors misses every target
                row = {
                    "model": name,
                    "config": config,
                    "samples": samples,
                    "error": f"{type(error).__name__}: {error}",
                    "inconclusive_reasons": {},
                    "checks": {"runs": False},
                    "ok": False,
                }
                print(f"{name}/{config}: {row['error']}", flush=True)
            rows.append(row)
            print(common.markdown_table([row], COLUMNS).splitlines()[-1], flush=True)
            _write_partial(args.json, meta, rows)
    print()
    print(common.markdown_table(rows, COLUMNS))
    missed = [
        f"{r['model']}/{r['config']}: {', '.join(k for k, v in r['checks'].items() if not v)}"
        for r in rows
        if not r["ok"]
    ]
    print()
    print(
        f"targets: conclusive >= {MIN_CONCLUSIVE:.0%}, random success <= "
        f"{MAX_RANDOM_SUCCESS:.0%}, PGD-{args.steps} passes, FGSM ASR below PGD's"
    )
    for r in rows:
        if r.get("error"):
            print(f"{r['model']}/{r['config']} error: {r['error']}")
        if r["inconclusive_reasons"]:
            print(f"{r['model']}/{r['config']} inconclusive: {r['inconclusive_reasons']}")
    print("all targets met" if not missed else "MISSED: " + "; ".join(missed))
    common.finish(meta, rows, args.json, summary={"all_met": not missed, "missed": missed})
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
