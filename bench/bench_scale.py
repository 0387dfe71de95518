"""radio's bookkeeping at many units: fitted growth over three sizes, projected to ImageNet-1k's 20 000 units.

    python bench/bench_scale.py [--sizes 1000,4000,16000] [--job-sizes 24,48,96] [--real-dims] \
        [--s3 100,400] [--json OUT]

Parts (each prints its figures as it gets them):

- ``synthetic``: complete caches written through the project's own writer (views + three tiny teachers,
  ``images_per_shard=1``, so units are many and payloads tiny: only bookkeeping is timed) at ``--sizes`` units,
  from a folder source of as many images. At each size: a no-op rerun of ``run_cache_job`` (asserting Ray was
  not started), the start of ``radio train`` with ``standardize=phis`` to its first step (``max_steps=1``), the
  default ``radio cache verify`` (structure of every file, checksums of a sample), and the planning of a resume
  after deleting 1 % of the teacher shards. Growth exponents are fitted (log-log) and projected to 20 000 units.
- ``source``: driver memory per million source records, and a prepare task's pickling overhead at 1.28 M
  records (a unit's part of the source against the whole source, as tasks were sent before).
- ``job`` (``--job-sizes``): real ``radio cache`` runs with tiny teachers, ``images_per_shard=1``: fresh build,
  no-op rerun, planning of a resume after 1 % of files deleted.
- ``real-dims`` (``--real-dims``): one unit of 256 views of CLIP-B/16 + DINOv2-B/14-reg + SAM-H at their real
  dims (224 px, stored at 14x14): footer, commit record, merged statistics and manifest bytes per shard, and the
  metadata read before step 0, per epoch and by verify as a fraction of target bytes at 20 000 units.
- ``s3`` (``--s3 N,M``): synthetic caches on a loopback SeaweedFS S3 (``tests/s3server.py``), requests per phase
  (no-op rerun, train open to first batch, verify) at two sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

TEACHERS = ["tiny-clip", "tiny-dinov2", "tiny-sam"]
TARGET_UNITS = 20_000
RESULTS: dict = {}


def emit(key: str, value, unit: str = "", note: str = ""):
    RESULTS[key] = value
    shown = f"{value:.4g}" if isinstance(value, float) else value
    print(f"  {key:<58} {shown} {unit}  {note}".rstrip(), flush=True)


def fit(sizes: list[int], values: list[float], target: int = TARGET_UNITS) -> tuple[float, float]:
    """(exponent, projection at ``target``) of a power law through the last two points' slope fitted over all."""
    b, a = np.polyfit(np.log(sizes), np.log(np.maximum(values, 1e-9)), 1)
    return float(b), float(math.exp(a) * target**b)


