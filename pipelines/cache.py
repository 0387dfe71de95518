"""``radio cache``: frozen teachers on Ray actors stream their targets into fingerprinted Parquet shards.

The job in four steps (``run_cache_job``)::

    plan      (no Ray)   the manifest and one listing per directory: what is committed, damaged, missing
    run       (Ray)      per *unit* (a fixed chunk of source images) still missing:
                           prepare_unit (CPU task)            decode, draw K views, crop; commit views/unit-N
                           -> TeacherWorker.run (GPU/CPU)     one actor pool per teacher; targets resampled to
                                                              the stored grid and encoded on its device
                           -> write_teacher_result (CPU)      exact moments; commit teachers/<t>/unit-N
    finalize  (no Ray)   manifest and each changed teacher's merged statistics, from the commit records
    report               summary line, MLflow

The cache format itself (tables, codecs, commit records, manifest, statistics) lives in ``radio/cache``; this
module only orchestrates Ray, progress and MLflow.

At most ``max_inflight_units`` units are in flight, so memory stays flat however large the source is. A
shard counts as done once its commit record is written beside it, and the set of commit records *is* the
job's state: a rerun after any kill computes exactly the missing files, and a rerun of a complete cache
reads the manifest, lists each directory once and returns without starting Ray or loading a teacher.
"""

from __future__ import annotations

import math
import os
import posixpath
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from radio.cache import (
    CacheFormatError,
    CacheIdentity,
    CacheLocation,
    CacheMismatch,
    Manifest,
    ManifestDamaged,
    MomentsMerger,
    TableState,
    TargetLayout,
    build_manifest,
    commit_path,
    describe_differences,
    load_manifest,
    save_manifest,
    scan_table,
    shard_meta,
    teacher_path,
    write_teacher_shard,
    write_views_shard,
)
from radio.images import BadImage, decode_image, encode_image
from radio.targets import resample_targets
from radio.views import ViewPolicy, crop_view, render_view, sample_views

from .config import (
    ConfigError,
    DiskFull,
    check_output_dir,
    disk_full,
    dump_config,
    flatten_config,
    nearest_hint,
    require,
)
from .sources import Source, SourceConfig, SourceError, SourceRecord, open_source
from .tracking import PENDING, MlflowConfig, log_cache_input, start_run

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
    # Run a teacher that takes any size (CLIP, DINOv2, DINOv3) at this square input instead of its processor's, e.g.
    # DINOv3 at 1152 for C-RADIOv4's high partition: its map then has the grid that partition stores (72x72), and the
    # low partition's set is that map area-averaged. None: the processor's size. Fingerprinted.
    input_size: int | None = None


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
    # C-RADIOv4's stochastic resolutions: the size sets runs of this cache train at, as the trainer's
    # resolution.partitions, e.g. [[128,192,224,256,384,432],[512,768,1024,1152]]. Views are stored at the largest
    # size; each teacher's targets once per partition, at the grid of the partition's largest size, and that one set
    # serves every size of the partition. Sets student_resolution and lower_resolutions (leave those unset).
    partitions: list[list[int]] = field(default_factory=list)
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
    rebuild: list[str] = field(default_factory=list)  # teachers (or `views`) whose existing shards are recomputed
    # listing: trust what the manifest lists at its recorded size and time (a rerun costs one listing per
    # directory). bytes: a repair (`radio cache repair`): every shard hashed against its commit record, every
    # record checked whole, damaged files set aside and recomputed, the statistics and the manifest rebuilt
    # from the verified records
    verify: Literal["listing", "bytes"] = "listing"
    max_pixels: int = 64_000_000  # larger images are skipped as possible decompression bombs
    progress: bool = True
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="radio-cache"))

    def __post_init__(self):
        if not self.partitions:
            return
        parts = sorted((sorted(p) for p in self.partitions), key=lambda p: p[-1] if p else 0)
        if any(not p or not all(isinstance(r, int) and r >= 1 for r in p) for p in parts):
            raise ValueError(f"'partitions' must be non-empty lists of sizes in pixels, got {self.partitions}")
        for a, b in zip(parts[:-1], parts[1:], strict=True):
            if a[-1] >= b[0]:
                raise ValueError(
                    f"'partitions' {self.partitions} interleave ({a} and {b}): each partition's targets are stored at "
                    "its largest size's grid and serve its sizes, so every size of one partition must lie below every "
                    "size of the next (e.g. [[128,192,224,256,384,432],[512,768,1024,1152]])"
                )
        top, lower = parts[-1][-1], [p[-1] for p in parts[:-1]]
        if self.lower_resolutions and sorted(self.lower_resolutions) != lower:
            raise ValueError(
                f"'lower_resolutions' {self.lower_resolutions} disagrees with 'partitions' {self.partitions}, which "
                f"set it to {lower} (the largest size of each partition below the top one): leave lower_resolutions "
                "unset"
            )
        if self.student_resolution not in (top, _DEFAULT_STUDENT_RESOLUTION):
            raise ValueError(
                f"'student_resolution' {self.student_resolution} disagrees with 'partitions' {self.partitions}, whose "
                f"largest size ({top}) is where views are stored: leave student_resolution unset"
            )
        self.student_resolution, self.lower_resolutions = top, lower


_DEFAULT_STUDENT_RESOLUTION = CacheJobConfig.student_resolution


# ---------------------------------------------------------------------------------------------
# Work done in Ray workers. Plain functions, so they are also callable (and testable) without Ray.


