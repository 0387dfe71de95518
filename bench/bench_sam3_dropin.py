"""A distilled student in front of SAM3's own decoder (issue 30, item 6): mask IoU against SAM3's own encoder.

    python bench/bench_sam3_dropin.py --epochs 20 --threads 1

A whole tiny SAM3 (``teachers.tiny.save_tiny_sam3_whole``: vision encoder, text encoder, DETR, mask decoder) is the
teacher, through the real entry points: ``radio cache`` on the built-in samples (train split, 2 views per image)
with two targets of that same checkpoint, ``tiny-sam3-trunk`` (the ViT trunk, C-RADIOv4's target) and ``tiny-sam3``
(the neck's scale-1 level), then ``radio train`` of one patch-8 student with both adaptors. The student goes in front
of SAM3's decoder with ``radio.sam3.sam3_with_student``, once per adaptor, and every model gets the same prompts on
the built-in scenes (never trained on): three text prompts (fixed token ids: the tiny text encoder has no tokenizer;
box prompts need torchvision's ``roi_align``, which this project does not install). Printed: the IoU of its masks
(``pred_masks > 0``, every query, at SAM3's mask resolution) to SAM3's own, for

- the trained student through each adaptor;
- the same student untrained (same architecture and target statistics, fresh weights): the control;
- SAM3's own scale-1 level through the ``sam3`` (level) path: that path's ceiling (its finer levels are derived);
- SAM3's own features of another scene: the chance floor of this IoU (random tiny decoders favour positive masks).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# bos, tokens, eos of the tiny CLIP text encoder (vocab 99)
TEXT_PROMPTS = ([0, 5, 7, 9, 1], [0, 42, 1, 1, 1], [0, 17, 63, 88, 1])


def distill(work: Path, epochs: int = 20, sam3_dir: str | None = None) -> tuple[str, str]:
    """Cache both SAM3 targets of a whole tiny SAM3 and train one student on them (``radio cache`` then ``radio
    train``). -> (SAM3 checkpoint directory, student directory)."""
    from pipelines.cli import main
    from teachers.tiny import save_tiny_sam3_whole

    sam3_dir = sam3_dir or save_tiny_sam3_whole(str(work / "sam3"))
    teachers = "{tiny-sam3-trunk: {source: %s, batch_size: 64}, tiny-sam3: {source: %s, batch_size: 64}}"
    rc = main(
        [
            "cache",
            f"output={work / 'cache'}",
            "teachers=" + teachers % (sam3_dir, sam3_dir),
            "student_resolution=32",  # tiny-SAM3's 4x4 grid at patch 8
            "target_patch=8",
            "views.num_views=2",
            "images_per_shard=64",
            "progress=false",
            "mlflow.enabled=false",
        ]
    )
    if rc:
        raise RuntimeError(f"radio cache exited {rc}")
    rc = main(
        [
            "train",
            f"cache={work / 'cache'}",
            f"output={work / 'run'}",
            "teachers=[tiny-sam3-trunk,tiny-sam3]",
            "student.patch_size=8",
            "student.depth=2",
            "loader.batch_size=32",
            "loader.num_workers=0",
            f"epochs={epochs}",
            "checkpoint_every=100000",
            "mlflow.enabled=false",
        ]
    )
    if rc:
        raise RuntimeError(f"radio train exited {rc}")
    return sam3_dir, str(work / "run" / "student")


def untrained_like(student, seed: int = 0):
    """The student's architecture with fresh weights (as training starts them) and its target statistics."""
    from radio.model import DistillModel, RadioModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DistillModel(student.model.student_cfg, student.model.adapter_cfgs)
    return RadioModel(model, student.stats, student.meta).eval()


def scene_pixels(sam3_dir: str, limit: int | None = None) -> torch.Tensor:
    """The built-in scenes (B, 3, 56, 56) as SAM3's processor gives them (the teacher's preprocessing, bitwise the
    official processor's)."""
    from PIL import Image

    from pipelines.samples import load_scene_index
    from teachers.registry import create_teacher

    teacher = create_teacher("tiny-sam3", source=sam3_dir)
    images = [
        torch.from_numpy(np.array(Image.open(r.path).convert("RGB"))).permute(2, 0, 1)
        for r in load_scene_index()[:limit]
    ]
    return torch.stack(teacher.preprocess(images)[0])


