"""``radio cache info|verify|drop CACHE``: look into a cache, check it, remove one teacher's targets."""

from __future__ import annotations

import argparse
import json
import posixpath
import random
import shlex
import sys

import numpy as np

from radio.cache import (
    MIN_COS,
    CacheError,
    CacheLocation,
    Manifest,
    column_tensor,
    decode_features,
    decode_summary,
    feature_columns,
    grid_suffix,
    load_manifest,
    save_manifest,
    stats_differ,
    teacher_path,
    views_path,
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
        f"cache      {uri}  (id {m.cache_id}, format v{m.format_version}, "
        f"{'complete' if m.complete else 'INCOMPLETE: rerun radio cache to finish'})",
        f"source     {src['kind']}:{src.get('path') or ''} split={src.get('split')}  fingerprint {src['fingerprint']}",
        f"images     {m.images}   views {m.views.rows} ({m.views.policy['num_views']} "
        f"per image)   units {m.units}   student view {m.student_resolution}px "
        f"{m.identity.student_image_format}",
        f"skipped    {len(m.skipped)}",
        "teachers   (bytes per view; 'vs f32 native': against float32 targets at the teacher's own grid)",
    ]
    for name, t in sorted(m.teachers.items()):
        s, lay = t.spec, t.layout
        grid = f"{lay.grid[0]}x{lay.grid[1]}" + (
            f" (native {lay.native_grid[0]}x{lay.native_grid[1]})"
            if tuple(lay.grid) != tuple(lay.native_grid)
            else " (native)"
        )
        grid += "".join(f" + {g[0]}x{g[1]}" for g in lay.extra_grids)  # the grids of lower_resolutions
        lines.append(
            f"  {name:<16} fingerprint {t.fingerprint}  rows {t.rows}  {t.bytes_per_view / 1024:.1f} "
            f"KiB/view ({t.bytes_per_view / t.float32_native_bytes_per_view:.3f} vs f32 native)"
            f"  {lay.dtype}  summary {s.get('summary_dim') or '-'}  features {s['feature_dim']} "
            f"@ {grid}  stats {'exact' if t.stats.exact else 'sampled'}{'' if t.complete else '  INCOMPLETE'}"
        )
    total = m.views.bytes + sum(t.bytes for t in m.teachers.values())
    per_view = sum(t.bytes_per_view for t in m.teachers.values())
    lines.append(
        f"bytes      {total / 1e6:.2f} MB (views {m.views.bytes / 1e6:.2f} MB; targets {per_view / 1e6:.3f} "
        "MB per view)"
    )
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


