"""What PHI-S's second moments cost a cache write task, side by side with per-channel statistics.

    python bench/bench_moments.py [--views 128] [--grid 14] [--dim 768] [--repeat 5]

One shard's features (views x grid x grid rows of ``dim`` channels, float16 values as the cache stores them)
through ``RunningStats.update`` (per-channel mean and M2) and ``RunningMoments.update`` (plus the full
centered second moments), best of ``--repeat``; and the bytes the moments add to the shard's footer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--views", type=int, default=128)
    p.add_argument("--grid", type=int, default=14)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--repeat", type=int, default=5)
    ns = p.parse_args()
    from radio.normalize import RunningMoments, RunningStats

    x = (
        np.random.default_rng(0)
        .standard_normal((ns.views * ns.grid * ns.grid, ns.dim))
        .astype(np.float16)
        .astype(np.float64)
    )
    best = {}
    for cls in (RunningStats, RunningMoments) * ns.repeat:
        t0 = time.perf_counter()
        cls().update(x)
        best[cls.__name__] = min(best.get(cls.__name__, float("inf")), time.perf_counter() - t0)
    extra = len(RunningMoments().update(x).to_dict()["cov_m2_triu_f32"])
    shard = x.shape[0] * ns.dim * 2  # float16 features
    print(
        f"shard: {ns.views} views x {ns.grid}x{ns.grid} x {ns.dim} channels ({shard / 1e6:.1f} MB "
        f"of float16 features); cores: {os.cpu_count()}"
    )
    print(f"  per-channel statistics   {best['RunningStats']:.3f}s")
    print(
        f"  with second moments      {best['RunningMoments']:.3f}s "
        f"  (+{best['RunningMoments'] - best['RunningStats']:.3f}s per shard and teacher)"
    )
    print(f"  footer bytes added       {extra / 1e6:.2f} MB ({extra / shard:.1%} of the shard's features)")
    print(f"ratio (with second moments / per-channel): {best['RunningMoments'] / best['RunningStats']:.2f}")


if __name__ == "__main__":
    main()
