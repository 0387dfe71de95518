"""Every GPU figure in one call (issue 20): the cache job against tuned teachers, the student's training step,
the reader.

    python bench/gpu_suite.py --out DIR [--budget-s 330] [--work DIR] [--commit SHA]  # one GPU, ~6 min
    python bench/gpu_suite.py --out DIR --smoke  # the same code paths on CPU, tiny sizes

It builds what it needs (real-size CLIP-B/16, DINOv2-B/14-reg and SAM-H with random weights through
``teachers.tiny.save_random_teacher``; an image folder; a synthetic cache with the registry's dims), then measures,
side by side in one run, printing each figure as soon as it has it and appending it to ``DIR/gpu_suite.jsonl`` (and
rewriting ``DIR/gpu_suite.json``), so a run cut short still returns what it measured:

- ``cache/...``: each teacher's bare ``Teacher`` forward and its tuned model (compiled, bf16, FLOPs counted) one
  after another, against the ``radio cache`` job's steady views/s on the same teachers (goal >= 0.9); each teacher's
  MFU and busy fraction inside the job (SAM-H >= 40 %); SAM-H's resize in a prepare task (Pillow, one core)
  against on its device (``resize_in=device``), alone and in a second job; the job's peak host memory (this process
  and its children: Ray and its workers) until its first N images were done and over all 2N.
- ``train/...``: a ViT-B/16 student, batch 256, three adapters on those teachers' targets: steps/s from the cache
  against the same batches resident on the GPU (goal >= 0.9), the compiled step's MFU (>= 35 %), the data-wait
  fraction ``fit()`` logs (<= 5 %), hybrid (SAM-H cached, CLIP and DINOv2 online) and all-online steps/s.
- ``reader/...``: the training reader with the default number of workers at real shapes.

Every figure has a name, a value (``null`` with ``reason`` or ``error`` when it was not measured: a figure that
needs CUDA, a section skipped by the time budget ``--budget-s``, or one that failed; the others go on), its unit,
and its goal and whether it was met. ``--smoke`` runs the same code paths with tiny teachers, a nano student and
tiny sizes, without ``torch.compile``, in well under a minute (``tests/test_gpu_suite.py``). MLflow is never
imported; Ray is started (or joined at ``RAY_ADDRESS``) for the cache jobs only. BENCHMARKS.md ("Every GPU figure
in one call") has the exact command for a GPU machine without Ray (``bench/pack_ray.py``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ROLES = ("clip", "dinov2", "sam")


@dataclass
class Sizes:
    """Everything that differs between the GPU run and ``--smoke``."""

    teachers: dict[str, str]  # role -> registry name
    real_teachers: bool  # save_random_teacher (real-size architectures) or the tiny presets
    batch: dict[str, int]  # teacher batch size per role (the job's and the bare forwards')
    gpus: dict[str, float]  # teachers.<t>.gpus_per_actor: the three actors share one GPU
    dtype: str | None  # teachers' dtype (None: the registry's)
    compile: bool  # torch.compile the tuned teachers, the job's actors (on CUDA) and the student
    images: int  # N: the job runs on 2N images; its peak host memory is taken until N were done, and over all 2N
    views: int
    images_per_shard: int
    max_inflight_units: int
    image_side: int | None  # the folder's images are the samples scaled to this longest side (None: as shipped)
    bare_images: int  # images whose views the bare and tuned forwards run over
    resize_views: int  # views of SAM's resize comparison
    student_resolution: int
    patch: int
    student_size: str
    train_batch: int
    train_images: int  # synthetic cache: images x views, per_shard images per unit
    train_views: int
    train_per_shard: int
    warm_steps: int
    steps: int
    repeats: int
    fit_steps: int
    fit_log_every: int
    hybrid_steps: int
    online_steps: int
    budget_s: float
    min_s: dict[str, float] = field(default_factory=dict)  # a section starts only with this much budget left


GPU = Sizes(
    teachers={"clip": "clip-vit-b16", "dinov2": "dinov2-vitb14-reg", "sam": "sam-vit-h"},
    real_teachers=True,
    batch={"clip": 128, "dinov2": 128, "sam": 16},
    gpus={"clip": 0.2, "dinov2": 0.2, "sam": 0.6},
    dtype="bf16",
    compile=True,
    images=256,
    views=2,
    images_per_shard=64,
    max_inflight_units=4,
    image_side=512,
    bare_images=128,
    resize_views=64,
    student_resolution=224,
    patch=16,
    student_size="base",
    train_batch=256,
    train_images=256,
    train_views=16,
    train_per_shard=16,
    warm_steps=3,
    steps=30,
    repeats=2,
    fit_steps=48,
    fit_log_every=8,
    hybrid_steps=10,
    online_steps=3,
    budget_s=330,
    min_s={
        "teachers": 60,
        "job": 45,
        "train_cache": 15,
        "train": 60,
        "hybrid": 20,
        "online": 25,
        "reader": 5,
        "job_device": 45,
    },
)
SMOKE = Sizes(
    teachers={"clip": "tiny-clip", "dinov2": "tiny-dinov2", "sam": "tiny-sam"},
    real_teachers=False,
    batch={"clip": 8, "dinov2": 8, "sam": 8},
    gpus={"clip": 0.2, "dinov2": 0.2, "sam": 0.6},
    dtype=None,
    compile=False,
    images=8,
    views=2,
    images_per_shard=4,
    max_inflight_units=4,
    image_side=None,
    bare_images=8,
    resize_views=8,
    student_resolution=32,
    patch=8,
    student_size="nano",
    train_batch=8,
    train_images=32,
    train_views=2,
    train_per_shard=8,
    warm_steps=1,
    steps=3,
    repeats=1,
    fit_steps=6,
    fit_log_every=2,
    hybrid_steps=2,
    online_steps=2,
    budget_s=300,
)

CUDA_ONLY = "needs CUDA: MFU is against the GPU's dense bf16 peak"


def figure_specs(sz: Sizes) -> dict[str, dict]:
    """Every figure the suite reports: name -> unit, goal, whether it needs CUDA. Each appears in the JSON."""
    f = {}

    def add(name, unit, goal=None, cuda=False):
        f[name] = {"unit": unit, "goal": goal, "cuda": cuda}

    for name in ("teachers", "images", "train_cache", "ray_start"):
        add(f"build/{name}_s", "s")
    for r in (*ROLES, "sequential"):
        add(f"cache/bare_views_per_s/{r}", "views/s")
        add(f"cache/tuned_views_per_s/{r}", "views/s")
    for r in ROLES:
        add(f"cache/tuned_gflop_per_view/{r}", "GFLOP")
        add(f"cache/tuned_mfu/{r}", "fraction", cuda=True)
    add("cache/resize_prepare_views_per_s/sam", "views/s")
    add("cache/resize_device_views_per_s/sam", "views/s")
    add("cache/resize_device_over_prepare/sam", "ratio")
    add("cache/job_seconds", "s")
    for n in ("n", "2n"):
        add(f"cache/peak_host_mib_{n}", "MiB")
    add("cache/peak_host_growth_2n_over_n", "ratio")
    add("cache/job_steady_views_per_s", "views/s")
    add("cache/job_over_tuned", "ratio", ">= 0.9")
    add("cache/job_over_bare", "ratio")
    for r in ROLES:
        add(f"cache/busy_fraction/{r}", "fraction")
        add(f"cache/mfu_in_job/{r}", "fraction", ">= 0.4" if r == "sam" else None, cuda=True)
    add("cache/gpu_mfu_in_job", "fraction", cuda=True)
    add("cache/job_steady_views_per_s_sam_device", "views/s")
    add("cache/sam_device_over_prepare_job", "ratio")
    add("train/resident_steps_per_s", "steps/s")
    add("train/cached_steps_per_s", "steps/s")
    add("train/cached_over_resident", "ratio", ">= 0.9")
    add("train/cached_images_per_s", "images/s")
    add("train/step_gflop", "GFLOP")
    add("train/achieved_tflops", "TFLOP/s")
    add("train/mfu", "fraction", ">= 0.35", cuda=True)
    add("train/data_wait_fraction", "fraction", "<= 0.05")
    add("train/fit_images_per_s", "images/s")
    add("train/hybrid_steps_per_s", "steps/s")
    add("train/online_steps_per_s", "steps/s")
    add("train/hybrid_over_cached", "ratio")
    add("train/online_over_cached", "ratio")
    add("reader/workers", "processes")
    add("reader/views_per_s", "views/s")
    add("reader/mb_per_s", "MB/s")
    add("reader/checked_over_unchecked", "ratio", ">= 0.97")
    return f


def _met(value, goal: str | None):
    if goal is None or value is None:
        return None
    op, x = goal.split()
    return value >= float(x) if op == ">=" else value <= float(x)


class Suite:
    """Figures as they come: printed (flushed), appended to ``gpu_suite.jsonl`` and rewritten into
    ``gpu_suite.json``."""

    def __init__(self, out: Path, specs: dict, meta: dict, budget_s: float):
        self.out, self.specs, self.meta, self.budget_s = out, specs, meta, budget_s
        self.t0 = time.perf_counter()
        self.figures: dict[str, dict] = {}
        self.mfu_reason = CUDA_ONLY  # why an MFU figure is null: no CUDA, or no known peak for this GPU
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = out / "gpu_suite.jsonl"
        self.jsonl.write_text(json.dumps({"meta": meta}) + "\n")
        self._write()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _write(self):
        doc = {"meta": {**self.meta, "elapsed_s": round(self.elapsed(), 1)}, "figures": self.figures}
        tmp = self.out / ".gpu_suite.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.out / "gpu_suite.json")

    def _record(self, name: str, entry: dict):
        spec = self.specs[name]
        entry = {
            "name": name,
            **entry,
            "unit": spec["unit"],
            "goal": spec["goal"],
            "met": _met(entry.get("value"), spec["goal"]),
            "t_s": round(self.elapsed(), 1),
        }
        self.figures[name] = entry
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(entry) + "\n")
        self._write()
        v = entry.get("value")
        shown = f"{v:.4g}" if isinstance(v, float) else ("null" if v is None else str(v))
        why = entry.get("reason") or entry.get("error") or entry.get("note") or ""
        goal = f"  goal {spec['goal']}: {'met' if entry['met'] else 'NOT met'}" if entry["met"] is not None else ""
        print(f"[{entry['t_s']:6.1f}s] {name:<44} {shown:>10} {spec['unit']}{goal}  {why}".rstrip(), flush=True)

    def put(self, name: str, value, note: str = ""):
        if value is None:
            return self.null(name, reason=note or (self.mfu_reason if self.specs[name]["cuda"] else "not measured"))
        self._record(
            name,
            {
                "value": value if value is None or isinstance(value, int) else float(value),
                **({"note": note} if note else {}),
            },
        )

    def null(self, name: str, reason: str | None = None, error: str | None = None):
        self._record(name, {"value": None, **({"error": error} if error else {"reason": reason or "not measured"})})

    def pending(self, names) -> list[str]:
        return [n for n in names if n not in self.figures]

    def measure(self, section: str, names: list[str], fn, min_s: float = 0.0):
        """Run ``fn()`` (which records ``names``); on failure, or when less than ``min_s`` of the budget is left,
        the names it did not record get ``null`` with the error or the reason. Returns fn's value or None."""
        left = self.budget_s - self.elapsed()
        if left < min_s or left <= 0:
            for n in self.pending(names):
                self.null(
                    n,
                    reason=f"budget: {self.elapsed():.0f}s of --budget-s {self.budget_s:.0f} used; {section} needs "
                    f"~{min_s:.0f}s",
                )
            return None
        print(f"--- {section} ({left:.0f}s of budget left)", flush=True)
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one figure's failure is recorded; the suite goes on
            traceback.print_exc()
            for n in self.pending(names):
                self.null(n, error=f"{section}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500])
            return None
        except BaseException as e:  # Ctrl-C, SystemExit: recorded, then the run stops
            for n in self.pending(names):
                self.null(n, reason=f"{section} interrupted ({type(e).__name__})")
            raise
        finally:
            for n in self.pending(names):  # fn returned without recording them
                self.null(n, reason=f"{section} did not measure it")

    def finish(self, complete: bool, skipped: str = ""):
        for n in self.pending(self.specs):
            self.null(n, reason="not reached" + (f" (--skip {skipped})" if skipped else ""))
        self.meta["complete"] = complete
        self.meta["mlflow_imported"] = sys.modules.get("mlflow") is not None
        self._write()


def _meta(sz: Sizes, smoke: bool, argv: list[str], commit: str | None) -> dict:
    import torch

    def version(mod):
        try:
            from importlib.metadata import version as v

            return v(mod)
        except Exception:  # noqa: BLE001 - not installed: recorded as null
            return None

    if commit is None:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            commit += "+dirty" if dirty else ""
        except Exception:  # noqa: BLE001 - no git or no checkout (the device tool copies the tree without .git)
            commit = "unknown (no git checkout here: pass --commit)"
    cuda = torch.cuda.is_available()
    return {
        "suite": "bench/gpu_suite.py",
        "smoke": smoke,
        "argv": argv,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": torch.cuda.get_device_name()
        if cuda
        else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "ray": version("ray"),
        "transformers": version("transformers"),
        "mlflow_imported": False,
        "teachers": sz.teachers,
        "sizes": asdict(sz),
        "budget_s": sz.budget_s,
    }


# ---------------------------------------------------------------------------------------------
# Building


def build_teachers(sz: Sizes, work: Path) -> dict[str, str]:
    """role -> a local teacher directory: real-size architectures with random weights, or the tiny presets."""
    from teachers.tiny import materialize_tiny, save_random_teacher

    dirs = {}
    for role, name in sz.teachers.items():
        if not sz.real_teachers:
            dirs[role] = materialize_tiny(name)
            continue
        d = work / "teachers" / name
        if not (d / ".complete").exists():
            shutil.rmtree(d, ignore_errors=True)
            save_random_teacher(name, str(d))
            (d / ".complete").write_text("")
        dirs[role] = str(d)
    return dirs


def build_images(sz: Sizes, out: Path, n: int) -> Path:
    """``n`` JPEGs in class folders: the built-in samples (scaled to ``sz.image_side`` on their longest side), each
    repeated under new names as often as needed (new names: new views)."""
    from PIL import Image

    from pipelines.samples import load_sample_index

    recs = load_sample_index()
    made: dict[int, Path] = {}
    for i in range(n):
        k = i % len(recs)
        r = recs[k]
        d = out / r.label
        d.mkdir(parents=True, exist_ok=True)
        dst = d / f"{r.label}_{i:06d}.jpg"
        if k in made:
            shutil.copyfile(made[k], dst)
            continue
        if sz.image_side:
            img = Image.open(r.path).convert("RGB")
            s = sz.image_side / max(img.size)
            img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC).save(dst, quality=90)
        else:
            shutil.copyfile(r.path, dst)
        made[k] = dst
    return out


