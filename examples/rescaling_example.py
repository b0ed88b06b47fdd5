"""Why clipping-aware rescaling: naive rescaling undershoots epsilon after clipping.

Run it with `python examples/rescaling_example.py` (needs only NumPy). It draws
random directions from image-like points that sit partly on the bounds (as
saturated pixels do), scales each direction to norm epsilon the naive way and
with the analytic kernel, clips to [0, 1], and prints the norm that survives.
It exits non-zero if the kernel misses epsilon, so it doubles as a smoke test.
"""

from __future__ import annotations

import math
import sys

import numpy as np

import attacks


def clipped_norms(x: np.ndarray, point: np.ndarray, p: float) -> np.ndarray:
    moved = np.abs(point - x).reshape(len(x), -1)
    if math.isinf(p):
        return moved.max(axis=1)
    return (moved**p).sum(axis=1) ** (1 / p)


def main() -> int:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 3, 32, 32))
    x[x > 0.8] = 1.0  # saturated pixels: no room to grow
    x[x < 0.1] = 0.0
    delta = rng.normal(size=x.shape)
    failures = 0
    print(f"{'norm':>5} {'epsilon':>8} {'naive: mean norm':>17} {'kernel: min':>12} {'max':>10}")
    for p, eps in [(1.0, 40.0), (2.0, 2.0), (math.inf, 8 / 255)]:
        flat = np.abs(delta).reshape(len(x), -1)
        length = flat.max(axis=1) if math.isinf(p) else (flat**p).sum(axis=1) ** (1 / p)
        naive = np.clip(x + eps * delta / length[:, None, None, None], 0, 1)
        ours = attacks.rescale_and_clip(x, delta, eps, p=p, bounds=(0, 1))
        got = clipped_norms(x, ours, p)
        name = attacks.norm_name(p)
        naive_norm = clipped_norms(x, naive, p).mean()
        print(f"{name:>5} {eps:8.4f} {naive_norm:17.4f} {got.min():12.6f} {got.max():10.6f}")
        if not np.allclose(got, eps, rtol=1e-9):
            failures += 1
    if failures:
        print("clipping-aware rescaling missed epsilon", file=sys.stderr)
        return 1
    print("clipping-aware rescaling reaches epsilon exactly after clipping; naive falls short")
    return 0


if __name__ == "__main__":
    sys.exit(main())
