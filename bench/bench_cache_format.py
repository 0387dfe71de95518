"""Bytes per view per teacher, and int8's worst cosine to float32, at real shapes, side by side in one run.

    python bench/bench_cache_format.py                       # CLIP-B/16, DINOv2-B/14-reg, SAM-H; 224 student views
    python bench/bench_cache_format.py --teachers tiny-clip,tiny-dinov2,tiny-sam --student-resolution 64 \
        --target-patch 8

Real registry entries are built at their real size with random weights (``teachers.tiny.save_random_teacher``:
the published architecture and image-processor config, ``save_pretrained`` to a temp dir) or loaded from
``--source name=/path`` (the same local checkpoints as ``teachers.<t>.source``). Each teacher runs on a few
views of the built-in samples; its targets are then written through the cache's real writer (Arrow, exact
statistics, zstd Parquet) in every layout:

- ``f32 native``: float32 at the teacher's own grid, the reference (what the targets are before storage);
- ``f16 native``: float16 at the teacher's grid (format v1 stored this, plus a valid_hw column);
- ``f16 grid`` (the default) and ``int8 grid``: at ``student_resolution // target_patch``.

Bytes per view are marginal bytes, ``(size of a shard of N views - size of a shard of 1 view) / (N - 1)``, so
the fixed per-file cost (schema, spec and statistics metadata, ~tens of KB, amortized over ~1000 views in a
real shard) is not counted. int8's worst cosine is over every stored position of every view, to the float32
targets at the same grid, in the teacher's space and after per-channel standardization (the space the loss works
in); the per-position-scale layout that was not chosen is shown beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SLOW = {"sam-vit-b", "sam-vit-l", "sam-vit-h", "dinov2-vitg14", "dinov2-vitg14-reg"}  # seconds per view on a CPU


def worst_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1, a.shape[-1]).double(), b.reshape(-1, b.shape[-1]).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


def standardized(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-channel standardization with ``ref``'s statistics: the space the distillation loss works in."""
    flat = ref.reshape(-1, ref.shape[-1]).double()
    return (x.double() - flat.mean(0)) / (flat.std(0) + 1e-6)