@torch.no_grad()
def masks(model, pixel_values: torch.Tensor, vision_embeds=None) -> torch.Tensor:
    """(P, B, Q, H, W) bool: ``pred_masks > 0`` for each of the P text prompts."""
    image = {"pixel_values": pixel_values} if vision_embeds is None else {"vision_embeds": vision_embeds}
    if vision_embeds is None:  # the vision encoder once, as SAM3's get_vision_features is meant to be used
        image = {"vision_embeds": model.get_vision_features(pixel_values=pixel_values)}
    ids = [torch.tensor([t]).expand(len(pixel_values), -1) for t in TEXT_PROMPTS]
    return torch.stack([model(**image, input_ids=i).pred_masks for i in ids]) > 0


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean IoU over masks (every leading index) of two bool stacks (..., H, W); an empty union counts 1."""
    a, b = a.flatten(-2), b.flatten(-2)
    inter, union = (a & b).sum(-1).float(), (a | b).sum(-1).float()
    return float(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean())


@torch.no_grad()
def evaluate(sam3_dir: str, student_dir: str, limit: int | None = None) -> dict[str, float]:
    """Mask IoU to SAM3's own masks on the scenes: trained and untrained student per adaptor, the level path's
    ceiling and the chance floor."""
    from transformers import Sam3Model
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    import radio
    from radio.sam3 import StudentSam3VisionEncoder, adaptor_teacher, sam3_with_student

    sam3 = Sam3Model.from_pretrained(sam3_dir).eval()
    student = radio.load_student(student_dir)
    control = untrained_like(student)
    px = scene_pixels(sam3_dir, limit)
    ref = masks(sam3, px)
    out = {"positive_fraction": float(ref.float().mean())}
    for adaptor, key in (("tiny-sam3-trunk", "trunk"), ("tiny-sam3", "level")):
        for name, s in (("trained", student), ("untrained", control)):
            got = masks(sam3_with_student(sam3, s, adaptor), px)
            assert got.shape == ref.shape, (got.shape, ref.shape)
            out[f"{key}/{name}"] = mask_iou(got, ref)
    # the level path fed SAM3's own scale-1 level: what that path loses in its derived finer levels
    own = sam3.vision_encoder(px)
    enc = StudentSam3VisionEncoder(student, *adaptor_teacher(student, "tiny-sam3"), sam3.vision_encoder)
    i = enc.scale_factors.index(1.0)
    trunk = enc.least_norm_trunk(own.fpn_hidden_states[i])
    levels = [layer(trunk) for layer in enc.neck.fpn_layers]
    levels[i] = own.fpn_hidden_states[i]
    pos = own.fpn_position_encoding
    ceiling = Sam3VisionEncoderOutput(fpn_hidden_states=tuple(levels), fpn_position_encoding=pos)
    out["level/ceiling"] = mask_iou(masks(sam3, px, ceiling), ref)
    perm = torch.roll(torch.arange(len(px)), 1)
    other = Sam3VisionEncoderOutput(
        fpn_hidden_states=tuple(x[perm] for x in own.fpn_hidden_states), fpn_position_encoding=pos
    )
    out["chance"] = mask_iou(masks(sam3, px, other), ref)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--workdir", default=None, help="keep the SAM3, cache and run here (default: a temporary one)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; 1 on a shared machine)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="sam3-dropin-") as tmp:
        work = Path(a.workdir or tmp)
        os.environ.setdefault("RADIO_HOME", str(work / "radio-home"))
        t0 = time.perf_counter()
        sam3_dir, student_dir = distill(work, a.epochs)
        t1 = time.perf_counter()
        r = evaluate(sam3_dir, student_dir)
        t2 = time.perf_counter()
    n = len(__import__("pipelines.samples", fromlist=["x"]).load_scene_index())
    print(f"SAM3 drop-in on {n} built-in scenes, 3 text prompts; mask IoU to SAM3's own masks (pred_masks > 0)")
    print(f"  distill (cache + train, {a.epochs} epochs) {t1 - t0:.1f}s, evaluate {t2 - t1:.1f}s")
    print(f"  SAM3's own masks: {r['positive_fraction']:.0%} positive pixels")
    print(f"  {'path':28s} {'trained':>8s} {'untrained':>10s}")
    for key, label in (("trunk", "trunk adaptor (C-RADIOv4)"), ("level", "scale-1 level adaptor")):
        print(f"  {label:28s} {r[key + '/trained']:8.3f} {r[key + '/untrained']:10.3f}")
    print(f"  level path fed SAM3's own scale-1 level (its ceiling): {r['level/ceiling']:.3f}")
    print(f"  SAM3's own features of another scene (chance floor):   {r['chance']:.3f}")


if __name__ == "__main__":
    main()
