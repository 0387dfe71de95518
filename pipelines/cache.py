"""``radio cache``: frozen teachers on Ray actors stream their targets into fingerprinted Parquet shards.

Dataflow, per *unit* (a fixed chunk of source images)::

    prepare_unit (CPU task)            decode, draw K views, crop; write views/unit-N.parquet
        -> TeacherActor.run (GPU/CPU)  one actor pool per teacher, sized independently
        -> write_teacher_shard (CPU)   exact per-shard statistics; commit teachers/<t>/unit-N.parquet

At most ``max_inflight_units`` units are in flight, so memory stays flat however large the source is.
Each (unit, table) file is committed atomically, and the set of committed files *is* the job's state: a
rerun after any kill computes exactly the missing files, and a rerun of a complete cache does nothing.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from radio.cache import (
    FORMAT_VERSION, CacheLocation, CacheMismatch, ShardInfo, decode_metadata, describe_differences, encode_metadata,
    load_manifest, save_manifest, teacher_path, tensor_to_arrow, views_path,
)
from radio.cache.arrow import leaf_path
from radio.images import BadImage, decode_image, encode_image
from radio.normalize import RunningStats
from radio.views import ViewPolicy, crop_view, render_view, sample_views

from .config import ConfigError, dump_config, flatten_config
from .sources import Source, SourceConfig, SourceError, SourceRecord, open_source
from .tracking import MlflowConfig, start_run

__all__ = ["TeacherJobConfig", "CacheJobConfig", "run_cache_job", "CacheSummary"]


@dataclass
class TeacherJobConfig:
    """How one teacher is loaded and hosted. ``source``/``revision``/``dtype`` default to the registry's."""

    source: str | None = None
    revision: str | None = None
    dtype: Literal["fp32", "bf16", "fp16"] | None = None
    actors: int = 1
    gpus_per_actor: float = 1.0  # used only when the Ray cluster has GPUs; fractions share a GPU
    cpus_per_actor: float = 1.0
    batch_size: int = 32


def _default_teachers() -> dict[str, TeacherJobConfig]:
    return {"tiny-clip": TeacherJobConfig(), "tiny-dinov2": TeacherJobConfig(), "tiny-sam": TeacherJobConfig()}


@dataclass
class CacheJobConfig:
    """``radio cache``: which images, which views, which teachers, where to write."""

    output: str = "caches/quickstart-train"
    source: SourceConfig = field(default_factory=SourceConfig)
    views: ViewPolicy = field(default_factory=ViewPolicy)
    teachers: dict[str, TeacherJobConfig] = field(default_factory=_default_teachers)
    student_resolution: int = 64  # side of the square student view stored with every row
    student_image_format: Literal["png", "jpeg"] = "png"  # png: lossless, the student sees exact pixels
    images_per_shard: int = 64  # a unit: the granularity of shards, resume and parallelism
    row_group_rows: int = 64
    target_dtype: Literal["float16", "float32"] = "float16"
    max_inflight_units: int = 4
    rebuild: list[str] = field(default_factory=list)  # teachers whose existing targets are recomputed
    max_pixels: int = 64_000_000  # larger images are skipped as possible decompression bombs
    progress: bool = True
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="radio-cache"))


# ---------------------------------------------------------------------------------------------
# Work done in Ray workers. Plain functions, so they are also callable (and testable) without Ray.

