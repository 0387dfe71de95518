"""``radio cache info|verify|drop CACHE``: look into a cache, check it, remove one teacher's targets."""

from __future__ import annotations

import argparse
import random
import sys

import numpy as np

from radio.cache import (
    MIN_COS, CacheError, CacheLocation, Manifest, check_shard, column_tensor, decode_features, decode_metadata, decode_summary, feature_columns, grid_suffix, merged_stats, stats_differ,
    load_manifest, save_manifest, teacher_path, views_path,
)
from radio.images import decode_image, encode_image
from radio.views import ViewPolicy, crop_view, render_view, sample_view

__all__ = ["main", "cache_info", "verify_cache", "drop_teacher"]


def _open(uri: str) -> tuple[CacheLocation, Manifest]:
    loc = CacheLocation(uri)
    manifest = load_manifest(loc)
    if manifest is None:
        raise CacheError(f"no cache at {uri}: manifest.json not found")
    return loc, manifest


def cache_info(uri: str) -> str:
    loc, m = _open(uri)
    src = m.source
    lines = [
        f"cache      {uri}  (id {m.cache_id}, format v{m.format_version}, {'complete' if m.complete else 'INCOMPLETE: rerun radio cache to finish'})",
        f"source     {src['kind']}:{src.get('path') or ''} split={src.get('split')}  fingerprint {src['fingerprint']}",
        f"images     {m.images}   views {m.views.rows} ({m.views.policy['num_views']} per image)   units {m.units}   student view {m.student_resolution}px {m.identity.student_image_format}",
        f"skipped    {len(m.skipped)}",
        "teachers   (bytes per view; 'vs f32 native': against float32 targets at the teacher's own grid)",
    ]
    for name, t in sorted(m.teachers.items()):
        s, lay = t.spec, t.layout
        grid = f"{lay.grid[0]}x{lay.grid[1]}" + (f" (native {lay.native_grid[0]}x{lay.native_grid[1]})" if tuple(lay.grid) != tuple(lay.native_grid) else " (native)")
        grid += "".join(f" + {g[0]}x{g[1]}" for g in lay.extra_grids)  # the grids of lower_resolutions
        lines.append(
            f"  {name:<16} fingerprint {t.fingerprint}  rows {t.rows}  {t.bytes_per_view / 1024:.1f} KiB/view ({t.bytes_per_view / t.float32_native_bytes_per_view:.3f} vs f32 native)"
            f"  {lay.dtype}  summary {s.get('summary_dim') or '-'}  features {s['feature_dim']} @ {grid}  stats {'exact' if t.stats.exact else 'sampled'}{'' if t.complete else '  INCOMPLETE'}"
        )
    total = m.views.bytes + sum(t.bytes for t in m.teachers.values())
    per_view = sum(t.bytes_per_view for t in m.teachers.values())
    lines.append(f"bytes      {total / 1e6:.2f} MB (views {m.views.bytes / 1e6:.2f} MB; targets {per_view / 1e6:.3f} MB per view)")
    for s in m.skipped[:10]:
        lines.append(f"  skipped {s.image_id}: {s.reason}")
    if len(m.skipped) > 10:
        lines.append(f"  ... and {len(m.skipped) - 10} more (see manifest.json)")
    if m.mlflow_run_id:
        lines.append(f"mlflow run {m.mlflow_run_id}")
    return "\n".join(lines)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def verify_cache(uri: str, sample: int = 8, atol: float | None = None, min_cos: float | None = None, seed: int = 0, out=None) -> bool:
    """Check manifest against shards, then recompute ``sample`` random rows with the teachers.

    Recomputed targets go through the same resampling and codec as the cache job. Per teacher, the worst
    cosine over rows and grid positions (features) and rows (summary) is reported and must reach
    ``min_cos`` (default: the codec's bound, ``radio.cache.MIN_COS``: 0.999 for float16/float32, 0.995 for
    int8). ``atol`` (default: none) also bounds the largest absolute difference.
    Returns True when everything matches. Differences are printed, one line each.
    """
    out = out or sys.stdout
    loc, m = _open(uri)
    problems: list[str] = []

    def check_file(entry, fingerprint=None):
        """The shard if it is what the manifest lists (identity, unit, fingerprint, rows, size, checksum)."""
        reason = check_shard(loc, entry.path, m.identity, entry.unit, entry, fingerprint, checksum=True)
        if reason is not None:
            problems.append(f"{entry.path}: {reason}")
            return None
        return loc.parquet_file(entry.path)

    def keys_of(pf):
        t = pf.read(columns=["image_id", "view_index"])
        return list(zip(t.column("image_id").to_pylist(), t.column("view_index").to_pylist()))

    keys_by_unit = {}
    for entry in m.views.shards:
        pf = check_file(entry)
        if pf is None:
            continue
        keys = keys_of(pf)
        if len(set(keys)) != len(keys):
            problems.append(f"{entry.path}: duplicate keys")
        keys_by_unit[entry.unit] = keys
    for name, tinfo in m.teachers.items():
        good = True
        for entry in tinfo.shards:
            pf = check_file(entry, tinfo.fingerprint)
            if pf is None:
                good = False
                continue
            meta = decode_metadata(pf.schema_arrow.metadata)
            if meta.get("layout") != tinfo.layout.to_dict():
                problems.append(f"{entry.path}: target layout {meta.get('layout')} != manifest {tinfo.layout.to_dict()}")
            if keys_of(pf) != keys_by_unit.get(entry.unit):
                problems.append(f"{entry.path}: keys differ from views/unit-{entry.unit:05d}")
        if good and stats_differ(merged_stats(loc, tinfo), tinfo.stats):
            problems.append(f"manifest.json: the statistics of teacher {name!r} differ from those its shards record (recomputed from the shards)")
    if m.complete and (len(m.views.shards) != m.units or any(len(t.shards) != m.units for t in m.teachers.values())):
        problems.append(f"manifest.json: marked complete with {m.units} units, but lists {len(m.views.shards)} views shards and " + ", ".join(f"{len(t.shards)} for {n}" for n, t in m.teachers.items()))
    listed = {e.path for e in m.views.shards} | {e.path for t in m.teachers.values() for e in t.shards}
    on_disk = set(loc.list_files("views")) | {f for name in loc.list_dirs("teachers") for f in loc.list_files(f"teachers/{name}")}
    for extra in sorted(on_disk - listed):
        problems.append(f"{extra}: on disk but not in the manifest (rerun radio cache to record it)")
    n_files = len(listed)
    print(f"checked {n_files} files: {'OK' if not problems else f'{len(problems)} problem(s)'}", file=out)

    if sample > 0 and keys_by_unit:
        problems.extend(_recompute(loc, m, keys_by_unit, sample, atol, min_cos, seed, out))
    for p in problems:
        print(f"MISMATCH {p}", file=out)
    print("verify: OK" if not problems else f"verify: FAILED ({len(problems)} problem(s))", file=out)
    return not problems