def _free():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# The sections


def teachers_section(suite: Suite, sz: Sizes, dirs: dict, images: Path, peak, device: str) -> dict:
    """Bare ``Teacher`` and tuned model per teacher, one after another; SAM's two resize paths. Returns
    {"flops": {role: per view}, "tuned_s": {role: s}, "bare_s": {...}, "views": n}."""
    from bench_cache import bare_seconds, resize_seconds, tuned_forward, view_crops

    from pipelines.sources import SourceConfig, open_source
    from radio.views import ViewPolicy
    from teachers import create_teacher

    crops = view_crops(
        open_source(SourceConfig(kind="folder", path=str(images), limit=sz.bare_images)), ViewPolicy(num_views=sz.views)
    )
    n = len(crops)
    out = {"flops": {}, "tuned_s": {}, "bare_s": {}, "views": n}
    for role, name in sz.teachers.items():
        names = [
            f"cache/bare_views_per_s/{role}",
            f"cache/tuned_views_per_s/{role}",
            f"cache/tuned_gflop_per_view/{role}",
            f"cache/tuned_mfu/{role}",
        ]
        if role == "sam":
            names += [
                "cache/resize_prepare_views_per_s/sam",
                "cache/resize_device_views_per_s/sam",
                "cache/resize_device_over_prepare/sam",
            ]

        def one(role=role, name=name):
            bs = sz.batch[role]
            t = create_teacher(name, source=dirs[role], dtype=sz.dtype, device=device)
            t(crops[:bs])  # warm-up
            if role == "sam":
                pil_s, port_s, _ = resize_seconds(t, crops[: sz.resize_views], bs, device)
                k = len(crops[: sz.resize_views])
                suite.put(
                    "cache/resize_prepare_views_per_s/sam",
                    k / pil_s if pil_s else None,
                    note="Pillow on one CPU core, what a prepare task does (resize_in=prepare)",
                )
                suite.put(
                    "cache/resize_device_views_per_s/sam",
                    k / port_s,
                    note=f"the torch port of Pillow + normalization on {device} (resize_in=device)",
                )
                if pil_s:
                    suite.put("cache/resize_device_over_prepare/sam", pil_s / port_s)
            out["bare_s"][role] = bare_seconds(t, crops, bs, device)
            suite.put(
                f"cache/bare_views_per_s/{role}",
                n / out["bare_s"][role],
                note=f"{name}: Teacher (preprocessing + model), batch {bs}, {n} views",
            )
            r = tuned_forward(t, crops, bs, device, compile=sz.compile)
            out["tuned_s"][role], out["flops"][role] = r["seconds"], r["flops_per_view"]
            suite.put(
                f"cache/tuned_views_per_s/{role}",
                r["views_per_s"],
                note=f"model alone on ready inputs, {'torch.compile' if sz.compile else 'eager'}; "
                f"first pass per input size ({r['compile_s']:.1f}s) not counted",
            )
            suite.put(f"cache/tuned_gflop_per_view/{role}", r["flops_per_view"] / 1e9)
            suite.put(f"cache/tuned_mfu/{role}", r["flops_per_view"] * r["views_per_s"] / peak if peak else None)
            del t
            _free()

        suite.measure(f"teacher {name}", names, one, sz.min_s.get("teachers", 0) / 3)
    if len(out["bare_s"]) == len(ROLES):
        suite.put(
            "cache/bare_views_per_s/sequential",
            n / sum(out["bare_s"].values()),
            note="the three teachers one after another in one process",
        )
    if len(out["tuned_s"]) == len(ROLES):
        suite.put(
            "cache/tuned_views_per_s/sequential",
            n / sum(out["tuned_s"].values()),
            note="the three tuned models one after another",
        )
    return out


