"""Cache job throughput against bare teacher forward passes on the same views, side by side.

    python bench/bench_cache.py [--images 96] [--teachers tiny-clip,tiny-dinov2,tiny-sam]
        [--source clip-vit-b16=/models/clip ...] [--tuned] [--peak-tflops 989]

Prints views/s for (1) each teacher's bare forward over the recorded crops in one process (the project's
``Teacher``: preprocessing + model), (2) with ``--tuned``, the model alone on the preprocessed inputs,
``torch.compile``d (bf16 autocast on CUDA; the spec's dtype on CPU), with its FLOPs per view counted by
``FlopCounterMode`` and MFU against ``--peak-tflops`` (GFLOP/s when no peak is given), (3) the full
`radio cache` job (decode, views, Ray actors, Parquet commit, statistics, manifest) on the same images,
and the ratios. Bare is the sum of per-teacher times (the teachers run one after another in a single
process), i.e. the cost a hand-written loop would pay. ``--source NAME=DIR`` loads a teacher from a local
directory (e.g. a real-size architecture saved with random weights by ``teachers.tiny.save_random_teacher``)
for the bare forwards and, as ``teachers.NAME.source=DIR``, for the job.

It also prints, per teacher, the two places the job can resize a view to the teacher's input, side by
side on the same crops: Pillow on one CPU core (what a prepare task does; ``teachers.<t>.resize_in=prepare``,
the default) and the torch port of Pillow on the teacher's device (``resize_in=device``), plus the
normalization the actor does after a prepare-task resize. ``--resize-in`` picks the job's path.
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
    p.add_argument(
        "--source", action="append", default=[], metavar="NAME=DIR", help="load teacher NAME from DIR (repeatable)"
    )
    p.add_argument("--tuned", action="store_true", help="also time each model alone, compiled, with a FLOP count")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's peak for MFU (H100 SXM bf16 dense: 989)"
    )
    p.add_argument(
        "--resize-in",
        choices=["prepare", "device"],
        default="prepare",
        help="where the job resizes views (teachers.<t>.resize_in)",
    )
    ns = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    teachers = ns.teachers.split(",")
    sources = dict(s.split("=", 1) for s in ns.source)
    unknown = set(sources) - set(teachers)
    if unknown:
        p.error(f"--source names {sorted(unknown)}, which are not in --teachers {teachers}")

    from pipelines.cache import CacheJobConfig, run_cache_job
    from pipelines.config import load_config
    from pipelines.sources import SourceConfig, open_source
    from radio.views import ViewPolicy
    from teachers import create_teacher

    src = open_source(SourceConfig(kind="samples", split="all", limit=ns.images))
    policy = ViewPolicy(num_views=ns.views)
    crops = view_crops(src, policy)
    n_views = len(crops)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bare, tuned, resize = {}, {}, {}

    for name in teachers:
        t = create_teacher(name, source=sources.get(name), device=device)
        t(crops[:4])  # warm-up
        resize[name] = resize_seconds(t, crops, ns.batch_size, device)
        bare[name] = bare_seconds(t, crops, ns.batch_size, device)
        if ns.tuned:
            tuned[name] = tuned_forward(t, crops, ns.batch_size, device)
        del t
    bare_total = sum(bare.values())

    tmp = tempfile.mkdtemp(prefix="bench-cache-")
    from pipelines.cache import init_ray

    init_ray(
        load_config(CacheJobConfig, None, [f"teachers=[{','.join(teachers)}]"])
    )  # Ray start-up is a fixed cost of any job; it is not what this measures

    def job_seconds(limit: int, out: str):
        cfg = load_config(
            CacheJobConfig,
            None,
            [
                f"output={tmp}/{out}",
                "source.kind=samples",
                "source.split=all",
                f"source.limit={limit}",
                f"views.num_views={ns.views}",
                f"teachers=[{','.join(teachers)}]",
                "progress=false",
                "mlflow.enabled=false",
                f"images_per_shard={ns.images_per_shard}",
            ]
            + [f"teachers.{t}.batch_size={ns.batch_size}" for t in teachers]
            + [f"teachers.{t}.resize_in={ns.resize_in}" for t in teachers]
            + [f"teachers.{t}.source={d}" for t, d in sources.items()],
        )
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
        cfg0 = load_config(
            CacheJobConfig, None, [f"output={tmp2}", f"views.num_views={ns.views}", f"teachers=[{','.join(teachers)}]"]
        )
        loc = CacheLocation(tmp2)
        ident = _identity(cfg0, src)
        t0 = time.perf_counter()
        prepared, _ = prepare_unit(src, src.records, policy, cfg0.student_resolution, "png", 10**8, loc, 0, 64, ident)
        t_prep = time.perf_counter() - t0
        t_write = 0.0
        for name in teachers:
            t = create_teacher(name, source=sources.get(name))
            layout = TargetLayout(
                stored_grid(t.spec.feature_grid, target_grid_for(cfg0, name)), cfg0.target_dtype, t.spec.feature_grid
            )
            outs = [t(crops[i : i + ns.batch_size]) for i in range(0, n_views, ns.batch_size)]
            parts = [
                encode_targets(
                    o.summary_BD, resample_targets(o.features_BHWC, layout.grid, o.valid_hw_B2), layout.dtype
                )
                for o in outs
            ]
            cols = {k: np.concatenate([c[k] for c in parts]) for k in parts[0]}
            t0 = time.perf_counter()
            write_teacher_shard(
                loc, name, t.spec.to_dict(), layout, 0, prepared["image_id"], prepared["view_index"], cols, ident, 64
            )
            t_write += time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp2, ignore_errors=True)
    print(
        f"views: {n_views} ({ns.images} images x {ns.views}); teachers: {', '.join(teachers)}; "
        f"cores: {os.cpu_count()}; device: {device}; job resizes in: {ns.resize_in}"
    )
    for name, (pil_s, port_s, norm_s) in resize.items():
        if pil_s is None:
            print(
                f"  resize {name:<18} only on its device (rescale first, float resize): {n_views / port_s:8.1f} views/s"
            )
            continue
        print(
            f"  resize {name:<18} Pillow, one CPU core {n_views / pil_s:8.1f} views/s   torch port "
            f"on {device} (+ normalize) {n_views / port_s:8.1f} views/s   "
            f"normalize only (after Pillow) {n_views / norm_s:8.1f} views/s   ratio Pillow / port {port_s / pil_s:.2f}"
        )
    for name, sec in bare.items():
        print(f"  bare forward {name:<12} {sec:7.2f}s  {n_views / sec:8.1f} views/s")
    print(f"  bare forward, all teachers  {bare_total:7.2f}s  {n_views / bare_total:8.1f} views/s")
    for name, r in tuned.items():
        perf = (
            f"MFU {r['flops_per_view'] * r['views_per_s'] / (ns.peak_tflops * 1e12):.1%}"
            if ns.peak_tflops
            else f"{r['flops_per_view'] * r['views_per_s'] / 1e9:.1f} GFLOP/s"
        )
        print(
            f"  tuned model {name:<13} {r['seconds']:7.2f}s  {r['views_per_s']:8.1f} "
            f"views/s  {r['flops_per_view'] / 1e9:.3g} GFLOP/view  {perf}  (compile {r['compile_s']:.1f}s, "
            "not counted)"
        )
    if tuned:
        tuned_total = sum(r["seconds"] for r in tuned.values())
        print(
            f"  tuned models, all teachers  {tuned_total:7.2f}s  {n_views / tuned_total:8.1f} "
            "views/s (model only; preprocessing excluded)"
        )
    print(
        f"  CPU side, in process: prepare {n_views / t_prep:8.1f} views/s, write all teachers "
        f"{n_views / t_write:8.1f} views/s"
    )
    print(
        f"  radio cache job, end to end {job:7.2f}s  {n_views / job:8.1f} "
        f"views/s  ({s.bytes_written / 1e6:.1f} MB written)"
    )
    print(
        f"  radio cache job, {ns.images // 2} images  {small:7.2f}s (the fixed cost: Ray "
        "actors importing torch + transformers, loading teachers)"
    )
    print(
        f"  growth from {ns.images // 2} to {ns.images} images: {job - small:+.2f}s "
        f"for {n_views - n_views // 2} more views (bare forward: {bare_total * 0.5:.2f}s)"
    )
    print(
        f"  peak RSS, driver + Ray workers: {rss_small / 2**20:.0f} MiB for {ns.images // 2} "
        f"images, {rss_full / 2**20:.0f} MiB for {ns.images} images"
    )
    if s.steady_views_per_s:
        print(
            f"  radio cache job, steady state (first unit done -> last unit done)  {s.steady_views_per_s:8.1f} views/s"
        )
    print(f"ratio end to end (cache job / bare forward throughput): {bare_total / job:.3f}")
    if s.steady_views_per_s:
        print(
            "ratio steady state (cache job / bare forward throughput): "
            f"{s.steady_views_per_s / (n_views / bare_total):.3f}"
        )
    if tuned and s.steady_views_per_s:
        print(f"ratio steady state (cache job / tuned models): {s.steady_views_per_s / (n_views / tuned_total):.3f}")
    for t, f in s.teacher_busy_fraction.items():
        print(f"  in the job, {t} busy {f:.0%} of the time work was in flight")


def view_crops(src, policy) -> list:
    """Every view of every record of an opened source, cropped as the job crops them: uint8 (3, H, W) tensors."""
    from radio.images import decode_image
    from radio.views import crop_view, sample_views

    crops = []
    for rec in src.records:
        img = decode_image(src.read_bytes(rec))
        crops += [
            torch.from_numpy(np.array(crop_view(img, v))).permute(2, 0, 1)
            for v in sample_views(policy, rec.image_id, img.shape[1], img.shape[0])
        ]  # a writable copy
    return crops


def resize_seconds(t, crops, batch_size: int, device: str) -> tuple[float | None, float, float | None]:
    """The two places the job can resize ``crops`` to teacher ``t``'s input, on the same crops: (Pillow on this
    core, as a prepare task does, or None where the teacher resizes only on its device; the torch port of Pillow
    + normalization on ``device``; the normalization alone after Pillow, what the actor then does, or None)."""
    from teachers.preprocess import host_resize, resizes_on_host

    n_views = len(crops)
    pil_s = norm_s = None
    on_host = resizes_on_host(t.spec)  # DINOv3 rescales, then resizes in float: only on its device
    if on_host:
        hwc = [c.permute(1, 2, 0).numpy() for c in crops]
        t0 = time.perf_counter()
        small = [host_resize(t.spec, c) for c in hwc]
        pil_s = time.perf_counter() - t0
        ready = [torch.from_numpy(x.copy()).permute(2, 0, 1) for x in small]
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, n_views, batch_size):
        t.preprocess(crops[i : i + batch_size])
    _sync(device)
    port_s = time.perf_counter() - t0
    if on_host:
        t0 = time.perf_counter()
        for i in range(0, n_views, batch_size):
            t.preprocess(ready[i : i + batch_size], resized=True)
        _sync(device)
        norm_s = time.perf_counter() - t0
    return pil_s, port_s, norm_s


def bare_seconds(t, crops, batch_size: int, device: str) -> float:
    """Seconds for the project's ``Teacher`` (preprocessing + model) over ``crops`` in batches."""
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(crops), batch_size):
        t(crops[i : i + batch_size])
    _sync(device)
    return time.perf_counter() - t0