def _worst_cos(fresh, stored) -> float:
    """Smallest cosine over the last axis (each grid position, or the summary vector)."""
    a, b = fresh.reshape(-1, fresh.shape[-1]).astype(np.float64), stored.reshape(-1, stored.shape[-1]).astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    return float(cos.min())


def _recompute(loc, m: Manifest, keys_by_unit, sample, atol, min_cos, seed, out) -> list[str]:
    import torch

    from radio.targets import resample_targets
    from teachers import create_teacher

    from .config import load_config
    from .sources import SourceConfig, open_source

    problems = []
    rng = random.Random(seed)
    all_rows = [(u, i) for u, keys in sorted(keys_by_unit.items()) for i in range(len(keys))]
    picks = sorted(rng.sample(all_rows, min(sample, len(all_rows))))
    src_cfg = load_config(SourceConfig, overrides=[f"{k}={_yaml(v)}" for k, v in m.source["config"].items()])
    source = open_source(src_cfg)
    if source.fingerprint != m.identity.source_fingerprint:
        return [f"source {src_cfg.kind}:{src_cfg.path} has changed since the cache was built (fingerprint {source.fingerprint} != {m.identity.source_fingerprint}); cannot recompute"]
    by_id = {r.image_id: r for r in source.records}
    policy = ViewPolicy(**{k: tuple(v) if isinstance(v, list) else v for k, v in m.views.policy.items()})
    res = m.student_resolution
    teachers = {}
    for name, tinfo in m.teachers.items():
        spec = tinfo.spec
        teachers[name] = create_teacher(name, source=spec["source"], revision=spec.get("revision"), dtype=spec.get("dtype"))
        if teachers[name].spec.fingerprint != tinfo.fingerprint:
            problems.append(f"teacher {name}: the weights at {spec['source']} now have fingerprint {teachers[name].spec.fingerprint}, the cache holds {tinfo.fingerprint}")
    worst = {}
    for u, i in picks:
        image_id, view_index = keys_by_unit[u][i]
        vrow = loc.parquet_file(views_path(u)).read().slice(i, 1)
        img = decode_image(source.read_bytes(by_id[image_id]), name=image_id)
        view = sample_view(policy, image_id, view_index, img.shape[1], img.shape[0])
        if list(view.box) != vrow.column("crop_box").to_pylist()[0] or view.flip != vrow.column("flip").to_pylist()[0]:
            problems.append(f"{image_id} view {view_index}: recorded crop/flip differ from the view policy's replay")
            continue
        student = encode_image(render_view(img, view, (res, res)), m.identity.student_image_format)
        if m.identity.student_image_format in ("png", "raw") and student != vrow.column("student_image").to_pylist()[0]:
            problems.append(f"{image_id} view {view_index}: stored student image differs from the replayed view")
        crop = torch.from_numpy(crop_view(img, view)).permute(2, 0, 1)
        for name, teacher in teachers.items():
            layout = m.teachers[name].layout
            trow = loc.parquet_file(teacher_path(name, u)).read().slice(i, 1)
            got = teacher([crop])
            pairs = []
            for g in layout.grids:  # every stored grid, the lower resolutions' included
                extra = None if tuple(g) == tuple(layout.grid) else g
                cols = {c.split("@")[0]: column_tensor(trow, c) for c in feature_columns(layout.dtype, extra)}
                pairs.append(("features" + grid_suffix(extra), resample_targets(got.features_BHWC, g, got.valid_hw_B2)[0].numpy(), decode_features(cols)[0].numpy()))
            cols = {c: column_tensor(trow, c) for c in ("summary",) if c in trow.column_names}
            if got.summary_BD is not None:
                pairs.append(("summary", got.summary_BD[0].numpy(), decode_summary(cols)[0].numpy()))
            bound = min_cos if min_cos is not None else MIN_COS[layout.dtype]
            for what, fresh, stored in pairs:
                diff = float(np.abs(fresh.astype(np.float32) - stored.astype(np.float32)).max())
                cos = _worst_cos(fresh, stored)
                key = f"{name}/{what}"
                w = worst.get(key, (0.0, 1.0, bound, layout.dtype))
                worst[key] = (max(w[0], diff), min(w[1], cos), bound, layout.dtype)
                if cos < bound or (atol is not None and diff > atol):
                    problems.append(f"{image_id} view {view_index} {key}: worst cosine {cos:.6f} (bound {bound}), max abs diff {diff:.4g}" + (f" (limit {atol})" if atol is not None else ""))
    print(f"recomputed {len(picks)} rows (worst cosine over rows and grid positions, against float32 recomputation):", file=out)
    for key, (diff, cos, bound, dtype) in sorted(worst.items()):
        print(f"  {key:<28} {dtype:<8} worst cosine {cos:.6f} (bound {bound})   max abs diff {diff:.3g}", file=out)
    return problems