def job_config(sz: Sizes, dirs: dict, images: Path, output: Path, n_images: int, sam_resize: str = "prepare"):
    from pipelines.cache import CacheJobConfig
    from pipelines.config import load_config

    args = [
        f"output={output}",
        "source.kind=folder",
        f"source.path={images}",
        f"source.limit={n_images}",
        f"views.num_views={sz.views}",
        f"teachers=[{','.join(sz.teachers.values())}]",
        "progress=false",
        "mlflow.enabled=false",
        f"images_per_shard={sz.images_per_shard}",
        f"max_inflight_units={sz.max_inflight_units}",
        f"student_resolution={sz.student_resolution}",
        f"target_patch={sz.patch}",
    ]
    for role, t in sz.teachers.items():
        args += [
            f"teachers.{t}.source={dirs[role]}",
            f"teachers.{t}.batch_size={sz.batch[role]}",
            f"teachers.{t}.gpus_per_actor={sz.gpus[role]}",
            f"teachers.{t}.compile={str(sz.compile).lower()}",
            f"teachers.{t}.resize_in={sam_resize if role == 'sam' else 'prepare'}",
        ]
        args += [f"teachers.{t}.dtype={sz.dtype}"] if sz.dtype else []
    return load_config(CacheJobConfig, None, args)


