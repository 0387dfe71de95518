"""Writing a cache: table builders for the views and teacher shards, their commit records (size, checksum,
rows, exact moments: ``radio.cache.commit``), and the checks of a shard's own footer.

Every shard carries, in its Parquet schema metadata, the format version, the cache identity, its unit and
(teacher shards) the teacher's spec, fingerprint and target layout: a few KB, read once when the shard is
streamed. Statistics live in the commit records and in one merged file per teacher, not in footers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..normalize import RunningMoments
from .arrow import tensor_field, tensor_to_arrow
from .codec import decode_features
from .commit import Commit, commit_path, read_record
from .manifest import FORMAT_VERSION, CacheIdentity, TargetLayout, TeacherStats, format_error
from .store import (
    CacheLocation,
    RemoteShard,
    ShardInfo,
    decode_metadata,
    encode_metadata,
    object_store_error,
    teacher_path,
    views_path,
)

__all__ = [
    "write_views_shard",
    "write_teacher_shard",
    "shard_moments",
    "shard_meta",
    "check_footer",
    "open_checked",
    "stats_differ",
]


def write_views_shard(
    loc: CacheLocation,
    unit: int,
    rows: dict,
    skipped: list[dict],
    images: int,
    identity: CacheIdentity,
    row_group_rows: int,
) -> Commit:
    """Write and commit one unit's views table. ``rows``: image_id, view_index, label_index, crop_box (N, 4),
    flip, source_hw (N, 2), student_image (encoded bytes). Returns the commit (also written beside the shard)."""
    table = pa.table(
        {
            "image_id": pa.array(rows["image_id"], pa.string()),
            "view_index": pa.array(rows["view_index"], pa.int16()),
            "label_index": pa.array(rows["label_index"], pa.int32()),
            "crop_box": _int_lists(rows["crop_box"], 4),
            "flip": pa.array(rows["flip"], pa.bool_()),
            "source_hw": _int_lists(rows["source_hw"], 2),
            "student_image": pa.array(rows["student_image"], pa.binary()),
        }
    )
    meta = {
        "kind": "views",
        "unit": unit,
        "skipped": skipped,
        "images": images,
        "identity": identity.to_dict(),
        "format_version": FORMAT_VERSION,
    }
    info = loc.write_table(
        views_path(unit),
        unit,
        table.replace_schema_metadata(encode_metadata(meta)),
        row_group_rows=row_group_rows,
        byte_stream_split=[],
    )
    return Commit(info, identity.cache_id, images=images, skipped=skipped).write(loc)


def _int_lists(values, n: int) -> pa.FixedSizeListArray:
    """Small per-row int32 vectors (crop boxes, sizes) as fixed-size lists: readable as lists anywhere."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(values, np.int32).reshape(-1), pa.int32()), n)


# Target tensors are one fixed-size binary value per row (radio.cache.arrow), stored uncompressed: float16
# features and uint8 codes are near-incompressible (lz4 saved 0 %, zstd 8 %), and decompression was the
# reader's largest cost (the reader: 1135 views/s uncompressed, 957 with lz4; BENCHMARKS.md).
TARGET_COMPRESSION = "none"


def shard_moments(cols: dict) -> dict[str, RunningMoments]:
    """Exact moments of one shard's targets, as the trainer will decode them: summary over rows, features over
    every stored position of the main grid (stored maps cover exactly the view: no padding to leave out),
    with the full second moments that standardize=phis needs, mergeable across shards."""
    out = {}
    if cols.get("summary") is not None:
        s = RunningMoments()
        if len(cols["summary"]):
            s.update(cols["summary"].astype(np.float64))
        out["summary"] = s
    f = RunningMoments()
    if len(cols["features"]):
        feats = decode_features(cols).numpy()
        f.update(feats.reshape(-1, feats.shape[-1]).astype(np.float64))
    out["features"] = f
    return out


def write_teacher_shard(
    loc: CacheLocation,
    teacher: str,
    spec: dict,
    layout: TargetLayout,
    unit: int,
    image_id: list[str],
    view_index: Sequence[int] | np.ndarray,
    cols: dict,
    identity: CacheIdentity,
    row_group_rows: int,
    request: str | None = None,
) -> Commit:
    """Write and commit one teacher's targets for one unit. ``cols``: the encoded columns (``codec.encode_targets``).
    Returns the commit: the shard's size, checksum, rows and exact moments, as written beside the shard (the
    moments exactly as stored, so a merge of records held in memory equals one of records read back)."""
    fields = [pa.field("image_id", pa.string()), pa.field("view_index", pa.int16())]
    arrays = [pa.array(image_id, pa.string()), pa.array(np.asarray(view_index), pa.int16())]
    names = (["summary"] if cols.get("summary") is not None else []) + layout.feature_columns()
    for name in names:
        fields.append(tensor_field(name, cols[name].shape[1:], cols[name].dtype))
        arrays.append(tensor_to_arrow(cols[name]))
    # the statistics live in the commit record, not the footer: a footer is read whenever the shard is streamed
    meta = {
        "kind": "teacher",
        "teacher": teacher,
        "unit": unit,
        "spec": spec,
        "fingerprint": spec["fingerprint"],
        "layout": layout.to_dict(),
        "identity": identity.to_dict(),
        "format_version": FORMAT_VERSION,
    }
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=encode_metadata(meta)))
    compression = {"image_id": "zstd", "view_index": "zstd", **{n: TARGET_COMPRESSION for n in names}}
    info = loc.write_table(
        teacher_path(teacher, unit),
        unit,
        table,
        row_group_rows=row_group_rows,
        byte_stream_split=[],
        compression=compression,
    )
    data = Commit(
        info, identity.cache_id, teacher, spec["fingerprint"], request, layout.to_dict(), moments=shard_moments(cols)
    ).encode()
    loc.write_bytes_atomic(commit_path(info.path), data)
    return Commit.from_record(*read_record(loc, commit_path(info.path), data=data))


