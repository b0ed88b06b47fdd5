"""JAX and TensorFlow: PGD against a hand-written loop in the same framework, and the whole test.

Why: the torch paths were measured on GPUs (``attack_throughput.py``,
``binarization.py``), JAX and TensorFlow never were, and whether the JAX fast
path (``attacks.PGD(compile=True)``: the whole step under ``jax.jit``, the
steps in one ``lax.fori_loop``) should be the default on accelerators is
decided from these figures. One process per framework (JAX preallocates GPU
memory, TensorFlow grabs it; torch runs beside either with growth allowed):

1. **PGD throughput** (``--part pgd``), Linf PGD with ``--steps`` steps at
   each ``--batches`` size on the trained convnet below, every method timed
   in the same process after a warm-up call (the fastest of ``--repeats``):

   - JAX: a hand-written loop (``jax.jit`` of one step, called per step), a
     hand-written ``lax.fori_loop`` of the jitted step (one device call per
     attack: the floor), ours eager (``compile=False``, the default) and ours
     with ``compile=True`` (its per-call compilation counted, as a user pays
     it; its second call is what is timed, as for every method).
   - TensorFlow: a hand-written eager loop (``GradientTape`` per step), the
     same step under ``tf.function`` (traced once), and ours (eager).

   Ratios: ours / hand-written loop, fast path / ``fori_loop`` floor, and
   eager / fast path (the decision): ``compile=True`` should be the default
   on accelerators if it is faster than eager at every batch size at 100
   steps, compilation included.
2. **Whole test** (``--part e2e``): ``binarization_test`` with PGD on
   ``--samples`` held-out digits, in the framework and in PyTorch on the same
   trained convnet and device, with per-phase times, the conclusive share
   and the features phase's images per second; the ratio framework / torch.

The model is the trained digits convnet of ``tests/convnets.py`` (residual
blocks with batch norm, 64-d features, 3x32x32 inputs), its shipped weights
loaded by every framework: Keras through ``tests/convnets.keras_convnet``,
JAX written here with ``lax.conv_general_dilated`` (checked against torch at
start: the largest logit difference is printed).

Usage (from the repository root)::

    python -m benchmarks.frameworks --framework jax                     # CPU smoke
    python -m benchmarks.frameworks --framework jax --device cuda --json jax.json
    python -m benchmarks.frameworks --framework tensorflow --device cuda
    python -m benchmarks.frameworks --framework jax --part jit-model --samples 16 --steps 5

Figures are kept in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:  # run as a file, not with -m: see benchmarks/_bootstrap.py
    import _bootstrap  # noqa: F401

import numpy as np

import attacks
from benchmarks import common
from pytest_attacktest import binarization_test

# tests/convnets.py (the shipped convnet and its data) imports its neighbours by
# name: tests/ is not a package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

EPS = 8 / 255


def _setup_environment(framework: str, device: str) -> None:
    """Before any framework is imported: where it runs and how it takes GPU memory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not device.startswith("cuda"):
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    # torch runs beside the framework: neither may take the whole GPU up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    if framework == "tensorflow":
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")


# ---------------------------------------------------------------------- models


Fn = Callable[[Any], Any]