def run_job(cfg, units_done=None):
    """(seconds, CacheSummary, RSS samples) of one ``radio cache`` job: the summed RSS of this process and its
    children every 0.1 s, each with ``units_done()`` at that moment."""
    from bench_cache import peak_rss_during

    from pipelines.cache import run_cache_job

    def job():
        t0 = time.perf_counter()
        s = run_cache_job(cfg)
        return time.perf_counter() - t0, s

    samples = []
    (secs, summary), _ = peak_rss_during(job, samples, units_done)
    return secs, summary, samples


def _units_done(output: Path, teachers: list[str]):
    """Units whose every teacher shard is committed (its commit record written): the job's progress, from a listing."""

    def probe() -> int:
        return min(
            len(list((output / "teachers" / t).glob("*.commit"))) if (output / "teachers" / t).is_dir() else 0
            for t in teachers
        )

    return probe


def ray_start(suite: Suite, sz: Sizes, dirs: dict, images: Path, work: Path) -> dict:
    """Start (or join) Ray before the jobs: a fixed cost of any job, not what they measure. Returns the jobs'
    shared state."""
    import ray

    from pipelines.cache import init_ray

    joined = bool(os.environ.get("RAY_ADDRESS")) or ray.is_initialized()
    state = {
        "started": not joined,
        "rss_note": "this process and its children; Ray was joined, so its workers count only if they are children "
        "of this process"
        if joined
        else "this process + the Ray it started (raylet, GCS) + Ray's workers",
    }

    def run():
        t0 = time.perf_counter()
        init_ray(job_config(sz, dirs, images, work / "jobs" / "unused", sz.images))
        suite.put(
            "build/ray_start_s",
            time.perf_counter() - t0,
            note="joined a running Ray" if joined else "local Ray started",
        )

    suite.measure("ray start", ["build/ray_start_s"], run)
    return state


