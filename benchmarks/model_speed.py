"""The model's own inference throughput, for the features phase to be measured against.

Why: the binarization test's feature extraction (hundreds of no-grad
forward passes per sample) should run at the model's own speed: at least
0.9 times the images per second the model reaches alone, at its best batch
size, on the same device, in the same run. :func:`model_throughput` measures
that figure (no-grad forward passes on copies of the benchmark's inputs, at
each of several batch sizes; the fastest of a few timed laps after a warm-up,
each lap long enough to hide launch overheads); :func:`feature_ratio` sets the
engine's features phase (``settings["feature_inputs"]`` over
``timings["features"]``) beside it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import torch

#: Batch sizes tried by default; those above ``max_inputs`` are skipped.
BATCHES = (32, 64, 128, 256, 512, 1024, 2048)
#: The target: features phase / model throughput at least this.
TARGET_RATIO = 0.9


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_throughput(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    batches: Sequence[int] = BATCHES,
    dtype: str | None = None,
    laps: int = 3,
    min_lap_inputs: int = 2048,
) -> dict[str, Any]:
    """Images per second of ``model``'s no-grad forward at each batch size, and the best.

    ``x``: example inputs (repeated to fill a batch). ``dtype``: ``None`` or a
    reduced-precision autocast dtype name (``"bfloat16"``, ``"float16"``), as
    the engine's ``feature_dtype``. A batch that runs out of memory ends the
    sweep (larger ones would too). Each lap runs at least ``min_lap_inputs``
    inputs (several batches), so that the time of one launch does not decide.
    """
    device = x.device
    rows = []
    cast = (
        torch.autocast(device.type, dtype=getattr(torch, dtype))
        if dtype not in (None, "float32")
        else contextlib.nullcontext()
    )
    for batch in batches:
        reps = -(-batch // x.shape[0])
        inputs = x.repeat(reps, *([1] * (x.ndim - 1)))[:batch].contiguous()
        if any(
            p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last)
            for p in model.parameters()
            if not p.is_contiguous()
        ):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        calls = max(1, -(-min_lap_inputs // batch))
        try:
            with torch.no_grad(), cast:
                model(inputs)  # warm-up: cuDNN autotuning, lazy initialisation
                _synchronize(device)
                best = float("inf")
                for _ in range(laps):
                    start = time.perf_counter()
                    for _ in range(calls):
                        model(inputs)
                    _synchronize(device)
                    best = min(best, time.perf_counter() - start)
        except torch.OutOfMemoryError:
            del inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append({"batch": batch, "images_per_s": None, "note": "out of memory"})
            break
        rows.append({"batch": batch, "images_per_s": calls * batch / best})
    measured = [r for r in rows if r["images_per_s"]]
    top = max(measured, key=lambda r: r["images_per_s"]) if measured else None
    return {
        "dtype": dtype or "float32",
        "rows": rows,
        "best_batch": top["batch"] if top else None,
        "best_images_per_s": top["images_per_s"] if top else None,
    }


def features_per_s(report: Any) -> float | None:
    """The features phase's inputs per second: ``settings["feature_inputs"]`` over its time."""
    inputs, seconds = report.settings.get("feature_inputs"), report.timings.get("features")
    return inputs / seconds if inputs and seconds else None


def feature_ratio(report: Any, throughput: dict[str, Any]) -> dict[str, Any]:
    """The features phase's images per second over the model's best, and the target."""
    features = features_per_s(report)
    best = throughput.get("best_images_per_s")
    ratio = features / best if features and best else None
    return {
        "features_per_s": features,
        "forward_block": report.settings.get("forward_block"),
        "model_best_images_per_s": best,
        "model_best_batch": throughput.get("best_batch"),
        "ratio": ratio,
        "target": TARGET_RATIO,
        "met": None if ratio is None else ratio >= TARGET_RATIO,
    }


def ratio_line(name: str, r: dict[str, Any]) -> str:
    """One line: features phase vs the model's own throughput."""
    if r["ratio"] is None:
        return f"{name}: features phase vs model throughput not measured"
    return (
        f"{name}: features phase {r['features_per_s']:.0f} images/s (blocks of "
        f"{r['forward_block']}) vs the model alone {r['model_best_images_per_s']:.0f} images/s "
        f"at batch {r['model_best_batch']}: {r['ratio']:.3f}x (target >= {r['target']:g}x: "
        f"{'met' if r['met'] else 'NOT met'})"
    )
