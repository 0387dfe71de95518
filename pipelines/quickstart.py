"""``radio quickstart``: the whole pipeline on embedded defaults, on a laptop CPU.

Built-in sample images -> tiny CLIP, DINOv2 and SAM teachers on local Ray -> two local Parquet caches
(train views, held-out full images; views stored at 64 px, targets at the grids of 64 and 32 px) -> two
students distilled with Accelerate (one at 32 and 64 px in turn, one at 64 px) -> both evaluated the same
way (kNN, linear and dense probes, zero-shot, fidelity, each at both resolutions) -> a comparison table and
the ``mlflow ui`` command that shows the same comparison.
Every step is the real command (``radio cache``, ``radio train``, ``radio eval``, ``radio compare``)
run in-process, and every step resumes: rerunning the quickstart skips what is done.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cache import CacheJobConfig, TeacherJobConfig, run_cache_job
from .config import check_output_dir, config_to_yaml, load_config, require
from .tracking import MlflowConfig

__all__ = ["QuickstartConfig", "StudentVariant", "run_quickstart", "main"]


@dataclass
class StudentVariant:
    """One student to train: a size preset plus the few knobs worth comparing."""

    size: str = "nano"
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    patch_size: int = 8
    epochs: int = 40
    lr: float = 2e-3
    multires: bool = (
        False  # train at every cached resolution in turn (every teacher at each); else at student_resolution
    )


def _default_students() -> dict[str, StudentVariant]:
    return {
        "nano-d4": StudentVariant(size="nano", depth=4, multires=True),
        "nano-d2-wide": StudentVariant(size="nano", depth=2, dim=128, heads=4),
    }


@dataclass
class QuickstartConfig:
    workdir: str = "quickstart"  # caches, runs and pictures are written here
    teachers: list[str] = field(default_factory=lambda: ["tiny-clip", "tiny-dinov2", "tiny-sam"])
    num_views: int = 2
    student_resolution: int = 64  # views are stored at this (the highest) resolution
    low_resolution: int | None = (
        32  # also stored: each teacher's targets at its grid; evaluated at both (null: one resolution)
    )
    limit: int | None = None  # images per split, for a faster smoke run
    students: dict[str, StudentVariant] = field(default_factory=_default_students)
    batch_size: int = 32
    experiment: str = "radio-quickstart"


def validate(cfg: QuickstartConfig):
    """Range checks before any work, each naming the key (``load_config`` adds the value's origin)."""
    for key in ("num_views", "student_resolution", "batch_size"):
        require(getattr(cfg, key) >= 1, key, getattr(cfg, key), ">= 1")
    require(cfg.limit is None or cfg.limit >= 1, "limit", cfg.limit, ">= 1 (or null for every sample)")
    require(bool(cfg.teachers), "teachers", cfg.teachers, "at least one teacher")
    require(bool(cfg.students), "students", cfg.students, "at least one student")
    for name, v in cfg.students.items():
        require(v.epochs >= 1, f"students.{name}.epochs", v.epochs, ">= 1")
        require(v.lr > 0, f"students.{name}.lr", v.lr, "> 0")
        require(
            v.patch_size >= 1 and cfg.student_resolution % v.patch_size == 0,
            f"students.{name}.patch_size",
            v.patch_size,
            f"a divisor of student_resolution ({cfg.student_resolution})",
        )
        if v.multires:
            require(
                all(r % v.patch_size == 0 for r in _resolutions(cfg)),
                f"students.{name}.patch_size",
                v.patch_size,
                f"a divisor of every cached resolution {_resolutions(cfg)} (multires=true)",
            )
    if cfg.low_resolution is not None:
        require(
            1 <= cfg.low_resolution < cfg.student_resolution,
            "low_resolution",
            cfg.low_resolution,
            f"below student_resolution ({cfg.student_resolution}), or null",
        )

    check_output_dir(cfg.workdir, "workdir")


def _resolutions(cfg: QuickstartConfig) -> list[int]:
    return sorted({cfg.student_resolution, *([cfg.low_resolution] if cfg.low_resolution else [])})


def _step(title: str):
    print(f"\n==> {title}", file=sys.stderr, flush=True)


def run_quickstart(cfg: QuickstartConfig) -> dict:
    from .compare import compare_links, compare_runs, format_table, model_page
    from .evaluate import EvalJobConfig, evaluate
    from .tracking import model_id_of, tracking_uri
    from .train import TrainJobConfig, train

    validate(cfg)

    t0 = time.perf_counter()
    work = Path(cfg.workdir)
    teachers = {t: TeacherJobConfig(batch_size=64) for t in cfg.teachers}
    caches = {}
    for split, views in (("train", cfg.num_views), ("val", 1)):
        _step(
            f"radio cache: {split} split of the built-in samples, {views} view(s) per image, teachers "
            f"{', '.join(cfg.teachers)}"
        )
        cache_cfg = load_config(
            CacheJobConfig,
            None,
            [
                f"output={work / 'caches' / split}",
                "source.kind=samples",
                f"source.split={split}",
                f"views.num_views={views}",
                f"student_resolution={cfg.student_resolution}",
                f"target_patch={min(v.patch_size for v in cfg.students.values())}",
                f"mlflow.experiment={cfg.experiment}-caches",
            ]
            + ([f"source.limit={cfg.limit}"] if cfg.limit else [])
            + ([f"lower_resolutions=[{cfg.low_resolution}]"] if cfg.low_resolution else []),
        )
        cache_cfg.teachers = teachers
        summary = run_cache_job(cache_cfg, config_to_yaml(cache_cfg))
        print(summary.format(), file=sys.stderr)
        caches[split] = cache_cfg.output
    runs = {}
    for name, v in cfg.students.items():
        out = work / "runs" / name
        resume = (out / "checkpoints" / "latest").exists()
        res = _resolutions(cfg) if v.multires else [cfg.student_resolution]
        at = f"at {' and '.join(f'{r}px' for r in res)} in turn" if len(res) > 1 else f"at {res[0]}px"
        _step(
            f"radio train: student {name} ({v.size}, depth {v.depth or 'preset'}, dim {v.dim or 'preset'}) "
            f"for {v.epochs} epochs {at}" + (" (resuming)" if resume else "")
        )
        overrides = [
            f"cache={caches['train']}",
            f"output={out}",
            f"student.size={v.size}",
            f"student.patch_size={v.patch_size}",
            f"epochs={v.epochs}",
            f"optim.lr={v.lr}",
            f"loader.batch_size={cfg.batch_size}",
            f"run_name={name}",
            f"mlflow.experiment={cfg.experiment}",
            f"teachers=[{','.join(cfg.teachers)}]",
            f"resume={str(resume).lower()}",
        ]
        overrides += [f"student.{k}={getattr(v, k)}" for k in ("dim", "depth", "heads") if getattr(v, k) is not None]
        if len(res) > 1:
            overrides += ["resolution.mode=cycle", f"resolution.resolutions={res}"]
        tcfg = load_config(TrainJobConfig, None, overrides)
        if resume and (out / "student" / "model.safetensors").exists():
            import json

            runs[name] = json.loads(
                (
                    out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip() / "trainer_state.json"
                ).read_text()
            )["run_id"]
            print(f"already trained: {out}", file=sys.stderr)
        else:
            runs[name] = train(tcfg, config_to_yaml(tcfg))["run_id"]
        _step(f"radio eval: student {name}")
        ecfg = load_config(
            EvalJobConfig,
            None,
            [
                f"student={out / 'student'}",
                f"val_cache={caches['val']}",
                f"train_cache={caches['train']}",
                f"run_id={runs[name]}",
                f"mlflow.experiment={cfg.experiment}",
                f"resolutions={_resolutions(cfg)}",
            ],
        )
        metrics = evaluate(ecfg)
        print(
            "  "
            + "  ".join(
                f"{k}={v:.3f}" for k, v in sorted(metrics.items()) if k.startswith("eval/") and "/teacher/" not in k
            ),
            file=sys.stderr,
        )
    _step("radio compare")
    rows, columns, exp_id = compare_runs(cfg.experiment, "eval/knn_top1")
    # the headline columns here (fidelity per teacher and resolution: `radio compare --experiment ...` shows every one)
    short = [c for c in columns if not c.endswith("_cos") and "/teacher/" not in c]
    print(format_table(rows, short))
    print(f"(every metric: radio compare --experiment {cfg.experiment})")
    cmd, url, table_url, _ = compare_links(tracking_uri(MlflowConfig()), exp_id, rows, columns)
    print(
        f"\nquickstart finished in {time.perf_counter() - t0:.0f}s. See both students side "
        f"by side in MLflow:\n  {cmd}\n  then open {url}\n"
        f"  the students as a table, every eval metric a column: {table_url}"
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(MlflowConfig()))
    for r in rows:  # each student's logged model: its datasets, its eval numbers, how to load it
        model_id = model_id_of(client.get_run(r["run_id"]).data.tags.get("radio.model_uri"))
        if model_id:
            print(f"  {r['run']}'s MLflow model (runs:/{r['run_id']}/model): {model_page(exp_id, model_id)}")
    print(f"Pictures (PCA of features, student vs teachers): {work / 'runs'}/*/student/eval/")
    return {"runs": runs, "caches": caches, "rows": rows}


def main(argv: list[str]) -> int:
    from .config import job_config

    cfg = job_config(
        argv,
        QuickstartConfig,
        "usage: radio quickstart [CONFIG] [key=value ...]\n\nRuns cache -> train x2 -> eval -> "
        "compare on built-in samples with tiny teachers. Keys: `radio config show quickstart`.",
        validate,
    )
    if cfg is None:
        return 0
    run_quickstart(cfg)
    return 0