def jax_convnet(weights: dict[str, np.ndarray]) -> tuple[Fn, Fn]:
    """The convnet as JAX functions ``(model, features)`` on ``(N, 3, 32, 32)`` inputs."""
    import jax
    import jax.numpy as jnp
    from convnets import BN_EPS, WIDTHS

    p = {k: jnp.asarray(v) for k, v in weights.items()}

    def conv(t: Any, name: str, stride: int, kernel: int) -> Any:
        pad = ((1, 1), (1, 1)) if kernel == 3 else ((0, 0), (0, 0))
        return jax.lax.conv_general_dilated(
            t,
            jnp.transpose(p[f"{name}.weight"], (2, 3, 1, 0)),
            (stride, stride),
            pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    def bn(t: Any, name: str) -> Any:
        scale = p[f"{name}.weight"] / jnp.sqrt(p[f"{name}.running_var"] + BN_EPS)
        return (t - p[f"{name}.running_mean"]) * scale + p[f"{name}.bias"]

    def features(x: Any) -> Any:
        t = jnp.transpose(x, (0, 2, 3, 1))
        t = jax.nn.relu(bn(conv(t, "stem.0", 2, 3), "stem.1"))
        cin = WIDTHS[0]
        for i, (cout, stride) in enumerate(zip(WIDTHS, (1, 2, 2), strict=True)):
            name = f"blocks.{i}"
            out = jax.nn.relu(bn(conv(t, f"{name}.conv1", stride, 3), f"{name}.bn1"))
            out = bn(conv(out, f"{name}.conv2", 1, 3), f"{name}.bn2")
            short = t
            if stride != 1 or cin != cout:
                short = bn(conv(t, f"{name}.shortcut.0", stride, 1), f"{name}.shortcut.1")
            t = jax.nn.relu(out + short)
            cin = cout
        return t.mean(axis=(1, 2))

    def model(x: Any) -> Any:
        return features(x) @ p["head.weight"].T + p["head.bias"]

    return model, features


def images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` held-out digits at 3x32x32 (the 200 held out, repeated when more are asked)."""
    from convnets import HELD_OUT, held_out_images

    x, y = held_out_images(HELD_OUT)
    reps = -(-n // HELD_OUT)
    return np.tile(x, (reps, 1, 1, 1))[:n], np.tile(y, reps)[:n]


# ---------------------------------------------------------------------- timing


def best_time(fn: Callable[[], Any], sync: Callable[[Any], Any], repeats: int) -> dict[str, Any]:
    """One warm-up call, then ``repeats`` timed calls: the fastest and the median."""
    start = time.perf_counter()
    out = sync(fn())
    first = time.perf_counter() - start
    laps = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = sync(fn())
        laps.append(time.perf_counter() - start)
    return {"first_s": first, "best_s": min(laps), "median_s": statistics.median(laps), "out": out}


def _rows(framework: str, batch: int, steps: int, timed: dict[str, dict[str, Any]]) -> list[Any]:
    rows = []
    for name, t in timed.items():
        rows.append(
            {
                "framework": framework,
                "batch": batch,
                "steps": steps,
                "method": name,
                "first_s": t["first_s"],
                "best_s": t["best_s"],
                "median_s": t["median_s"],
                "ms_per_step": 1000 * t["best_s"] / steps,
                "robust_accuracy": t.get("robust_accuracy"),
            }
        )
    return rows


# ---------------------------------------------------------------------- JAX


def jax_pgd(args: argparse.Namespace, batch: int) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    from convnets import weights

    model, _ = jax_convnet(weights())
    x_np, y_np = images(batch)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    steps, eps = args.steps, EPS
    alpha = 2.5 * eps / steps
    lower, upper = jnp.clip(x - eps, 0, 1), jnp.clip(x + eps, 0, 1)

    def loss(z: Any, labels: Any) -> Any:
        logp = jax.nn.log_softmax(model(z))
        return -jnp.take_along_axis(logp, labels[:, None], axis=1).sum()

    def step(z: Any, lo: Any, hi: Any, labels: Any) -> Any:
        g = jax.grad(loss)(z, labels)
        return jnp.clip(z + alpha * jnp.sign(g), lo, hi)

    step_jit = jax.jit(step)

    @jax.jit
    def fori(z: Any, lo: Any, hi: Any, labels: Any) -> Any:
        return jax.lax.fori_loop(0, steps, lambda _, w: step(w, lo, hi, labels), z)

    key = jax.random.PRNGKey(args.seed)
    start = jnp.clip(x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps), lower, upper)

    def handwritten() -> Any:
        z = start
        for _ in range(steps):
            z = step_jit(z, lower, upper, y)
        return z

    def ours(compile_: bool) -> Callable[[], Any]:
        def run() -> Any:
            attack = attacks.PGD("linf", steps=steps, compile=compile_, seed=args.seed)
            return attack(model, x, y, epsilon=eps)

        return run

    methods = {
        "hand-written loop (jit step)": handwritten,
        "hand-written fori_loop (floor)": lambda: fori(start, lower, upper, y),
        "ours eager (compile=False)": ours(False),
        "ours fast path (compile=True)": ours(True),
    }
    timed = {}
    for name, fn in methods.items():
        t = best_time(fn, jax.block_until_ready, args.repeats)
        adv = t.pop("out")
        t["robust_accuracy"] = float((np.asarray(model(adv)).argmax(1) == y_np).mean())
        timed[name] = t
    return _rows("jax", batch, steps, timed)


# ---------------------------------------------------------------------- TensorFlow


def tf_pgd(args: argparse.Namespace, batch: int) -> list[dict[str, Any]]:
    import tensorflow as tf
    from convnets import keras_convnet

    model = keras_convnet()
    x_np, y_np = images(batch)
    x, y = tf.constant(x_np), tf.constant(y_np.astype(np.int64))
    steps, eps = args.steps, EPS
    alpha = 2.5 * eps / steps
    lower, upper = tf.clip_by_value(x - eps, 0, 1), tf.clip_by_value(x + eps, 0, 1)
    tf.random.set_seed(args.seed)
    noise = tf.random.uniform(x.shape, -eps, eps)
    start = tf.clip_by_value(x + noise, lower, upper)

    def step(z: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(z)
            logits = model(z, training=False)
            loss = tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
        g = tape.gradient(loss, z)
        return tf.clip_by_value(z + alpha * tf.sign(g), lower, upper)

    graph_step = tf.function(step)

    def loop(fn: Callable[[Any], Any]) -> Callable[[], Any]:
        def run() -> Any:
            z = start
            for _ in range(steps):
                z = fn(z)
            return z

        return run

    def ours() -> Any:
        return attacks.PGD("linf", steps=steps, seed=args.seed)(model, x, y, epsilon=eps)

    methods = {
        "hand-written loop (eager)": loop(step),
        "hand-written loop (tf.function step)": loop(graph_step),
        "ours (eager)": ours,
    }
    timed = {}
    for name, fn in methods.items():
        t = best_time(fn, lambda out: (out.numpy(), out)[1], args.repeats)
        adv = t.pop("out")
        t["robust_accuracy"] = float((np.asarray(model(adv)).argmax(1) == y_np).mean())
        timed[name] = t
    return _rows("tensorflow", batch, steps, timed)


# ---------------------------------------------------------------------- whole test


def _outcome(report: Any, total: float) -> dict[str, Any]:
    from benchmarks import model_speed  # imports torch: after _setup_environment

    n = report.n_samples
    return {
        "total_s": total,
        **{f"{k}_s": v for k, v in report.timings.items()},
        "verdict": report.verdict,
        "asr": report.asr,
        "conclusive_share": (n - report.n_inconclusive) / n if n else 0.0,
        "features_per_s": model_speed.features_per_s(report),
        "forward_block": report.settings.get("forward_block"),
        "chunk_size": report.settings.get("chunk_size"),
        "forward_noise_median": report.settings.get("forward_noise_median"),
    }


def whole_test(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The binarization test in the framework and in torch, same model, samples, device."""
    import torch
    from convnets import torch_convnet, weights

    x_np, y_np = images(args.samples)
    attack = attacks.PGD("linf", steps=args.steps)
    settings = {"epsilon": EPS, "seed": args.seed}
    runs: dict[str, Callable[[int], Any]] = {}
    if args.framework == "jax":
        import jax
        import jax.numpy as jnp

        model, features = jax_convnet(weights())
        xj, yj = jnp.asarray(x_np), jnp.asarray(y_np)
        runs["jax"] = lambda n: binarization_test(
            model, xj[:n], yj[:n], attack=attack, features=features, **settings
        )
        sync: Callable[[], Any] = lambda: jax.block_until_ready(jnp.zeros(()))  # noqa: E731
    else:
        import tensorflow as tf
        from convnets import keras_convnet

        keras_model = keras_convnet()
        xt, yt = tf.constant(x_np), tf.constant(y_np.astype(np.int64))
        runs["tensorflow"] = lambda n: binarization_test(
            keras_model, xt[:n], yt[:n], attack=attack, **settings
        )
        sync = lambda: None  # noqa: E731
    device = torch.device(args.device)
    net = torch_convnet().to(device)
    xt_, yt_ = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
    runs["torch"] = lambda n: binarization_test(net, xt_[:n], yt_[:n], attack=attack, **settings)
    rows = []
    for name, run in runs.items():
        run(2)  # warm-up: compilation, autotuning, lazy imports
        sync()
        start = time.perf_counter()
        report = run(args.samples)
        sync()
        if device.type == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        rows.append({"framework": name, "samples": args.samples, **_outcome(report, total)})
        print(f"  {name}: {rows[-1]['total_s']:.2f} s, verdict {report.verdict}", flush=True)
    return rows


def jit_model(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The JAX whole test with the model and features eager vs under ``jax.jit``.

    Each in a fresh process (the engine's own compiled programs would
    otherwise be shared), three runs: ``n`` samples, then ``1.5 n`` (new
    shapes: everything compiles again), then ``1.5 n`` again (compiled).
    """
    n = args.samples
    print(f"\nJAX whole test, model eager vs jax.jit, {n} then {n * 3 // 2} samples twice:")
    rows = []
    for variant in ("eager", "jit"):
        command = [sys.executable, "-m", "benchmarks.frameworks", "--framework", "jax"]
        command += ["--part", "_jit-model-child", "--model", variant, "--device", args.device]
        command += ["--samples", str(n), "--steps", str(args.steps), "--seed", str(args.seed)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        runs = ", ".join(f"{r['samples']} samples {r['total_s']:.2f} s" for r in row["runs"])
        print(f"  {variant}: {runs}", flush=True)
    return rows


def _jit_model_child(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from convnets import weights

    model, features = jax_convnet(weights())
    if args.model == "jit":
        model, features = jax.jit(model), jax.jit(features)
    x_np, y_np = images(args.samples * 3 // 2)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    attack = attacks.PGD("linf", steps=args.steps)
    runs = []
    for n in (args.samples, args.samples * 3 // 2, args.samples * 3 // 2):
        start = time.perf_counter()
        report = binarization_test(
            model, x[:n], y[:n], attack=attack, features=features, epsilon=EPS, seed=args.seed
        )
        jax.block_until_ready(jnp.zeros(()))
        runs.append(
            {"samples": n, "total_s": time.perf_counter() - start, "verdict": report.verdict}
        )
    return {"model": args.model, "runs": runs}


# ---------------------------------------------------------------------- output


def decision(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios per batch, and whether ``compile=True`` beats eager at every batch size."""
    out: dict[str, Any] = {"batches": {}}
    by_batch: dict[int, dict[str, float]] = {}
    for r in rows:
        by_batch.setdefault(r["batch"], {})[r["method"]] = r["best_s"]
    faster_everywhere = True
    for batch, t in by_batch.items():
        ratios: dict[str, float] = {}
        if "ours eager (compile=False)" in t:
            eager, fast = t["ours eager (compile=False)"], t["ours fast path (compile=True)"]
            hand, floor = t["hand-written loop (jit step)"], t["hand-written fori_loop (floor)"]
            ratios["eager / hand-written jit-step loop"] = eager / hand
            ratios["fast path / hand-written fori_loop"] = fast / floor
            ratios["eager / fast path"] = eager / fast
            faster_everywhere &= fast < eager
        else:
            ours = t["ours (eager)"]
            ratios["ours / hand-written eager loop"] = ours / t["hand-written loop (eager)"]
            ratios["ours / hand-written tf.function loop"] = (
                ours / t["hand-written loop (tf.function step)"]
            )
        out["batches"][batch] = ratios
    if any("ours eager (compile=False)" in t for t in by_batch.values()):
        out["compile_true_faster_at_every_batch"] = faster_everywhere
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--framework", choices=("jax", "tensorflow"), required=True)
    parser.add_argument(
        "--part", choices=("pgd", "e2e", "jit-model", "all", "_jit-model-child"), default="all"
    )
    parser.add_argument(
        "--model", choices=("eager", "jit"), default="eager", help=argparse.SUPPRESS
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batches", default="64,512", help="PGD batch sizes")
    parser.add_argument("--steps", type=int, default=100, help="PGD steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512, help="samples of the whole test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    _setup_environment(args.framework, args.device)
    if args.part == "_jit-model-child":
        print(json.dumps(_jit_model_child(args)))
        return 0
    import torch

    if args.threads or not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads or 1)
    meta = common.metadata(f"{args.framework}: PGD and the whole test", args, vars(args))
    for line in common.header_lines(meta):
        print(line)
    extra: dict[str, Any] = {}
    if args.framework == "jax":
        import jax
        import jax.numpy as jnp
        from convnets import torch_convnet, weights

        extra["jax_devices"] = [str(d) for d in jax.devices()]
        model, _ = jax_convnet(weights())
        x_np, _ = images(8)
        with torch.no_grad():
            expected = torch_convnet()(torch.from_numpy(x_np)).numpy()
        diff = float(np.abs(np.asarray(model(jnp.asarray(x_np))) - expected).max())
        extra["jax_vs_torch_max_logit_difference"] = diff
        devices = extra["jax_devices"]
        print(f"JAX devices {devices}; JAX convnet vs torch: max |logit diff| {diff:.1e}")
    else:
        import tensorflow as tf

        extra["tf_gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
        print(f"TensorFlow GPUs: {extra['tf_gpus']}")
    rows: list[dict[str, Any]] = []
    if args.part in ("pgd", "all"):
        measure = jax_pgd if args.framework == "jax" else tf_pgd
        for batch in (int(b) for b in args.batches.split(",")):
            rows += measure(args, batch)
        columns = [
            common.Column("batch", "batch"),
            common.Column("method", "method", right=False),
            common.Column("first call s", "first_s", common.fixed(3)),
            common.Column("best s", "best_s", common.fixed(3)),
            common.Column("ms/step", "ms_per_step", common.fixed(3)),
            common.Column("robust acc", "robust_accuracy", common.fixed(3)),
        ]
        print()
        print(common.markdown_table(rows, columns))
        extra["decision"] = decision(rows)
        for batch, ratios in extra["decision"]["batches"].items():
            print(f"batch {batch}: " + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items()))
        if "compile_true_faster_at_every_batch" in extra["decision"]:
            verdict = extra["decision"]["compile_true_faster_at_every_batch"]
            print(
                f"compile=True faster than eager at every batch size ({args.steps} steps, "
                f"compilation included): {verdict}"
            )
    if args.part in ("e2e", "all"):
        print(f"\nwhole test, {args.samples} samples, PGD-{args.steps}:")
        e2e = whole_test(args)
        extra["whole_test"] = e2e
        columns = [
            common.Column("framework", "framework", right=False),
            common.Column("total s", "total_s", common.fixed(2)),
            common.Column("features s", "features_s", common.fixed(2)),
            common.Column("fit s", "fit_s", common.fixed(2)),
            common.Column("attack s", "attack_s", common.fixed(2)),
            common.Column("verify s", "verification_s", common.fixed(2)),
            common.Column("features img/s", "features_per_s", common.fixed(0)),
            common.Column("conclusive", "conclusive_share", common.fixed(3)),
            common.Column("verdict", "verdict", right=False),
        ]
        print()
        print(common.markdown_table(e2e, columns))
        torch_total = next(r["total_s"] for r in e2e if r["framework"] == "torch")
        ratio = e2e[0]["total_s"] / torch_total
        extra["whole_test_ratio_to_torch"] = ratio
        print(f"{args.framework} / torch, whole test: {ratio:.3f}x")
    if args.part == "jit-model" and args.framework == "jax":
        extra["jit_model"] = jit_model(args)
    common.finish(meta, rows, args.json, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