def shard_meta(loc: CacheLocation, rel: str) -> dict:
    """A shard's radio metadata; a shard of another format version is refused."""
    meta = decode_metadata(loc.parquet_file(rel).schema_arrow.metadata)
    if meta.get("format_version") != FORMAT_VERSION:
        raise format_error(loc.uri, meta.get("format_version"))
    return meta


def check_footer(
    meta: dict,
    rows: int,
    identity: CacheIdentity,
    unit: int,
    entry: ShardInfo | None = None,
    fingerprint: str | None = None,
    layout: dict | None = None,
) -> str | None:
    """None when a shard's own metadata (its footer, already read) says it is what this cache holds at
    ``unit``; else a one-line reason. The shard's metadata wins over the manifest: a layout that differs is named."""
    if meta.get("format_version") != FORMAT_VERSION:
        return f"format v{meta.get('format_version')}, this cache is v{FORMAT_VERSION}"
    if meta.get("identity") != identity.to_dict():
        return "belongs to another cache (its source, view policy or student views differ from this cache's)"
    if meta.get("unit") != unit:
        return f"holds unit {meta.get('unit')}, not unit {unit}"
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        return f"holds targets with fingerprint {meta.get('fingerprint')}, the manifest says {fingerprint}"
    if layout is not None and meta.get("layout") != layout:
        return f"stores targets as {meta.get('layout')}, the manifest says {layout}"
    if entry is not None and rows != entry.rows:
        return f"{rows} rows, the manifest says {entry.rows}"
    return None


def open_checked(
    loc: CacheLocation,
    rel: str,
    identity: CacheIdentity,
    unit: int,
    entry: ShardInfo | None = None,
    fingerprint: str | None = None,
    layout: dict | None = None,
    stream: bool = False,
    ahead: int = 3,
) -> tuple[pq.ParquetFile | RemoteShard | None, str | None]:
    """(ParquetFile, None) for a shard whose footer checks out (:func:`check_footer`), else (None, reason).
    The footer is read once, here, and the returned file streams without reading it again. ``stream``: the
    caller streams the whole file (``ahead``: row groups requested ahead from an object store). A local one is
    checked first against the recorded hash (``CacheLocation.check_whole``), so its pages are read without page
    checks; one on an object store is a :class:`RemoteShard` (opened from the recorded size, its row groups
    checked by digest)."""
    whole = stream and loc.hashed_whole(entry)
    try:
        if stream and not loc.is_local and entry is not None:  # no HEAD, row groups ahead, checked by digest
            pf = RemoteShard(loc, rel, entry.bytes, depth=ahead)
        else:
            pf = loc.parquet_file(rel, verify_pages=not whole)
        meta = decode_metadata(pf.schema_arrow.metadata)
        rows = pf.metadata.num_rows
    except FileNotFoundError:
        return None, "missing"
    except (pa.ArrowException, OSError, ValueError, EOFError) as e:  # truncated or overwritten (ArrowInvalid, ...);
        # anything else is a fault in this code, not damage: it propagates rather than send the file to repair
        text = str(e)
        if "NO_SUCH_KEY" in text or "NoSuchKey" in text:
            return None, "missing"
        if object_store_error(e) is not None:  # the store failing is not the file being damaged
            raise
        return None, f"not a readable Parquet file ({type(e).__name__}: {text.splitlines()[0][:120]})"
    reason = check_footer(meta, rows, identity, unit, entry, fingerprint, layout)
    return (None, reason) if reason else (pf, None)


def stats_differ(a: TeacherStats, b: TeacherStats) -> bool:
    def close(x, y):
        return (
            x is None
            and y is None
            or (
                x is not None
                and y is not None
                and x.count == y.count
                and np.allclose(x.mean, y.mean, rtol=1e-9, atol=1e-12)
                and np.allclose(x.std, y.std, rtol=1e-9, atol=1e-12)
            )
        )

    return not (close(a.features, b.features) and close(a.summary, b.summary))
