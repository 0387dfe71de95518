"""``radio eval RUN_OR_CHECKPOINT``: the same evaluation for every student, logged under stable names.

- ``eval/<teacher>/summary_cos`` and ``eval/<teacher>/features_cos``: fidelity of the adapter outputs to
  the teacher's targets on a held-out cache (features: over valid positions, on the student's grid);
- ``eval/knn_top1`` (cosine, k=20) and ``eval/linear_top1`` on the student's summary, with the same
  protocol on each teacher's own summary as reference (``eval/teacher/<t>/knn_top1``);
- ``eval/dense_miou``: a dense linear probe (semantic segmentation, mIoU at pixel resolution) on the student's
  patch features, trained and tested on the built-in scenes (``pipelines.samples.load_scene_index``: images made of
  regions of the sample classes, with per-pixel masks);
- ``eval/<t>/zeroshot_top1``: zero-shot classification through the adaptor of each language-aligned teacher
  (CLIP, SigLIP) against that teacher's text embeddings of the class names (``zero_shot_templates``), with the
  teacher's own stored summary as reference (``eval/teacher/<t>/zeroshot_top1``);
- the resolution sweep (``resolutions``): ``eval/res<r>/...`` fidelity, kNN, dense mIoU and zero-shot at each
  resolution, and ``eval/res<r>/summary_consistency``, the cosine between the student's summary at ``r`` and at
  the evaluation cache's resolution: the mode-switching check (a student that learned another representation at
  high resolution, as RADIOv2.1 did, shows it here and in the zero-shot numbers);
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
from radio.metrics import dense_probe_miou, knn_top1, linear_probe_top1, masked_cosine, pca_rgb, zero_shot_top1
from radio.model import load_student
from radio.targets import resample_targets
from radio.views import derive_resolution

from .compare import metric_order
from .config import ConfigError, check_output_dir, load_config, require
from .tracking import PENDING, MlflowConfig, NullRun, cache_dataset, log_cache_input, start_run, tracking_uri

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
    # the resolution sweep: every metric again at each of these (views derived from the caches' stored ones;
    # above the stored resolution they are upsampled, so only the student's behaviour changes, not the content)
    resolutions: list[int] = field(default_factory=list)
    dense: bool = True  # the dense linear probe on the built-in scenes
    dense_epochs: int = 200
    zero_shot: bool = True  # through each language-aligned teacher's adaptor
    zero_shot_templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    output: str | None = None  # default: <student dir>/eval
    run_id: str | None = None  # the MLflow run to log into (default: the student's training run)
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="radio-students"))


def _resolve_student(ref: str, cfg: EvalJobConfig) -> tuple[Path, str | None]:
    from radio import resolve_student

    path, run_id = resolve_student(ref, tracking_uri(cfg.mlflow))
    return path, cfg.run_id or run_id


def at_resolution(images_B3HW: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 views at ``size`` px: derived (antialiased) below their resolution, bicubic-upsampled above it."""
    if size is None or images_B3HW.shape[-1] == size:
        return images_B3HW
    if size < images_B3HW.shape[-1]:
        return derive_resolution(images_B3HW, size)
    return (
        F.interpolate(images_B3HW.float(), size=(size, size), mode="bicubic", align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
    )


@torch.no_grad()
def _embed(
    model, reader: CacheReader, teachers: list[str], batch_size: int, view0_only: bool, resolution: int | None = None
):
    """Run the student over a cache (at ``resolution``, default the stored one); collect summaries, labels,
    teacher summaries, adaptor summaries (teacher space) and fidelity (against the stored grid nearest the
    student's)."""
    feats_student, labels = [], []
    teacher_summ = {t: [] for t in teachers}
    adapter_summ = {t: [] for t in teachers}
    sums = {t: {"summary": [], "features": []} for t in teachers}
    for batch in reader.iter_batches(batch_rows=batch_size):
        keep = np.ones(len(batch), bool) if not view0_only else (batch.view_index == 0)
        if not keep.any():
            continue
        idx = np.nonzero(keep)[0]
        images = at_resolution(torch.from_numpy(reader.student_pixels(batch, idx)).permute(0, 3, 1, 2), resolution)
        out = model.predict(images)
        feats_student.append(out.summary)
        labels.append(torch.from_numpy(batch.label_index[idx].astype(np.int64)))
        h, w = out.features.shape[1:3]
        for t in teachers:
            tb = batch.teachers[t]
            layout = reader.entry(t).layout
            cols = {k: v[idx] for k, v in layout.columns_at(tb, layout.pick_grid((h, w))).items()}
            if "summary" in tb:
                target = decode_summary(cols)
                teacher_summ[t].append(target)
                adapter_summ[t].append(out.adapters[t]["summary"].float())
                sums[t]["summary"].append(F.cosine_similarity(out.adapters[t]["summary"].float(), target, dim=-1))
            # as in training: stored targets cover exactly the view, moved to the student's grid if it differs
            tgt = resample_targets(decode_features(cols), (h, w))
            sums[t]["features"].append(masked_cosine(out.adapters[t]["features"], tgt))
    return Embedded(
        torch.cat(feats_student),
        torch.cat(labels),
        {t: torch.cat(v) for t, v in teacher_summ.items() if v},
        {t: torch.cat(v) for t, v in adapter_summ.items() if v},
        {t: {k: float(torch.cat(v).mean()) for k, v in d.items() if v} for t, d in sums.items()},
    )


@dataclass
class Embedded:
    summary: torch.Tensor  # (N, D) the student's summary
    labels: torch.Tensor  # (N,)
    teacher_summary: dict  # t -> (N, Dt) stored targets
    adapter_summary: dict  # t -> (N, Dt) the student's adaptor, in the teacher's space
    fidelity: dict  # t -> {"summary": mean cos, "features": mean cos}


@torch.no_grad()
def _scene_features(model, split: str, size: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's patch features (N, h, w, D) and the masks (N, size, size) of the built-in scenes of ``split``,
    each scene resized to ``size`` (PIL bicubic; masks nearest)."""
    from PIL import Image

    from pipelines.samples import load_scene_index

    recs = load_scene_index(split)
    imgs = np.stack(
        [np.asarray(Image.open(r.path).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) for r in recs]
    )
    masks = np.stack([np.asarray(Image.open(r.mask_path).resize((size, size), Image.Resampling.NEAREST)) for r in recs])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    feats = torch.cat([model.predict(x[i : i + batch_size]).features.float() for i in range(0, len(x), batch_size)])
    return feats, torch.from_numpy(masks.astype(np.int64))


def dense_miou(model, size: int, batch_size: int = 64, epochs: int = 200) -> float:
    """The dense linear probe at ``size`` px: mIoU of a linear head on the student's patch features, trained on
    the scenes' train split, tested on their val split."""
    from pipelines.samples import CLASSES

    tr_f, tr_m = _scene_features(model, "train", size, batch_size)
    te_f, te_m = _scene_features(model, "val", size, batch_size)
    return dense_probe_miou(tr_f, tr_m, te_f, te_m, len(CLASSES), epochs=epochs)


def class_text_embeddings(
    model, teachers: list[str], class_names: list[str], templates: list[str]
) -> dict[str, torch.Tensor]:
    """Each language-aligned teacher's text embedding of every class (the mean of its normalized templates):
    {teacher: (K, D)}. A teacher whose text tower cannot be loaded is reported and left out."""
    from teachers import UnknownTeacher, is_language_aligned, text_embeddings

    out = {}
    for t in teachers:
        try:
            if not is_language_aligned(t):
                continue
        except UnknownTeacher:
            continue
        spec = model.meta.get("teachers", {}).get(t, {})
        source = spec.get("source") if spec.get("source") and Path(str(spec.get("source"))).exists() else None
        try:
            emb = text_embeddings(t, [tpl.format(c) for c in class_names for tpl in templates], source=source)
        except (
            Exception
        ) as e:  # a vision-only checkpoint, an offline hub: zero-shot is skipped for this teacher, said so
            print(f"[radio eval] zero-shot through {t} skipped: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        out[t] = F.normalize(F.normalize(emb, dim=-1).reshape(len(class_names), len(templates), -1).mean(1), dim=-1)
    return out


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
    for j, (tile, title) in enumerate(zip(tiles, titles, strict=True)):
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
    big = F.interpolate(images.float() / 255, size=(H * HIRES, W * HIRES), mode="bilinear", align_corners=False).clamp(
        0, 1
    )
    with torch.no_grad():
        out = model.predict(images)
        out_big = model.predict(big)
    hw = tuple(out.features.shape[1:3])
    tiles = [
        images.permute(0, 2, 3, 1).numpy(),
        pca_rgb(out.features, (H, W)),
        pca_rgb(out_big.features, (H * HIRES, W * HIRES)),
    ]
    bh, bw = out_big.features.shape[1:3]
    names = ["input", f"student {hw[0]}x{hw[1]}", f"student x{HIRES} ({bh}x{bw})"]
    for t in teachers:
        target = decode_features(
            {k: np.stack([b.teachers[t][k][i] for b, i in picked]) for k in picked[0][0].teachers[t]}
        )
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
    step = model.min_resolution_step
    bad = [r for r in cfg.resolutions if r % step]
    if bad:
        raise ConfigError(
            f"'resolutions' {cfg.resolutions}: {bad} not multiples of this student's min_resolution_step "
            f"{step} (its patch size); nearest: {[max(step, round(r / step) * step) for r in bad]}"
        )
    val = CacheReader(cfg.val_cache, teachers)
    train = CacheReader(cfg.train_cache, teachers)
    for name, reader in (("val_cache", val), ("train_cache", train)):
        for t in teachers:
            if reader.fingerprints[t] != model.fingerprints.get(t):
                print(
                    f"[radio eval] warning: {name} holds {t} with fingerprint {reader.fingerprints[t]}, "
                    f"the student was trained on {model.fingerprints.get(t)}",
                    file=sys.stderr,
                )
    q = _embed(model, val, teachers, cfg.batch_size, view0_only=True)
    db = _embed(model, train, teachers, cfg.batch_size, view0_only=True)
    metrics: dict[str, float] = {}
    for t, d in q.fidelity.items():
        for k, v in d.items():
            metrics[f"eval/{t}/{k}_cos"] = v
    labeled = bool((q.labels >= 0).all() and (db.labels >= 0).all())
    text = {}
    if labeled:
        metrics["eval/knn_top1"] = knn_top1(db.summary, db.labels, q.summary, q.labels, k=cfg.knn_k)
        metrics["eval/linear_top1"] = linear_probe_top1(
            db.summary, db.labels, q.summary, q.labels, epochs=cfg.probe_epochs
        )
        for t in q.teacher_summary:
            metrics[f"eval/teacher/{t}/knn_top1"] = knn_top1(
                db.teacher_summary[t], db.labels, q.teacher_summary[t], q.labels, k=cfg.knn_k
            )
            metrics[f"eval/teacher/{t}/linear_top1"] = linear_probe_top1(
                db.teacher_summary[t], db.labels, q.teacher_summary[t], q.labels, epochs=cfg.probe_epochs
            )
        if cfg.zero_shot and val.labels:
            text = class_text_embeddings(
                model, [t for t in teachers if t in q.adapter_summary], val.labels, cfg.zero_shot_templates
            )
            for t, emb in text.items():
                metrics[f"eval/{t}/zeroshot_top1"] = zero_shot_top1(q.adapter_summary[t], q.labels, emb)
                metrics[f"eval/teacher/{t}/zeroshot_top1"] = zero_shot_top1(q.teacher_summary[t], q.labels, emb)
    else:
        print("[radio eval] the caches carry no labels: kNN, linear probe and zero-shot skipped", file=sys.stderr)
    base = val.manifest.student_resolution
    if cfg.dense:
        metrics["eval/dense_miou"] = dense_miou(model, base, cfg.batch_size, cfg.dense_epochs)
    for r in sorted(set(cfg.resolutions)):
        p = f"eval/res{r}"
        qr = q if r == base else _embed(model, val, teachers, cfg.batch_size, view0_only=True, resolution=r)
        for t, d in qr.fidelity.items():
            for k, v in d.items():
                metrics[f"{p}/{t}/{k}_cos"] = v
        metrics[f"{p}/summary_consistency"] = float(
            F.cosine_similarity(qr.summary.float(), q.summary.float(), dim=-1).mean()
        )
        if labeled:
            dbr = db if r == base else _embed(model, train, teachers, cfg.batch_size, view0_only=True, resolution=r)
            metrics[f"{p}/knn_top1"] = knn_top1(dbr.summary, dbr.labels, qr.summary, qr.labels, k=cfg.knn_k)
            for t, emb in text.items():
                metrics[f"{p}/{t}/zeroshot_top1"] = zero_shot_top1(qr.adapter_summary[t], qr.labels, emb)
        if cfg.dense:
            metrics[f"{p}/dense_miou"] = (
                metrics["eval/dense_miou"] if r == base else dense_miou(model, r, cfg.batch_size, cfg.dense_epochs)
            )
    out_dir = Path(cfg.output) if cfg.output else student_dir / "eval"
    pics = _pictures(model, val, teachers, cfg.pictures, out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    tracker = start_run(cfg.mlflow, run_name="eval", run_id=run_id, pending=out_dir / PENDING) if run_id else NullRun()
    model_id = (
        tracker.model_id() if run_id else None
    )  # the model page then shows these numbers, measured on the val cache
    # headline numbers first: the model page lists its metrics in the order they were logged
    tracker.log_metrics(
        dict(sorted(metrics.items(), key=lambda kv: metric_order(kv[0]))),
        model_id=model_id,
        dataset=cache_dataset(val.manifest) if model_id else None,
    )
    for p in pics:
        tracker.log_artifact(str(p), "eval/pictures")
    tracker.log_artifact(str(out_dir / "metrics.json"), "eval")
    log_cache_input(tracker, cfg.val_cache, val.manifest, "evaluation", teachers)
    log_cache_input(tracker, cfg.train_cache, train.manifest, "evaluation-database", teachers)
    tracker.set_description(describe_eval(metrics), model_id=model_id)
    if run_id:
        tracker.end()
    return metrics


def describe_eval(metrics: dict[str, float]) -> str:
    """Markdown for the run's description: the headline numbers first, where a user comparing runs looks."""
    head = [k for k in ("eval/knn_top1", "eval/linear_top1", "eval/dense_miou") if k in metrics] + sorted(
        k for k in metrics if k.endswith("zeroshot_top1") and "/teacher/" not in k and "/res" not in k
    )
    fid = sorted(k for k in metrics if k.endswith("_cos"))
    rows = "\n".join(f"| `{k}` | {metrics[k]:.4f} |" for k in head + fid)
    return (
        "**radio eval** (higher is better; `radio compare` prints the same names)\n\n| "
        f"metric | value |\n|---|---|\n{rows}\n"
    )


def validate(cfg: EvalJobConfig):
    """Range checks before any work, each naming the key (``load_config`` adds the value's origin)."""
    require(
        bool(cfg.student),
        "student",
        cfg.student,
        "a checkpoint directory or an MLflow run id",
        "radio eval RUN_ID_OR_CHECKPOINT_DIR",
    )
    for key, least in (("knn_k", 1), ("probe_epochs", 0), ("batch_size", 1), ("pictures", 0), ("dense_epochs", 0)):
        require(getattr(cfg, key) >= least, key, getattr(cfg, key), f">= {least}")
    for i, r in enumerate(cfg.resolutions):
        require(r >= 1, f"resolutions[{i}]", r, ">= 1")
    for i, tpl in enumerate(cfg.zero_shot_templates):
        require(
            tpl.count("{}") == 1,
            f"zero_shot_templates[{i}]",
            tpl,
            "a prompt with one {} where the class name goes",
            "e.g. 'a photo of a {}.'",
        )
    require(
        bool(cfg.zero_shot_templates) or not cfg.zero_shot,
        "zero_shot_templates",
        cfg.zero_shot_templates,
        "at least one template when zero_shot=true",
    )
    if cfg.output:
        check_output_dir(cfg.output)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: radio eval RUN_ID_OR_CHECKPOINT_DIR [CONFIG] [key=value ...]\n\nKeys: `radio config show eval`.")
        return 0 if argv else 2
    from .config import split_config_args

    student = argv[0] if "=" not in argv[0] else None
    path, overrides = split_config_args(argv[1:] if student else argv)
    cfg = load_config(EvalJobConfig, path, overrides + ([f"student={student}"] if student else []), validate=validate)
    metrics = evaluate(cfg)
    width = max(map(len, metrics)) if metrics else 0
    for k, v in sorted(metrics.items()):
        print(f"{k:<{width}}  {v:.4f}")
    return 0