def job_2n(suite: Suite, sz: Sizes, dirs: dict, images: Path, work: Path, peak, teach: dict, state: dict):
    """The job on 2N images: its steady views/s against the teachers alone, busy fractions and MFU inside it, and its
    peak host memory until the first N images were done and until all 2N were."""
    names = [
        "cache/job_seconds",
        "cache/peak_host_mib_n",
        "cache/peak_host_mib_2n",
        "cache/peak_host_growth_2n_over_n",
        "cache/job_steady_views_per_s",
        "cache/job_over_tuned",
        "cache/job_over_bare",
        *(f"cache/busy_fraction/{r}" for r in ROLES),
        *(f"cache/mfu_in_job/{r}" for r in ROLES),
        "cache/gpu_mfu_in_job",
    ]

    def run():
        out = work / "jobs" / "prepare"
        secs, s, samples = run_job(
            job_config(sz, dirs, images, out, 2 * sz.images), _units_done(out, list(sz.teachers.values()))
        )
        state["steady"] = s.steady_views_per_s
        suite.put(
            "cache/job_seconds",
            secs,
            note=f"{2 * sz.images} images x {sz.views} views, {2 * sz.images // sz.images_per_shard} "
            "units, end to end (actor start-up and compile included)",
        )
        half = sz.images // sz.images_per_shard  # units of the first N images
        rss_n = max((r for r, done in samples if done < half), default=None)
        rss_2n = max((r for r, _ in samples), default=None)
        suite.put(
            "cache/peak_host_mib_n",
            rss_n / 2**20 if rss_n else None,
            note=f"until the first {sz.images} images' units were committed; {state.get('rss_note', '')}",
        )
        suite.put("cache/peak_host_mib_2n", rss_2n / 2**20 if rss_2n else None, note=f"all {2 * sz.images} images")
        suite.put("cache/peak_host_growth_2n_over_n", rss_2n / rss_n if rss_n and rss_2n else None)
        steady = s.steady_views_per_s
        suite.put(
            "cache/job_steady_views_per_s",
            steady,
            note=f"first unit done -> last unit done: start-up excluded; at most {sz.max_inflight_units} "
            "units in flight",
        )
        n, missing = teach.get("views", 0), "the teachers section did not time all three teachers"
        tuned = n / sum(teach["tuned_s"].values()) if len(teach.get("tuned_s", {})) == len(ROLES) else None
        bare = n / sum(teach["bare_s"].values()) if len(teach.get("bare_s", {})) == len(ROLES) else None
        suite.put(
            "cache/job_over_tuned",
            steady / tuned if steady and tuned else None,
            note="the job's three teachers in parallel actors vs the tuned models one after another"
            if tuned
            else missing,
        )
        suite.put("cache/job_over_bare", steady / bare if steady and bare else None, note="" if bare else missing)
        flops = teach.get("flops", {})
        for role, t in sz.teachers.items():
            suite.put(
                f"cache/busy_fraction/{role}",
                s.teacher_busy_fraction.get(t),
                note="actor compute time / time work was in flight",
            )
            rate = s.teacher_views_per_s.get(t)  # views per second of the actor's busy time
            mfu = flops[role] * rate / peak if peak and role in flops and rate else None
            suite.put(
                f"cache/mfu_in_job/{role}",
                mfu,
                note="FLOPs per view (counted) x views per busy second of its actor / peak"
                if mfu is not None
                else ("no FLOP count (teachers section) or no rate from the job" if peak else ""),
            )
        flops_all = sum(flops.values()) if len(flops) == len(ROLES) else None
        mfu = steady * flops_all / peak if peak and steady and flops_all else None
        suite.put(
            "cache/gpu_mfu_in_job",
            mfu,
            note="all three teachers' FLOPs at the job's steady rate / peak"
            if mfu is not None
            else ("no FLOP count (teachers section) or no steady rate" if peak else ""),
        )

    suite.measure("cache job, 2N images", names, run, sz.min_s.get("job", 0))