def prepare_unit(source: Source, records: list[SourceRecord], policy: ViewPolicy, student_res: int, image_format: str, max_pixels: int, loc: CacheLocation | None, unit: int, row_group_rows: int, identity: dict) -> tuple[dict, dict]:
    """Decode, draw views, crop. Writes the unit's views table when ``loc`` is given.

    Returns (prepared, info): ``prepared["crops"]`` is a list of uint8 (h, w, 3) crops, one per row, in key
    order; ``info`` holds the row count, skipped inputs and the committed views shard (if written).
    """
    ids, vidx, labels, boxes, flips, hw, student, crops, skipped = [], [], [], [], [], [], [], [], []
    for rec in records:
        try:
            img = decode_image(source.read_bytes(rec), name=rec.image_id, max_pixels=max_pixels)
        except BadImage as e:
            skipped.append({"image_id": rec.image_id, "reason": e.reason})
            continue
        except OSError as e:
            skipped.append({"image_id": rec.image_id, "reason": f"unreadable: {e}"})
            continue
        H, W = img.shape[:2]
        for v in sample_views(policy, rec.image_id, W, H):
            ids.append(rec.image_id)
            vidx.append(v.view_index)
            labels.append(rec.label_index)
            boxes.append(v.box)
            flips.append(v.flip)
            hw.append((H, W))
            crops.append(crop_view(img, v))
            student.append(encode_image(render_view(img, v, (student_res, student_res)), image_format))
    info = {"unit": unit, "rows": len(ids), "images": len(records) - len(skipped), "skipped": skipped, "shard": None}
    if loc is not None:
        table = pa.table({
            "image_id": pa.array(ids, pa.string()),
            "view_index": pa.array(vidx, pa.int16()),
            "label_index": pa.array(labels, pa.int32()),
            "crop_box": tensor_to_arrow(np.asarray(boxes, np.int32).reshape(-1, 4)),
            "flip": pa.array(flips, pa.bool_()),
            "source_hw": tensor_to_arrow(np.asarray(hw, np.int32).reshape(-1, 2)),
            "student_image": pa.array(student, pa.binary()),
        })
        meta = {"kind": "views", "unit": unit, "skipped": skipped, "images": info["images"], "identity": identity, "format_version": FORMAT_VERSION}
        table = table.replace_schema_metadata(encode_metadata(meta))
        info["shard"] = loc.write_table(views_path(unit), unit, table, row_group_rows=row_group_rows, byte_stream_split=[]).to_dict()
    return {"unit": unit, "image_id": ids, "view_index": vidx, "crops": crops}, info


class TeacherWorker:
    """Hosts one frozen teacher. Receives crops, returns targets as numpy (cast to the cache dtype)."""

    def __init__(self, name: str, job: dict, device: str, threads: int, target_dtype: str):
        import torch

        from teachers import create_teacher

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.teacher = create_teacher(name, source=job.get("source"), revision=job.get("revision"), dtype=job.get("dtype"), device=device)
        self.batch_size = int(job.get("batch_size", 32))
        self.np_dtype = np.dtype(target_dtype)
        self.busy_s = 0.0
        self.calls = 0

    def spec(self) -> dict:
        return self.teacher.spec.to_dict()

    def run(self, prepared: dict) -> dict:
        import torch

        t0 = time.perf_counter()
        crops = prepared["crops"]
        summaries, feats, valid = [], [], []
        for i in range(0, len(crops), self.batch_size):
            imgs = [torch.from_numpy(np.array(c)).permute(2, 0, 1) for c in crops[i : i + self.batch_size]]  # Ray hands read-only arrays
            out = self.teacher(imgs)
            if out.summary_BD is not None:
                summaries.append(out.summary_BD.float().cpu().numpy().astype(self.np_dtype))
            feats.append(out.features_BHWC.float().cpu().numpy().astype(self.np_dtype))
            valid.append(out.valid_hw_B2.cpu().numpy().astype(np.int16))
        self.calls += 1
        self.busy_s += time.perf_counter() - t0
        spec = self.teacher.spec
        empty_feat = np.zeros((0, *spec.feature_grid, spec.feature_dim), self.np_dtype)
        return {
            "unit": prepared["unit"], "image_id": prepared["image_id"], "view_index": prepared["view_index"],
            "summary": (np.concatenate(summaries) if summaries else np.zeros((0, spec.summary_dim), self.np_dtype)) if spec.summary_dim else None,
            "features": np.concatenate(feats) if feats else empty_feat,
            "valid_hw": np.concatenate(valid) if valid else np.zeros((0, 2), np.int16),
            "seconds": time.perf_counter() - t0,
        }

    def stats(self) -> dict:
        return {"busy_s": self.busy_s, "calls": self.calls}


def shard_stats(result: dict) -> dict:
    """Exact per-channel statistics of one shard's targets (features over valid positions only)."""
    out = {}
    if result["summary"] is not None:
        s = RunningStats()
        if len(result["summary"]):
            s.update(result["summary"].astype(np.float64))
        out["summary"] = s.to_dict()
    f = RunningStats()
    feats = result["features"]
    for b in range(len(feats)):
        h, w = (int(x) for x in result["valid_hw"][b])
        f.update(feats[b, :h, :w].reshape(-1, feats.shape[-1]).astype(np.float64))
    out["features"] = f.to_dict()
    return out


