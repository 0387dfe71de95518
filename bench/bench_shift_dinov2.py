"""Shift-equivariant loss vs a real tiny teacher's fixed-position artifact (issue 30, item 3), through radio cache.

    python bench/bench_shift_dinov2.py [--steps 300] [--shift-px 8] [--scale 30] [--out /tmp/shift-bench]

The companion of bench/bench_shift_artifact.py (a stand-in linear teacher, seconds): here the artifact lives in a
real tiny DINOv2's position embedding and the targets come from a real ``radio cache`` job (Ray), minutes.

1. A tiny DINOv2 teacher with a fixed-position artifact, made the way such artifacts arise: a large fixed random
   vector added to its position embedding at ``--tokens`` tokens, written as a local teacher directory (its
   fingerprint is its own) and cached as ``tiny-dinov2`` with ``source=`` that directory. The residual stream
   carries the vector to the output, so those tokens hold nearly the same features in every image.
2. ``radio cache`` of the built-in samples (train: 2 views per image; val: 1 view) at 56px, targets on the 7x7
   grid (the teacher's own: one teacher token per student token).
3. ``radio train`` of two students, the same run except ``loss.shift_px`` (0 vs ``--shift-px``).
4. On the held-out views at the 7x7 grid: the artifact pattern ``P`` (the teacher's mean feature at each artifact
   token less its mean feature at the clean tokens), and per student: ``corr``, the Pearson correlation of its own
   artifact-token offset (its prediction there less its mean prediction at the clean tokens, averaged over views)
   with ``P``; ``gain``, the share of ``P`` it reproduces (projection coefficient; 1 = all of it); and ``cos``,
   its mean cosine to the teacher at the clean tokens (fidelity on the artifact-free part).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

T = "tiny-dinov2"


def artifact_teacher(out: str, tokens: list[tuple[int, int]], scale: float, seed: int = 0) -> str:
    """A copy of tiny-dinov2 whose position embedding carries ``scale`` x a fixed random unit vector per token."""
    import torch
    from transformers import AutoModel

    from teachers.tiny import materialize_tiny

    src = materialize_tiny(T)
    model = AutoModel.from_pretrained(src)
    pe = model.embeddings.position_embeddings  # (1, 1 + h*w, C): CLS first
    side = int(round((pe.shape[1] - 1) ** 0.5))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for r, c in tokens:
            v = torch.randn(pe.shape[-1], generator=g)
            pe[0, 1 + r * side + c] += scale * v / v.norm() * pe.shape[-1] ** 0.5
    d = os.path.join(out, "teacher")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    shutil.copy(os.path.join(src, "preprocessor_config.json"), d)
    return d


def held_out(cache: str):
    """Held-out views (B, 3, S, S) uint8 and the teacher's raw features (B, h, w, C) from the val cache."""
    import torch

    from radio.cache import decode_features
    from radio.data import CacheStream

    imgs, feats = [], []
    for b in CacheStream(cache, [T], batch_size=64, shuffle_buffer=1, num_workers=1, patch_size=8):
        keep = b["weight"] > 0
        imgs.append(b["image"][keep])
        cols = {k[len(T) + 1 :]: v for k, v in b.items() if k.startswith(f"{T}/")}
        feats.append(decode_features(cols, "cpu")[keep].float())
    return torch.cat(imgs), torch.cat(feats)


def measure(feats_BhwC, art_hw) -> tuple:
    """Mean artifact-token offset (K, C) (each artifact token less the mean of the clean tokens) and the clean mask."""
    import torch

    B, h, w, C = feats_BhwC.shape
    art = torch.zeros(h, w, dtype=torch.bool)
    for r, c in art_hw:
        art[r, c] = True
    clean_mean = feats_BhwC[:, ~art].mean(1, keepdim=True)  # (B, 1, C)
    return (feats_BhwC[:, art] - clean_mean).mean(0), art


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--shift-px", type=int, default=8, help="loss.shift_px (a multiple of the student's patch, 8)")
    p.add_argument("--scale", type=float, default=30.0, help="artifact norm, in units of a unit-variance vector")
    p.add_argument("--out", default="/tmp/radio-shift-bench")
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args()
    import torch

    from pipelines.cli import main as radio

    torch.manual_seed(ns.seed)
    os.makedirs(ns.out, exist_ok=True)
    tokens = [(1, 1), (2, 5), (5, 3)]  # teacher grid 7x7 (28px input, patch 4)
    t0 = time.perf_counter()
    tdir = artifact_teacher(ns.out, tokens, ns.scale, ns.seed)
    caches = {}
    for split, views in (("train", 2), ("val", 1)):
        caches[split] = os.path.join(ns.out, f"cache-{split}")
        shutil.rmtree(caches[split], ignore_errors=True)
        rc = radio(
            [
                "cache",
                "configs/cache-samples.yaml" if split == "train" else "configs/cache-samples-val.yaml",
                f"output={caches[split]}",
                "teachers={" + T + ": {source: " + tdir + "}}",
                "student_resolution=56",
                "target_patch=8",
                f"views.num_views={views}",
            ]
        )
        if rc:
            return rc
    print(f"# teacher + caches: {time.perf_counter() - t0:.0f}s", flush=True)
    images, teacher = held_out(caches["val"])
    P, art = measure(teacher, tokens)
    rows = []
    for label, max_px in (("plain", 0), (f"shift {ns.shift_px}px", ns.shift_px)):
        run = os.path.join(ns.out, f"student-{max_px}")
        shutil.rmtree(run, ignore_errors=True)
        t1 = time.perf_counter()
        rc = radio(
            [
                "train",
                f"cache={caches['train']}",
                f"output={run}",
                f"teachers=[{T}]",
                "student.size=nano",
                "student.patch_size=8",
                "loader.batch_size=32",
                "loader.num_workers=0",
                "optim.lr=0.002",
                "optim.warmup_steps=10",
                "epochs=1000",
                f"max_steps={ns.steps}",
                "checkpoint_every=100000",
                "log_every=50",
                f"seed={ns.seed}",
                f"loss.shift_px={max_px}",
                "mlflow.experiment=bench-shift-artifact",
            ]
        )
        if rc:
            return rc
        train_s = time.perf_counter() - t1
        from radio import load_student

        model = load_student(os.path.join(run, "student"), adaptor_names=[T]).eval()
        with torch.no_grad():
            f = model(images)[T].features.float()  # (B, h*w, C)
        f = f.reshape(teacher.shape)
        S, _ = measure(f, tokens)
        corr = torch.corrcoef(torch.stack([S.flatten(), P.flatten()]))[0, 1].item()
        gain = (S * P).sum().item() / (P * P).sum().item()
        cos = torch.nn.functional.cosine_similarity(f[:, ~art], teacher[:, ~art], dim=-1).mean().item()
        rows.append((label, corr, gain, cos, train_s))
    pn = P.norm(dim=-1).mean().item()
    cn = (teacher[:, ~art] - teacher[:, ~art].mean((0, 1))).norm(dim=-1).mean().item()
    print(f"\nartifact at {len(tokens)} of 49 tokens, |P| {pn:.2f} vs clean-token spread {cn:.2f}; {ns.steps} steps")
    print(f"held-out views: {images.shape[0]} at {images.shape[-1]}px, teacher grid {tuple(teacher.shape[1:3])}")
    print(f"{'student':<14}{'artifact corr':>14}{'artifact gain':>14}{'clean cos':>11}{'train s':>9}")
    for label, corr, gain, cos, s in rows:
        print(f"{label:<14}{corr:>14.3f}{gain:>14.3f}{cos:>11.3f}{s:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