def job_device(suite: Suite, sz: Sizes, dirs: dict, images: Path, work: Path, state: dict):
    """The same job with SAM's views resized on its device (resize_in=device) instead of in the prepare tasks."""
    names = ["cache/job_steady_views_per_s_sam_device", "cache/sam_device_over_prepare_job"]

    def run():
        _, s, _ = run_job(job_config(sz, dirs, images, work / "jobs" / "device", 2 * sz.images, sam_resize="device"))
        suite.put(
            "cache/job_steady_views_per_s_sam_device",
            s.steady_views_per_s,
            note=f"{sz.teachers['sam']} resize_in=device, the others prepare",
        )
        prep = state.get("steady")
        suite.put(
            "cache/sam_device_over_prepare_job",
            s.steady_views_per_s / prep if s.steady_views_per_s and prep else None,
            note="" if prep else "no steady rate from the resize_in=prepare job",
        )

    suite.measure("cache job, SAM resized on its device", names, run, sz.min_s.get("job_device", 0))


class _Metrics:
    """A tracker for ``Trainer.fit`` that keeps what it logs."""

    run_id = None

    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step=None, wait=True):
        self.rows.append(dict(metrics))

    def __getattr__(self, name):
        return lambda *a, **k: None


def train_cache(suite: Suite, sz: Sizes, work: Path) -> Path | None:
    """The synthetic cache the student trains on: the three teachers' registry dims, random float16 targets."""
    from pipelines.synthetic import make_synthetic_cache

    cache = work / "train-cache"

    def build():
        t0 = time.perf_counter()
        if not (cache / "manifest.json").exists():
            make_synthetic_cache(
                cache,
                limit=sz.train_images,
                views=sz.train_views,
                per_shard=sz.train_per_shard,
                teachers=list(sz.teachers.values()),
                student_resolution=sz.student_resolution,
                target_patch=sz.patch,
                row_group_rows=64,
                split="all",
            )
        suite.put(
            "build/train_cache_s",
            time.perf_counter() - t0,
            note=f"{sz.train_images * sz.train_views} views, registry dims, random float16 targets",
        )

    suite.measure("synthetic training cache", ["build/train_cache_s"], build, sz.min_s.get("train_cache", 0))
    return cache if (cache / "manifest.json").exists() else None


def _trainer(sz: Sizes, dirs: dict, work: Path, cache: Path, tag: str, online=()):
    import bench_train as bt

    return bt.make_trainer(
        str(cache),
        list(sz.teachers.values()),
        size=sz.student_size,
        patch=sz.patch,
        batch_size=sz.train_batch,
        compile=sz.compile,
        online=list(online),
        sources={t: dirs[r] for r, t in sz.teachers.items()},
        output=str(work / f"train-{tag}"),
    )


def train_cached(suite: Suite, sz: Sizes, dirs: dict, work: Path, cache: Path | None, peak, state: dict):
    """Steps/s from the cache against the same batches resident on the device (alternating stretches), the step's
    FLOPs and MFU, then ``Trainer.fit`` on the same compiled trainer for the data-wait fraction it logs."""
    import statistics

    import bench_train as bt

    names = [
        "train/resident_steps_per_s",
        "train/cached_steps_per_s",
        "train/cached_over_resident",
        "train/cached_images_per_s",
        "train/step_gflop",
        "train/achieved_tflops",
        "train/mfu",
        "train/data_wait_fraction",
        "train/fit_images_per_s",
    ]

    def run():
        if cache is None:
            raise RuntimeError("no training cache (its build failed or was skipped)")
        tr = _trainer(sz, dirs, work, cache, "cached")
        try:
            it = bt.loader_batches(tr)
            bt.warm_up(tr, it, sz.warm_steps)  # (and compilation)
            runs, mem = [], []
            for _ in range(
                sz.repeats
            ):  # alternating stretches: a slow moment of the machine does not land on one side only
                t, held = bt.timed_steps(tr, sz.steps, it)
                runs.append(t)
                dev = [bt.to_device(b, tr.acc.device) for b in held]
                mem.append(bt.timed_steps(tr, sz.steps, held=dev)[0])
                del held, dev
            cached_s, mem_s = statistics.median(runs), statistics.median(mem)
            state["cached_s"] = cached_s
            suite.put(
                "train/resident_steps_per_s",
                1 / mem_s,
                note=f"{sz.student_size}/p{sz.patch} at {sz.student_resolution}px, batch {sz.train_batch}, "
                f"the same batches already on {tr.acc.device}",
            )
            suite.put(
                "train/cached_steps_per_s",
                1 / cached_s,
                note=f"through the real loader ({tr.workers} worker processes; 0: the reader "
                f"thread), epoch restarts included ({len(tr.stream)} batches an epoch)",
            )
            suite.put("train/cached_over_resident", mem_s / cached_s)
            suite.put("train/cached_images_per_s", sz.train_batch / cached_s)
            flops = bt.step_flops(tr, next(it))
            suite.put("train/step_gflop", flops / 1e9, note="forward + backward, counted by FlopCounterMode (eager)")
            suite.put("train/achieved_tflops", flops / mem_s / 1e12, note="on the resident batches")
            suite.put(
                "train/mfu",
                flops / mem_s / peak if peak else None,
                note=("compiled step, resident batches" if sz.compile else "not compiled") if peak else "",
            )
            it.close()  # stops the loader's workers (or thread) before fit() starts its own
            # Trainer.fit, the loop that logs system/data_wait_fraction, on the same (already compiled) trainer
            rec = _Metrics()
            tr.cfg.max_steps, tr.cfg.log_every, tr.cfg.checkpoint_every = sz.fit_steps, sz.fit_log_every, 10**9
            tr.state.step = tr.state.epoch = tr.state.batch_in_epoch = 0
            tr.fit(rec)
            rows = [r for r in rec.rows if "system/images_per_s" in r]
            secs = [sz.train_batch * sz.fit_log_every / r["system/images_per_s"] for r in rows]
            suite.put(
                "train/data_wait_fraction",
                sum(r["system/data_wait_fraction"] * x for r, x in zip(rows, secs, strict=True)) / sum(secs),
                note=f"Trainer.fit over {sz.fit_steps} steps ({len(rows)} logged windows, time-weighted)",
            )
            suite.put("train/fit_images_per_s", sz.train_batch * sz.fit_log_every * len(rows) / sum(secs))
        finally:
            del tr
            _free()

    suite.measure("training from the cache vs resident", names, run, sz.min_s.get("train", 0))


