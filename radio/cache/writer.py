"""Writing a cache: table builders for the views and teacher shards, exact per-shard statistics, and the
manifest rebuilt from the committed files (the source of truth).

Every shard carries, in its Parquet schema metadata, the format version, the cache identity, its unit and
(teacher shards) the teacher's spec, fingerprint, target layout and statistics, so a manifest can always be
rebuilt from the shards alone.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from ..normalize import RunningMoments, RunningStats
from .arrow import tensor_field, tensor_to_arrow
from .codec import decode_features
from .manifest import FORMAT_VERSION, CacheIdentity, Manifest, Moments, Skipped, TargetLayout, TeacherEntry, TeacherStats, ViewsEntry, format_error, load_manifest, save_manifest
from .store import CacheLocation, ShardInfo, decode_metadata, encode_metadata, teacher_path, views_path

__all__ = ["write_views_shard", "write_teacher_shard", "shard_stats", "existing_units", "shard_meta", "build_manifest", "check_existing", "check_shard", "find_damaged", "merged_stats", "merged_moments", "stats_differ"]


def write_views_shard(loc: CacheLocation, unit: int, rows: dict, skipped: list[dict], images: int, identity: CacheIdentity, row_group_rows: int) -> ShardInfo:
    """Commit one unit's views table. ``rows``: image_id, view_index, label_index, crop_box (N, 4), flip,
    source_hw (N, 2), student_image (encoded bytes)."""
    table = pa.table({
        "image_id": pa.array(rows["image_id"], pa.string()),
        "view_index": pa.array(rows["view_index"], pa.int16()),
        "label_index": pa.array(rows["label_index"], pa.int32()),
        "crop_box": _int_lists(rows["crop_box"], 4),
        "flip": pa.array(rows["flip"], pa.bool_()),
        "source_hw": _int_lists(rows["source_hw"], 2),
        "student_image": pa.array(rows["student_image"], pa.binary()),
    })
    meta = {"kind": "views", "unit": unit, "skipped": skipped, "images": images, "identity": identity.to_dict(), "format_version": FORMAT_VERSION}
    return loc.write_table(views_path(unit), unit, table.replace_schema_metadata(encode_metadata(meta)), row_group_rows=row_group_rows, byte_stream_split=[])


def _int_lists(values, n: int) -> pa.FixedSizeListArray:
    """Small per-row int32 vectors (crop boxes, sizes) as fixed-size lists: readable as lists anywhere."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(values, np.int32).reshape(-1), pa.int32()), n)


# Target tensors are one fixed-size binary value per row (radio.cache.arrow), stored uncompressed: float16
# features and uint8 codes are near-incompressible (lz4 saved 0 %, zstd 8 %), and decompression was the
# reader's largest cost (the reader: 1135 views/s uncompressed, 957 with lz4; BENCHMARKS.md).
TARGET_COMPRESSION = "none"


def shard_stats(cols: dict) -> dict:
    """Exact per-channel moments of one shard's targets, as the trainer will decode them: summary over rows,
    features over every stored position (stored maps cover exactly the view: no padding to leave out)."""
    out = {}
    if cols.get("summary") is not None:
        s = RunningMoments()
        if len(cols["summary"]):
            s.update(cols["summary"].astype(np.float64))
        out["summary"] = s.to_dict()
    f = RunningMoments()  # with the full second moments: what standardize=phis needs, mergeable across shards
    if len(cols["features"]):
        feats = decode_features(cols).numpy()
        f.update(feats.reshape(-1, feats.shape[-1]).astype(np.float64))
    out["features"] = f.to_dict()
    return out


def write_teacher_shard(loc: CacheLocation, teacher: str, spec: dict, layout: TargetLayout, unit: int, image_id: list[str], view_index, cols: dict, identity: CacheIdentity, row_group_rows: int) -> tuple[ShardInfo, dict]:
    """Commit one teacher's targets for one unit. ``cols``: the encoded columns (``codec.encode_targets``).
    Returns the shard info and the shard's exact statistics."""
    fields = [pa.field("image_id", pa.string()), pa.field("view_index", pa.int16())]
    arrays = [pa.array(image_id, pa.string()), pa.array(np.asarray(view_index), pa.int16())]
    names = (["summary"] if cols.get("summary") is not None else []) + layout.feature_columns()
    for name in names:
        fields.append(tensor_field(name, cols[name].shape[1:], cols[name].dtype))
        arrays.append(tensor_to_arrow(cols[name]))
    stats = shard_stats(cols)
    meta = {"kind": "teacher", "teacher": teacher, "unit": unit, "spec": spec, "fingerprint": spec["fingerprint"], "layout": layout.to_dict(), "stats": stats, "identity": identity.to_dict(), "format_version": FORMAT_VERSION}
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=encode_metadata(meta)))
    compression = {"image_id": "zstd", "view_index": "zstd", **{n: TARGET_COMPRESSION for n in names}}
    return loc.write_table(teacher_path(teacher, unit), unit, table, row_group_rows=row_group_rows, byte_stream_split=[], compression=compression), stats


