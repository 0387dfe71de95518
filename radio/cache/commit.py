"""Commit records: what each shard's commit learned, written beside it, so nothing re-reads committed data.

Every shard ``<dir>/unit-N.parquet`` is followed by its commit record ``<dir>/unit-N.commit``, written by the
same task once the Parquet file is in place. The record holds the shard's size, sha256 and rows (known while
it was written), the cache identity, the unit, and for a teacher shard its fingerprint, layout and exact
moments (count, mean, M2 and the float32 upper triangle of the centered second moments, in binary). The
record *is* the commit: a Parquet file without one was cut short by a kill and is recomputed; a record
whose size differs from the listed file marks that file damaged. A job's planning therefore needs one
listing per directory, and a finished job's manifest and merged statistics come from records the driver
already holds (or reads once, for units committed by an earlier, killed run), never from the data.

On disk (little-endian)::

    b"RADIOCR1" | u64 header length | header (JSON, UTF-8) | arrays (raw, C order, at their recorded offsets)

``read_record(..., arrays=False)`` reads the header only (two small reads), which is all planning needs.
The merged statistics of a teacher (``stats/<teacher>.moments``) use the same container.

A record checks itself: its header carries the sha256 of the rest of the header (``head_sha256``) and of the
arrays (``arrays_sha256``), so a changed byte anywhere in it is a :class:`RecordError` naming the record, on
a header-only read as on a full one (records written before these fields existed are read unchecked).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import struct
from dataclasses import asdict, dataclass, field

import numpy as np

from ..normalize import RunningMoments
from .store import CacheLocation, ShardInfo

__all__ = [
    "MAGIC",
    "Commit",
    "FileRef",
    "commit_path",
    "encode_record",
    "read_record",
    "moments_arrays",
    "moments_from",
    "stats_path",
]

MAGIC = b"RADIOCR1"
_HEAD = struct.Struct("<8sQ")


def commit_path(shard_rel: str) -> str:
    """``views/unit-00003.parquet`` -> ``views/unit-00003.commit``."""
    return shard_rel[: -len(".parquet")] + ".commit"


def stats_path(teacher: str) -> str:
    return posixpath.join("stats", f"{teacher}.moments")


@dataclass
class FileRef:
    """A small file the cache trusts, with the size and sha256 it was written with."""

    path: str
    bytes: int
    sha256: str
    mtime_ns: int | None = None  # as listed when the manifest was written: another time means it was written again

    def to_dict(self) -> dict:
        return asdict(self)


def encode_record(header: dict, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """One record: ``header`` (JSON-able) and named arrays stored raw after it."""
    specs, blobs, offset = [], [], 0
    for name, a in (arrays or {}).items():
        a = np.ascontiguousarray(a)
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset, "nbytes": a.nbytes})
        blobs.append(a.tobytes())
        offset += a.nbytes
    body = b"".join(blobs)
    head = {**header, "arrays": specs}
    head = {**head, "head_sha256": _head_sha256(head), "arrays_sha256": hashlib.sha256(body).hexdigest()}
    encoded = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    return _HEAD.pack(MAGIC, len(encoded)) + encoded + body


_CHECKS = ("head_sha256", "arrays_sha256")


def _head_sha256(header: dict) -> str:
    """sha256 of the header's canonical JSON, its own checksums left out."""
    rest = {k: v for k, v in header.items() if k not in _CHECKS}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RecordError(ValueError):
    """A record that is not one (truncated, overwritten, another format)."""


def _parse_head(first: bytes, where: str) -> int:
    if len(first) < _HEAD.size:
        raise RecordError(f"{where}: truncated commit record ({len(first)} bytes)")
    magic, n = _HEAD.unpack(first[: _HEAD.size])
    if magic != MAGIC:
        raise RecordError(f"{where}: not a radio commit record (magic {magic!r})")
    return n