def verify_cache(
    uri: str,
    sample: int = 8,
    atol: float | None = None,
    min_cos: float | None = None,
    seed: int = 0,
    out=None,
    full: bool = False,
) -> bool:
    """Check a cache at the cost its size allows, and report every problem found (never stops at the first).

    Every file, structurally: one listing per directory (each listed shard present, with its size and commit
    record; nothing unlisted), each Parquet footer (format, cache identity, unit, fingerprint, layout, rows),
    each commit record's header (size, checksum, rows against the manifest), every table's keys against the
    views, and the merged statistics (checksum, and the manifest's per-channel values). Then ``sample`` units
    drawn with ``seed``: every file of them is checksummed and one row of each recomputed with the teachers
    (same resampling and codec as the job; the worst cosine must reach ``min_cos``, default the codec's bound
    ``radio.cache.MIN_COS``; ``atol`` also bounds the largest absolute difference). ``full``: checksum every
    file and merge the statistics again from every commit record. Files found damaged are not recomputed.
    Prints what it read (bytes, against the cache's). Returns True when everything matches.
    """
    from radio.cache import (
        ManifestDamaged,
        MomentsMerger,
        RecordError,
        commit_path,
        open_checked,
        read_merged_moments,
        read_record,
    )
    from radio.cache.state import teacher_stats

    out = out or sys.stdout
    try:
        loc, m = _open(uri)
    except ManifestDamaged as e:  # nothing else can be checked against it: one problem, and the repair
        print(f"MISMATCH {e}", file=out)
        print("verify: FAILED (1 problem(s))", file=out)
        return False
    problems: list[str] = []
    read = {"bytes": 0}
    damaged: set[str] = set()
    missing: set[str] = set()

    def bad(rel: str, reason: str):
        problems.append(f"{rel}: {reason}")
        damaged.add(rel)

    tables = [("views", None, m.views.shards)] + [(f"teachers/{t}", t, e.shards) for t, e in m.teachers.items()]
    total = m.views.bytes + sum(e.bytes for e in m.teachers.values())
    # 1. listings: present, sized, committed, nothing unlisted
    for rel_dir, _, shards in tables:
        names = loc.scan(rel_dir)
        listed = set()
        for sh in shards:
            base = posixpath.basename(sh.path)
            listed |= {base, base[:-8] + ".commit"}
            if base not in names:
                bad(sh.path, "missing")
                missing.add(sh.path)
            elif names[base] != sh.bytes:
                bad(sh.path, f"{names[base]} bytes, the manifest says {sh.bytes}")
            elif base[:-8] + ".commit" not in names:
                bad(sh.path, "its commit record is missing")
        for extra in sorted(n for n in names if not n.startswith(".") and n not in listed):
            problems.append(f"{rel_dir}/{extra}: on storage but not in the manifest (rerun radio cache to record it)")
    for t in sorted(set(loc.list_dirs("teachers")) - set(m.teachers)):
        problems.append(
            f"teachers/{t}: on storage but not in the manifest (rerun radio cache to record it, or `radio "
            f"cache drop {uri} {t}`)"
        )
    # 2. footers, commit headers and keys of every file not already found damaged
    keys_by_unit = {}
    for _rel_dir, t, shards in tables:
        e = m.teachers.get(t) if t else None
        for sh in shards:
            if sh.path in missing:
                continue
            pf, reason = open_checked(
                loc, sh.path, m.identity, sh.unit, sh, e.fingerprint if e else None, e.layout.to_dict() if e else None
            )
            if reason:
                bad(sh.path, reason)
                continue
            read["bytes"] += pf.metadata.serialized_size + 8
            try:
                # full: the whole record, its moments' checksum included; else the header (its own checksum)
                header, _ = read_record(loc, commit_path(sh.path), arrays=full and t is not None)
                read["bytes"] += 16 + len(json.dumps(header))
                rec = header.get("shard", {})
                if (rec.get("bytes"), rec.get("sha256"), rec.get("rows")) != (sh.bytes, sh.sha256, sh.rows):
                    bad(sh.path, "its commit record and the manifest disagree on its size, checksum or rows")
                    continue
            except (RecordError, OSError) as err:  # named by the record's own path: the file that holds the problem
                problems.append(f"{commit_path(sh.path)}: {str(err).splitlines()[0].split(': ', 1)[-1][:200]}")
                damaged.add(sh.path)
                continue
            try:
                keys = pf.read(columns=["image_id", "view_index"])
            except (OSError, ValueError) as err:  # a page checksum that fails
                bad(sh.path, f"its key columns do not read back as written ({str(err).splitlines()[0][:120]})")
                continue
            read["bytes"] += sum(
                pf.metadata.row_group(g).column(c).total_compressed_size
                for g in range(pf.num_row_groups)
                for c in range(2)
            )
            k = list(zip(keys.column("image_id").to_pylist(), keys.column("view_index").to_pylist(), strict=True))
            if t is None:
                if len(set(k)) != len(k):
                    bad(sh.path, "duplicate keys")
                keys_by_unit[sh.unit] = k
            elif sh.unit in keys_by_unit and k != keys_by_unit[sh.unit]:
                bad(sh.path, f"keys differ from views/unit-{sh.unit:05d}")
    if m.complete and (len(m.views.shards) != m.units or any(len(t.shards) != m.units for t in m.teachers.values())):
        problems.append(
            f"manifest.json: marked complete with {m.units} units, but lists {len(m.views.shards)} views shards and "
            + ", ".join(f"{len(t.shards)} for {n}" for n, t in m.teachers.items())
        )
    # 3. merged statistics: the file's checksum, the manifest's per-channel values, and (full) a merge again from every
    # record
    for name, e in m.teachers.items():
        if e.moments is None:
            problems.append(f"manifest.json: no merged statistics for teacher {name!r}")
            continue
        try:
            f, s = read_merged_moments(loc, e.moments)
            read["bytes"] += e.moments.bytes
        except (CacheError, OSError, RecordError) as err:
            problems.append(str(err).split(". Rerun")[0])
            continue
        if stats_differ(teacher_stats(f, s), e.stats):
            problems.append(
                f"manifest.json: the statistics of teacher {name!r} differ from its merged "
                f"statistics file {e.moments.path}"
            )
        if full and not any(sh.path in damaged for sh in e.shards):
            merger = MomentsMerger(loc, name, m.units, {sh.unit for sh in e.shards})
            try:
                f2, s2 = merger.finish()
            except (RecordError, CacheError, OSError) as err:  # a damaged record: named, not a traceback
                problems.append(str(err).splitlines()[0][:300])
                continue
            read["bytes"] += sum(loc.size(commit_path(sh.path)) for sh in e.shards)
            if stats_differ(teacher_stats(f2, s2), teacher_stats(f, s)) or not np.allclose(
                f2.cov, f.cov, rtol=1e-9, atol=1e-12
            ):
                problems.append(
                    f"{e.moments.path}: differs from the merge of its teacher's {len(e.shards)} commit records"
                )
    # 4. checksums: every file (full) or every file of the sampled units
    units = sorted(keys_by_unit)
    picks = units if full else sorted(random.Random(seed).sample(units, min(sample, len(units))))
    for _rel_dir, _t, shards in tables:
        by_unit = {sh.unit: sh for sh in shards}
        for u in picks:
            sh = by_unit.get(u)
            if sh is None or sh.path in damaged:
                continue
            read["bytes"] += sh.bytes
            if loc.sha256(sh.path) != sh.sha256:
                bad(sh.path, "checksum differs from the one recorded when it was written")
    n_files = sum(len(sh) for _, _, sh in tables)
    print(
        f"checked {n_files} files (listing, footers, commit records, keys; checksums "
        f"of {'all' if full else f'{len(picks)} sampled unit(s)'}): "
        f"{'OK' if not problems else f'{len(problems)} problem(s)'}",
        file=out,
    )
    if sample > 0 and keys_by_unit:
        intact = {
            u: k
            for u, k in keys_by_unit.items()
            if all(sh.path not in damaged for _, _, shards in tables for sh in shards if sh.unit == u)
        }
        rows = [
            (u, random.Random(seed * 7919 + u).randrange(len(intact[u]))) for u in picks if u in intact and intact[u]
        ]
        if rows:
            problems.extend(_recompute(loc, m, intact, rows, atol, min_cos, out, read))
    print(
        f"read {read['bytes'] / 1e6:.2f} MB of the cache's {total / 1e6:.2f} "
        f"MB ({100 * read['bytes'] / max(1, total):.2f} %)",
        file=out,
    )
    for p in problems:
        print(f"MISMATCH {p}", file=out)
    print("verify: OK" if not problems else f"verify: FAILED ({len(problems)} problem(s))", file=out)
    if problems:
        print(
            f"repair: `radio cache repair {shlex.quote(uri)}` sets the damaged files aside and recomputes them",
            file=out,
        )
    return not problems


