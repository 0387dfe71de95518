"""``radio cache``: frozen teachers on Ray actors stream their targets into fingerprinted Parquet shards.

Dataflow, per *unit* (a fixed chunk of source images)::

    prepare_unit (CPU task)            decode, draw K views, crop; write views/unit-N.parquet
        -> TeacherWorker.run (GPU/CPU) one actor pool per teacher, sized independently; targets resampled
                                       to the stored grid and encoded on the teacher's device
        -> write_teacher_shard (CPU)   exact per-shard statistics; commit teachers/<t>/unit-N.parquet

The cache format itself (tables, codecs, manifest, statistics) lives in ``radio/cache``; this module only
orchestrates Ray, progress and MLflow.

At most ``max_inflight_units`` units are in flight, so memory stays flat however large the source is.
Each (unit, table) file is committed atomically, and the set of committed files *is* the job's state: a
rerun after any kill computes exactly the missing files, and a rerun of a complete cache does nothing.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from radio.cache import (
    CacheFormatError, CacheIdentity, CacheLocation, CacheMismatch, Manifest, TargetLayout, build_manifest, check_existing, describe_differences,
    existing_units, find_damaged, save_manifest, shard_meta, teacher_path, views_path, write_teacher_shard, write_views_shard,
)
from radio.images import BadImage, decode_image, encode_image
from radio.targets import resample_targets
from radio.views import ViewPolicy, crop_view, render_view, sample_views

from .config import ConfigError, check_output_dir, dump_config, flatten_config, require
from .sources import Source, SourceConfig, SourceError, SourceRecord, open_source
from .tracking import MlflowConfig, log_cache_input, start_run

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
    target_grid: int | Literal["native"] | None = None  # None: the job's target_grid
    # Where each view is resized to this teacher's input: "prepare" = Pillow itself, in the CPU prepare tasks
    # (bitwise the official processor by construction, on cores that are otherwise idle; the actor only
    # normalizes); "device" = the bitwise torch port of Pillow, on the teacher's device (ships the crops at
    # their own size instead: less object-store traffic for a teacher whose input is much larger than them).
    resize_in: Literal["prepare", "device"] = "prepare"
    compile: bool | None = None  # torch.compile the teacher; None: on CUDA only (fingerprinted either way)


def _default_teachers() -> dict[str, TeacherJobConfig]:
    return {"tiny-clip": TeacherJobConfig(), "tiny-dinov2": TeacherJobConfig(), "tiny-sam": TeacherJobConfig()}


@dataclass
class CacheJobConfig:
    """``radio cache``: which images, which views, which teachers, where to write."""

    output: str = "caches/quickstart-train"
    source: SourceConfig = field(default_factory=SourceConfig)
    views: ViewPolicy = field(default_factory=ViewPolicy)
    teachers: dict[str, TeacherJobConfig] = field(default_factory=_default_teachers)
    student_resolution: int = 64  # side of the square student view stored with every row (the highest a run trains at)
    # Multi-resolution distillation: the lower student resolutions runs of this cache will also train at. Views
    # are stored once, at student_resolution; the trainer derives lower ones. Each teacher's targets are also
    # stored at the grid of each (resolution // target_patch, never finer than the teacher's own grid).
    lower_resolutions: list[int] = field(default_factory=list)
    # Targets are stored at target_grid x target_grid (default: student_resolution // target_patch, the
    # grid of a student with that patch size), or "native" (the teacher's own grid); never finer than the
    # teacher's own grid. Per teacher: teachers.<t>.target_grid.
    target_grid: int | Literal["native"] | None = None
    target_patch: int = 16
    # raw: lossless uint8 pixels (zstd in Parquet), read by a reshape; png: lossless and ~30 % smaller, but
    # ~1.3 ms per 224-px view to decode, which caps a reader process near 700 views/s; jpeg: lossy
    student_image_format: Literal["raw", "png", "jpeg"] = "raw"
    images_per_shard: int = 64  # a unit: the granularity of shards, resume and parallelism
    row_group_rows: int = 64
    target_dtype: Literal["float16", "float32", "int8"] = "float16"  # int8: per-row, per-channel scales
    max_inflight_units: int = 4
    rebuild: list[str] = field(default_factory=list)  # teachers whose existing targets are recomputed
    max_pixels: int = 64_000_000  # larger images are skipped as possible decompression bombs
    progress: bool = True
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="radio-cache"))


# ---------------------------------------------------------------------------------------------
# Work done in Ray workers. Plain functions, so they are also callable (and testable) without Ray.

def prepare_unit(source: Source, records: list[SourceRecord], policy: ViewPolicy, student_res: int, image_format: str, max_pixels: int, loc: CacheLocation | None, unit: int, row_group_rows: int, identity: CacheIdentity,
                 resize_for: dict[str, dict] | None = None, keep_crops: bool = True) -> tuple[dict, dict]:
    """Decode, draw views, crop, and resize each crop to the input of every teacher in ``resize_for``
    (teacher -> spec dict) with Pillow. Writes the unit's views table when ``loc`` is given.

    Returns (prepared, info): ``prepared["crops"]`` is a list of uint8 (h, w, 3) crops, one per row, in key
    order (when ``keep_crops``); ``prepared["inputs"][t]`` the same views at teacher ``t``'s input size. Two
    teachers with the same input for a view share one array (pickled once). ``info`` holds the row count,
    skipped inputs and the committed views shard (if written).
    """
    from teachers import TeacherSpec
    from teachers.preprocess import host_resize, input_size

    specs = {t: TeacherSpec.from_dict(d) for t, d in (resize_for or {}).items()}
    inputs: dict[str, list] = {t: [] for t in specs}
    rows = {k: [] for k in ("image_id", "view_index", "label_index", "crop_box", "flip", "source_hw", "student_image")}
    crops, skipped = [], []
    for rec in records:
        try:
            img = decode_image(source.read_bytes(rec), name=rec.image_id, max_pixels=max_pixels)
        except BadImage as e:
            skipped.append({"image_id": rec.image_id, "reason": e.reason})
            continue
        except OSError as e:  # Unreadable carries a stable reason; anything else: its message, no path
            skipped.append({"image_id": rec.image_id, "reason": getattr(e, "reason", None) or f"unreadable: {e.strerror or type(e).__name__}"})
            continue
        H, W = img.shape[:2]
        for v in sample_views(policy, rec.image_id, W, H):
            for k, val in (("image_id", rec.image_id), ("view_index", v.view_index), ("label_index", rec.label_index), ("crop_box", v.box), ("flip", v.flip), ("source_hw", (H, W))):
                rows[k].append(val)
            crop = crop_view(img, v)
            made: dict = {}
            for t, spec in specs.items():
                key = (input_size(spec, *crop.shape[:2]), spec.interpolation)
                if key not in made:
                    made[key] = host_resize(spec, crop)
                inputs[t].append(made[key])
            if keep_crops:
                crops.append(crop)
            rows["student_image"].append(encode_image(render_view(img, v, (student_res, student_res)), image_format))
    n = len(rows["image_id"])
    info = {"unit": unit, "rows": n, "images": len(records) - len(skipped), "skipped": skipped, "shard": None}
    if loc is not None:
        info["shard"] = write_views_shard(loc, unit, rows, skipped, info["images"], identity, row_group_rows).to_dict()
    return {"unit": unit, "image_id": rows["image_id"], "view_index": rows["view_index"], "crops": crops, "inputs": inputs}, info


class TeacherWorker:
    """Hosts one frozen teacher. Receives each unit's views (resized for it by the prepare task, or crops it
    resizes itself); returns its targets at the stored grid, encoded.

    The resampling to the stored grid (area average over the view's extent, ``radio.targets``) and the
    encoding run on the teacher's device, once, so the cache holds what the trainer uses. Every batch of a
    unit is queued on the device before the first result is copied back, so on a GPU the next batch's
    copy and forward are already running while the host waits for this one.
    """

    def __init__(self, name: str, job: dict, device: str, threads: int, target_grid: tuple[int, int] | None, target_dtype: str, extra_grids: list[tuple[int, int]] = ()):
        import torch

        from teachers import create_teacher

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        compile_ = job.get("compile")
        self.name = name
        self.teacher = create_teacher(name, source=job.get("source"), revision=job.get("revision"), dtype=job.get("dtype"), device=device,
                                      compile=(device.startswith("cuda") if compile_ is None else bool(compile_)))
        self.batch_size = int(job.get("batch_size", 32))
        spec = self.teacher.spec
        self.layout = TargetLayout.stored(spec.feature_grid, target_grid, extra_grids, target_dtype)
        self.busy_s = 0.0
        self.calls = 0

    def spec(self) -> tuple[dict, dict]:
        return self.teacher.spec.to_dict(), self.layout.to_dict()

    def run(self, prepared: dict) -> dict:
        import torch

        t0 = time.perf_counter()
        resized = self.name in prepared.get("inputs", {})
        views = prepared["inputs"][self.name] if resized else prepared["crops"]
        pending = []
        for i in range(0, len(views), self.batch_size):
            imgs = [torch.from_numpy(np.array(c)).permute(2, 0, 1) for c in views[i : i + self.batch_size]]  # Ray hands read-only arrays
            out = self.teacher(imgs, resized=resized)
            pending.append((out.summary_BD, [resample_targets(out.features_BHWC, g, out.valid_hw_B2) for g in self.layout.grids]))
        parts = [self.layout.encode(summary, maps) for summary, maps in pending]  # the first copy back waits for the device
        self.calls += 1
        self.busy_s += time.perf_counter() - t0
        if not parts:  # a unit whose images were all skipped
            spec = self.teacher.spec
            parts = [self.layout.encode(torch.zeros((0, spec.summary_dim)) if spec.summary_dim else None, [torch.zeros((0, *g, spec.feature_dim)) for g in self.layout.grids])]
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return {"unit": prepared["unit"], "image_id": prepared["image_id"], "view_index": prepared["view_index"], "cols": cols, "seconds": time.perf_counter() - t0}

    def stats(self) -> dict:
        return {"busy_s": self.busy_s, "calls": self.calls}


def write_teacher_result(loc: CacheLocation, teacher: str, spec: dict, layout: dict, result: dict, row_group_rows: int, identity: CacheIdentity) -> dict:
    """Commit one teacher's targets for one unit (a Ray task). Returns the shard info and its statistics."""
    info, stats = write_teacher_shard(loc, teacher, spec, TargetLayout.from_dict(layout), result["unit"], result["image_id"], result["view_index"], result["cols"], identity, row_group_rows)
    return {"teacher": teacher, "shard": info.to_dict(), "stats": stats, "seconds": result["seconds"], "rows": info.rows}


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
    teacher_busy_fraction: dict[str, float] = field(default_factory=dict)  # actor compute time / (actors x time work was in flight)

    def format(self) -> str:
        lines = [
            f"cache {self.output} (id {self.cache_id})",
            f"  images {self.images}  views {self.views}  skipped {self.skipped}  in {self.seconds:.1f}s  ({self.images_per_s:.1f} images/s)",
            f"  bytes written {self.bytes_written / 1e6:.2f} MB" + (f"  steady state {self.steady_views_per_s:.1f} views/s (after start-up)" if self.steady_views_per_s else ""),
        ]
        for t, n in self.computed.items():
            rate = self.teacher_views_per_s.get(t)
            busy = self.teacher_busy_fraction.get(t)
            lines.append(f"  {t:<16} units computed {n:<5}" + (f" {rate:.1f} views/s per actor" if rate else "") + (f", busy {busy:.0%} of the time" if busy is not None else ""))
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
        eta = f"ETA {(self.total - self.images) / rate:.0f}s" if rate > 0 else "ETA -"  # nothing done yet: no rate
        line = f"[radio cache] {self.images}/{self.total} images  {rate:.1f} img/s  {eta}  {detail}"
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")


def _identity(cfg: CacheJobConfig, source: Source) -> CacheIdentity:
    """What every table of a cache must agree on; changing any of it needs a new cache root. (How each
    teacher's targets are stored is per teacher: its layout, checked on its own.)"""
    return CacheIdentity(source.fingerprint, cfg.views.to_dict(), cfg.student_resolution, cfg.student_image_format, cfg.images_per_shard)


def target_grid_for(cfg: CacheJobConfig, teacher: str) -> tuple[int, int] | None:
    """The grid ``teacher``'s targets are asked to be stored at (None: native); the teacher's own grid
    caps it (``radio.targets.stored_grid``)."""
    g = cfg.teachers[teacher].target_grid
    g = cfg.target_grid if g is None else g
    if g == "native":
        return None
    if g is None:
        g = cfg.student_resolution // cfg.target_patch
    return (int(g), int(g))


def extra_grids_for(cfg: CacheJobConfig, teacher: str) -> list[tuple[int, int]]:
    """The grids of ``cfg.lower_resolutions`` for ``teacher`` (before its own grid caps them): none when the
    teacher's grid is set explicitly (target_grid=N or native), which then serves every resolution."""
    if cfg.teachers[teacher].target_grid is not None or cfg.target_grid is not None:
        return []
    return [(r // cfg.target_patch, r // cfg.target_patch) for r in sorted(set(cfg.lower_resolutions), reverse=True)]


def validate(cfg: CacheJobConfig):
    """Settings checked before Ray or any teacher starts. Each error is a SettingError naming the key, the
    value and what is allowed (``load_config(validate=validate)`` adds where the value came from)."""
    for key in ("target_patch", "student_resolution", "images_per_shard", "row_group_rows", "max_inflight_units", "max_pixels"):
        require(getattr(cfg, key) >= 1, key, getattr(cfg, key), ">= 1")
    require(cfg.source.limit is None or cfg.source.limit >= 1, "source.limit", cfg.source.limit, ">= 1 (or null for every image)")
    require(bool(cfg.teachers), "teachers", cfg.teachers, "at least one teacher", "e.g. teachers=[tiny-clip,tiny-sam]")
    for t, job in cfg.teachers.items():
        for key in ("batch_size", "actors"):
            require(getattr(job, key) >= 1, f"teachers.{t}.{key}", getattr(job, key), ">= 1")
        for key in ("gpus_per_actor", "cpus_per_actor"):
            require(getattr(job, key) >= 0, f"teachers.{t}.{key}", getattr(job, key), ">= 0")
    for name, job in [("", cfg), *((f"teachers.{t}.", j) for t, j in cfg.teachers.items())]:
        grid = job.target_grid
        require(not isinstance(grid, int) or isinstance(grid, bool) or grid >= 1, f"{name}target_grid", grid, ">= 1, 'native', or null for the student's grid")
    require(cfg.target_grid is not None or cfg.student_resolution // cfg.target_patch >= 1, "target_patch", cfg.target_patch,
            f"<= student_resolution ({cfg.student_resolution})", "Set target_patch to the student's patch size, or target_grid=N")
    for i, r in enumerate(cfg.lower_resolutions):
        require(isinstance(r, int) and cfg.target_patch <= r < cfg.student_resolution, f"lower_resolutions[{i}]", r,
                f"an integer with target_patch ({cfg.target_patch}) <= it < student_resolution ({cfg.student_resolution})",
                "Views are stored once at student_resolution, the highest resolution a run trains at; list the lower ones here")
    check_output_dir(cfg.output)


def local_ray_cpus(cfg: CacheJobConfig | None = None) -> int:
    """Logical CPUs for a local Ray: the machine's cores, or what the job's actors reserve plus one for the
    prepare and write tasks when that is more (a 2-core laptop still holds one actor per teacher; the OS
    shares the cores). Ray starts one idle worker per logical CPU, so this stays as small as the job allows."""
    return int(max(os.cpu_count() or 1, math.ceil(1 + (reserved_cpus(cfg) if cfg is not None else 0))))


def reserved_cpus(cfg: CacheJobConfig) -> float:
    """CPUs the job's teacher actors hold for its whole run."""
    return sum(max(1, j.actors) * j.cpus_per_actor for j in cfg.teachers.values())


def init_ray(cfg: CacheJobConfig | None = None):
    """Join ``RAY_ADDRESS`` when set, else start (or reuse) a local Ray sized by :func:`local_ray_cpus`.

    A local Ray's gRPC servers listen on every interface in Ray 2.x whatever node address is given; its
    token authentication (on by default) is what guards them. We do not disable it."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=local_ray_cpus(cfg), **kwargs)
    return ray


def run_cache_job(cfg: CacheJobConfig, resolved_yaml: str | None = None) -> CacheSummary:
    """Build or complete the cache at ``cfg.output``. Idempotent: a complete cache is a fast no-op."""
    t_start = time.perf_counter()
    from teachers import get_spec_template

    validate(cfg)
    from teachers import check_source

    for t, job in cfg.teachers.items():
        get_spec_template(t)  # an unknown name fails here, listing the registry
        check_source(t, job.source, job.revision)  # unloadable weights fail here, in seconds, before Ray
    source = open_source(cfg.source)
    if not source.records:
        raise SourceError(f"source {cfg.source.kind}:{cfg.source.path} has no images")
    loc = CacheLocation(cfg.output)
    identity = _identity(cfg, source)
    cache_id = identity.cache_id
    units = [source.records[i : i + cfg.images_per_shard] for i in range(0, len(source.records), cfg.images_per_shard)]
    manifest = check_existing(loc)  # a cache of another format version is refused here
    removed = loc.remove_tmp()
    if manifest is not None:
        diffs = describe_differences(manifest.identity.to_dict(), identity.to_dict())
        if diffs:
            raise CacheMismatch(f"cache {cfg.output} was built with another source or view policy; refusing to mix. Differences:\n  " + "\n  ".join(diffs) + "\nUse a new output path, or delete the old cache.")
    have_views = existing_units(loc, "views")
    if manifest is None and have_views:
        try:
            meta = shard_meta(loc, views_path(min(have_views)))
        except CacheFormatError:
            raise
        except Exception:  # unreadable: find_damaged below sets it aside
            meta = {"identity": identity.to_dict()}
        diffs = describe_differences(meta.get("identity"), identity.to_dict())
        if diffs:
            raise CacheMismatch(f"cache {cfg.output} holds shards of another source or view policy:\n  " + "\n  ".join(diffs))
    # Only now that this config is known to be this cache's: a truncated or overwritten shard, or one copied in
    # from another cache, is moved aside (nothing is deleted) and recomputed below.
    damaged = find_damaged(loc, identity, manifest)
    for rel, reason in damaged:
        aside = loc.move_aside(rel)
        print(f"[radio cache] {loc.full(rel)}: {reason}; moved to {aside}, it will be recomputed", file=sys.stderr)
    if damaged and manifest is not None:
        manifest.complete = False  # so the run below rewrites the manifest
    have_views = existing_units(loc, "views")

    ray = init_ray(cfg)
    resources = ray.cluster_resources()
    has_gpu = resources.get("GPU", 0) > 0
    reserved, cpus = reserved_cpus(cfg), resources.get("CPU", 0)
    if cpus < reserved + 1:  # actors hold their CPUs all job long: with none left for prepare/write tasks it would wait forever
        raise ConfigError(f"Ray has {cpus:g} CPUs, but the teacher actors reserve {reserved:g} (teachers.<t>.actors x cpus_per_actor) and the prepare/write "
                          f"tasks need 1 more: lower teachers.<t>.cpus_per_actor or actors, or give Ray num_cpus >= {math.ceil(reserved + 1)}")
    actor_cls = ray.remote(TeacherWorker)
    pools: dict[str, list] = {}
    for name, job in cfg.teachers.items():
        opts = {"num_cpus": job.cpus_per_actor, "num_gpus": job.gpus_per_actor if has_gpu else 0, "max_restarts": 3, "max_task_retries": 3}
        device = "cuda" if has_gpu and job.gpus_per_actor > 0 else "cpu"
        pools[name] = [actor_cls.options(**opts).remote(name, dump_config(job), device, max(1, int(job.cpus_per_actor)), target_grid_for(cfg, name), cfg.target_dtype, extra_grids_for(cfg, name)) for _ in range(max(1, job.actors))]
    specs, layouts = {}, {}
    for name, (spec, layout) in zip(pools, ray.get([p[0].spec.remote() for p in pools.values()])):
        specs[name], layouts[name] = spec, layout
        ratio = tuple(cfg.views.ratio)
        if spec["resize"] == "fit_aspect" and (ratio[0] < 1 / 4 or ratio[1] > 4):
            raise ConfigError(f"teacher {name} keeps the view's aspect up to 4:1, but views.ratio={list(ratio)} allows more. Narrow views.ratio (e.g. [0.75, 1.333]).")

    from teachers import TeacherSpec
    from teachers.preprocess import resizes_on_host

    # Resized in the prepare tasks when asked and possible (DINOv3's float-order resize runs on its device).
    on_host = {t: cfg.teachers[t].resize_in == "prepare" and resizes_on_host(TeacherSpec.from_dict(specs[t])) for t in pools}

    # Per-teacher state: refuse a changed teacher unless asked to rebuild it.
    for name, spec in specs.items():
        held = sorted(existing_units(loc, f"teachers/{name}"))
        if not held:
            continue
        meta = shard_meta(loc, teacher_path(name, held[0]))
        old, old_layout = meta.get("spec"), meta.get("layout")
        if old and (old["fingerprint"] != spec["fingerprint"] or old_layout != layouts[name]):
            if name in cfg.rebuild:
                loc.delete_dir(f"teachers/{name}")
                continue
            diffs = [d for d in describe_differences({**old, "layout": old_layout}, {**spec, "layout": layouts[name]}) if not d.startswith("fingerprint")]
            raise CacheMismatch(f"cache {cfg.output} holds teacher {name!r} computed or stored differently (fingerprint {old['fingerprint']}, the config gives {spec['fingerprint']}). Differences:\n  " + "\n  ".join(diffs or ["(weights)"]) + f"\nRecompute only this teacher with rebuild=[{name}], or use a new output path.")
        elif name in cfg.rebuild:
            loc.delete_dir(f"teachers/{name}")

    todo_views = [u for u in range(len(units)) if u not in have_views]
    todo = {name: [u for u in range(len(units)) if u not in existing_units(loc, f"teachers/{name}")] for name in pools}
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
    write = ray.remote(write_teacher_result).options(num_cpus=1, max_retries=3)
    source_ref = ray.put(source)
    rr = {name: 0 for name in pools}
    inflight: dict = {}  # ref -> (unit, kind)
    unit_left: dict[int, int] = {}
    done_units = {name: 0 for name in ["views", *pools]}
    bytes_written = 0
    busy: dict[str, float] = {t: 0.0 for t in pools}
    rows_by_teacher: dict[str, int] = {t: 0 for t in pools}
    queue = list(work_units)
    t_work = time.perf_counter()  # from the first unit handed out to the last one done: the busy-fraction window
    unit_rows: dict[int, int] = {}
    completions: list[tuple[float, int]] = []  # (time, views) per finished unit: steady-state throughput
    try:
        while queue or inflight:
            while queue and len(unit_left) < cfg.max_inflight_units:
                u = queue.pop(0)
                resize_for = {t: specs[t] for t in pools if u in todo[t] and on_host[t]}
                keep_crops = any(u in todo[t] and not on_host[t] for t in pools)
                prepared, info = prep.remote(source_ref, units[u], cfg.views, cfg.student_resolution, cfg.student_image_format, cfg.max_pixels, loc if u in todo_views else None, u, cfg.row_group_rows, identity, resize_for, keep_crops)
                inflight[info] = (u, "views")
                n = 1
                for name, pool in pools.items():
                    if u in todo[name]:
                        actor = pool[rr[name] % len(pool)]
                        rr[name] += 1
                        res = actor.run.remote(prepared)
                        inflight[write.remote(loc, name, specs[name], layouts[name], res, cfg.row_group_rows, identity)] = (u, name)
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

    if not work_units and manifest is not None and manifest.complete and set(pools) <= set(manifest.teachers):
        elapsed = time.perf_counter() - t_start
        return CacheSummary(cfg.output, manifest.images, manifest.views.rows, len(manifest.skipped), elapsed, 0, computed, 0.0, {}, manifest.mlflow_run_id, cache_id)

    new_manifest = finalize_manifest(loc, cfg, source, identity, list(specs), manifest, n_units=len(units))
    elapsed = time.perf_counter() - t_start
    views_per_s = {t: rows_by_teacher[t] / busy[t] for t in pools if busy[t] > 0}
    window = (completions[-1][0] - t_work) if completions else 0.0
    busy_fraction = {t: busy[t] / (len(pools[t]) * window) for t in pools if busy[t] > 0 and window > 0}
    # From the first finished unit to the last: the pipeline's rate once start-up (actors importing
    # torch and loading teachers) is behind it.
    steady = sum(v for _, v in completions[1:]) / (completions[-1][0] - completions[0][0]) if len(completions) > 1 and completions[-1][0] > completions[0][0] else None
    summary = CacheSummary(cfg.output, new_manifest.images, new_manifest.views.rows, len(new_manifest.skipped), elapsed, bytes_written, computed, total_images / elapsed if elapsed > 0 else 0.0, views_per_s, run.run_id if run else None, cache_id, steady, busy_fraction)
    if run is not None:
        new_manifest.mlflow_run_id = run.run_id
        save_manifest(loc, new_manifest)
        # one naming scheme across radio: cache/... what the cache holds, system/... what it cost
        metrics = {"cache/images": summary.images, "cache/views": summary.views, "cache/skipped": summary.skipped, "cache/bytes_written": bytes_written,
                   "system/seconds": elapsed, "system/images_per_s": summary.images_per_s, "system/steady_views_per_s": steady}
        for t, entry in new_manifest.teachers.items():
            metrics[f"cache/bytes_per_view/{t}"] = entry.bytes_per_view
            metrics[f"cache/bytes_ratio_to_float32_native/{t}"] = entry.bytes_per_view / entry.float32_native_bytes_per_view
        for t, r in views_per_s.items():
            metrics[f"system/views_per_s/{t}"] = r
            metrics[f"system/actor_seconds/{t}"] = busy[t]
            metrics[f"system/busy_fraction/{t}"] = busy_fraction.get(t)
            metrics[f"system/gpu_hours/{t}"] = busy[t] * (cfg.teachers[t].gpus_per_actor if has_gpu else 0.0) / 3600
        run.log_metrics(metrics)
        log_cache_input(run, cfg.output, new_manifest, "output")
        run.log_text(__import__("json").dumps(new_manifest.to_dict(), indent=1, sort_keys=True), "manifest.json")
        if resolved_yaml:
            run.log_text(resolved_yaml, "config.yaml")
        run.end()
    return summary


def finalize_manifest(loc: CacheLocation, cfg: CacheJobConfig, source: Source, identity: CacheIdentity, teachers: list[str], old: Manifest | None, n_units: int) -> Manifest:
    """Rebuild the manifest from the committed files (``radio.cache.build_manifest``)."""
    return build_manifest(loc, identity, {**source.describe(), "config": dump_config(cfg.source)}, cfg.views.to_dict(), dump_config(cfg), n_units, teachers, old, excluded=source.excluded)
