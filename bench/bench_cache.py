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
    p.add_argument("--images-per-shard", type=int, default=32)
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
    from pipelines.cache import init_ray

    init_ray()  # Ray start-up is a fixed cost of any job; it is not what this measures

    import threading

    import psutil

    def peak_rss_during(fn):
        """Run fn() while sampling the summed RSS of this process and all its children (Ray's workers)."""
        peak, stop = [0], threading.Event()

        def sample():
            me = psutil.Process()
            while not stop.is_set():
                total = 0
                for p in [me, *me.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total)
                stop.wait(0.1)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            return fn(), peak[0]
        finally:
            stop.set()
            th.join()

    def job_seconds(limit: int, out: str):
        cfg = load_config(CacheJobConfig, None, [f"output={tmp}/{out}", "source.kind=samples", "source.split=all", f"source.limit={limit}", f"views.num_views={ns.views}", f"teachers=[{','.join(teachers)}]", "progress=false", "mlflow.enabled=false", f"images_per_shard={ns.images_per_shard}"] + [f"teachers.{t}.batch_size={ns.batch_size}" for t in teachers])
        t0 = time.perf_counter()
        s = run_cache_job(cfg)
        return time.perf_counter() - t0, s

    try:
        (small, _), rss_small = peak_rss_during(lambda: job_seconds(ns.images // 2, "small"))
        (job, s), rss_full = peak_rss_during(lambda: job_seconds(ns.images, "full"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Fixed costs (actor start-up: a process importing torch + transformers and loading the teacher;
    # the manifest) are the same for both sizes; what grows with the data is the per-view cost.
    # The CPU side of one unit, without Ray: decode + views + PNG (prepare_unit), then per teacher the
    # Arrow conversion, statistics and zstd Parquet commit (write_teacher_shard).
    from pipelines.cache import _identity, prepare_unit, target_grid_for
    from radio.cache import CacheLocation, TargetLayout, encode_targets, write_teacher_shard
    from radio.targets import resample_targets, stored_grid

    tmp2 = tempfile.mkdtemp(prefix="bench-cpu-")
    try:
        cfg0 = load_config(CacheJobConfig, None, [f"output={tmp2}", f"views.num_views={ns.views}", f"teachers=[{','.join(teachers)}]"])
        loc = CacheLocation(tmp2)
        ident = _identity(cfg0, src)
        t0 = time.perf_counter()
        prepared, _ = prepare_unit(src, src.records, policy, cfg0.student_resolution, "png", 10**8, loc, 0, 64, ident)
        t_prep = time.perf_counter() - t0
        t_write = 0.0
        for name in teachers:
            t = create_teacher(name)
            layout = TargetLayout(stored_grid(t.spec.feature_grid, target_grid_for(cfg0, name)), cfg0.target_dtype, t.spec.feature_grid)
            outs = [t(crops[i : i + ns.batch_size]) for i in range(0, n_views, ns.batch_size)]
            parts = [encode_targets(o.summary_BD, resample_targets(o.features_BHWC, layout.grid, o.valid_hw_B2), layout.dtype) for o in outs]
            cols = {k: np.concatenate([c[k] for c in parts]) for k in parts[0]}
            t0 = time.perf_counter()
            write_teacher_shard(loc, name, t.spec.to_dict(), layout, 0, prepared["image_id"], prepared["view_index"], cols, ident, 64)
            t_write += time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp2, ignore_errors=True)
    print(f"views: {n_views} ({ns.images} images x {ns.views}); teachers: {', '.join(teachers)}; cores: {os.cpu_count()}")
    for name, sec in bare.items():
        print(f"  bare forward {name:<12} {sec:7.2f}s  {n_views / sec:8.1f} views/s")
    print(f"  bare forward, all teachers  {bare_total:7.2f}s  {n_views / bare_total:8.1f} views/s")
    print(f"  CPU side, in process: prepare {n_views / t_prep:8.1f} views/s, write all teachers {n_views / t_write:8.1f} views/s")
    print(f"  radio cache job, end to end {job:7.2f}s  {n_views / job:8.1f} views/s  ({s.bytes_written / 1e6:.1f} MB written)")
    print(f"  radio cache job, {ns.images // 2} images  {small:7.2f}s (the fixed cost: Ray actors importing torch + transformers, loading teachers)")
    print(f"  growth from {ns.images // 2} to {ns.images} images: {job - small:+.2f}s for {n_views - n_views // 2} more views (bare forward: {bare_total * 0.5:.2f}s)")
    print(f"  peak RSS, driver + Ray workers: {rss_small / 2**20:.0f} MiB for {ns.images // 2} images, {rss_full / 2**20:.0f} MiB for {ns.images} images")
    if s.steady_views_per_s:
        print(f"  radio cache job, steady state (first unit done -> last unit done)  {s.steady_views_per_s:8.1f} views/s")
    print(f"ratio end to end (cache job / bare forward throughput): {bare_total / job:.3f}")
    if s.steady_views_per_s:
        print(f"ratio steady state (cache job / bare forward throughput): {s.steady_views_per_s / (n_views / bare_total):.3f}")


if __name__ == "__main__":
    main()