def write_teacher_shard(loc: CacheLocation, teacher: str, spec: dict, result: dict, row_group_rows: int, identity: dict) -> dict:
    """Commit one teacher's targets for one unit. Returns the shard info and the shard's statistics."""
    cols = {
        "image_id": pa.array(result["image_id"], pa.string()),
        "view_index": pa.array(result["view_index"], pa.int16()),
    }
    split = []
    if result["summary"] is not None:
        cols["summary"] = tensor_to_arrow(result["summary"])
        split.append(leaf_path("summary", 1))
    cols["features"] = tensor_to_arrow(result["features"])
    split.append(leaf_path("features", 3))
    cols["valid_hw"] = tensor_to_arrow(result["valid_hw"])
    stats = shard_stats(result)
    meta = {"kind": "teacher", "teacher": teacher, "unit": result["unit"], "spec": spec, "fingerprint": spec["fingerprint"], "stats": stats, "identity": identity, "format_version": FORMAT_VERSION}
    table = pa.table(cols).replace_schema_metadata(encode_metadata(meta))
    info = loc.write_table(teacher_path(teacher, result["unit"]), result["unit"], table, row_group_rows=row_group_rows, byte_stream_split=split)
    return {"teacher": teacher, "shard": info.to_dict(), "stats": stats, "seconds": result["seconds"], "rows": table.num_rows}


# ---------------------------------------------------------------------------------------------
# The driver.

@dataclass
class CacheSummary:
    output: str
    images: int
    views: int
    skipped: int
    seconds: float
    bytes_written: int
    computed: dict[str, int]  # teacher -> units computed in this run ("views" for the views table)
    images_per_s: float
    teacher_views_per_s: dict[str, float]
    mlflow_run_id: str | None
    cache_id: str
    steady_views_per_s: float | None = None  # from the first finished unit to the last

    def format(self) -> str:
        lines = [
            f"cache {self.output} (id {self.cache_id})",
            f"  images {self.images}  views {self.views}  skipped {self.skipped}  in {self.seconds:.1f}s  ({self.images_per_s:.1f} images/s)",
            f"  bytes written {self.bytes_written / 1e6:.2f} MB" + (f"  steady state {self.steady_views_per_s:.1f} views/s (after start-up)" if self.steady_views_per_s else ""),
        ]
        for t, n in self.computed.items():
            rate = self.teacher_views_per_s.get(t)
            lines.append(f"  {t:<16} units computed {n:<5}" + (f" {rate:.1f} views/s per actor" if rate else ""))
        if self.mlflow_run_id:
            lines.append(f"  mlflow run {self.mlflow_run_id}")
        return "\n".join(lines)


class _Progress:
    def __init__(self, enabled: bool, total_images: int, stream=sys.stderr):
        self.enabled, self.total, self.stream = enabled, max(1, total_images), stream
        self.t0 = time.perf_counter()
        self.images = 0
        self.last = 0.0
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def update(self, images: int, detail: str, force: bool = False):
        self.images += images
        now = time.perf_counter()
        if not self.enabled or (not force and now - self.last < (0.5 if self.tty else 5.0)):
            return
        self.last = now
        el = now - self.t0
        rate = self.images / el if el > 0 else 0.0
        eta = (self.total - self.images) / rate if rate > 0 else float("nan")
        line = f"[radio cache] {self.images}/{self.total} images  {rate:.1f} img/s  ETA {eta:.0f}s  {detail}"
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")


def _identity(cfg: CacheJobConfig, source: Source) -> dict:
    """What every table of a cache must agree on; changing any of it needs a new cache root."""
    return {
        "source_fingerprint": source.fingerprint,
        "views": cfg.views.to_dict(),
        "student_resolution": cfg.student_resolution,
        "student_image_format": cfg.student_image_format,
        "images_per_shard": cfg.images_per_shard,
        "target_dtype": cfg.target_dtype,
    }


