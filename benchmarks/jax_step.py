"""JAX attack loops: the eager step against the whole step under ``jax.jit``.

Why this exists: ``attacks.PGD(compile=True)`` on a JAX model traces the whole
step (forward, gradient, success tracking, step, projection) and runs the steps
in one ``lax.fori_loop`` (``attacks.fast_path``); the default keeps the step
eager, with only the gradient compiled (``attacks.jaxjit``). Which is faster
depends on how many steps share one compilation, so this script measures both
parts: the cost of one step and the fixed cost of one attack call.

Every configuration runs in a fresh process (XLA caches compiled programs per
process, so a first call pays every compilation and a second one only what is
compiled per call), twice: the first call, and a second call with a new
attack object on the same model and data. A step's cost is the difference of
the second calls at two step counts divided by the difference in steps; what
remains of a second call is its fixed cost.

Usage (from the repository root)::

    python -m benchmarks.jax_step                       # CPU: MLP 64-256-10, batch 512
    python -m benchmarks.jax_step --batch 64 --steps 100,1000 --json jax-step.json

Figures are kept in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file, not with -m: see benchmarks/_bootstrap.py
    import _bootstrap  # noqa: F401

from benchmarks import common

ROOT = Path(__file__).resolve().parent.parent


def child(batch: int, steps: int, compile_: bool, seed: int, hidden: int) -> dict[str, Any]:
    """One configuration in this (fresh) process: two attack calls, their wall and CPU times."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from sklearn.datasets import load_digits

    import attacks

    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(0, 64**-0.5, (64, hidden)), dtype=jnp.float32)
    w2 = jnp.asarray(rng.normal(0, hidden**-0.5, (hidden, 10)), dtype=jnp.float32)

    def model(x: Any) -> Any:
        return jnp.maximum(x @ w1, 0) @ w2

    data = load_digits().data.astype(np.float32) / 16.0
    x = jnp.asarray(np.resize(data, (batch, 64)))
    y = jnp.argmax(model(x), axis=1)
    out: dict[str, Any] = {}
    for call in (1, 2):
        attack = attacks.PGD("linf", steps=steps, compile=compile_, seed=seed)
        wall, cpu = time.perf_counter(), time.process_time()
        adv = attack(model, x, y, epsilon=0.1)
        jax.block_until_ready(adv)
        out[f"call{call}_wall_s"] = time.perf_counter() - wall
        out[f"call{call}_cpu_s"] = time.process_time() - cpu
    status = attack.last_fast_path
    out["fast_path"] = None if status is None else status.kind
    out["robust_accuracy"] = float((np.asarray(model(adv)).argmax(1) == np.asarray(y)).mean())
    return out


COLUMNS_SPEC = [
    ("step loop", "loop", None, False),
    ("steps", "steps", None, True),
    ("first call s", "call1_wall_s", 3, True),
    ("first call CPU s", "call1_cpu_s", 3, True),
    ("second call s", "call2_wall_s", 3, True),
    ("second call CPU s", "call2_cpu_s", 3, True),
    ("robust acc", "robust_accuracy", 3, True),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", default="200,1000", help="two step counts, comma-separated")
    parser.add_argument("--hidden", type=int, default=256, help="hidden units of the MLP")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        steps, compile_ = args.child.split(":")
        result = child(args.batch, int(steps), compile_ == "jit", args.seed, args.hidden)
        print(json.dumps(result))
        return 0

    args.device, args.threads = "cpu", None
    counts = [int(v) for v in args.steps.split(",")]
    if len(counts) != 2 or counts[0] >= counts[1]:
        parser.error("--steps needs two increasing step counts, e.g. 200,1000")
    meta = common.metadata(
        "JAX PGD: eager step vs jax.jit step",
        args,
        {"batch": args.batch, "steps": counts, "hidden": args.hidden, "epsilon": 0.1},
    )
    meta["device"] = {"type": "cpu", "name": common.cpu_name(), "cpu_count": os.cpu_count()}
    rows = []
    for loop in ("eager", "jit"):
        for steps in counts:
            command = [
                sys.executable,
                "-m",
                "benchmarks.jax_step",
                "--batch",
                str(args.batch),
                "--hidden",
                str(args.hidden),
                "--seed",
                str(args.seed),
                "--child",
                f"{steps}:{loop}",
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"loop": f"{loop} ({row['fast_path']})", "steps": steps, **row})
    for line in common.header_lines(meta):
        print(line)
    columns = [
        common.Column(t, k, common.fixed(d) if d is not None else str, r)
        for t, k, d, r in COLUMNS_SPEC
    ]
    print()
    print(common.markdown_table(rows, columns))
    summary = {}
    for i, loop in enumerate(("eager", "jit")):
        low, high = rows[2 * i], rows[2 * i + 1]
        per_step = (high["call2_cpu_s"] - low["call2_cpu_s"]) / (counts[1] - counts[0])
        fixed = low["call2_cpu_s"] - per_step * counts[0]
        summary[loop] = {"cpu_ms_per_step": 1000 * per_step, "cpu_s_per_call": fixed}
    e, j = summary["eager"], summary["jit"]
    step_gain = e["cpu_ms_per_step"] / max(j["cpu_ms_per_step"], 1e-9)
    saved = (e["cpu_ms_per_step"] - j["cpu_ms_per_step"]) / 1000
    extra_per_call = j["cpu_s_per_call"] - e["cpu_s_per_call"]
    break_even = extra_per_call / saved if saved > 0 else float("inf")
    summary["step_ratio_eager_over_jit"] = step_gain
    summary["break_even_steps"] = break_even
    print(
        f"\nper step (CPU): eager {e['cpu_ms_per_step']:.2f} ms, jit {j['cpu_ms_per_step']:.2f} ms "
        f"({step_gain:.1f}x); per call (CPU, second call): eager {e['cpu_s_per_call']:.2f} s, "
        f"jit {j['cpu_s_per_call']:.2f} s; the jit pays off after about {break_even:.0f} steps"
    )
    common.finish(meta, rows, args.json, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
