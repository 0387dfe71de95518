"""What the shift-equivariant loss is for: a teacher with a fixed-position artifact, two students.

    python bench/bench_shift_artifact.py                  # ~3 min on the 2-core VM
    python bench/bench_shift_artifact.py --epochs 4 --limit 60   # the CI test's size

A stand-in teacher sees every view at 64 px: its feature at each 8-px cell is a fixed random linear map of that
cell's pixels (content, which a patch-8 student can represent exactly), plus the same random pattern added at
the same 3 cells of every view (the artifact, as DINOv2/v3 and SigLIP put at fixed tokens). Its targets go through
the real cache writer (``make_synthetic_cache``), then ``radio train`` (``pipelines.train.main``) fits two
identical nano students, one with ``loss.shift_px=16`` (crops of 48 of the 64 px, shifted per sample by 0, 8 or
16 px on each axis: whole patches) and one without. On held-out views (the ``val`` split, never trained on), in
the teacher's space:

- ``artifact reproduced``: at the artifact's cells, the student's prediction minus the clean teacher's (no
  artifact), projected on the pattern, over the pattern's squared norm: 1 = the whole artifact, 0 = none;
- ``fidelity``: mean cosine between the student's features and the clean teacher's at every other cell.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

S, CELL, DIM = 64, 8, 16
ARTIFACT_CELLS = [(1, 5), (4, 2), (6, 6)]


class StandIn:
    """The stand-in teacher: ``features(crops)`` clean, ``with_artifact`` adds the fixed pattern."""

    def __init__(self, seed: int = 0, strength: float = 3.0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(3 * CELL * CELL, DIM, generator=g) / (3 * CELL * CELL) ** 0.5
        self.pattern = torch.randn(DIM, generator=g)
        self.pattern = self.pattern / self.pattern.norm() * strength

    def features(self, crops):
        import numpy as np
        import torch
        from PIL import Image

        views = np.stack([np.asarray(Image.fromarray(c).resize((S, S), Image.Resampling.BICUBIC)) for c in crops])
        return self.features_of(torch.from_numpy(views).permute(0, 3, 1, 2))

    def features_of(self, images_B3HW):
        import torch

        x = images_B3HW.float() / 255 - 0.5
        B, _, H, W = x.shape
        cells = x.unfold(2, CELL, CELL).unfold(3, CELL, CELL)  # (B, 3, h, w, CELL, CELL)
        cells = cells.permute(0, 2, 3, 1, 4, 5).reshape(B, H // CELL, W // CELL, -1)
        return torch.einsum("bhwk,kc->bhwc", cells, self.proj) * 4

    def with_artifact(self, feats):
        out = feats.clone()
        for r, c in ARTIFACT_CELLS:
            out[:, r, c] += self.pattern
        return out


def build_caches(root: str, limit: int, teacher: StandIn):
    from pipelines.synthetic import make_synthetic_cache

    def fn(name, crops):
        return None, teacher.with_artifact(teacher.features(crops))

    kw = dict(
        views=2, per_shard=20, student_resolution=S, target_patch=CELL, teachers={"artifact": (None, DIM, (8, 8))}
    )
    make_synthetic_cache(f"{root}/train", limit=limit, features_fn=fn, **kw)
    make_synthetic_cache(f"{root}/val", limit=min(limit, 40), split="val", features_fn=fn, **kw)


def train_student(root: str, name: str, epochs: int, shift_px: int, step: int | None = None) -> str:
    from pipelines.train import main

    out = f"{root}/{name}"
    args = [
        f"cache={root}/train",
        f"output={out}",
        "teachers=[artifact]",
        "student.patch_size=8",
        "student.depth=2",
        "loader.batch_size=16",
        "loader.num_workers=0",
        f"epochs={epochs}",
        "optim.lr=0.002",
        "optim.warmup_steps=10",
        "mlflow.enabled=false",
        f"loss.shift_px={shift_px}",
        *([f"loss.shift_step_px={step}"] if step else []),
    ]
    if main(args) != 0:
        raise SystemExit(f"radio train failed for {name}")
    return f"{out}/student"


def measure(student_dir: str, root: str, teacher: StandIn) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from radio import load_student
    from radio.data import CacheStream, LoaderConfig, make_loader

    model = load_student(student_dir)
    stream = CacheStream(f"{root}/val", ["artifact"], batch_size=32, shuffle_buffer=1, patch_size=CELL)
    shares, cos = [], []
    mask = torch.ones(8, 8, dtype=torch.bool)
    for r, c in ARTIFACT_CELLS:
        mask[r, c] = False
    p2 = teacher.pattern.dot(teacher.pattern)
    with torch.no_grad():
        for batch in make_loader(stream, LoaderConfig(num_workers=0)):
            keep = batch["weight"] > 0
            images = batch["image"][keep]
            clean = teacher.features_of(images)
            pred = model.predict(images).adapters["artifact"]["features"].float()
            for r, c in ARTIFACT_CELLS:
                shares.append(((pred[:, r, c] - clean[:, r, c]) @ teacher.pattern) / p2)
            cos.append(F.cosine_similarity(pred, clean, dim=-1)[:, mask])
    return {"artifact": torch.cat(shares).mean().item(), "fidelity": torch.cat(cos).mean().item()}


def run(
    epochs: int, limit: int, shift_px: int = 16, threads: int | None = None, step: int | None = None
) -> dict[str, dict[str, float]]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    teacher = StandIn()
    with tempfile.TemporaryDirectory() as root:
        build_caches(root, limit, teacher)
        out = {}
        for name, px in (("plain", 0), ("shifted", shift_px)):
            t0 = time.perf_counter()
            out[name] = measure(train_student(root, name, epochs, px, step), root, teacher)
            out[name]["seconds"] = time.perf_counter() - t0
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--limit", type=int, default=240, help="training images (2 views each)")
    p.add_argument("--shift-px", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--shift-step", type=int, default=None, help="loss.shift_step_px (default: whole patches)")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = run(a.epochs, a.limit, a.shift_px, a.threads, a.shift_step)
    print(f"stand-in teacher, artifact at {len(ARTIFACT_CELLS)} of 64 cells; {a.epochs} epochs, {a.limit} images")
    print("| student | artifact reproduced (1 = all) | fidelity elsewhere (cosine) | train + eval s |")
    print("|---|---|---|---|")
    for name, r in res.items():
        step = f", shift_step_px={a.shift_step}" if a.shift_step else ""
        label = f"shift-equivariant (loss.shift_px={a.shift_px}{step})" if name == "shifted" else "plain"
        print(f"| {label} | {r['artifact']:.3f} | {r['fidelity']:.3f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
