"""Reading a cache: the manifest, fingerprint checks, and streaming batches joined by key.

Rows of the views table and of each teacher's table are matched by their key ``(image_id, view_index)``:
the reader reads the files of one unit in lockstep and checks that every batch's keys agree, so a missing
or reordered row is an error, never a silent misalignment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .arrow import arrow_to_tensor
from .store import CacheLocation, decode_metadata, teacher_path, views_path

__all__ = ["MANIFEST_NAME", "CacheError", "CacheMismatch", "CacheReader", "CacheBatch", "load_manifest", "save_manifest", "describe_differences"]

MANIFEST_NAME = "manifest.json"


class CacheError(RuntimeError):
    """A cache is missing, incomplete or damaged."""


class CacheMismatch(CacheError):
    """A cache holds something other than what the config asks for (teachers, fingerprints, views)."""


def load_manifest(loc: CacheLocation) -> dict | None:
    if not loc.exists(MANIFEST_NAME):
        return None
    return json.loads(loc.read_bytes(MANIFEST_NAME))


def save_manifest(loc: CacheLocation, manifest: dict):
    loc.write_bytes_atomic(MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode())


def describe_differences(have, want, prefix: str = "") -> list[str]:
    """Human-readable leaf differences between two JSON-like trees: ``"a.b: 1 (cache) != 2 (config)"``."""
    if isinstance(have, dict) and isinstance(want, dict):
        out = []
        for k in sorted(set(have) | set(want)):
            p = f"{prefix}.{k}" if prefix else str(k)
            if k not in have:
                out.append(f"{p}: absent in cache, {want[k]!r} in config")
            elif k not in want:
                out.append(f"{p}: {have[k]!r} in cache, absent in config")
            else:
                out.extend(describe_differences(have[k], want[k], p))
        return out
    if isinstance(have, (list, tuple)) and isinstance(want, (list, tuple)) and len(have) == len(want):
        return [d for i, (a, b) in enumerate(zip(have, want)) for d in describe_differences(a, b, f"{prefix}[{i}]")]
    return [] if have == want else [f"{prefix or '<root>'}: {have!r} (cache) != {want!r} (config)"]


@dataclass
class CacheBatch:
    """A batch of cache rows. Teacher tensors keep the cache dtype (float16 by default).

    ``teachers[name]`` holds ``summary_BD`` (absent for teachers without one), ``features_BHWC`` and
    ``valid_hw_B2`` (the unpadded part of the feature grid).
    """

    image_id: list[str]
    view_index: np.ndarray
    label_index: np.ndarray
    student_image: list[bytes]
    teachers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_id)


class CacheReader:
    """Opens a cache for training or evaluation.

    ``teachers``: which teachers' targets to read (default: all). A teacher that is not in the cache is an
    error naming what the cache holds. ``expect_fingerprints``: ``{teacher: fingerprint}`` the caller was
    configured for; any difference is refused. Only units complete for every requested teacher are read.
    """

    def __init__(self, uri: str, teachers: list[str] | None = None, expect_fingerprints: dict[str, str] | None = None):
        self.loc = CacheLocation(uri)
        manifest = load_manifest(self.loc)
        if manifest is None:
            raise CacheError(f"no cache at {uri}: {MANIFEST_NAME} not found (build one with `radio cache CONFIG output={uri}`)")
        self.manifest = manifest
        held = manifest.get("teachers", {})
        self.teachers = list(held) if teachers is None else list(teachers)
        missing = [t for t in self.teachers if t not in held]
        if missing:
            raise CacheMismatch(f"cache {uri} has no targets for teacher(s) {missing}; it holds {sorted(held)}. Add them with `radio cache` (only the new teachers are computed) or remove them from the training config.")
        for t, fp in (expect_fingerprints or {}).items():
            if t in held and held[t]["fingerprint"] != fp:
                raise CacheMismatch(f"cache {uri} holds teacher {t!r} with fingerprint {held[t]['fingerprint']}, but the config asks for {fp}: the cache is stale for this teacher. Rebuild it with `radio cache ... rebuild=[{t}]`.")
        view_units = {s["unit"] for s in manifest.get("views", {}).get("shards", [])}
        units = set(view_units)
        for t in self.teachers:
            units &= {s["unit"] for s in held[t]["shards"]}
        self.units = sorted(units)
        self._rows = {s["unit"]: s["rows"] for s in manifest["views"]["shards"]}

    @property
    def specs(self) -> dict[str, dict]:
        return {t: self.manifest["teachers"][t]["spec"] for t in self.teachers}

    @property
    def fingerprints(self) -> dict[str, str]:
        return {t: self.manifest["teachers"][t]["fingerprint"] for t in self.teachers}

    @property
    def stats(self) -> dict[str, dict]:
        return {t: self.manifest["teachers"][t]["stats"] for t in self.teachers}

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("source", {}).get("labels", []))

    def num_rows(self, units: list[int] | None = None) -> int:
        return sum(self._rows[u] for u in (self.units if units is None else units))

    def _open_teacher(self, t: str, unit: int):
        pf = self.loc.parquet_file(teacher_path(t, unit))
        meta = decode_metadata(pf.schema_arrow.metadata)
        want = self.manifest["teachers"][t]["fingerprint"]
        if meta.get("fingerprint") != want:
            raise CacheMismatch(f"{self.loc.full(teacher_path(t, unit))} has fingerprint {meta.get('fingerprint')}, the manifest says {want}: mixed targets in one cache")
        return pf

    def iter_unit(self, unit: int, batch_rows: int = 64, with_images: bool = True) -> Iterator[CacheBatch]:
        """Stream one unit in batches of ``batch_rows``, joining the tables by key."""
        view_cols = ["image_id", "view_index", "label_index"] + (["student_image"] if with_images else [])
        views = self.loc.parquet_file(views_path(unit)).iter_batches(batch_size=batch_rows, columns=view_cols)
        tfiles = {t: self._open_teacher(t, unit) for t in self.teachers}
        titers = {t: pf.iter_batches(batch_size=batch_rows) for t, pf in tfiles.items()}
        for vb in views:
            ids = vb.column("image_id").to_pylist()
            vidx = vb.column("view_index").to_numpy()
            batch = CacheBatch(ids, vidx, vb.column("label_index").to_numpy(zero_copy_only=False), vb.column("student_image").to_pylist() if with_images else [])
            for t, it in titers.items():
                tb = next(it, None)
                if tb is None or tb.column("image_id").to_pylist() != ids or not np.array_equal(tb.column("view_index").to_numpy(), vidx):
                    raise CacheError(f"unit {unit}: keys of teacher {t!r} do not match the views table at rows {ids[:1]}..; the cache is damaged. Run `radio cache verify {self.loc.uri}`.")
                batch.teachers[t] = {name: arrow_to_tensor(tb.column(name)) for name in ("summary", "features", "valid_hw") if name in tb.schema.names}
            yield batch
        for t, it in titers.items():
            if next(it, None) is not None:
                raise CacheError(f"unit {unit}: teacher {t!r} has more rows than the views table; the cache is damaged")

    def iter_batches(self, units: list[int] | None = None, batch_rows: int = 64, with_images: bool = True) -> Iterator[CacheBatch]:
        for u in self.units if units is None else units:
            yield from self.iter_unit(u, batch_rows, with_images)