def peak_rss_during(fn, samples: list | None = None, probe=None):
    """(fn(), peak summed RSS in bytes of this process and all its children (Ray's workers) while it ran), sampled
    every 0.1 s. ``samples``: a list to append each sample to, as (rss, probe()) (probe: e.g. units done so far)."""
    import threading

    import psutil

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
            if samples is not None:
                samples.append((total, probe() if probe else None))
            stop.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        return fn(), peak[0]
    finally:
        stop.set()
        th.join()


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def tuned_forward(teacher, crops, batch_size: int, device: str, compile: bool = True) -> dict:
    """The model alone on pre-made inputs: torch.compile (unless ``compile`` is False), bf16 autocast on CUDA, FLOPs
    per view counted once. Returns seconds, views_per_s, flops_per_view and compile_s (the first pass per input
    size)."""
    from torch.utils.flop_counter import FlopCounterMode

    batches = []
    for i in range(0, len(crops), batch_size):
        pixels, _ = teacher.preprocess(crops[i : i + batch_size])
        groups = {}
        for x in pixels:
            groups.setdefault(tuple(x.shape), []).append(x)
        batches += [torch.stack(g) for g in groups.values()]
    model, forward = teacher.model, teacher.family.forward
    dtype = next(model.parameters()).dtype
    ctx = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device == "cuda"
        else (lambda: torch.autocast("cpu", enabled=False))
    )
    with torch.inference_mode(), ctx():
        with FlopCounterMode(display=False) as fc:
            forward(model, batches[0][:1].to(dtype))
        flops_per_view = fc.get_total_flops()
        compiled = torch.compile(model) if compile else model
        t0 = time.perf_counter()
        for b in {tuple(b.shape[1:]): b for b in batches}.values():  # compile every input size before timing
            forward(compiled, b.to(dtype))
        _sync(device)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in batches:
            forward(compiled, b.to(dtype))
        _sync(device)
        sec = time.perf_counter() - t0
    n = sum(len(b) for b in batches)
    return {"seconds": sec, "views_per_s": n / sec, "flops_per_view": flops_per_view, "compile_s": compile_s}


if __name__ == "__main__":
    main()