def _yaml(v) -> str:
    import json

    return json.dumps(v)


def drop_teacher(uri: str, teacher: str) -> dict:
    """Delete one teacher's targets and its manifest entry; the other teachers are untouched."""
    loc, m = _open(uri)
    if teacher not in m.teachers and teacher not in loc.list_dirs("teachers"):
        raise CacheError(f"cache {uri} has no teacher {teacher!r}; it holds {sorted(m.teachers)}")
    loc.delete_dir(f"teachers/{teacher}")
    m.teachers.pop(teacher, None)
    save_manifest(loc, m)
    return m


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="radio cache")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info", help="what a cache holds")
    i.add_argument("cache")
    v = sub.add_parser("verify", help="check manifest, shards and keys; recompute a sample with the teachers")
    v.add_argument("cache")
    v.add_argument("--sample", type=int, default=8, help="rows to recompute (0: only check files)")
    v.add_argument("--atol", type=float, default=None, help="largest allowed absolute difference (default: not checked)")
    v.add_argument("--min-cos", type=float, default=None, help="smallest allowed cosine per grid position / summary (default: 0.999 for float16 and float32 targets, 0.995 for int8)")
    v.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("drop", help="remove one teacher's targets")
    d.add_argument("cache")
    d.add_argument("teacher")
    ns = p.parse_args(argv)
    if ns.cmd == "info":
        print(cache_info(ns.cache))
        return 0
    if ns.cmd == "verify":
        return 0 if verify_cache(ns.cache, ns.sample, ns.atol, ns.min_cos, ns.seed) else 1
    drop_teacher(ns.cache, ns.teacher)
    print(f"dropped {ns.teacher} from {ns.cache}")
    return 0