def per_position_int8(x: torch.Tensor) -> torch.Tensor:
    """The layout not chosen: one symmetric absmax scale per grid position (round trip)."""
    scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127.0
    return torch.round(x / scale).clamp(-127, 127) * scale


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--teachers", default="clip-vit-b16,dinov2-vitb14-reg,sam-vit-h")
    p.add_argument(
        "--source",
        action="append",
        default=[],
        help="name=/local/checkpoint (default: random weights at the real size)",
    )
    p.add_argument("--views", type=int, default=8, help="views per teacher")
    p.add_argument(
        "--slow-views",
        type=int,
        default=2,
        help="views for SAM and ViT-g on a CPU (a SAM-H view takes ~1 min on 2 cores)",
    )
    p.add_argument("--student-resolution", type=int, default=224)
    p.add_argument("--target-patch", type=int, default=16)
    ns = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipelines.cache import CacheJobConfig, _identity
    from pipelines.config import load_config
    from pipelines.sources import SourceConfig, open_source
    from radio.cache import CacheLocation, TargetLayout, decode_features, encode_targets, write_teacher_shard
    from radio.images import decode_image
    from radio.targets import resample_targets, stored_grid
    from radio.views import ViewPolicy, crop_view, sample_views
    from teachers import REGISTRY, create_teacher
    from teachers.tiny import save_random_teacher

    sources = dict(s.split("=", 1) for s in ns.source)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    src = open_source(SourceConfig(kind="samples", split="all", limit=max(ns.views, ns.slow_views)))
    policy = ViewPolicy(num_views=2)
    crops = []
    for rec in src.records:
        img = decode_image(src.read_bytes(rec))
        crops += [
            torch.from_numpy(crop_view(img, v)).permute(2, 0, 1)
            for v in sample_views(policy, rec.image_id, img.shape[1], img.shape[0])
        ]
    g = ns.student_resolution // ns.target_patch
    tmp = tempfile.mkdtemp(prefix="bench-format-")
    cfg = load_config(CacheJobConfig, None, [f"output={tmp}", f"student_resolution={ns.student_resolution}"])
    ident = _identity(cfg, src)
    loc = CacheLocation(tmp)
    rows = []
    print(
        f"student views {ns.student_resolution} px, target grid {g}x{g} (target_patch {ns.target_patch}); "
        f"device {device}, {os.cpu_count()} cores"
    )
    try:
        for name in ns.teachers.split(","):
            t0 = time.perf_counter()
            if name in sources or REGISTRY[name].tiny:
                teacher = create_teacher(name, source=sources.get(name), device=device)
            else:
                teacher = create_teacher(
                    name, source=save_random_teacher(name, os.path.join(tmp, "w-" + name)), device=device
                )
            spec = teacher.spec
            n = ns.slow_views if name in SLOW and device == "cpu" else ns.views
            t1 = time.perf_counter()
            outs = [teacher(crops[i : i + 4]) for i in range(0, n, 4)]
            t_fwd = (time.perf_counter() - t1) / n
            native = torch.cat(
                [resample_targets(o.features_BHWC, spec.feature_grid, o.valid_hw_B2) for o in outs]
            ).cpu()
            summary = torch.cat([o.summary_BD for o in outs]).cpu() if outs[0].summary_BD is not None else None
            grid = stored_grid(spec.feature_grid, (g, g))
            at_grid = resample_targets(native, grid)
            ids, vidx = [f"img{i}" for i in range(n)], list(range(n))

            def marginal_bytes(
                feats, dtype, grid_hw, tag, n=n, summary=summary, name=name, spec=spec, ids=ids, vidx=vidx
            ):
                sizes = []
                for k in (1, n):
                    cols = encode_targets(summary[:k] if summary is not None else None, feats[:k], dtype)
                    commit = write_teacher_shard(
                        loc,
                        f"{name}-{tag}-{k}",
                        spec.to_dict(),
                        TargetLayout(grid_hw, dtype, spec.feature_grid),
                        0,
                        ids[:k],
                        vidx[:k],
                        cols,
                        ident,
                        64,
                    )
                    sizes.append(commit.shard.bytes)
                return (sizes[1] - sizes[0]) / max(1, n - 1)

            r = {
                "teacher": name,
                "views": n,
                "s_per_view": t_fwd,
                "load_s": t1 - t0,
                "native": spec.feature_grid,
                "grid": grid,
                "dim": spec.feature_dim,
            }
            r["f32 native"] = marginal_bytes(native, "float32", spec.feature_grid, "f32n")
            r["f16 native"] = marginal_bytes(native, "float16", spec.feature_grid, "f16n")
            r["f16 grid"] = marginal_bytes(at_grid, "float16", grid, "f16g")
            r["int8 grid"] = marginal_bytes(at_grid, "int8", grid, "i8g")
            r["cos int8 grid"] = worst_cos(decode_features(encode_targets(None, at_grid, "int8")), at_grid)
            r["std cos int8 grid"] = worst_cos(
                standardized(decode_features(encode_targets(None, at_grid, "int8")), at_grid),
                standardized(at_grid, at_grid),
            )
            r["std cos per-position"] = worst_cos(
                standardized(per_position_int8(at_grid), at_grid), standardized(at_grid, at_grid)
            )
            r["cos int8 native"] = worst_cos(decode_features(encode_targets(None, native, "int8")), native)
            r["cos per-position int8"] = worst_cos(per_position_int8(at_grid), at_grid)
            r["cos f16 grid"] = worst_cos(decode_features(encode_targets(None, at_grid, "float16")), at_grid)
            rows.append(r)
            print(
                f"  {name}: {n} views, {t_fwd:.2f} s/view forward ({r['load_s']:.0f} s to build and load)", flush=True
            )
            del teacher
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cols = ["f32 native", "f16 native", "f16 grid", "int8 grid"]
    print(
        f"\n{'teacher':<20} {'grid (native)':<14} "
        + " ".join(f"{c:>11}" for c in cols)
        + "   MB per view; int8 worst cosine: chosen (per-channel) | per-position | at native grid"
    )
    for r in rows:
        print(
            f"{r['teacher']:<20} {r['grid'][0]}x{r['grid'][1]} ({r['native'][0]}x{r['native'][1]}){'':<3} "
            + " ".join(f"{r[c] / 1e6:11.4f}" for c in cols)
            + f"   {r['cos int8 grid']:.5f} | {r['cos per-position int8']:.5f} | {r['cos int8 native']:.5f} "
            f"  (f16: {r['cos f16 grid']:.6f}; standardized: {r['std cos int8 grid']:.5f} "
            f"| {r['std cos per-position']:.5f})"
        )
    tot = {c: sum(r[c] for r in rows) for c in cols}
    print(f"{'all':<20} {'':<14} " + " ".join(f"{tot[c] / 1e6:11.4f}" for c in cols))
    print(
        f"ratio f16 grid / f16 native: {tot['f16 grid'] / tot['f16 native']:.3f};  f16 grid / f32 native: "
        f"{tot['f16 grid'] / tot['f32 native']:.3f};  int8 grid / f32 native: "
        f"{tot['int8 grid'] / tot['f32 native']:.3f}"
    )
    print(
        f"worst int8 cosine over all teachers: {min(r['cos int8 grid'] for r in rows):.5f} "
        f"(in the loss's standardized space: {min(r['std cos int8 grid'] for r in rows):.5f})"
    )


if __name__ == "__main__":
    main()
