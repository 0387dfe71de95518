"""``radio eval RUN_OR_CHECKPOINT``: the same evaluation for every student, logged under stable names.

- ``eval/<teacher>/summary_cos`` and ``eval/<teacher>/features_cos``: fidelity of the adapter outputs to
  the teacher's targets on a held-out cache (features: over valid positions, on the student's grid);
- ``eval/knn_top1`` (cosine, k=20) and ``eval/linear_top1`` on the student's summary, with the same
  protocol on each teacher's own summary as reference (``eval/teacher/<t>/knn_top1``);
- pictures: a PCA of spatial features as RGB for a few fixed images (student trunk, each adapter, each
  teacher target), written to disk and logged as MLflow images; and the loss curve.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from radio.cache import CacheReader, decode_features, decode_summary
from radio.targets import resample_targets
from radio.checkpoint import load_student
from radio.metrics import knn_top1, linear_probe_top1, masked_cosine, pca_rgb

from .config import check_output_dir, load_config, require
from .tracking import MlflowConfig, NullRun, log_cache_input, start_run, tracking_uri

__all__ = ["EvalJobConfig", "evaluate", "main"]


@dataclass
class EvalJobConfig:
    student: str = ""  # a checkpoint directory (OUTPUT/student) or an MLflow run id
    val_cache: str = "caches/samples-val"  # held-out images: fidelity, and kNN / probe queries
    train_cache: str = "caches/samples-train"  # labeled database for kNN and the probe (view 0 of each image)
    knn_k: int = 20
    probe_epochs: int = 300
    batch_size: int = 64
    pictures: int = 4  # fixed held-out images rendered as PCA pictures
    output: str | None = None  # default: <student dir>/eval
    run_id: str | None = None  # the MLflow run to log into (default: the student's training run)
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="radio-students"))


def _resolve_student(ref: str, cfg: EvalJobConfig) -> tuple[Path, str | None]:
    from radio import resolve_student

    path, run_id = resolve_student(ref, tracking_uri(cfg.mlflow))
    return path, cfg.run_id or run_id


@torch.no_grad()
def _embed(model, reader: CacheReader, teachers: list[str], batch_size: int, view0_only: bool, student_grid_for_targets: bool = True):
    """Run the student over a cache; collect summaries, labels, teacher summaries and fidelity."""
    feats_student, labels = [], []
    teacher_summ = {t: [] for t in teachers}
    sums = {t: {"summary": [], "features": []} for t in teachers}
    for batch in reader.iter_batches(batch_rows=batch_size):
        keep = np.ones(len(batch), bool) if not view0_only else (batch.view_index == 0)
        if not keep.any():
            continue
        idx = np.nonzero(keep)[0]
        images = torch.from_numpy(reader.student_pixels(batch, idx)).permute(0, 3, 1, 2)
        out = model.predict(images)
        feats_student.append(out.summary)
        labels.append(torch.from_numpy(batch.label_index[idx].astype(np.int64)))
        h, w = out.features.shape[1:3]
        for t in teachers:
            tb = batch.teachers[t]
            cols = {k: v[idx] for k, v in tb.items()}
            if "summary" in tb:
                target = decode_summary(cols)
                teacher_summ[t].append(target)
                sums[t]["summary"].append(F.cosine_similarity(out.adapters[t]["summary"].float(), target, dim=-1))
            # as in training: stored targets cover exactly the view, moved to the student's grid if it differs
            tgt = resample_targets(decode_features(cols), (h, w))
            sums[t]["features"].append(masked_cosine(out.adapters[t]["features"], tgt))
    return (torch.cat(feats_student), torch.cat(labels), {t: torch.cat(v) for t, v in teacher_summ.items() if v}, {t: {k: float(torch.cat(v).mean()) for k, v in d.items() if v} for t, d in sums.items()})


def _file_stem(image_id: str, limit: int = 80) -> str:
    """A file-name-safe, length-bounded stem for an image id (ids can be long paths with any characters)."""
    import hashlib
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or "image"
    if len(stem) > limit:
        stem = stem[: limit - 13] + "-" + hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return stem


PANEL = 192  # pixels per panel side in the pictures
HIRES = 4  # the student also sees each picture image upsampled this much (more feature cells: visible structure)


def _titled_row(tiles: list[np.ndarray], titles: list[str]) -> np.ndarray:
    """Side-by-side panels (each resized to PANEL px, nearest) with a title strip above each."""
    from PIL import Image, ImageDraw

    bar, gap = 16, 4
    canvas = Image.new("RGB", (len(tiles) * (PANEL + gap) - gap, PANEL + bar), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, (tile, title) in enumerate(zip(tiles, titles)):
        x = j * (PANEL + gap)
        canvas.paste(Image.fromarray(tile).resize((PANEL, PANEL), Image.Resampling.NEAREST), (x, bar))
        draw.text((x + 2, 2), title[:30], fill=(0, 0, 0))
    return np.asarray(canvas)


def _pictures(model, reader: CacheReader, teachers: list[str], n: int, out_dir: Path) -> list[Path]:
    """One PNG per image, titled panels: input | student trunk | student trunk at HIRES x the input |
    per teacher: adapter output, teacher target.

    The first ``n`` held-out images of distinct labels are drawn, so the pictures span classes. An
    adapter and its teacher's target share one PCA basis (fit on both), so equal colors mean equal
    directions in the teacher's feature space. The high-resolution panel feeds the student the same view
    upsampled (bilinear) to HIRES x its side: a grid HIRES x finer, where the student's structure shows
    (the training resolution of a laptop run gives only 8 x 8 cells).
    """
    from PIL import Image

    picked, labels = [], set()
    for batch in reader.iter_batches(batch_rows=64):
        for i in range(len(batch)):
            if batch.view_index[i] == 0 and int(batch.label_index[i]) not in labels:
                labels.add(int(batch.label_index[i]))
                picked.append((batch, i))
        if len(picked) >= n:
            break
    picked = picked[:n]
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("pca_*.png"), out_dir / "pca_columns.txt"]:
        old.unlink(missing_ok=True)
    if not picked:
        return []
    images = torch.from_numpy(np.concatenate([reader.student_pixels(b, [i]) for b, i in picked])).permute(0, 3, 1, 2)
    H, W = images.shape[2:]
    big = F.interpolate(images.float() / 255, size=(H * HIRES, W * HIRES), mode="bilinear", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        out = model.predict(images)
        out_big = model.predict(big)
    hw = tuple(out.features.shape[1:3])
    tiles = [images.permute(0, 2, 3, 1).numpy(), pca_rgb(out.features, (H, W)), pca_rgb(out_big.features, (H * HIRES, W * HIRES))]
    bh, bw = out_big.features.shape[1:3]
    names = ["input", f"student {hw[0]}x{hw[1]}", f"student x{HIRES} ({bh}x{bw})"]
    for t in teachers:
        target = decode_features({k: np.stack([b.teachers[t][k][i] for b, i in picked]) for k in picked[0][0].teachers[t]})
        both = pca_rgb(torch.cat([out.adapters[t]["features"], resample_targets(target, hw)]), (H, W))
        tiles += [both[: len(picked)], both[len(picked) :]]
        names += [f"{t} adapter", f"{t} target"]
    paths = []
    for k, (b, i) in enumerate(picked):
        p = out_dir / f"pca_{k:02d}_{_file_stem(b.image_id[i])}.png"
        Image.fromarray(_titled_row([tile[k] for tile in tiles], names)).save(p)
        paths.append(p)
    return paths


def evaluate(cfg: EvalJobConfig) -> dict[str, float]:
    """Evaluate one student; log into its MLflow run. Returns the metrics."""
    validate(cfg)
    student_dir, run_id = _resolve_student(cfg.student, cfg)
    model = load_student(student_dir).eval()
    teachers = list(model.teacher_names)
    val = CacheReader(cfg.val_cache, teachers)
    train = CacheReader(cfg.train_cache, teachers)
    for name, reader in (("val_cache", val), ("train_cache", train)):
        for t in teachers:
            if reader.fingerprints[t] != model.fingerprints.get(t):
                print(f"[radio eval] warning: {name} holds {t} with fingerprint {reader.fingerprints[t]}, the student was trained on {model.fingerprints.get(t)}", file=sys.stderr)
    q_x, q_y, q_teacher, fidelity = _embed(model, val, teachers, cfg.batch_size, view0_only=True)
    db_x, db_y, db_teacher, _ = _embed(model, train, teachers, cfg.batch_size, view0_only=True)
    metrics: dict[str, float] = {}
    for t, d in fidelity.items():
        for k, v in d.items():
            metrics[f"eval/{t}/{k}_cos"] = v
    labeled = bool((q_y >= 0).all() and (db_y >= 0).all())
    if labeled:
        metrics["eval/knn_top1"] = knn_top1(db_x, db_y, q_x, q_y, k=cfg.knn_k)
        metrics["eval/linear_top1"] = linear_probe_top1(db_x, db_y, q_x, q_y, epochs=cfg.probe_epochs)
        for t in q_teacher:
            metrics[f"eval/teacher/{t}/knn_top1"] = knn_top1(db_teacher[t], db_y, q_teacher[t], q_y, k=cfg.knn_k)
            metrics[f"eval/teacher/{t}/linear_top1"] = linear_probe_top1(db_teacher[t], db_y, q_teacher[t], q_y, epochs=cfg.probe_epochs)
    else:
        print("[radio eval] the caches carry no labels: kNN and linear probe skipped", file=sys.stderr)
    out_dir = Path(cfg.output) if cfg.output else student_dir / "eval"
    pics = _pictures(model, val, teachers, cfg.pictures, out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    tracker = start_run(cfg.mlflow, run_name="eval", run_id=run_id) if run_id else NullRun()
    tracker.log_metrics(metrics)
    for p in pics:
        tracker.log_artifact(str(p), "eval/pictures")
    tracker.log_artifact(str(out_dir / "metrics.json"), "eval")
    log_cache_input(tracker, cfg.val_cache, val.manifest, "evaluation", teachers)
    log_cache_input(tracker, cfg.train_cache, train.manifest, "evaluation-database", teachers)
    tracker.set_description(describe_eval(metrics))
    if run_id:
        tracker.end()
    return metrics


def describe_eval(metrics: dict[str, float]) -> str:
    """Markdown for the run's description: the headline numbers first, where a user comparing runs looks."""
    head = [k for k in ("eval/knn_top1", "eval/linear_top1") if k in metrics]
    fid = sorted(k for k in metrics if k.endswith("_cos"))
    rows = "\n".join(f"| `{k}` | {metrics[k]:.4f} |" for k in head + fid)
    return f"**radio eval** (higher is better; `radio compare` prints the same names)\n\n| metric | value |\n|---|---|\n{rows}\n"


def validate(cfg: EvalJobConfig):
    """Range checks before any work, each naming the key (``load_config`` adds the value's origin)."""
    require(bool(cfg.student), "student", cfg.student, "a checkpoint directory or an MLflow run id", "radio eval RUN_ID_OR_CHECKPOINT_DIR")
    for key, least in (("knn_k", 1), ("probe_epochs", 0), ("batch_size", 1), ("pictures", 0)):
        require(getattr(cfg, key) >= least, key, getattr(cfg, key), f">= {least}")
    if cfg.output:
        check_output_dir(cfg.output)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: radio eval RUN_ID_OR_CHECKPOINT_DIR [CONFIG] [key=value ...]\n\nKeys: `radio config show eval`.")
        return 0 if argv else 2
    from .cli import _split_config_args

    student = argv[0] if "=" not in argv[0] else None
    path, overrides = _split_config_args(argv[1:] if student else argv)
    cfg = load_config(EvalJobConfig, path, overrides + ([f"student={student}"] if student else []), validate=validate)
    metrics = evaluate(cfg)
    width = max(map(len, metrics)) if metrics else 0
    for k, v in sorted(metrics.items()):
        print(f"{k:<{width}}  {v:.4f}")
    return 0