def _row_at(pf, i: int):
    """Row ``i`` of a Parquet file, reading only its row group."""
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if i < n:
            return pf.read_row_group(g).slice(i, 1), pf.metadata.row_group(g).total_byte_size
        i -= n
    raise IndexError(i)


def _worst_cos(fresh, stored) -> float:
    """Smallest cosine over the last axis (each grid position, or the summary vector)."""
    a, b = (
        fresh.reshape(-1, fresh.shape[-1]).astype(np.float64),
        stored.reshape(-1, stored.shape[-1]).astype(np.float64),
    )
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    return float(cos.min())


def _recompute(loc, m: Manifest, keys_by_unit, picks, atol, min_cos, out, read) -> list[str]:
    import torch

    from radio.targets import resample_targets
    from teachers import create_teacher

    from .config import load_config
    from .sources import SourceConfig, open_source

    problems = []
    src_cfg = load_config(SourceConfig, overrides=[f"{k}={_yaml(v)}" for k, v in m.source["config"].items()])
    source = open_source(src_cfg)
    if source.fingerprint != m.identity.source_fingerprint:
        return [
            f"source {src_cfg.kind}:{src_cfg.path} has changed since the cache was built (fingerprint "
            f"{source.fingerprint} != {m.identity.source_fingerprint}); cannot recompute"
        ]
    ips = m.identity.images_per_shard
    policy = ViewPolicy(**{k: tuple(v) if isinstance(v, list) else v for k, v in m.views.policy.items()})
    res = m.student_resolution
    teachers = {}
    for name, tinfo in m.teachers.items():
        spec = tinfo.spec
        teachers[name] = create_teacher(
            name,
            source=spec["source"],
            revision=spec.get("revision"),
            dtype=spec.get("dtype"),
            input_size=spec["input_size"][0] if spec.get("resize") == "fit_aspect" else None,
        )
        if teachers[name].spec.fingerprint != tinfo.fingerprint:
            problems.append(
                f"teacher {name}: the weights at {spec['source']} now have fingerprint "
                f"{teachers[name].spec.fingerprint}, the cache holds {tinfo.fingerprint}"
            )
    worst = {}
    for u, i in picks:
        image_id, view_index = keys_by_unit[u][i]
        try:
            vrow, n = _row_at(loc.parquet_file(views_path(u)), i)
        except (OSError, ValueError) as err:
            problems.append(
                f"{views_path(u)}: row {i} does not read back as written ({str(err).splitlines()[0][:120]})"
            )
            continue
        read["bytes"] += n
        part = source.part(u * ips, (u + 1) * ips)
        rec = next((r for r in part.records if r.image_id == image_id), None)
        if rec is None:
            problems.append(f"{image_id}: not in unit {u} of the source")
            continue
        img = decode_image(source.read_bytes(rec), name=image_id)
        view = sample_view(policy, image_id, view_index, img.shape[1], img.shape[0])
        if list(view.box) != vrow.column("crop_box").to_pylist()[0] or view.flip != vrow.column("flip").to_pylist()[0]:
            problems.append(f"{image_id} view {view_index}: recorded crop/flip differ from the view policy's replay")
            continue
        student = encode_image(render_view(img, view, (res, res)), m.identity.student_image_format)
        if m.identity.student_image_format in ("png", "raw") and student != vrow.column("student_image").to_pylist()[0]:
            problems.append(f"{image_id} view {view_index}: stored student image differs from the replayed view")
        crop = torch.from_numpy(np.array(crop_view(img, view))).permute(2, 0, 1)
        for name, teacher in teachers.items():
            layout = m.teachers[name].layout
            try:
                trow, n = _row_at(loc.parquet_file(teacher_path(name, u)), i)
            except (OSError, ValueError) as err:
                problems.append(
                    f"{teacher_path(name, u)}: row {i} does not read back as written ({str(err).splitlines()[0][:120]})"
                )
                continue
            read["bytes"] += n
            got = teacher([crop])
            pairs = []
            for g in layout.grids:  # every stored grid, the lower resolutions' included
                extra = None if tuple(g) == tuple(layout.grid) else g
                cols = {c.split("@")[0]: column_tensor(trow, c) for c in feature_columns(layout.dtype, extra)}
                pairs.append(
                    (
                        "features" + grid_suffix(extra),
                        resample_targets(got.features_BHWC, g, got.valid_hw_B2)[0].numpy(),
                        decode_features(cols)[0].numpy(),
                    )
                )
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
                    problems.append(
                        f"{image_id} view {view_index} {key}: worst cosine {cos:.6f} (bound {bound}), "
                        f"max abs diff {diff:.4g}" + (f" (limit {atol})" if atol is not None else "")
                    )
    print(
        f"recomputed {len(picks)} rows (worst cosine over rows and grid positions, against float32 recomputation):",
        file=out,
    )
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
    from radio.cache import stats_path

    loc.delete_dir(f"teachers/{teacher}")
    if loc.exists(stats_path(teacher)):
        loc.delete(stats_path(teacher))
    m.teachers.pop(teacher, None)
    save_manifest(loc, m)
    return m


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="radio cache")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info", help="what a cache holds")
    i.add_argument("cache")
    v = sub.add_parser(
        "verify",
        help="check every file's structure, checksum a sample of units and recompute a row of each with the teachers",
    )
    v.add_argument("cache")
    v.add_argument(
        "--sample",
        type=int,
        default=8,
        help="units drawn (seeded): every file of them checksummed, one row of each recomputed "
        "with the teachers (0: structure only)",
    )
    v.add_argument(
        "--full",
        action="store_true",
        help="checksum every file and merge the statistics again from every commit record",
    )
    v.add_argument(
        "--atol", type=float, default=None, help="largest allowed absolute difference (default: not checked)"
    )
    v.add_argument(
        "--min-cos",
        type=float,
        default=None,
        help="smallest allowed cosine per grid position / summary (default: 0.999 for float16 and float32 "
        "targets, 0.995 for int8)",
    )
    v.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("drop", help="remove one teacher's targets")
    d.add_argument("cache")
    d.add_argument("teacher")
    ns = p.parse_args(argv)
    if ns.cmd == "verify" and ns.sample < 0:
        p.error(f"--sample must be >= 0 (units whose rows are recomputed), got {ns.sample}")
    if ns.cmd == "info":
        print(cache_info(ns.cache))
        return 0
    if ns.cmd == "verify":
        return 0 if verify_cache(ns.cache, ns.sample, ns.atol, ns.min_cos, ns.seed, full=ns.full) else 1
    drop_teacher(ns.cache, ns.teacher)
    print(f"dropped {ns.teacher} from {ns.cache}")
    return 0
