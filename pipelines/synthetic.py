"""A cache with random targets, written through the real writer code, without Ray or teachers.

Data-path tests (splitting, shuffling, resume) and reader benchmarks need a cache with the right shapes but
not real teacher values. Teachers are synthetic (``TEACHERS``) or registry names, whose nominal dims and
grids are used (stored at the default target grid, as the cache job would).
"""

from __future__ import annotations

import numpy as np
import torch

from pipelines.cache import CacheJobConfig, _identity, finalize_manifest, prepare_unit
from pipelines.config import load_config
from pipelines.sources import open_source
from radio.cache import CacheLocation, TargetLayout, write_teacher_shard

# name -> (summary_dim or None, feature_dim, grid)
TEACHERS = {"syn-clip": (8, 6, (4, 4)), "syn-sam": (None, 5, (8, 8))}


def registry_shapes(names: list[str], student_resolution: int, target_patch: int = 16) -> dict:
    """{name: (summary_dim, feature_dim, stored grid)} for registry teachers, at the default target grid."""
    from radio.targets import stored_grid
    from teachers import get_spec_template

    g = student_resolution // target_patch
    return {
        n: (
            get_spec_template(n).summary_dim,
            get_spec_template(n).feature_dim,
            stored_grid(get_spec_template(n).feature_grid, (g, g)),
        )
        for n in names
    }


def make_synthetic_cache(
    out,
    limit: int = 20,
    views: int = 2,
    per_shard: int = 6,
    teachers=TEACHERS,
    seed: int = 0,
    target_dtype: str = "float16",
    student_resolution: int = 32,
    row_group_rows: int = 4,
    split: str = "train",
    lower_resolutions: list[int] = (),
    target_patch: int = 16,
    student_image_format: str = "raw",
    features_fn=None,
):
    """Write a complete cache at ``out`` from the built-in samples; returns its manifest.

    ``teachers``: {name: (summary_dim or None, feature_dim, (h, w))} or a list of registry names.
    ``lower_resolutions``: each teacher's targets are also stored at ``r // target_patch`` (capped by its grid),
    area-averaged from the main grid's, as the cache job stores them.
    ``features_fn(name, crops)``: a stand-in teacher computed from the views (uint8 (h, w, 3) crops, each the whole
    view) -> (summary (n, D) or None, features (n, h, w, C)) as float32 tensors; default: random targets."""
    from radio.targets import resample_targets

    if isinstance(teachers, (list, tuple)):
        teachers = registry_shapes(list(teachers), student_resolution, target_patch)
    cfg = load_config(
        CacheJobConfig,
        None,
        [
            f"output={out}",
            f"source.limit={limit}",
            f"source.split={split}",
            f"views.num_views={views}",
            f"images_per_shard={per_shard}",
            f"student_resolution={student_resolution}",
            "mlflow.enabled=false",
            f"student_image_format={student_image_format}",
            f"lower_resolutions={list(lower_resolutions)}",
            f"target_patch={target_patch}",
        ],
    )
    cfg.teachers = {}
    src = open_source(cfg.source)
    loc = CacheLocation(str(out))
    identity = _identity(cfg, src)
    rng = np.random.default_rng(seed)
    specs = {}
    for name, (sdim, fdim, grid) in teachers.items():
        specs[name] = {
            "name": name,
            "family": "synthetic",
            "summary_dim": sdim,
            "feature_dim": fdim,
            "feature_grid": list(grid),
            "fingerprint": f"fp-{name}",
            "source": "synthetic",
        }
    units = [src.records[i : i + per_shard] for i in range(0, len(src.records), per_shard)]
    for u, recs in enumerate(units):
        prepared, _ = prepare_unit(
            src,
            recs,
            cfg.views,
            cfg.student_resolution,
            cfg.student_image_format,
            10**8,
            loc,
            u,
            row_group_rows,
            identity,
        )
        n = len(prepared["image_id"])
        for name, (sdim, fdim, grid) in teachers.items():
            if features_fn is not None:
                summary, feats = features_fn(name, prepared["crops"])
            else:
                summary = torch.from_numpy(rng.standard_normal(size=(n, sdim), dtype=np.float32)) if sdim else None
                feats = torch.from_numpy(rng.standard_normal(size=(n, *grid, fdim), dtype=np.float32))
            layout = TargetLayout.stored(
                tuple(grid), None, [(r // target_patch, r // target_patch) for r in lower_resolutions], target_dtype
            )
            cols = layout.encode(summary, [resample_targets(feats, g) for g in layout.grids])
            write_teacher_shard(
                loc,
                name,
                specs[name],
                layout,
                u,
                prepared["image_id"],
                prepared["view_index"],
                cols,
                identity,
                row_group_rows,
            )
    return finalize_manifest(cfg, src, identity, list(teachers), n_units=len(units))