def train_online(suite: Suite, sz: Sizes, dirs: dict, work: Path, cache: Path | None, state: dict):
    """Hybrid (SAM cached, CLIP and DINOv2 run in the step) and all-online steps/s, beside all-cached."""
    import bench_train as bt

    def mode(tag, online, steps, name, ratio):
        def run():
            if cache is None:
                raise RuntimeError("no training cache (its build failed or was skipped)")
            tr = _trainer(sz, dirs, work, cache, tag, online)
            try:
                it = bt.loader_batches(tr)
                bt.warm_up(tr, it, max(1, sz.warm_steps - 1))
                t, _ = bt.timed_steps(tr, steps, it)
                it.close()
                suite.put(name, 1 / t, note=f"online (not compiled): {', '.join(online)}; {steps} steps")
                cached_s = state.get("cached_s")
                suite.put(
                    ratio,
                    cached_s / t if cached_s else None,
                    note="" if cached_s else "no all-cached figure to compare with",
                )
            finally:
                del tr
                _free()

        return run

    hybrid = [sz.teachers["clip"], sz.teachers["dinov2"]]
    suite.measure(
        "hybrid (SAM cached, CLIP + DINOv2 online)",
        ["train/hybrid_steps_per_s", "train/hybrid_over_cached"],
        mode("hybrid", hybrid, sz.hybrid_steps, "train/hybrid_steps_per_s", "train/hybrid_over_cached"),
        sz.min_s.get("hybrid", 0),
    )
    suite.measure(
        "all online",
        ["train/online_steps_per_s", "train/online_over_cached"],
        mode(
            "online",
            list(sz.teachers.values()),
            sz.online_steps,
            "train/online_steps_per_s",
            "train/online_over_cached",
        ),
        sz.min_s.get("online", 0),
    )


def reader_section(suite: Suite, sz: Sizes, cache: Path | None):
    def run():
        from bench_reader import checked_over_unchecked, read_rate

        from radio.cache import CacheReader
        from radio.data import LoaderConfig, resolve_workers

        if cache is None:
            raise RuntimeError("no training cache (its build failed or was skipped)")
        names = list(sz.teachers.values())
        workers = resolve_workers(LoaderConfig())
        suite.put("reader/workers", workers, note="the trainer's default for this machine")
        reader = CacheReader(str(cache))
        per_view = sum(reader.entry(t).bytes_per_view for t in names) + reader.manifest.views.bytes / reader.num_rows()
        rows, dt, _ = read_rate(str(cache), names, workers, sz.train_batch)
        suite.put(
            "reader/views_per_s",
            rows / dt,
            note=f"all readers together, second epoch of {rows} views, batch {sz.train_batch}",
        )
        suite.put("reader/mb_per_s", rows / dt * per_view / 1e6, note=f"{per_view / 1e6:.3f} MB per view")
        ratio, on, off = checked_over_unchecked(str(cache), names, workers, sz.train_batch)
        suite.put(
            "reader/checked_over_unchecked",
            ratio,
            note=f"every byte checked (xxh3 of each local shard) / no check: {on:.0f} / {off:.0f} views/s, "
            "medians of 3 alternating epochs (issue 19)",
        )

    suite.measure(
        "reader",
        ["reader/workers", "reader/views_per_s", "reader/mb_per_s", "reader/checked_over_unchecked"],
        run,
        sz.min_s.get("reader", 0),
    )