def make_folder(root: Path, n: int) -> Path:
    """``n`` tiny PNG images in 10 class folders (ImageNet-like names)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    buf = root / "proto.png"
    Image.fromarray(np.full((8, 8, 3), 127, np.uint8)).save(buf)
    data = buf.read_bytes()
    buf.unlink()
    for i in range(n):
        d = root / f"n{i % 10:08d}"
        d.mkdir(exist_ok=True)
        (d / f"n{i % 10:08d}_{i:07d}.png").write_bytes(data)
    return root


def job_config(out: str, src: Path, extra: list[str] = ()):
    from pipelines.cache import CacheJobConfig
    from pipelines.config import load_config

    return load_config(
        CacheJobConfig,
        None,
        [
            f"output={out}",
            "source.kind=folder",
            f"source.path={src}",
            "images_per_shard=1",
            "views.num_views=1",
            "student_resolution=32",
            "progress=false",
            "mlflow.enabled=false",
            f"teachers=[{','.join(TEACHERS)}]",
            *extra,
        ],
    )


def write_synthetic(out: str, src: Path, n_units: int) -> float:
    """A complete cache of ``n_units`` one-image units through the writer (random targets at the tiny teachers'
    real layouts, commit records carrying the job's request keys): exactly what the job would call complete."""
    import torch

    from pipelines.cache import (
        RunResult,
        _identity,
        extra_grids_for,
        finalize_cache,
        plan_cache_job,
        target_grid_for,
        teacher_request,
    )
    from pipelines.sources import open_source
    from radio.cache import CacheLocation, TargetLayout, write_teacher_shard, write_views_shard
    from radio.targets import resample_targets
    from teachers import create_teacher

    t0 = time.perf_counter()
    cfg = job_config(out, src)
    source = open_source(cfg.source)
    identity = _identity(cfg, source)
    loc = CacheLocation(out)
    rng = np.random.default_rng(0)
    specs, layouts, requests = {}, {}, {}
    for t in TEACHERS:
        spec = create_teacher(t).spec
        specs[t], requests[t] = spec.to_dict(), teacher_request(cfg, t)
        layouts[t] = TargetLayout.stored(
            spec.feature_grid, target_grid_for(cfg, t), extra_grids_for(cfg, t), cfg.target_dtype
        )
    res = cfg.student_resolution
    for u in range(n_units):
        rec = source.record(u)
        rows = {
            "image_id": [rec.image_id],
            "view_index": [0],
            "label_index": [rec.label_index],
            "crop_box": [(0, 0, 8, 8)],
            "flip": [False],
            "source_hw": [(8, 8)],
            "student_image": [bytes(res * res * 3)],
        }
        write_views_shard(loc, u, rows, [], 1, identity, 64)
        for t in TEACHERS:
            sp, lay = specs[t], layouts[t]
            summary = (
                torch.from_numpy(rng.standard_normal((1, sp["summary_dim"]), dtype=np.float32))
                if sp["summary_dim"]
                else None
            )
            feats = torch.from_numpy(rng.standard_normal((1, *lay.grid, sp["feature_dim"]), dtype=np.float32))
            cols = lay.encode(summary, [resample_targets(feats, g) for g in lay.grids])
            write_teacher_shard(loc, t, sp, lay, u, [rec.image_id], [0], cols, identity, 64, requests[t])
    plan = plan_cache_job(cfg, n_units, identity, requests, say=lambda m: None)
    finalize_cache(cfg, plan, source, RunResult(specs=specs))
    return time.perf_counter() - t0


def _ray_started() -> bool:
    import ray

    return ray.is_initialized()


def bench_synthetic(sizes: list[int], work: Path):
    from pipelines.cache import _identity, plan_cache_job, run_cache_job, teacher_request
    from pipelines.cli import main
    from pipelines.sources import open_source

    print(
        f"synthetic caches (3 tiny teachers + views, images_per_shard=1) at {sizes} units; projected to {TARGET_UNITS}"
    )
    noop, train, verify, resume, plan_t = [], [], [], [], []
    for n in sizes:
        src = make_folder(work / f"src-{n}", n)
        out = str(work / f"cache-{n}")
        emit(f"synthetic/{n}/write_s", write_synthetic(out, src, n), "s")
        cfg = job_config(out, src)
        t0 = time.perf_counter()
        s = run_cache_job(cfg)
        noop.append(time.perf_counter() - t0)
        assert sum(s.computed.values()) == 0, s.computed
        assert not _ray_started(), "a no-op rerun started Ray"
        emit(f"synthetic/{n}/noop_rerun_s", noop[-1], "s", "(Ray not started)")
        source = open_source(cfg.source)
        identity, requests = _identity(cfg, source), {t: teacher_request(cfg, t) for t in TEACHERS}
        t0 = time.perf_counter()
        plan_cache_job(cfg, n, identity, requests, say=lambda m: None)
        plan_t.append(time.perf_counter() - t0)
        emit(f"synthetic/{n}/plan_noop_s", plan_t[-1], "s")
        t0 = time.perf_counter()
        rc = main(
            [
                "train",
                f"cache={out}",
                f"output={work / f'run-{n}'}",
                f"teachers=[{','.join(TEACHERS)}]",
                "standardize=phis",
                "max_steps=1",
                "epochs=1",
                "mlflow.enabled=false",
                "loader.batch_size=8",
                "loader.num_workers=0",
                "student.size=nano",
                "log_every=1",
            ]
        )
        train.append(time.perf_counter() - t0)
        assert rc == 0
        emit(f"synthetic/{n}/train_start_to_step1_s", train[-1], "s", "(standardize=phis, one step)")
        import io

        buf = io.StringIO()
        t0 = time.perf_counter()
        from pipelines.cache_tools import verify_cache

        verify_cache(out, sample=0, out=buf)  # structure of every file and checksums of none: what grows with units
        verify.append(time.perf_counter() - t0)
        emit(
            f"synthetic/{n}/verify_structure_s",
            verify[-1],
            "s",
            buf.getvalue().strip().splitlines()[-2] if buf.getvalue() else "",
        )
        # resume after deleting 1 % of the teacher shards: planning only
        rng = random.Random(0)
        victims = rng.sample([(t, u) for t in TEACHERS for u in range(n)], max(1, len(TEACHERS) * n // 100))
        for t, u in victims:
            os.remove(os.path.join(out, "teachers", t, f"unit-{u:05d}.parquet"))
        t0 = time.perf_counter()
        plan = plan_cache_job(cfg, n, identity, requests, say=lambda m: None)
        resume.append(time.perf_counter() - t0)
        assert sum(len(v) for v in plan.todo.values()) == len(victims)
        emit(
            f"synthetic/{n}/resume_plan_after_1pct_deleted_s", resume[-1], "s", f"({len(victims)} shards to recompute)"
        )
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / f"run-{n}", ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
    for name, vals, goal in (
        ("noop_rerun_s", noop, 10),
        ("plan_noop_s", plan_t, 10),
        ("resume_plan_after_1pct_deleted_s", resume, 10),
        ("train_start_to_step1_s", train, 30),
        ("verify_structure_s", verify, None),
    ):
        b, proj = fit(sizes, vals)
        emit(
            f"synthetic/fit/{name}",
            proj,
            "s",
            f"projected at {TARGET_UNITS} units; growth exponent {b:.2f}" + (f"; goal <= {goal} s" if goal else ""),
        )
        RESULTS[f"synthetic/fit/{name}/exponent"] = b


def bench_source(records: int = 1_280_000):
    """Driver memory per million records and a prepare task's pickling overhead, on a synthetic 1.28 M-record
    folder-like source (ImageNet-style relative paths) built the way ``open_source`` builds it."""
    from pipelines.sources import PackedStrings, Source, SourceConfig, SourceRecord

    print(f"source of {records} records (ImageNet-style paths)")
    paths = [f"n{i % 1000:08d}/n{i % 1000:08d}_{i:08d}.JPEG" for i in range(records)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    packed = PackedStrings.of(paths)
    labels = np.fromiter((i % 1000 for i in range(records)), np.int32, records)
    src = Source(
        SourceConfig(kind="folder", path="/data"),
        packed,
        labels,
        [f"n{i:08d}" for i in range(1000)],
        "fp",
        files=packed,
        root="/data",
    )
    mem = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    emit(
        "source/driver_bytes_per_million_records",
        mem / records * 1e6 / 1e6,
        "MB",
        "(ids and paths packed, labels int32; goal <= 100 MB)",
    )
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    old = [
        SourceRecord(p, i, i % 1000) for i, p in enumerate(paths[:200_000])
    ]  # the former representation, for the ratio
    old_mem = (tracemalloc.get_traced_memory()[0] - base) / 200_000 * 1e6
    tracemalloc.stop()
    t0 = time.perf_counter()
    pickle.loads(pickle.dumps(old))
    emit(
        "source/former_whole_source_pickle_ms",
        (time.perf_counter() - t0) * 1e3 * records / len(old),
        "ms",
        f"(a list of {records} SourceRecord, pickled and unpickled: what every task paid before)",
    )
    del old
    emit(
        "source/former_records_bytes_per_million",
        old_mem / 1e6,
        "MB",
        "(a list of SourceRecord objects, besides the path list)",
    )
    t0 = time.perf_counter()
    n = 200
    for k in range(n):
        lo = (k * 6397) % (records - 64)
        pickle.loads(pickle.dumps(src.part(lo, lo + 64)))
    part_ms = (time.perf_counter() - t0) / n * 1e3
    emit(
        "source/prepare_task_overhead_ms_per_unit",
        part_ms,
        "ms",
        "(part(lo, lo+64) pickled and unpickled; goal <= 5 ms)",
    )
    t0 = time.perf_counter()
    whole = pickle.loads(pickle.dumps(src))
    emit(
        "source/whole_packed_source_pickle_ms",
        (time.perf_counter() - t0) * 1e3,
        "ms",
        "(the whole packed source, for comparison)",
    )
    assert len(whole) == records


def bench_job(sizes: list[int], work: Path):
    """Real ``radio cache`` runs (tiny teachers, one image per unit) at three sizes."""
    from pipelines.cache import _identity, init_ray, plan_cache_job, run_cache_job, teacher_request
    from pipelines.sources import open_source

    print(f"real radio cache runs (3 tiny teachers, images_per_shard=1) at {sizes} units")
    src = make_folder(work / "jobsrc", max(sizes))
    fresh, noop, resume = [], [], []
    for n in sizes:
        out = str(work / f"job-{n}")
        cfg = job_config(out, src, [f"source.limit={n}"])
        init_ray(cfg)  # Ray start-up is a fixed cost, not what grows
        t0 = time.perf_counter()
        run_cache_job(cfg)
        fresh.append(time.perf_counter() - t0)
        emit(f"job/{n}/fresh_build_s", fresh[-1], "s", f"({n / fresh[-1]:.1f} units/s)")
        t0 = time.perf_counter()
        s = run_cache_job(cfg)
        noop.append(time.perf_counter() - t0)
        assert sum(s.computed.values()) == 0
        emit(f"job/{n}/noop_rerun_s", noop[-1], "s")
        source = open_source(cfg.source)
        victims = random.Random(1).sample([(t, u) for t in TEACHERS for u in range(n)], max(1, 3 * n // 100))
        for t, u in victims:
            os.remove(os.path.join(out, "teachers", t, f"unit-{u:05d}.parquet"))
        t0 = time.perf_counter()
        plan_cache_job(
            cfg, n, _identity(cfg, source), {t: teacher_request(cfg, t) for t in TEACHERS}, say=lambda m: None
        )
        resume.append(time.perf_counter() - t0)
        emit(f"job/{n}/resume_plan_s", resume[-1], "s")
        t0 = time.perf_counter()
        s = run_cache_job(cfg)
        emit(f"job/{n}/resume_run_s", time.perf_counter() - t0, "s", f"(recomputed {sum(s.computed.values())} shards)")
    for name, vals in (("fresh_build_s", fresh), ("noop_rerun_s", noop), ("resume_plan_s", resume)):
        b, proj = fit(sizes, vals)
        emit(f"job/fit/{name}", proj, "s", f"projected at {TARGET_UNITS} units; growth exponent {b:.2f}")


def bench_real_dims(work: Path, views_per_unit: int = 256):
    """Metadata against target bytes at real shapes: one unit of ``views_per_unit`` views (64 images x 4 views)."""
    import torch

    from pipelines.synthetic import registry_shapes
    from radio.cache import CacheIdentity, CacheLocation, TargetLayout, commit_path, write_teacher_shard
    from radio.cache.state import write_merged_moments

    names = ["clip-vit-b16", "dinov2-vitb14-reg", "sam-vit-h"]
    print(f"real dims: {names}, one unit of {views_per_unit} views at 224 px, targets at 14x14 float16")
    shapes = registry_shapes(names, 224)
    loc = CacheLocation(str(work / "real"))
    ident = CacheIdentity("fp", {"num_views": 4}, 224, "raw", 64)
    rng = np.random.default_rng(0)
    ids = [f"n{i // 4:08d}.JPEG" for i in range(views_per_unit)]
    vidx = [i % 4 for i in range(views_per_unit)]
    target_bytes = footer = commit_bytes = stats_bytes = keys_bytes = 0
    for t, (sdim, fdim, grid) in shapes.items():
        spec = {
            "name": t,
            "family": "synthetic",
            "summary_dim": sdim,
            "feature_dim": fdim,
            "feature_grid": list(grid),
            "fingerprint": f"fp-{t}",
            "source": "synthetic",
        }
        layout = TargetLayout.stored(tuple(grid), None, [], "float16")
        summary = torch.from_numpy(rng.standard_normal((views_per_unit, sdim), dtype=np.float32)) if sdim else None
        feats = torch.from_numpy(rng.standard_normal((views_per_unit, *grid, fdim), dtype=np.float32))
        c = write_teacher_shard(loc, t, spec, layout, 0, ids, vidx, layout.encode(summary, [feats]), ident, 64)
        pf = loc.parquet_file(c.shard.path)
        f = pf.metadata.serialized_size + 8
        k = sum(
            pf.metadata.row_group(g).column(i).total_compressed_size for g in range(pf.num_row_groups) for i in range(2)
        )
        cb = loc.size(commit_path(c.shard.path))
        m = c.moments
        ref = write_merged_moments(loc, t, spec["fingerprint"], m["features"], m.get("summary"))
        target_bytes += c.shard.bytes
        footer += f
        keys_bytes += k
        commit_bytes += cb
        stats_bytes += ref.bytes
        emit(f"real/{t}/shard_MB", c.shard.bytes / 1e6, "MB")
        emit(f"real/{t}/footer_KB", f / 1e3, "KB", "(read once when the shard is streamed)")
        emit(
            f"real/{t}/commit_record_MB", cb / 1e6, "MB", "(moments in binary; read only by a finalize that merges it)"
        )
        emit(f"real/{t}/merged_stats_MB", ref.bytes / 1e6, "MB", "(one per teacher, read once at train start)")
    # bytes per shard entry in manifest.json (measured on the synthetic caches: see synthetic/manifest_bytes_per_file)
    manifest_per_file = 260
    files = 4 * TARGET_UNITS
    views_bytes = views_per_unit * 224 * 224 * 3  # raw student views
    total = TARGET_UNITS * (target_bytes + views_bytes)
    before = files * manifest_per_file + stats_bytes
    per_epoch = TARGET_UNITS * (footer + 2_000)  # every teacher footer + the views footer (~2 KB)
    verify_reads = TARGET_UNITS * (footer + keys_bytes + 4 * 1_000) + 8 * (target_bytes + views_bytes)
    emit(
        "real/metadata_before_step0_fraction",
        before / total,
        "",
        f"({before / 1e6:.1f} MB of {total / 1e12:.2f} TB at {TARGET_UNITS} units; goal <= 0.001)",
    )
    emit(
        "real/metadata_per_epoch_fraction",
        per_epoch / total,
        "",
        f"({per_epoch / 1e6:.1f} MB of footers per epoch; goal <= 0.001)",
    )
    emit(
        "real/verify_default_fraction",
        verify_reads / total,
        "",
        f"({verify_reads / 1e9:.2f} GB: every footer, key column and commit header, 8 units checksummed; goal <= 0.01)",
    )
    emit("real/metadata_bytes_per_shard_read_by_training", footer / 3, "B", "(footer of a teacher shard, on average)")
    shutil.rmtree(work / "real", ignore_errors=True)


def bench_s3(sizes: list[int], work: Path):
    """Requests per phase on a loopback SeaweedFS S3, at two sizes."""
    sys.path.insert(0, str(ROOT / "tests"))
    from s3server import S3Server

    from pipelines.cache import run_cache_job
    from radio.cache import CacheReader

    print(f"S3 (loopback SeaweedFS): requests per phase at {sizes} units")
    with S3Server(bucket="bench", export_env=True) as s3:
        for n in sizes:
            src = make_folder(work / f"s3src-{n}", n)
            uri = s3.uri(f"c{n}")
            write_synthetic(uri, src, n)
            cfg = job_config(uri, src)
            with s3.counting() as c:
                run_cache_job(cfg)
            emit(
                f"s3/{n}/noop_rerun_requests",
                dict(c.counts)
                if hasattr(c, "counts")
                else {k: c[k] for k in ("LIST", "HEAD", "GET", "GET_RANGE", "PUT", "POST", "DELETE", "COPY")},
            )
            with s3.counting() as c:
                r = CacheReader(uri, TEACHERS)
                for t in TEACHERS:
                    r.phis_stats_of(t)
                next(r.iter_batches(units=r.units[:1]))
            emit(
                f"s3/{n}/train_open_to_first_batch_requests",
                {k: c[k] for k in ("LIST", "HEAD", "GET", "GET_RANGE", "PUT", "POST", "DELETE", "COPY")},
            )
            import io

            from pipelines.cache_tools import verify_cache

            with s3.counting() as c:
                verify_cache(uri, sample=0, out=io.StringIO())
            emit(
                f"s3/{n}/verify_structure_requests",
                {k: c[k] for k in ("LIST", "HEAD", "GET", "GET_RANGE", "PUT", "POST", "DELETE", "COPY")},
            )
            shutil.rmtree(src, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,4000,16000", help="synthetic cache sizes in units ('' to skip)")
    p.add_argument("--job-sizes", default="24,48,96", help="real radio cache runs ('' to skip)")
    p.add_argument("--source-records", type=int, default=1_280_000)
    p.add_argument("--real-dims", action="store_true")
    p.add_argument("--s3", default="", help="two sizes for the S3 request counts, e.g. 50,200")
    p.add_argument("--json", default=None)
    p.add_argument("--work", default=None)
    a = p.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="radio-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RADIO_HOME", str(work / "home"))
    sizes = [int(x) for x in a.sizes.split(",") if x]
    try:
        if a.source_records:
            bench_source(a.source_records)
        if sizes:
            bench_synthetic(sizes, work)
        if a.real_dims:
            bench_real_dims(work)
        if a.s3:
            bench_s3([int(x) for x in a.s3.split(",")], work)
        if a.job_sizes:
            bench_job([int(x) for x in a.job_sizes.split(",")], work)
    finally:
        if a.json:
            Path(a.json).write_text(json.dumps(RESULTS, indent=1, default=str))
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