def read_record(
    loc: CacheLocation, rel: str, arrays: bool = True, data: bytes | None = None
) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of the record at ``rel``; ``arrays=False`` reads the header only. ``data``: the
    record's bytes when the caller already holds them. Raises :class:`RecordError` for a damaged record."""
    where = loc.full(rel)
    if data is None and not arrays:
        with loc.fs.open_input_file(where) as f:
            n = _parse_head(f.read_at(_HEAD.size, 0), where)
            head = f.read_at(n, _HEAD.size)
        blob = b""
    else:
        data = loc.read_bytes(rel) if data is None else data
        n = _parse_head(data, where)
        head, blob = data[_HEAD.size : _HEAD.size + n], memoryview(data)[_HEAD.size + n :]
    try:
        header = json.loads(head)
    except ValueError as e:
        raise RecordError(f"{where}: commit record header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise RecordError(f"{where}: commit record header is not a JSON object")
    if "head_sha256" in header and _head_sha256(header) != header["head_sha256"]:
        raise RecordError(f"{where}: commit record header does not match its recorded sha256 (changed after writing)")
    if arrays and "arrays_sha256" in header and hashlib.sha256(blob).hexdigest() != header["arrays_sha256"]:
        raise RecordError(f"{where}: commit record arrays do not match their recorded sha256 (changed after writing)")
    out = {}
    if arrays:
        for s in header.get("arrays", []):
            if s["offset"] + s["nbytes"] > len(blob):
                raise RecordError(f"{where}: truncated commit record (array {s['name']} past its end)")
            out[s["name"]] = np.frombuffer(blob[s["offset"] : s["offset"] + s["nbytes"]], np.dtype(s["dtype"])).reshape(
                s["shape"]
            )
    return header, out


def moments_arrays(prefix: str, m: RunningMoments) -> tuple[dict, dict[str, np.ndarray]]:
    """(header fields, arrays) of one :class:`RunningMoments`: count in the header; mean and M2 float64 and
    the centered second moments as the float32 upper triangle (exactly what a shard's merge consumes)."""
    if m.count == 0:
        return {f"{prefix}.count": 0}, {}
    iu = np.triu_indices(len(m.mean))
    return {f"{prefix}.count": m.count}, {
        f"{prefix}.mean": m.mean,
        f"{prefix}.m2": m.m2,
        f"{prefix}.cov_triu": m.cov_m2[iu].astype(np.float32),
    }


def moments_from(
    prefix: str, header: dict, arrays: dict[str, np.ndarray], full_cov_f64: bool = False
) -> RunningMoments | None:
    """The :class:`RunningMoments` stored under ``prefix`` (None when absent)."""
    if f"{prefix}.count" not in header:
        return None
    count = header[f"{prefix}.count"]
    if not count:
        return RunningMoments()
    mean = arrays[f"{prefix}.mean"]
    C = len(mean)
    tri = arrays[f"{prefix}.cov_triu"].astype(np.float64)
    cov = np.zeros((C, C))
    cov[np.triu_indices(C)] = tri
    cov = cov + np.triu(cov, 1).T
    return RunningMoments(count, mean.copy(), arrays[f"{prefix}.m2"].copy(), cov)


@dataclass
class Commit:
    """What one shard's commit learned. ``moments`` (teacher shards): ``{"features": ..., "summary": ...}``."""

    shard: ShardInfo
    cache_id: str
    teacher: str | None = None  # None: the views table
    fingerprint: str | None = None
    request: str | None = None  # the teacher's request key (radio cache planning, see pipelines/cache.py)
    layout: dict | None = None
    images: int = 0  # views table: images read (not skipped)
    skipped: list[dict] = field(default_factory=list)
    moments: dict[str, RunningMoments] | None = None

    def header(self) -> dict:
        return {
            "kind": "teacher" if self.teacher else "views",
            "shard": self.shard.to_dict(),
            "cache_id": self.cache_id,
            "teacher": self.teacher,
            "fingerprint": self.fingerprint,
            "request": self.request,
            "layout": self.layout,
            "images": self.images,
            "skipped": self.skipped,
        }

    def encode(self) -> bytes:
        head, arrays = self.header(), {}
        for k, m in (self.moments or {}).items():
            h, a = moments_arrays(k, m)
            head.update(h)
            arrays.update(a)
        return encode_record(head, arrays)

    @classmethod
    def from_record(cls, header: dict, arrays: dict | None = None) -> Commit:
        moments = None
        if arrays is not None and header.get("kind") == "teacher":
            moments = {k: m for k in ("features", "summary") if (m := moments_from(k, header, arrays)) is not None}
        return cls(
            ShardInfo(**header["shard"]),
            header["cache_id"],
            header.get("teacher"),
            header.get("fingerprint"),
            header.get("request"),
            header.get("layout"),
            header.get("images", 0),
            header.get("skipped", []),
            moments,
        )

    def write(self, loc: CacheLocation) -> Commit:
        """Commit: write the record beside its (already written) shard; from here on the shard counts as done."""
        loc.write_bytes_atomic(commit_path(self.shard.path), self.encode())
        return self

    def without_moments(self) -> Commit:
        return Commit(
            self.shard,
            self.cache_id,
            self.teacher,
            self.fingerprint,
            self.request,
            self.layout,
            self.images,
            self.skipped,
            None,
        )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
