"""Cache job throughput against bare teacher forward passes on the same views, side by side.

    python bench/bench_cache.py [--images 96] [--teachers tiny-clip,tiny-dinov2,tiny-sam]

Prints views/s for (1) each teacher's bare forward over the recorded crops in one process, (2) the full
`radio cache` job (decode, views, Ray actors, Parquet commit, statistics, manifest) on the same images,
and the ratio job / bare. Bare is the sum of per-teacher times (the teachers run one after another in a
single process), i.e. the cost a hand-written loop would pay.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--teachers", default="tiny-clip,tiny-dinov2,tiny-sam")
    p.add_argument("--batch-size", type=int, default=64)
    ns = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    teachers = ns.teachers.split(",")

    from pipelines.cache import CacheJobConfig, run_cache_job
    from pipelines.config import load_config
    from pipelines.sources import SourceConfig, open_source
    from radio.images import decode_image
    from radio.views import ViewPolicy, crop_view, sample_views
    from teachers import create_teacher

    src = open_source(SourceConfig(kind="samples", split="all", limit=ns.images))
    policy = ViewPolicy(num_views=ns.views)
    crops = []
    for rec in src.records:
        img = decode_image(src.read_bytes(rec))
        crops += [torch.from_numpy(crop_view(img, v)).permute(2, 0, 1) for v in sample_views(policy, rec.image_id, img.shape[1], img.shape[0])]
    n_views = len(crops)
    bare = {}
    for name in teachers:
        t = create_teacher(name)
        t(crops[:4])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, n_views, ns.batch_size):
            t(crops[i : i + ns.batch_size])
        bare[name] = time.perf_counter() - t0
    bare_total = sum(bare.values())

    tmp = tempfile.mkdtemp(prefix="bench-cache-")
    try:
        cfg = load_config(CacheJobConfig, None, [f"output={tmp}/c", "source.kind=samples", "source.split=all", f"source.limit={ns.images}", f"views.num_views={ns.views}", f"teachers=[{','.join(teachers)}]", "progress=false", "mlflow.enabled=false", "images_per_shard=16"] + [f"teachers.{t}.batch_size={ns.batch_size}" for t in teachers])
        from pipelines.cache import init_ray

        init_ray()  # Ray start-up is a fixed cost of any job; it is not what this measures
        t0 = time.perf_counter()
        s = run_cache_job(cfg)
        job = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"views: {n_views} ({ns.images} images x {ns.views}); teachers: {', '.join(teachers)}; cores: {os.cpu_count()}")
    for name, sec in bare.items():
        print(f"  bare forward {name:<12} {sec:7.2f}s  {n_views / sec:8.1f} views/s")
    print(f"  bare forward, all teachers  {bare_total:7.2f}s  {n_views / bare_total:8.1f} views/s")
    print(f"  radio cache job             {job:7.2f}s  {n_views / job:8.1f} views/s  ({s.bytes_written / 1e6:.1f} MB written)")
    print(f"ratio (cache job / bare forward throughput): {bare_total / job:.2f}")


if __name__ == "__main__":
    main()
