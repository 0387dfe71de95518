"""A cache with random targets, written through the real writer code, without Ray or teachers.

Data-path tests (splitting, shuffling, resume) need a cache but not real teacher values.
"""

from __future__ import annotations

import numpy as np
import torch

from pipelines.cache import CacheJobConfig, _identity, finalize_manifest, prepare_unit
from pipelines.config import load_config
from pipelines.sources import open_source
from radio.cache import CacheLocation, TargetLayout, encode_targets, write_teacher_shard

# name -> (summary_dim or None, feature_dim, grid)
TEACHERS = {"syn-clip": (8, 6, (4, 4)), "syn-sam": (None, 5, (8, 8))}


def make_synthetic_cache(out, limit: int = 20, views: int = 2, per_shard: int = 6, teachers=TEACHERS, seed: int = 0, target_dtype: str = "float16"):
    cfg = load_config(CacheJobConfig, None, [f"output={out}", f"source.limit={limit}", f"views.num_views={views}", f"images_per_shard={per_shard}", "student_resolution=32", "mlflow.enabled=false"])
    cfg.teachers = {}
    src = open_source(cfg.source)
    loc = CacheLocation(str(out))
    identity = _identity(cfg, src)
    rng = np.random.default_rng(seed)
    specs = {}
    for name, (sdim, fdim, grid) in teachers.items():
        specs[name] = {"name": name, "family": "synthetic", "summary_dim": sdim, "feature_dim": fdim, "feature_grid": list(grid), "fingerprint": f"fp-{name}", "source": "synthetic"}
    units = [src.records[i : i + per_shard] for i in range(0, len(src.records), per_shard)]
    for u, recs in enumerate(units):
        prepared, _ = prepare_unit(src, recs, cfg.views, cfg.student_resolution, "png", 10**8, loc, u, 4, identity)
        n = len(prepared["image_id"])
        for name, (sdim, fdim, grid) in teachers.items():
            summary = torch.from_numpy(rng.normal(size=(n, sdim)).astype(np.float32)) if sdim else None
            cols = encode_targets(summary, torch.from_numpy(rng.normal(size=(n, *grid, fdim)).astype(np.float32)), target_dtype)
            write_teacher_shard(loc, name, specs[name], TargetLayout(tuple(grid), target_dtype, tuple(grid)), u, prepared["image_id"], prepared["view_index"], cols, identity, 4)
    return finalize_manifest(loc, cfg, src, identity, list(teachers), None, n_units=len(units))