def prepare_unit(
    source: Source,
    records: list[SourceRecord],
    policy: ViewPolicy,
    student_res: int,
    image_format: str,
    max_pixels: int,
    loc: CacheLocation | None,
    unit: int,
    row_group_rows: int,
    identity: CacheIdentity,
    resize_for: dict[str, dict] | None = None,
    keep_crops: bool = True,
) -> tuple[dict, dict]:
    """Decode, draw views, crop, and resize each crop to the input of every teacher in ``resize_for``
    (teacher -> spec dict) with Pillow. Writes the unit's views table when ``loc`` is given.

    Returns (prepared, info): ``prepared["crops"]`` is a list of uint8 (h, w, 3) crops, one per row, in key
    order (when ``keep_crops``); ``prepared["inputs"][t]`` the same views at teacher ``t``'s input size. Two
    teachers with the same input for a view share one array (pickled once). ``info`` holds the row count,
    skipped inputs and the views shard's commit (if written). ``source`` needs to hold only ``records``
    (``Source.part``): a task is sent its unit's records, never the whole source.
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
            skipped.append(
                {
                    "image_id": rec.image_id,
                    "reason": getattr(e, "reason", None) or f"unreadable: {e.strerror or type(e).__name__}",
                }
            )
            continue
        H, W = img.shape[:2]
        for v in sample_views(policy, rec.image_id, W, H):
            for k, val in (
                ("image_id", rec.image_id),
                ("view_index", v.view_index),
                ("label_index", rec.label_index),
                ("crop_box", v.box),
                ("flip", v.flip),
                ("source_hw", (H, W)),
            ):
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
    info = {"unit": unit, "rows": n, "images": len(records) - len(skipped), "skipped": skipped, "commit": None}
    if loc is not None:
        info["commit"] = write_views_shard(loc, unit, rows, skipped, info["images"], identity, row_group_rows)
    return {
        "unit": unit,
        "image_id": rows["image_id"],
        "view_index": rows["view_index"],
        "crops": crops,
        "inputs": inputs,
    }, info


class TeacherWorker:
    """Hosts one frozen teacher. Receives each unit's views (resized for it by the prepare task, or crops it
    resizes itself); returns its targets at the stored grid, encoded.

    The resampling to the stored grid (area average over the view's extent, ``radio.targets``) and the
    encoding run on the teacher's device, once, so the cache holds what the trainer uses. Every batch of a
    unit is queued on the device before the first result is copied back, so on a GPU the next batch's
    copy and forward are already running while the host waits for this one.
    """

    def __init__(
        self,
        name: str,
        job: dict,
        device: str,
        threads: int,
        target_grid: tuple[int, int] | None,
        target_dtype: str,
        extra_grids: list[tuple[int, int]] = (),
    ):
        import torch

        from teachers import create_teacher

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        compile_ = job.get("compile")
        self.name = name
        self.teacher = create_teacher(
            name,
            source=job.get("source"),
            revision=job.get("revision"),
            dtype=job.get("dtype"),
            device=device,
            compile=(device.startswith("cuda") if compile_ is None else bool(compile_)),
            input_size=job.get("input_size"),
        )
        self.batch_size = int(job.get("batch_size", 32))
        spec = self.teacher.spec
        self.layout = TargetLayout.stored(spec.feature_grid, target_grid, extra_grids, target_dtype)
        self.busy_s = 0.0
        self.calls = 0

    def spec(self) -> tuple[dict, dict]:
        return self.teacher.spec.to_dict(), self.layout.to_dict()

    def tensor_sha256(self) -> str:
        """The loaded weights' hash as radio recorded it before 2026-12-05 (teachers.registry.tensor_sha256)."""
        from teachers.registry import tensor_sha256

        return tensor_sha256(self.teacher.model)

    def run(self, prepared: dict) -> dict:
        import torch

        t0 = time.perf_counter()
        resized = self.name in prepared.get("inputs", {})
        views = prepared["inputs"][self.name] if resized else prepared["crops"]
        pending = []
        for i in range(0, len(views), self.batch_size):
            imgs = [
                torch.from_numpy(np.array(c)).permute(2, 0, 1) for c in views[i : i + self.batch_size]
            ]  # Ray hands read-only arrays
            out = self.teacher(imgs, resized=resized)
            pending.append(
                (out.summary_BD, [resample_targets(out.features_BHWC, g, out.valid_hw_B2) for g in self.layout.grids])
            )
        parts = [
            self.layout.encode(summary, maps) for summary, maps in pending
        ]  # the first copy back waits for the device
        self.calls += 1
        self.busy_s += time.perf_counter() - t0
        if not parts:  # a unit whose images were all skipped
            spec = self.teacher.spec
            parts = [
                self.layout.encode(
                    torch.zeros((0, spec.summary_dim)) if spec.summary_dim else None,
                    [torch.zeros((0, *g, spec.feature_dim)) for g in self.layout.grids],
                )
            ]
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return {
            "unit": prepared["unit"],
            "image_id": prepared["image_id"],
            "view_index": prepared["view_index"],
            "cols": cols,
            "seconds": time.perf_counter() - t0,
        }

    def stats(self) -> dict:
        return {"busy_s": self.busy_s, "calls": self.calls}


def write_teacher_result(
    loc: CacheLocation,
    teacher: str,
    spec: dict,
    layout: dict,
    result: dict,
    row_group_rows: int,
    identity: CacheIdentity,
    request: str,
) -> dict:
    """Write and commit one teacher's targets for one unit (a Ray task). Returns the commit (size, checksum,
    rows, moments) and the actor's seconds."""
    commit = write_teacher_shard(
        loc,
        teacher,
        spec,
        TargetLayout.from_dict(layout),
        result["unit"],
        result["image_id"],
        result["view_index"],
        result["cols"],
        identity,
        row_group_rows,
        request,
    )
    return {"teacher": teacher, "commit": commit, "seconds": result["seconds"], "rows": commit.shard.rows}


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
    teacher_busy_fraction: dict[str, float] = field(
        default_factory=dict
    )  # actor compute time / (actors x time work was in flight)

    def format(self) -> str:
        lines = [
            f"cache {self.output} (id {self.cache_id})",
            f"  images {self.images}  views {self.views}  skipped {self.skipped}  in {self.seconds:.1f}s "
            f" ({self.images_per_s:.1f} images/s)",
            f"  bytes written {self.bytes_written / 1e6:.2f} MB"
            + (
                f"  steady state {self.steady_views_per_s:.1f} views/s (after start-up)"
                if self.steady_views_per_s
                else ""
            ),
        ]
        for t, n in self.computed.items():
            rate = self.teacher_views_per_s.get(t)
            busy = self.teacher_busy_fraction.get(t)
            lines.append(
                f"  {t:<16} units computed {n:<5}"
                + (f" {rate:.1f} views/s per actor" if rate else "")
                + (f", busy {busy:.0%} of the time" if busy is not None else "")
            )
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
    return CacheIdentity(
        source.fingerprint, cfg.views.to_dict(), cfg.student_resolution, cfg.student_image_format, cfg.images_per_shard
    )


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
    for key in (
        "target_patch",
        "student_resolution",
        "images_per_shard",
        "row_group_rows",
        "max_inflight_units",
        "max_pixels",
    ):
        require(getattr(cfg, key) >= 1, key, getattr(cfg, key), ">= 1")
    require(cfg.student_resolution <= 8192, "student_resolution", cfg.student_resolution, "<= 8192 (pixels per side)")
    require(
        cfg.source.limit is None or cfg.source.limit >= 1,
        "source.limit",
        cfg.source.limit,
        ">= 1 (or null for every image)",
    )
    require(bool(cfg.teachers), "teachers", cfg.teachers, "at least one teacher", "e.g. teachers=[tiny-clip,tiny-sam]")
    for i, t in enumerate(cfg.rebuild):
        require(
            t == "views" or t in cfg.teachers,
            f"rebuild[{i}]",
            t,
            f"one of this job's teachers ({', '.join(cfg.teachers)}) or views",
            nearest_hint(t, [*cfg.teachers, "views"]),
        )
    for t, job in cfg.teachers.items():
        for key in ("batch_size", "actors"):
            require(getattr(job, key) >= 1, f"teachers.{t}.{key}", getattr(job, key), ">= 1")
        for key in ("gpus_per_actor", "cpus_per_actor"):
            require(getattr(job, key) >= 0, f"teachers.{t}.{key}", getattr(job, key), ">= 0")
        require(
            job.input_size is None or job.input_size >= 1, f"teachers.{t}.input_size", job.input_size, ">= 1 or null"
        )
    for name, job in [("", cfg), *((f"teachers.{t}.", j) for t, j in cfg.teachers.items())]:
        grid = job.target_grid
        require(
            not isinstance(grid, int) or isinstance(grid, bool) or grid >= 1,
            f"{name}target_grid",
            grid,
            ">= 1, 'native', or null for the student's grid",
        )
    require(
        cfg.target_grid is not None or cfg.student_resolution // cfg.target_patch >= 1,
        "target_patch",
        cfg.target_patch,
        f"<= student_resolution ({cfg.student_resolution})",
        "Set target_patch to the student's patch size, or target_grid=N",
    )
    tp = cfg.target_patch
    require(
        cfg.student_resolution % tp == 0,
        "student_resolution",
        cfg.student_resolution,
        f"a multiple of target_patch ({tp}), the student's patch size, so its grid is whole",
        f"e.g. student_resolution={max(tp, cfg.student_resolution // tp * tp)}",
        also=("target_patch",),
    )
    for i, part in enumerate(cfg.partitions):
        for j, r in enumerate(part):
            require(
                tp <= r and r % tp == 0,
                f"partitions[{i}][{j}]",
                r,
                f"a multiple of target_patch ({tp}), so the student's grid at it is whole",
                f"e.g. {max(tp, r // tp * tp)}",
                also=("target_patch",),
            )
    for i, r in enumerate(cfg.lower_resolutions):
        require(
            isinstance(r, int) and tp <= r < cfg.student_resolution,
            f"lower_resolutions[{i}]",
            r,
            f"an integer with target_patch ({tp}) <= it < student_resolution ({cfg.student_resolution})",
            "Views are stored once at student_resolution, the highest resolution a run trains at; list "
            "the lower ones here",
            also=("student_resolution", "target_patch"),
        )
        require(
            r % tp == 0,
            f"lower_resolutions[{i}]",
            r,
            f"a multiple of target_patch ({tp}), so the student's grid at it is whole",
            f"e.g. {max(tp, r // tp * tp)}",
            also=("target_patch",),
        )
    dup = sorted({r for r in cfg.lower_resolutions if cfg.lower_resolutions.count(r) > 1})
    require(
        not dup, "lower_resolutions", cfg.lower_resolutions, f"distinct resolutions ({dup} repeated)", "List each once"
    )
    check_output_dir(cfg.output)


def local_ray_cpus(cfg: CacheJobConfig | None = None) -> int:
    """Logical CPUs for a local Ray: the machine's cores, or what the job's actors reserve plus one for the
    prepare and write tasks when that is more (a 2-core laptop still holds one actor per teacher; the OS
    shares the cores). Ray starts one idle worker per logical CPU, so this stays as small as the job allows."""
    return int(max(os.cpu_count() or 1, math.ceil(1 + (reserved_cpus(cfg) if cfg is not None else 0))))


def reserved_cpus(cfg: CacheJobConfig) -> float:
    """CPUs the job's teacher actors hold for its whole run."""
    return sum(max(1, j.actors) * j.cpus_per_actor for j in cfg.teachers.values())


class RayUnavailable(ConnectionError):
    """``RAY_ADDRESS`` names a cluster that does not answer."""


def _speaks_grpc(conn) -> bool:
    """Whether the server on ``conn`` speaks HTTP/2, as gRPC does: sent the client preface, a gRPC server
    answers with a SETTINGS frame (type 4); an HTTP/1 server, or anything else, does not."""

    try:
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except (TimeoutError, OSError):
        return False
    return len(head) >= 4 and head[3] == 4


def check_ray_address(address: str, timeout_s: float = 10.0) -> None:
    """Fail in seconds, naming ``RAY_ADDRESS``, when nothing listens at the cluster address it gives
    (``host:port`` or ``ray://host:port``). Ray itself would retry its GCS connection for minutes, printing
    only its own timeouts. ``auto`` and other forms are left to Ray."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if address == "auto" or not sep:
        return
    if not port.isdigit() or not host:
        raise RayUnavailable(
            f"RAY_ADDRESS={address}: not a cluster address; give host:port of the head node's GCS "
            "(e.g. 10.0.0.5:6379), or unset RAY_ADDRESS to run on a local Ray"
        )
    deadline, err = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(
                (host.strip("[]"), int(port)), timeout=max(0.5, min(3.0, deadline - time.monotonic()))
            ) as conn:
                if os.environ.get("RAY_USE_TLS", "0") not in ("1", "true") and not _speaks_grpc(conn):
                    raise RayUnavailable(
                        f"RAY_ADDRESS={address}: something answers at {host}:{port}, but not Ray's GCS (it does "
                        "not speak gRPC: another service on that port?). Give the head node's GCS address "
                        "(ray start --head prints it), or unset RAY_ADDRESS to run on a local Ray"
                    )
                return
        except OSError as e:  # refused, unresolvable, unreachable, timed out: retried while a head node may be starting
            err = e
            time.sleep(0.5)
    raise RayUnavailable(
        f"RAY_ADDRESS={address}: no Ray cluster answers at {host}:{port} after "
        f"{timeout_s:.0f} s ({type(err).__name__}: {err}). "
        "Start the head node there (ray start --head --port=...), fix the address, or unset RAY_ADDRESS "
        "to run on a local Ray"
    )


def private_ray_env() -> None:
    """Make the local Ray this process starts one that only the job can use (checked on Ray 2.60).

    - Token authentication on, with a fresh random token in ``RAY_AUTH_TOKEN`` that the raylet, the GCS and the
      workers inherit from this process (nothing is written to ``~/.ray``). Ray 2.60 leaves it off unless
      ``RAY_AUTH_MODE=token``; a client without the token gets ``Unauthenticated: InvalidAuthToken``. An
      explicit ``RAY_AUTH_MODE`` or token of the user's is kept.
    - Every server on loopback: Ray binds its gRPC servers to the node's IP, which it resolves to a routable
      address for a cluster; with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's own single-machine setting
      on macOS and Windows) the node is 127.0.0.1 and so is every listener (GCS, raylet, object manager,
      runtime-env agent, workers). The dashboard is off (``include_dashboard=False``)."""
    import secrets

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] == "token" and not (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    ):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    # read when ray was imported, so set here too: the node address is resolved from the first, and this
    # process's own clients (the driver's) take the mode and token from the others, as Ray's own
    # `ray.init` does when it turns token authentication on
    ray_constants.ENABLE_RAY_CLUSTER = False
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def init_ray(cfg: CacheJobConfig | None = None):
    """Join ``RAY_ADDRESS`` when set (with the token in ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` when that
    cluster has token authentication), else start (or reuse) a private local Ray (:func:`private_ray_env`)
    sized by :func:`local_ray_cpus`."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
        if address:
            check_ray_address(address)
            ray.init(address=address, **kwargs)
        else:
            private_ray_env()
            ray.init(num_cpus=local_ray_cpus(cfg), **kwargs)
    return ray


# ---------------------------------------------------------------------------------------------
# The driver: plan (no Ray) -> run (the Ray pipeline) -> finalize (manifest, merged statistics) -> report.


def teacher_request(cfg: CacheJobConfig, teacher: str) -> str:
    """What ``teacher``'s targets are asked to be, known without loading it: the weights' cheap identity
    (``teachers.source_key``), every job setting that changes the stored targets, and the cache identity's
    student resolution. Targets committed under the same request are trusted as they are; under another,
    the teacher is loaded and its fingerprint and layout decide (reuse, refuse, or ``rebuild``)."""
    import hashlib
    import json

    from teachers import source_key

    job = cfg.teachers[teacher]
    key = {
        "teacher": teacher,
        "weights": source_key(teacher, job.source, job.revision),
        "revision": job.revision,
        "dtype": job.dtype,
        "compile": job.compile,
        **({"input_size": job.input_size} if job.input_size is not None else {}),  # older keys stay as they were
        "target_grid": target_grid_for(cfg, teacher),
        "extra_grids": extra_grids_for(cfg, teacher),
        "target_dtype": cfg.target_dtype,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:16]


@dataclass
class CachePlan:
    """What exists and what is missing, from the manifest and one listing per directory (no data read)."""

    loc: CacheLocation
    identity: CacheIdentity
    n_units: int
    manifest: Manifest | None
    views: TableState
    tables: dict[str, TableState]  # every teacher directory on storage (the config's and others)
    requests: dict[str, str]  # the config's teachers
    trusted: dict[str, bool]  # teacher -> its committed targets are this request's (or it holds none)
    todo_views: list[int]
    todo: dict[str, list[int]]
    cleaned: int = 0  # temporary files, records without a shard, shards without a record: removed
    set_aside: int = 0  # damaged shards moved aside
    stale_stats: list[str] = field(
        default_factory=list
    )  # teachers whose merged statistics file is missing or was written again

    @property
    def work_units(self) -> list[int]:
        return sorted(set(self.todo_views).union(*self.todo.values()))

    @property
    def needs_teachers(self) -> list[str]:
        """Teachers to start: those with work, and those whose committed targets must be checked against their
        loaded fingerprint (the request changed)."""
        return [t for t in self.requests if self.todo[t] or not self.trusted[t]]

    @property
    def up_to_date(self) -> bool:
        """Nothing to compute and nothing to record: the manifest already says all of it."""
        m = self.manifest
        return (
            not self.needs_teachers
            and not self.todo_views
            and m is not None
            and m.complete
            and not self.set_aside
            and not self.cleaned
            and not self.stale_stats
            and not self.views.adopted
            and all(st.adopted == 0 for st in self.tables.values())
            and set(self.requests) <= set(m.teachers)
            and all(m.teachers[t].request == r and m.teachers[t].moments is not None for t, r in self.requests.items())
        )


def plan_cache_job(
    cfg: CacheJobConfig, n_units: int, identity: CacheIdentity, requests: dict[str, str | None], say=print
) -> CachePlan:
    """Reconcile the cache at ``cfg.output`` with the config, without Ray or any teacher: refuse another cache's
    root, set damaged shards aside, remove what killed writers left, and list the work per table.
    ``requests``: each configured teacher's :func:`teacher_request`."""
    loc = CacheLocation(cfg.output)
    try:
        manifest = load_manifest(
            loc
        )  # a manifest of another format version is refused here; shards alone, by shard_meta below
    except ManifestDamaged as e:  # the shards' own records win: plan as after a kill before the first manifest
        say(f"  {str(e).split(': it was')[0]}: rewriting it from the shards' own records")
        manifest = None
    if manifest is not None:
        diffs = describe_differences(manifest.identity.to_dict(), identity.to_dict())
        if diffs:
            raise CacheMismatch(
                f"cache {cfg.output} was built with another source or view policy; refusing to mix. Differences:\n  "
                + "\n  ".join(diffs)
                + "\nUse a new output path, or delete the old cache."
            )
    else:
        first = sorted(n for n in loc.scan("views") if n.endswith(".parquet") and n.startswith("unit-"))
        if first:  # shards of a job killed before its first manifest: one footer says whose they are
            try:
                meta = shard_meta(loc, f"views/{first[0]}")
            except CacheFormatError:
                raise
            except Exception:  # unreadable: the scan below sets it aside
                meta = {"identity": identity.to_dict()}
            diffs = describe_differences(meta.get("identity"), identity.to_dict())
            if diffs:
                raise CacheMismatch(
                    f"cache {cfg.output} holds shards of another source or view policy:\n  " + "\n  ".join(diffs)
                )
    for t in cfg.rebuild:
        loc.delete_dir("views" if t == "views" else f"teachers/{t}")
    repair = cfg.verify == "bytes"
    listed = {
        s.path: s
        for s in (
            [*manifest.views.shards, *[s for e in manifest.teachers.values() for s in e.shards]]
            if manifest and not repair  # a repair trusts the shards' own records, not the manifest's listing
            else []
        )
    }
    entries = manifest.teachers if manifest else {}
    views = scan_table(loc, None, identity, listed, check_bytes=repair)
    tables = {
        t: scan_table(loc, t, identity, listed, entries.get(t), check_bytes=repair)
        for t in sorted(set(loc.list_dirs("teachers")) | set(cfg.teachers))
    }
    cleaned = set_aside = 0
    if repair:
        set_aside += _set_aside_damaged_stats(loc, manifest, say)
    for st in [views, *tables.values()]:
        # a damaged, truncated or foreign shard is moved aside (nothing deleted) and recomputed; what a killed
        # writer left (a shard without its record, a record without its shard, a temporary file) is removed
        for rel, reason in st.damaged:
            aside = loc.move_aside(rel)
            if loc.exists(commit_path(rel)):
                loc.move_aside(commit_path(rel))
            say(f"[radio cache] {loc.full(rel)}: {reason}; moved to {aside}, it will be recomputed")
            set_aside += 1
        for rel in [*st.uncommitted, *st.orphans]:
            loc.delete(rel)
            cleaned += 1
    trusted = {t: all(c.request == requests[t] for c in tables[t].commits.values()) for t in cfg.teachers}
    stats = loc.scan_stat("stats")
    stale = [t for t, e in entries.items() if _stats_stale(e, stats)]
    todo_views = [u for u in range(n_units) if u not in views.commits]
    todo = {t: [u for u in range(n_units) if u not in tables[t].commits] for t in cfg.teachers}
    if repair:  # no old manifest: its entries, statistics and skips are rebuilt from the verified records
        manifest, stale = None, []
    return CachePlan(
        loc, identity, n_units, manifest, views, tables, requests, trusted, todo_views, todo, cleaned, set_aside, stale
    )


def _set_aside_damaged_stats(loc: CacheLocation, manifest: Manifest | None, say) -> int:
    """A repair: each merged statistics file whose bytes differ from the manifest's record (or that does not
    read as a record) is moved aside; all of them are then merged again from the commit records."""
    from radio.cache import CacheError, RecordError, read_merged_moments

    moved = 0
    for e in (manifest.teachers if manifest else {}).values():
        ref = e.moments
        if ref is None or not loc.exists(ref.path):
            continue
        try:  # the reader's own check: size and sha256 against the manifest, then the record's checksums
            read_merged_moments(loc, ref)
        except (CacheError, RecordError) as err:
            aside = loc.move_aside(ref.path)
            say(f"[radio cache] {str(err).split('. ')[0]}; moved to {aside}, merged again from the records")
            moved += 1
    return moved


def _stats_stale(entry, listed: dict) -> bool:
    """The teacher's merged statistics file is missing, or lists another size or time than the manifest recorded."""
    ref = entry.moments
    got = listed.get(posixpath.basename(ref.path)) if ref else None
    return got is None or got[0] != ref.bytes or (ref.mtime_ns is not None and got[1] != ref.mtime_ns)


def run_cache_job(cfg: CacheJobConfig, resolved_yaml: str | None = None) -> CacheSummary:
    """Build or complete the cache at ``cfg.output``. Idempotent: a complete cache is a no-op that reads the
    manifest and lists each directory once, without starting Ray."""
    t_start = time.perf_counter()
    from teachers import check_source, get_spec_template

    validate(cfg)
    for t, job in cfg.teachers.items():
        get_spec_template(t)  # an unknown name fails here, listing the registry
        check_source(t, job.source, job.revision)  # unloadable weights fail here, in seconds, before Ray
    source = open_source(cfg.source)
    if not len(source):
        raise SourceError(f"source {cfg.source.kind}:{cfg.source.path} has no images")
    identity = _identity(cfg, source)
    n_units = math.ceil(len(source) / cfg.images_per_shard)
    plan = plan_cache_job(
        cfg,
        n_units,
        identity,
        {t: teacher_request(cfg, t) for t in cfg.teachers},
        say=lambda m: print(m, file=sys.stderr),
    )
    if plan.up_to_date:
        m = plan.manifest
        return CacheSummary(
            cfg.output,
            m.images,
            m.views.rows,
            len(m.skipped),
            time.perf_counter() - t_start,
            0,
            {"views": 0, **{t: 0 for t in cfg.teachers}},
            0.0,
            {},
            m.mlflow_run_id,
            identity.cache_id,
        )
    run = None
    if plan.work_units:
        pending = (
            os.path.join(cfg.output, PENDING) if plan.loc.is_local else None
        )  # what a lost tracking server could not take: `radio sync OUTPUT`
        run = start_run(
            cfg.mlflow,
            run_name=f"cache-{os.path.basename(os.path.normpath(cfg.output))}",
            tags={
                "radio.kind": "cache",
                "radio.cache_id": identity.cache_id,
                "radio.cache_uri": plan.loc.uri,
                "radio.teachers": ",".join(sorted(cfg.teachers)),
            },
            pending=pending,
        )
        if run is not None:
            run.log_params(flatten_config(cfg))
    try:
        result = _run_pipeline(cfg, plan, source) if plan.needs_teachers or plan.todo_views else RunResult()
        manifest = finalize_cache(cfg, plan, source, result)
        if manifest.images == 0:
            from collections import Counter

            why = "; ".join(f"{n} {r}" for r, n in Counter(s.reason for s in manifest.skipped).most_common(3))
            raise SourceError(
                f"source {cfg.source.kind}:{cfg.source.path}: none of its {len(source)} file(s) reads as an "
                f"image ({why}), so the cache at {cfg.output} holds no views. Point source.path at the images"
            )
    except BaseException as e:
        if run is not None:
            run.end(status="KILLED" if not isinstance(e, Exception) else "FAILED")
        full = disk_full(e) if isinstance(e, Exception) else None
        if full is not None:
            raise DiskFull(
                f"no space left writing cache {cfg.output} ({full}): every unit committed before is kept, and "
                "a half-written file is removed by the rerun. "
                "Free space there and rerun the same command to resume"
            ) from None
        raise
    summary = _summary(cfg, plan, manifest, result, time.perf_counter() - t_start, run)
    if run is not None:
        _report(run, cfg, manifest, summary, result, resolved_yaml)
    return summary


@dataclass
class RunResult:
    """What the Ray pipeline did: commits (views: by unit; teachers: by teacher and unit), teacher specs and
    layouts, moments merged so far, and the cost figures."""

    views: dict[int, object] = field(default_factory=dict)
    commits: dict[str, dict[int, object]] = field(default_factory=dict)
    specs: dict[str, dict] = field(default_factory=dict)
    mergers: dict[str, MomentsMerger] = field(default_factory=dict)
    bytes_written: int = 0
    busy: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    actors: dict[str, int] = field(default_factory=dict)
    window_s: float = 0.0  # from the first unit handed out to the last one done
    completions: list[tuple[float, int]] = field(default_factory=list)  # (time, views) per finished unit
    has_gpu: bool = False


def _start_teachers(
    ray, cfg: CacheJobConfig, plan: CachePlan, names: list[str], has_gpu: bool
) -> tuple[dict, dict, dict]:
    """Actor pools for ``names``; (pools, specs, layouts). A teacher whose committed targets were computed
    under another request is checked by its loaded fingerprint and layout: the same targets are kept, others
    refused (or deleted and recomputed with ``rebuild``)."""
    actor_cls = ray.remote(TeacherWorker)
    pools: dict[str, list] = {}
    for name in names:
        job = cfg.teachers[name]
        # A call to an actor on a node that crashed fails at once (ActorUnavailableError) and Ray's backoff spends a
        # few retries in ~1 s, while the node is declared dead only after ~15 s of missed health checks: retry
        # until the actor is back (run() has no side effects); max_restarts bounds an actor that keeps dying.
        opts = {
            "num_cpus": job.cpus_per_actor,
            "num_gpus": job.gpus_per_actor if has_gpu else 0,
            "max_restarts": 3,
            "max_task_retries": -1,
        }
        device = "cuda" if has_gpu and job.gpus_per_actor > 0 else "cpu"
        pools[name] = [
            actor_cls.options(**opts).remote(
                name,
                dump_config(job),
                device,
                max(1, int(job.cpus_per_actor)),
                target_grid_for(cfg, name),
                cfg.target_dtype,
                extra_grids_for(cfg, name),
            )
            for _ in range(max(1, job.actors))
        ]
    specs, layouts = {}, {}
    for name, (spec, layout) in zip(pools, ray.get([p[0].spec.remote() for p in pools.values()]), strict=True):
        specs[name], layouts[name] = spec, layout
        ratio = tuple(cfg.views.ratio)
        if spec["resize"] == "fit_aspect" and (ratio[0] < 1 / 4 or ratio[1] > 4):
            raise ConfigError(
                f"teacher {name} keeps the view's aspect up to 4:1, but views.ratio={list(ratio)} "
                "allows more. Narrow views.ratio (e.g. [0.75, 1.333])."
            )
        held = plan.tables[name].commits
        if not held:
            continue
        old_fp, old_layout = _held_identity(plan, name)
        if old_fp != spec["fingerprint"] or old_layout != layout:
            old_spec = (
                plan.manifest.teachers[name].spec
                if plan.manifest and name in plan.manifest.teachers
                else shard_meta(plan.loc, teacher_path(name, min(held))).get("spec", {})
            )
            diffs = [
                d
                for d in describe_differences({**old_spec, "layout": old_layout}, {**spec, "layout": layout})
                if not d.startswith("fingerprint")
            ]
            if _same_weights_hashed_before(name, diffs, old_spec, pools[name][0]):
                print(
                    f"[radio cache] teacher {name}: this cache fingerprinted its weights by the loaded tensors "
                    "(before 2026-12-05); the same weights are loaded now, so its targets stand and it keeps that "
                    "fingerprint (checked by one pass over the weights per run)",
                    file=sys.stderr,
                )
                specs[name] = {**spec, "weights_sha256": old_spec["weights_sha256"], "fingerprint": old_fp}
                plan.trusted[name] = True
                continue
            raise CacheMismatch(
                f"cache {cfg.output} holds teacher {name!r} computed or stored differently "
                f"(fingerprint {old_fp}, the config gives {spec['fingerprint']}). Differences:\n  "
                + "\n  ".join(diffs or ["(weights)"])
                + f"\nRecompute only this teacher with rebuild=[{name}], or use a new output path."
            )
        plan.trusted[name] = True  # same weights and layout under a new request key: the targets stand
    return pools, specs, layouts


def _same_weights_hashed_before(name: str, diffs: list[str], old_spec: dict, actor) -> bool:
    """Whether the only difference is the weights hash and the held targets' hash is the tensor hash radio recorded
    before it hashed checkpoint files, of the weights loaded now (one extra pass over them, for such a cache only)."""
    import ray

    if any(not d.startswith("weights_sha256") for d in diffs) or not old_spec.get("weights_sha256"):
        return False
    return ray.get(actor.tensor_sha256.remote()) == old_spec["weights_sha256"]


def _held_identity(plan: CachePlan, teacher: str) -> tuple[str, dict]:
    """(fingerprint, layout) of a teacher's committed targets: from the manifest, else from a commit record."""
    if plan.manifest and teacher in plan.manifest.teachers:
        e = plan.manifest.teachers[teacher]
        return e.fingerprint, e.layout.to_dict()
    c = next(iter(plan.tables[teacher].commits.values()))
    return c.fingerprint, c.layout


def _run_pipeline(cfg: CacheJobConfig, plan: CachePlan, source: Source) -> RunResult:
    """The Ray pipeline: prepare tasks -> teacher actors -> write tasks, at most ``max_inflight_units`` units in
    flight. Each teacher's moments are merged as its commits arrive (in unit order)."""
    ray = init_ray(cfg)
    resources = ray.cluster_resources()
    has_gpu = resources.get("GPU", 0) > 0
    reserved, cpus = reserved_cpus(cfg), resources.get("CPU", 0)
    if (
        cpus < reserved + 1
    ):  # actors hold their CPUs all job long: with none left for prepare/write tasks it would wait forever
        raise ConfigError(
            f"Ray has {cpus:g} CPUs, but the teacher actors reserve {reserved:g} (teachers.<t>.actors "
            "x cpus_per_actor) and the prepare/write "
            "tasks need 1 more: lower teachers.<t>.cpus_per_actor or actors, or give Ray "
            f"num_cpus >= {math.ceil(reserved + 1)}"
        )
    pools, specs, layouts = _start_teachers(ray, cfg, plan, plan.needs_teachers, has_gpu)
    from teachers import TeacherSpec
    from teachers.preprocess import resizes_on_host

    todo = {t: set(plan.todo[t]) for t in pools if plan.todo[t]}
    todo_views = set(plan.todo_views)
    # Resized in the prepare tasks when asked and possible (DINOv3's float-order resize runs on its device).
    on_host = {
        t: cfg.teachers[t].resize_in == "prepare" and resizes_on_host(TeacherSpec.from_dict(specs[t])) for t in todo
    }
    res = RunResult(specs=specs, has_gpu=has_gpu, actors={t: len(p) for t, p in pools.items()})
    res.mergers = {t: MomentsMerger(plan.loc, t, plan.n_units, set(plan.tables[t].commits)) for t in todo}
    res.busy, res.rows = {t: 0.0 for t in todo}, {t: 0 for t in todo}
    computed = {"views": len(todo_views), **{t: len(v) for t, v in todo.items()}}
    done = {k: 0 for k in computed}
    work = plan.work_units
    progress = _Progress(cfg.progress, _images_in(cfg, len(source), work))
    if work:
        progress.update(
            0,
            f"{len(work)} units to do, {plan.n_units - len(work)} already cached"
            + (f", {plan.cleaned} leftovers of killed writers removed" if plan.cleaned else ""),
            force=True,
        )
    prep = ray.remote(prepare_unit).options(num_returns=2, num_cpus=1, max_retries=3)
    write = ray.remote(write_teacher_result).options(num_cpus=1, max_retries=3)
    rr = {name: 0 for name in pools}
    inflight: dict = {}  # ref -> (unit, kind)
    unit_left: dict[int, int] = {}
    unit_rows: dict[int, int] = {}
    queue = list(work)
    t_work = time.perf_counter()
    try:
        while queue or inflight:
            while queue and len(unit_left) < cfg.max_inflight_units:
                u = queue.pop(0)
                lo = u * cfg.images_per_shard
                part = source.part(lo, lo + cfg.images_per_shard)  # the task is sent its unit's records only
                need = [t for t in todo if u in todo[t]]
                resize_for = {t: specs[t] for t in need if on_host[t]}
                keep_crops = any(not on_host[t] for t in need)
                prepared, info = prep.remote(
                    part,
                    part.records,
                    cfg.views,
                    cfg.student_resolution,
                    cfg.student_image_format,
                    cfg.max_pixels,
                    plan.loc if u in todo_views else None,
                    u,
                    cfg.row_group_rows,
                    plan.identity,
                    resize_for,
                    keep_crops,
                )
                inflight[info] = (u, "views")
                for name in need:
                    pool = pools[name]
                    actor = pool[rr[name] % len(pool)]
                    rr[name] += 1
                    inflight[
                        write.remote(
                            plan.loc,
                            name,
                            specs[name],
                            layouts[name],
                            actor.run.remote(prepared),
                            cfg.row_group_rows,
                            plan.identity,
                            plan.requests[name],
                        )
                    ] = (u, name)
                unit_left[u] = 1 + len(need)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                u, kind = inflight.pop(ref)
                out = ray.get(ref)
                images = 0
                if kind == "views":
                    unit_rows[u] = out["rows"]
                    images = out["images"] + len(out["skipped"])
                    if out["commit"] is not None:
                        res.views[u] = out["commit"]
                        res.bytes_written += out["commit"].shard.bytes
                        done["views"] += 1
                else:
                    c = out["commit"]
                    res.mergers[kind].add(u, c.moments)
                    res.commits.setdefault(kind, {})[u] = c.without_moments()
                    res.bytes_written += c.shard.bytes
                    res.busy[kind] += out["seconds"]
                    res.rows[kind] += out["rows"]
                    done[kind] += 1
                unit_left[u] -= 1
                if unit_left[u] == 0:
                    del unit_left[u]
                    res.completions.append((time.perf_counter(), unit_rows.get(u, 0)))
                progress.update(images, "  ".join(f"{k} {v}/{computed[k]}" for k, v in done.items() if computed[k]))
    except BaseException:
        # the job reports its own one-line error; the tasks it abandons (their actors are killed below) would
        # each add Ray's "Unhandled error" paragraph after it, at exit
        os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
        raise
    finally:
        progress.close()
        for pool in pools.values():
            for a in pool:
                ray.kill(a)
    res.window_s = (res.completions[-1][0] - t_work) if res.completions else 0.0
    return res


def finalize_cache(cfg: CacheJobConfig, plan: CachePlan, source: Source, result: RunResult) -> Manifest:
    """The manifest and each changed teacher's merged statistics, from commit records only (those held from
    the plan, and this run's); a teacher none of whose shards changed keeps its merged statistics file."""
    old = plan.manifest
    views = _with_mtimes(plan.loc, "views", {**plan.views.commits, **result.views})
    teachers = {}
    for name, st in plan.tables.items():
        commits = _with_mtimes(plan.loc, f"teachers/{name}", {**st.commits, **result.commits.get(name, {})})
        if not commits:
            continue
        old_entry = old.teachers.get(name) if old else None
        if old_entry is not None and name in plan.stale_stats:  # merged again from the commit records
            old_entry = replace(old_entry, moments=None)
        spec = result.specs.get(name) or (
            old_entry.spec if old_entry else shard_meta(plan.loc, teacher_path(name, min(commits))).get("spec")
        )
        teachers[name] = (
            spec,
            old_entry,
            commits,
            result.mergers.get(name),
            plan.requests.get(name) if plan.trusted.get(name) else None,
        )
    m = build_manifest(
        plan.loc,
        plan.identity,
        {**source.describe(), "config": dump_config(cfg.source)},
        cfg.views.to_dict(),
        dump_config(replace(cfg, verify="listing")),  # what built it; a repair is not a setting of it
        plan.n_units,
        list(cfg.teachers),
        views,
        teachers,
        old,
        excluded=source.excluded,
    )
    stat = plan.loc.scan_stat("stats")  # the times the statistics files list now: a rerun sees one written again
    for e in m.teachers.values():
        if e.moments is not None:
            e.moments.mtime_ns = stat.get(posixpath.basename(e.moments.path), (0, None))[1]
    save_manifest(plan.loc, m)
    return m


def _with_mtimes(loc: CacheLocation, rel_dir: str, commits: dict) -> dict:
    """The commits with each shard's modification time as listed now (one listing), for the manifest: a later
    rerun that lists another time for a file knows it was written again, without reading it."""

    if not commits:
        return commits
    stat = loc.scan_stat(rel_dir)
    return {
        u: replace(c, shard=replace(c.shard, mtime_ns=stat.get(posixpath.basename(c.shard.path), (0, None))[1]))
        for u, c in commits.items()
    }


def _images_in(cfg: CacheJobConfig, n_images: int, units: list[int]) -> int:
    """Source images in ``units`` (the last unit may be short)."""
    return sum(min(cfg.images_per_shard, n_images - u * cfg.images_per_shard) for u in units)


def _summary(cfg: CacheJobConfig, plan: CachePlan, m: Manifest, r: RunResult, elapsed: float, run) -> CacheSummary:
    computed = {"views": len(r.views), **{t: len(r.commits.get(t, {})) for t in cfg.teachers}}
    views_per_s = {t: r.rows[t] / r.busy[t] for t in r.busy if r.busy[t] > 0}
    busy_fraction = {t: r.busy[t] / (r.actors[t] * r.window_s) for t in r.busy if r.busy[t] > 0 and r.window_s > 0}
    c = r.completions
    # From the first finished unit to the last: the pipeline's rate once start-up (actors importing torch and
    # loading teachers) is behind it.
    steady = sum(v for _, v in c[1:]) / (c[-1][0] - c[0][0]) if len(c) > 1 and c[-1][0] > c[0][0] else None
    work_images = _images_in(cfg, m.source.get("num_images", 0), plan.work_units)
    return CacheSummary(
        cfg.output,
        m.images,
        m.views.rows,
        len(m.skipped),
        elapsed,
        r.bytes_written,
        computed,
        work_images / elapsed if elapsed > 0 else 0.0,
        views_per_s,
        run.run_id if run else m.mlflow_run_id,
        plan.identity.cache_id,
        steady,
        busy_fraction,
    )


def _report(run, cfg: CacheJobConfig, m: Manifest, summary: CacheSummary, r: RunResult, resolved_yaml: str | None):
    """The run's manifest, metrics and config in MLflow (one naming scheme across radio: cache/... what the
    cache holds, system/... what it cost)."""
    import json

    if run.run_id is None:  # tracking disabled
        return
    m.mlflow_run_id = run.run_id
    save_manifest(CacheLocation(cfg.output), m)
    metrics = {
        "cache/images": summary.images,
        "cache/views": summary.views,
        "cache/skipped": summary.skipped,
        "cache/bytes_written": summary.bytes_written,
        "system/seconds": summary.seconds,
        "system/images_per_s": summary.images_per_s,
        "system/steady_views_per_s": summary.steady_views_per_s,
    }
    for t, entry in m.teachers.items():
        metrics[f"cache/bytes_per_view/{t}"] = entry.bytes_per_view
        metrics[f"cache/bytes_ratio_to_float32_native/{t}"] = entry.bytes_per_view / entry.float32_native_bytes_per_view
    for t, rate in summary.teacher_views_per_s.items():
        metrics[f"system/views_per_s/{t}"] = rate
        metrics[f"system/actor_seconds/{t}"] = r.busy[t]
        metrics[f"system/busy_fraction/{t}"] = summary.teacher_busy_fraction.get(t)
        metrics[f"system/gpu_hours/{t}"] = r.busy[t] * (cfg.teachers[t].gpus_per_actor if r.has_gpu else 0.0) / 3600
    run.log_metrics(metrics)
    log_cache_input(run, cfg.output, m, "output")
    run.log_text(json.dumps(m.to_dict(), indent=1, sort_keys=True), "manifest.json")
    if resolved_yaml:
        run.log_text(resolved_yaml, "config.yaml")
    run.end()


def finalize_manifest(
    cfg: CacheJobConfig, source: Source, identity: CacheIdentity, teachers: list[str], n_units: int
) -> Manifest:
    """The manifest of the shards committed at ``cfg.output`` (for caches written without the job, e.g. synthetic ones):
    plan from the listings, then finalize from the commit records."""
    cfg = _with_teachers(cfg, teachers)
    plan = plan_cache_job(cfg, n_units, identity, {t: None for t in teachers}, say=lambda m: None)
    return finalize_cache(cfg, plan, source, RunResult())


def _with_teachers(cfg: CacheJobConfig, teachers: list[str]) -> CacheJobConfig:

    return replace(cfg, teachers={t: cfg.teachers.get(t, TeacherJobConfig()) for t in teachers}, rebuild=[])


def repair_config(args: list[str]) -> CacheJobConfig:
    """The job that repairs the cache ``args[0]``: the config recorded in its manifest (or ``args[1]``, a
    config file, when given), then ``key=value`` overrides, with ``verify=bytes`` and ``output`` the cache."""
    import json
    import tempfile

    from .config import config_to_yaml, load_config, split_config_args

    if not args or ("=" in args[0] and "://" not in args[0].split("=", 1)[0]):  # a URI's query has '='s
        raise ConfigError("radio cache repair CACHE [CONFIG] [key=value ...]: name the cache to repair")
    uri, (path, overrides) = args[0], split_config_args(args[1:])
    forced = [*overrides, f"output={uri}", "verify=bytes"]
    if path is not None:
        return load_config(CacheJobConfig, path, forced, validate=validate)
    loc = CacheLocation(uri)
    try:  # the manifest's checksum may fail (that can be the damage): its recorded config is all that is read
        recorded = json.loads(loc.read_bytes("manifest.json")).get("config")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if not isinstance(recorded, dict) or not recorded:
        raise ConfigError(
            f"{loc.full('manifest.json')} is missing or unreadable, so the job's config cannot be taken from it: "
            f"pass the config that built the cache: radio cache repair {shlex.quote(uri)} CONFIG [key=value ...]"
        )
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_to_yaml(recorded))
    try:
        return load_config(CacheJobConfig, f.name, forced, validate=validate)
    finally:
        os.unlink(f.name)