def existing_units(loc: CacheLocation, rel_dir: str) -> set[int]:
    return {int(p.rsplit("unit-", 1)[1].split(".")[0]) for p in loc.list_files(rel_dir) if "unit-" in p}


def shard_meta(loc: CacheLocation, rel: str) -> dict:
    """A shard's radio metadata; a shard of another format version is refused."""
    meta = decode_metadata(loc.parquet_file(rel).schema_arrow.metadata)
    if meta.get("format_version") != FORMAT_VERSION:
        raise format_error(loc.uri, meta.get("format_version"))
    return meta


def build_manifest(loc: CacheLocation, identity: CacheIdentity, source: dict, policy: dict, config: dict, n_units: int, required: list[str], old: Manifest | None = None, excluded: list[dict] = ()) -> Manifest:
    """Rebuild the manifest from the committed files, merging exact statistics; save it and return it.

    ``required``: the teachers the cache must hold for ``complete``. Checksums of files whose size did not
    change since ``old`` are reused, so finishing a large cache does not re-read it. ``excluded``: source
    entries never read (hidden files, unreadable folders), recorded after the shards' own skips.
    """
    old_sha = {s.path: s for s in ([*old.views.shards, *[s for t in old.teachers.values() for s in t.shards]] if old else [])}

    def info(rel: str, unit: int, rows: int) -> ShardInfo:
        size = loc.size(rel)
        prev = old_sha.get(rel)
        return ShardInfo(rel, unit, rows, size, prev.sha256 if prev and prev.bytes == size else loc.sha256(rel))

    view_shards, skipped, images = [], [], 0
    for u in sorted(existing_units(loc, "views")):
        pf = loc.parquet_file(views_path(u))
        meta = shard_meta(loc, views_path(u))
        view_shards.append(info(views_path(u), u, pf.metadata.num_rows))
        skipped.extend(Skipped(**s) for s in meta.get("skipped", []))
        images += meta.get("images", 0)
    skipped.extend(Skipped(**s) for s in excluded)
    teachers = {}
    for name in loc.list_dirs("teachers"):
        shards, stats_s, stats_f, meta = [], RunningStats(), RunningStats(), None
        has_summary = False
        for u in sorted(existing_units(loc, f"teachers/{name}")):
            rel = teacher_path(name, u)
            meta = shard_meta(loc, rel)
            shards.append(info(rel, u, loc.parquet_file(rel).metadata.num_rows))
            if "summary" in meta["stats"]:
                has_summary = True
                stats_s.merge(RunningStats.from_dict(meta["stats"]["summary"]))
            stats_f.merge(RunningStats.from_dict(meta["stats"]["features"]))
        if meta is None:
            continue
        stats = TeacherStats(Moments(stats_f.mean.tolist(), stats_f.std.tolist(), int(stats_f.count)), Moments(stats_s.mean.tolist(), stats_s.std.tolist(), int(stats_s.count)) if has_summary else None)
        teachers[name] = TeacherEntry(meta["spec"], TargetLayout.from_dict(meta["layout"]), stats, shards, len(shards) == n_units)
    manifest = Manifest(
        identity=identity, source=source, units=n_units, images=images, views=ViewsEntry(policy, view_shards), teachers=teachers, skipped=skipped,
        complete=len(view_shards) == n_units and all(name in teachers and teachers[name].complete for name in required),
        config=config, mlflow_run_id=old.mlflow_run_id if old else None, updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    save_manifest(loc, manifest)
    return manifest


def check_existing(loc: CacheLocation) -> Manifest | None:
    """The manifest at ``loc`` (None if absent); refuses a cache of another format version even when only
    shards were committed (a job killed before its first manifest)."""
    manifest = load_manifest(loc)
    if manifest is None:
        have = sorted(existing_units(loc, "views"))
        if have:
            shard_meta(loc, views_path(have[0]))
    return manifest


def check_shard(loc: CacheLocation, rel: str, identity: CacheIdentity, unit: int, entry: ShardInfo | None = None, fingerprint: str | None = None, checksum: bool = False) -> str | None:
    """None when the committed file at ``rel`` is what this cache wrote there; else a one-line reason.

    Checks, cheapest first: the file exists and its Parquet footer reads; its format version, cache identity
    and unit are this cache's (a shard copied in from another cache is caught here); a teacher shard's
    fingerprint; with a manifest ``entry``: rows, size and (``checksum=True``) the sha256.
    """
    if not loc.exists(rel):
        return "missing"
    try:
        pf = loc.parquet_file(rel)
        meta = decode_metadata(pf.schema_arrow.metadata)
        rows = pf.metadata.num_rows
    except Exception as e:  # truncated or overwritten: pyarrow raises ArrowInvalid, OSError, ...
        return f"not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    if meta.get("format_version") != FORMAT_VERSION:
        return f"format v{meta.get('format_version')}, this cache is v{FORMAT_VERSION}"
    if meta.get("identity") != identity.to_dict():
        return "belongs to another cache (its source, view policy or student views differ from this cache's)"
    if meta.get("unit") != unit:
        return f"holds unit {meta.get('unit')}, not unit {unit}"
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        return f"holds targets with fingerprint {meta.get('fingerprint')}, the manifest says {fingerprint}"
    if entry is not None:
        if rows != entry.rows:
            return f"{rows} rows, the manifest says {entry.rows}"
        size = loc.size(rel)
        if size != entry.bytes:
            return f"{size} bytes, the manifest says {entry.bytes}"
        if checksum and loc.sha256(rel) != entry.sha256:
            return "checksum differs from the manifest"
    return None


def find_damaged(loc: CacheLocation, identity: CacheIdentity, manifest: Manifest | None) -> list[tuple[str, str]]:
    """Every committed shard that is not what this cache wrote there: [(path, reason)]. Files the manifest
    lists are checked against their entry (rows, size); files it does not list (a job killed before its
    manifest) against their own metadata."""
    listed = {s.path: s for s in ([*manifest.views.shards, *[s for t in manifest.teachers.values() for s in t.shards]] if manifest else [])}
    fingerprints = {t: e.fingerprint for t, e in manifest.teachers.items()} if manifest else {}
    out = []
    for rel_dir, teacher in [("views", None), *((f"teachers/{t}", t) for t in loc.list_dirs("teachers"))]:
        for u in sorted(existing_units(loc, rel_dir)):
            rel = views_path(u) if teacher is None else teacher_path(teacher, u)
            reason = check_shard(loc, rel, identity, u, listed.get(rel), fingerprints.get(teacher))
            if reason is not None:
                out.append((rel, reason))
    return out


def merged_stats(loc: CacheLocation, entry: TeacherEntry) -> TeacherStats:
    """A teacher's statistics merged again from its shards' own metadata (to check the manifest's)."""
    f, s = RunningStats(), RunningStats()
    for sh in entry.shards:
        meta = decode_metadata(loc.parquet_file(sh.path).schema_arrow.metadata)
        f.merge(RunningStats.from_dict(meta["stats"]["features"]))
        if "summary" in meta["stats"]:
            s.merge(RunningStats.from_dict(meta["stats"]["summary"]))
    return TeacherStats(Moments(f.mean.tolist(), f.std.tolist(), int(f.count)), Moments(s.mean.tolist(), s.std.tolist(), int(s.count)) if s.count else None)


def merged_moments(loc: CacheLocation, entry: TeacherEntry) -> tuple[RunningMoments, RunningMoments | None]:
    """A teacher's features (and summary) moments with full covariance, merged from its shards' metadata
    (read on demand: the manifest keeps per-channel statistics only). Raises ValueError for shards written
    before second moments were stored."""
    f, s = RunningMoments(), RunningMoments()
    for sh in entry.shards:
        meta = decode_metadata(loc.parquet_file(sh.path).schema_arrow.metadata)
        try:
            f.merge(RunningMoments.from_dict(meta["stats"]["features"]))
            if "summary" in meta["stats"]:
                s.merge(RunningMoments.from_dict(meta["stats"]["summary"]))
        except ValueError as e:
            raise ValueError(f"{loc.full(sh.path)}: {e}. Rebuild this teacher's targets (radio cache ... rebuild=[{entry.spec['name']}]) or use standardize=channel") from None
    return f, (s if s.count else None)


def stats_differ(a: TeacherStats, b: TeacherStats) -> bool:
    def close(x, y):
        return x is None and y is None or (x is not None and y is not None and x.count == y.count and np.allclose(x.mean, y.mean, rtol=1e-9, atol=1e-12) and np.allclose(x.std, y.std, rtol=1e-9, atol=1e-12))

    return not (close(a.features, b.features) and close(a.summary, b.summary))