def _cache_id(identity: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _existing_units(loc: CacheLocation, rel_dir: str) -> set[int]:
    return {int(p.rsplit("unit-", 1)[1].split(".")[0]) for p in loc.list_files(rel_dir) if "unit-" in p}


def init_ray():
    """Join ``RAY_ADDRESS`` when set, else start (or reuse) a local Ray."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            # Logical CPUs above the physical count let every teacher hold an actor on a small laptop;
            # the OS shares the cores. On a real cluster, RAY_ADDRESS is set and this branch is not taken.
            ray.init(num_cpus=max(8, os.cpu_count() or 1), **kwargs)
    return ray


def run_cache_job(cfg: CacheJobConfig, resolved_yaml: str | None = None) -> CacheSummary:
    """Build or complete the cache at ``cfg.output``. Idempotent: a complete cache is a fast no-op."""
    t_start = time.perf_counter()
    from teachers import get_spec_template

    for t in cfg.teachers:
        get_spec_template(t)  # an unknown name fails here, listing the registry
    if not cfg.teachers:
        raise ConfigError("no teachers configured: set teachers=[tiny-clip,...] or a teachers: mapping in the config file")
    source = open_source(cfg.source)
    if not source.records:
        raise SourceError(f"source {cfg.source.kind}:{cfg.source.path} has no images")
    loc = CacheLocation(cfg.output)
    identity = _identity(cfg, source)
    cache_id = _cache_id(identity)
    units = [source.records[i : i + cfg.images_per_shard] for i in range(0, len(source.records), cfg.images_per_shard)]
    manifest = load_manifest(loc)
    removed = loc.remove_tmp()
    if manifest is not None:
        diffs = describe_differences(manifest["identity"], identity)
        if diffs:
            raise CacheMismatch(f"cache {cfg.output} was built with another source or view policy; refusing to mix. Differences:\n  " + "\n  ".join(diffs) + "\nUse a new output path, or delete the old cache.")
    have_views = _existing_units(loc, "views")
    if manifest is None and have_views:
        meta = decode_metadata(loc.parquet_file(views_path(min(have_views))).schema_arrow.metadata)
        diffs = describe_differences(meta.get("identity"), identity)
        if diffs:
            raise CacheMismatch(f"cache {cfg.output} holds shards of another source or view policy:\n  " + "\n  ".join(diffs))

    ray = init_ray()
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    actor_cls = ray.remote(TeacherWorker)
    pools: dict[str, list] = {}
    for name, job in cfg.teachers.items():
        opts = {"num_cpus": job.cpus_per_actor, "num_gpus": job.gpus_per_actor if has_gpu else 0, "max_restarts": 3, "max_task_retries": 3}
        device = "cuda" if has_gpu and job.gpus_per_actor > 0 else "cpu"
        pools[name] = [actor_cls.options(**opts).remote(name, dump_config(job), device, max(1, int(job.cpus_per_actor)), cfg.target_dtype) for _ in range(max(1, job.actors))]
    specs = dict(zip(pools, ray.get([p[0].spec.remote() for p in pools.values()])))

    # Per-teacher state: refuse a changed teacher unless asked to rebuild it.
    for name, spec in specs.items():
        held = sorted(_existing_units(loc, f"teachers/{name}"))
        if not held:
            continue
        old = (manifest or {}).get("teachers", {}).get(name, {}).get("spec") or decode_metadata(loc.parquet_file(teacher_path(name, held[0])).schema_arrow.metadata).get("spec")
        if old and old["fingerprint"] != spec["fingerprint"]:
            if name in cfg.rebuild:
                loc.delete_dir(f"teachers/{name}")
                continue
            diffs = [d for d in describe_differences(old, spec) if not d.startswith("fingerprint")]
            raise CacheMismatch(f"cache {cfg.output} holds teacher {name!r} with fingerprint {old['fingerprint']}, the config gives {spec['fingerprint']}. Differences:\n  " + "\n  ".join(diffs or ["(weights)"]) + f"\nRecompute only this teacher with rebuild=[{name}], or use a new output path.")
        elif name in cfg.rebuild:
            loc.delete_dir(f"teachers/{name}")

    todo_views = [u for u in range(len(units)) if u not in have_views]
    todo = {name: [u for u in range(len(units)) if u not in _existing_units(loc, f"teachers/{name}")] for name in pools}
    work_units = sorted(set(todo_views).union(*todo.values()))
    computed = {"views": len(todo_views), **{t: len(v) for t, v in todo.items()}}
    total_images = sum(len(units[u]) for u in work_units)

    run = start_run(cfg.mlflow, run_name=f"cache-{os.path.basename(os.path.normpath(cfg.output))}", tags={"radio.kind": "cache", "radio.cache_id": cache_id, "radio.cache_uri": loc.uri, "radio.teachers": ",".join(sorted(pools))}) if work_units else None
    if run is not None:
        run.log_params(flatten_config(cfg))

    progress = _Progress(cfg.progress, total_images)
    if work_units:
        progress.update(0, f"{len(work_units)} units to do, {len(units) - len(work_units)} already cached" + (f", {removed} stale temp files removed" if removed else ""), force=True)
    prep = ray.remote(prepare_unit).options(num_returns=2, num_cpus=1, max_retries=3)
    write = ray.remote(write_teacher_shard).options(num_cpus=1, max_retries=3)
    source_ref = ray.put(source)
    rr = {name: 0 for name in pools}
    inflight: dict = {}  # ref -> (unit, kind)
    unit_left: dict[int, int] = {}
    done_units = {name: 0 for name in ["views", *pools]}
    bytes_written = 0
    busy: dict[str, float] = {t: 0.0 for t in pools}
    rows_by_teacher: dict[str, int] = {t: 0 for t in pools}
    queue = list(work_units)
    unit_rows: dict[int, int] = {}
    completions: list[tuple[float, int]] = []  # (time, views) per finished unit: steady-state throughput
    try:
        while queue or inflight:
            while queue and len(unit_left) < cfg.max_inflight_units:
                u = queue.pop(0)
                prepared, info = prep.remote(source_ref, units[u], cfg.views, cfg.student_resolution, cfg.student_image_format, cfg.max_pixels, loc if u in todo_views else None, u, cfg.row_group_rows, identity)
                inflight[info] = (u, "views")
                n = 1
                for name, pool in pools.items():
                    if u in todo[name]:
                        actor = pool[rr[name] % len(pool)]
                        rr[name] += 1
                        res = actor.run.remote(prepared)
                        inflight[write.remote(loc, name, specs[name], res, cfg.row_group_rows, identity)] = (u, name)
                        n += 1
                unit_left[u] = n
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                u, kind = inflight.pop(ref)
                out = ray.get(ref)
                if kind == "views":
                    unit_rows[u] = out["rows"]
                    if out["shard"]:
                        bytes_written += out["shard"]["bytes"]
                        done_units["views"] += 1
                    images = len(units[u])
                else:
                    bytes_written += out["shard"]["bytes"]
                    busy[kind] += out["seconds"]
                    rows_by_teacher[kind] += out["rows"]
                    done_units[kind] += 1
                    images = 0
                unit_left[u] -= 1
                if unit_left[u] == 0:
                    del unit_left[u]
                    completions.append((time.perf_counter(), unit_rows.get(u, 0)))
                progress.update(images, "  ".join(f"{k} {v}/{computed[k]}" for k, v in done_units.items() if computed[k]))
    except BaseException:
        progress.close()
        if run is not None:
            run.end(status="KILLED" if not isinstance(sys.exc_info()[1], Exception) else "FAILED")
        raise
    progress.close()
    for pool in pools.values():
        for a in pool:
            ray.kill(a)

    if not work_units and manifest is not None and manifest.get("complete") and set(pools) <= set(manifest.get("teachers", {})):
        elapsed = time.perf_counter() - t_start
        return CacheSummary(cfg.output, manifest["images"], manifest["views"]["rows"], len(manifest["skipped"]), elapsed, 0, computed, 0.0, {}, manifest.get("mlflow_run_id"), cache_id)

    new_manifest = finalize_manifest(loc, cfg, source, identity, specs, manifest, resolved_yaml, n_units=len(units))
    elapsed = time.perf_counter() - t_start
    views_per_s = {t: rows_by_teacher[t] / busy[t] for t in pools if busy[t] > 0}
    # From the first finished unit to the last: the pipeline's rate once start-up (actors importing
    # torch and loading teachers) is behind it.
    steady = sum(v for _, v in completions[1:]) / (completions[-1][0] - completions[0][0]) if len(completions) > 1 and completions[-1][0] > completions[0][0] else None
    summary = CacheSummary(cfg.output, new_manifest["images"], new_manifest["views"]["rows"], len(new_manifest["skipped"]), elapsed, bytes_written, computed, total_images / elapsed if elapsed > 0 else 0.0, views_per_s, run.run_id if run else None, cache_id, steady)
    if run is not None:
        new_manifest["mlflow_run_id"] = run.run_id
        save_manifest(loc, new_manifest)
        metrics = {"images": summary.images, "views": summary.views, "skipped": summary.skipped, "seconds": elapsed, "images_per_s": summary.images_per_s, "bytes_written": bytes_written, "steady_views_per_s": steady}
        for t, info in new_manifest["teachers"].items():
            metrics[f"bytes_per_view/{t}"] = info["bytes_per_view"]
        for t, r in views_per_s.items():
            metrics[f"views_per_s/{t}"] = r
            metrics[f"actor_seconds/{t}"] = busy[t]
            metrics[f"gpu_hours/{t}"] = busy[t] * (cfg.teachers[t].gpus_per_actor if has_gpu else 0.0) / 3600
        run.log_metrics(metrics)
        run.log_text(__import__("json").dumps(new_manifest, indent=1, sort_keys=True), "manifest.json")
        if resolved_yaml:
            run.log_text(resolved_yaml, "config.yaml")
        run.end()
    return summary


def finalize_manifest(loc: CacheLocation, cfg: CacheJobConfig, source: Source, identity: dict, specs: dict, old: dict | None, resolved_yaml: str | None, n_units: int) -> dict:
    """Rebuild the manifest from the committed files (the source of truth), merging exact statistics."""
    old_sha = {}
    for entry in [*(old or {}).get("views", {}).get("shards", []), *[s for t in (old or {}).get("teachers", {}).values() for s in t["shards"]]]:
        old_sha[entry["path"]] = entry

    def info(rel: str, unit: int, rows: int) -> dict:
        size = loc.size(rel)
        prev = old_sha.get(rel)
        sha = prev["sha256"] if prev and prev["bytes"] == size else loc.sha256(rel)
        return ShardInfo(rel, unit, rows, size, sha).to_dict()

    view_shards, skipped, images = [], [], 0
    for u in sorted(_existing_units(loc, "views")):
        pf = loc.parquet_file(views_path(u))
        meta = decode_metadata(pf.schema_arrow.metadata)
        view_shards.append(info(views_path(u), u, pf.metadata.num_rows))
        skipped.extend(meta.get("skipped", []))
        images += meta.get("images", 0)
    teachers = {}
    for name in loc.list_dirs("teachers"):
        shards, stats_s, stats_f, spec = [], RunningStats(), RunningStats(), None
        has_summary = False
        for u in sorted(_existing_units(loc, f"teachers/{name}")):
            pf = loc.parquet_file(teacher_path(name, u))
            meta = decode_metadata(pf.schema_arrow.metadata)
            spec = meta["spec"]
            shards.append(info(teacher_path(name, u), u, pf.metadata.num_rows))
            if "summary" in meta["stats"]:
                has_summary = True
                stats_s.merge(RunningStats.from_dict(meta["stats"]["summary"]))
            stats_f.merge(RunningStats.from_dict(meta["stats"]["features"]))
        if spec is None:
            continue
        rows = sum(s["rows"] for s in shards)
        stats = {"exact": True, "features": {"mean": stats_f.mean.tolist(), "std": stats_f.std.tolist(), "count": int(stats_f.count)}}
        if has_summary:
            stats["summary"] = {"mean": stats_s.mean.tolist(), "std": stats_s.std.tolist(), "count": int(stats_s.count)}
        teachers[name] = {
            "spec": spec, "fingerprint": spec["fingerprint"], "stats": stats, "shards": shards, "rows": rows,
            "bytes": sum(s["bytes"] for s in shards), "bytes_per_view": sum(s["bytes"] for s in shards) / max(1, rows),
            "complete": len(shards) == n_units,
        }
    view_rows = sum(s["rows"] for s in view_shards)
    manifest = {
        "format_version": FORMAT_VERSION,
        "cache_id": _cache_id(identity),
        "identity": identity,
        "source": {**source.describe(), "config": dump_config(cfg.source)},
        "units": n_units,
        "images": images,
        "views": {"policy": cfg.views.to_dict(), "rows": view_rows, "shards": view_shards, "bytes": sum(s["bytes"] for s in view_shards)},
        "teachers": teachers,
        "skipped": skipped,
        "complete": len(view_shards) == n_units and all(teachers.get(t, {}).get("complete") for t in specs),
        "config": dump_config(cfg),
        "mlflow_run_id": (old or {}).get("mlflow_run_id"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_manifest(loc, manifest)
    return manifest