def _overrides(p: argparse.ArgumentParser, items: list[str]) -> dict:
    """``--set field=value`` (value as JSON, or a plain string) for fields of Sizes."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(Sizes)}
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        if key not in fields:
            p.error(f"--set {key}: not a field of Sizes ({', '.join(sorted(fields))})")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def use_packed_ray(tar: str) -> Path:
    """Unpack ``tar`` (bench/pack_ray.py's tar.xz of a Ray tree) once under the temp directory and put it first on
    this process's path and on PYTHONPATH, which Ray's raylet and workers inherit."""
    import hashlib
    import tarfile

    with open(tar, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    dest = Path(tempfile.gettempdir()) / f"radio-ray-{digest}"
    if not (dest / ".complete").exists():
        shutil.rmtree(dest, ignore_errors=True)
        with tarfile.open(tar) as t:
            t.extractall(
                dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {})
            )  # keeps raylet's execute bit
        (dest / ".complete").write_text("")
    sys.path.insert(0, str(dest))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(dest), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", required=True, help="directory for gpu_suite.json and gpu_suite.jsonl (e.g. the device tool's $OUT)"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny teachers and sizes on CPU: the same code paths in well under a minute",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip what would start after this many seconds (default: 330 on a GPU, 300 with --smoke)",
    )
    p.add_argument(
        "--work",
        default=None,
        help="where teachers, images and caches go (default: a temporary directory, removed at the end)",
    )
    p.add_argument("--commit", default=None, help="the commit measured, where this tree has no .git")
    p.add_argument(
        "--skip", default="", help="comma-separated sections to skip: teachers,cache,train,reader,device-job"
    )
    p.add_argument(
        "--ray-tar",
        default=None,
        help="a stripped Ray packed by bench/pack_ray.py (for a machine without Ray): unpacked once, put on the path",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="override one of the sizes (see Sizes), e.g. --set images=512 --set "
        '\'batch={"clip":256,"dinov2":256,"sam":32}\'',
    )
    ns = p.parse_args(argv)
    if ns.ray_tar:
        use_packed_ray(ns.ray_tar)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ray's workers import pipelines/ and teachers/ from this tree even where the project is not installed
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    import torch

    cuda = torch.cuda.is_available()
    sz = replace(
        SMOKE if ns.smoke else GPU,
        **({"budget_s": ns.budget_s} if ns.budget_s is not None else {}),
        **_overrides(p, ns.set),
    )
    skip = set(filter(None, ns.skip.split(",")))
    device = "cuda" if cuda else "cpu"
    from bench_train import peak_flops

    peak = peak_flops()
    meta = _meta(sz, ns.smoke, sys.argv[1:] if argv is None else list(argv), ns.commit)
    meta["peak_bf16_tflops"] = peak / 1e12 if peak else None
    meta["ray_address"] = os.environ.get("RAY_ADDRESS")
    if not cuda and not ns.smoke:
        meta["warning"] = "no CUDA: the GPU sizes on a CPU will not finish in the budget; use --smoke"
    suite = Suite(Path(ns.out), figure_specs(sz), meta, sz.budget_s)
    if cuda and not peak:
        suite.mfu_reason = f"no dense bf16 peak known for {meta['machine']} (bench_train.PEAK_BF16)"
    print(
        f"gpu_suite: {meta['machine']}; torch {meta['torch']}; "
        f"ray {meta['ray']}; {'smoke' if ns.smoke else 'full'}; budget {sz.budget_s:.0f}s; out {ns.out}",
        flush=True,
    )
    work = Path(ns.work) if ns.work else Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    complete, state = False, {}
    try:
        dirs = {}

        def teachers_():
            t0 = time.perf_counter()
            dirs.update(build_teachers(sz, work))
            suite.put(
                "build/teachers_s",
                time.perf_counter() - t0,
                note="save_random_teacher: real-size architectures, random weights"
                if sz.real_teachers
                else "tiny presets",
            )

        suite.measure("build teachers", ["build/teachers_s"], teachers_)
        images = work / "images"

        def images_():
            t0 = time.perf_counter()
            build_images(sz, images, 2 * sz.images)
            suite.put(
                "build/images_s",
                time.perf_counter() - t0,
                note=f"{2 * sz.images} JPEGs" + (f", longest side {sz.image_side}px" if sz.image_side else ""),
            )

        suite.measure("build images", ["build/images_s"], images_)
        ok = len(dirs) == len(ROLES)
        teach, state, cache = {}, {}, None
        # Most wanted first: a run cut short by the budget keeps the job's and the student's headline figures.
        if ok and "teachers" not in skip:
            teach = teachers_section(suite, sz, dirs, images, peak, device)
        if ok and "cache" not in skip:
            state = ray_start(suite, sz, dirs, images, work)
            job_2n(suite, sz, dirs, images, work, peak, teach, state)
        if ok and "train" not in skip:
            cache = train_cache(suite, sz, work)
            train_cached(suite, sz, dirs, work, cache, peak, state)
        elif (work / "train-cache" / "manifest.json").exists():
            cache = work / "train-cache"
        if "reader" not in skip:
            reader_section(suite, sz, cache)
        if ok and "train" not in skip:
            train_online(suite, sz, dirs, work, cache, state)
        if ok and "cache" not in skip and "device-job" not in skip:
            job_device(suite, sz, dirs, images, work, state)
        complete = True
    finally:
        if state.get("started"):
            import ray

            ray.shutdown()
        if not ns.work:
            shutil.rmtree(work, ignore_errors=True)
        suite.finish(complete, ns.skip)
        met = [f for f in suite.figures.values() if f["met"] is not None]
        nulls = [f for f in suite.figures.values() if f["value"] is None]
        print(
            f"gpu_suite: {len(suite.figures)} figures in {suite.elapsed():.0f}s, "
            f"{sum(f['met'] for f in met)}/{len(met)} goals met, {len(nulls)} "
            f"null; {Path(ns.out) / 'gpu_suite.json'}",
            flush=True,
        )
        if "mlflow" in sys.modules:
            print("gpu_suite: warning: mlflow was imported", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
