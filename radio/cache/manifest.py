"""The cache manifest as typed dataclasses: identity, views, teachers (spec, layout, statistics, shards),
skipped inputs. The JSON on disk is ``Manifest.to_dict()``; nothing outside ``radio/cache`` reads its keys.

``FORMAT_VERSION`` changes whenever a reader of the old format would misread the new one. Version 2:
teacher inputs cover the whole view; targets are stored at a chosen grid (``layout``) with no padding and
no ``valid_hw``; int8 targets carry per-channel scales. Version 3 (this one): every shard has a commit
record beside it (``radio.cache.commit``) holding its size, checksum, rows and moments; footers no longer
carry statistics; each teacher's merged moments are one file, ``stats/<teacher>.moments``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

import hashlib
import json
from dataclasses import asdict, dataclass

from .codec import bytes_per_row, encode_targets, feature_columns, grid_suffix
from .commit import FileRef
from .store import CacheLocation, ShardInfo

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CacheError",
    "CacheMismatch",
    "CacheFormatError",
    "ManifestDamaged",
    "CacheIdentity",
    "Moments",
    "TeacherStats",
    "TargetLayout",
    "TeacherEntry",
    "ViewsEntry",
    "Skipped",
    "Manifest",
    "load_manifest",
    "save_manifest",
]

FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"


def hw(grid: Sequence[int]) -> tuple[int, int]:
    """A (height, width) pair from any two-item sequence (a manifest's JSON lists, a tuple)."""
    return int(grid[0]), int(grid[1])


class CacheError(RuntimeError):
    """A cache is missing, incomplete or damaged."""


class CacheMismatch(CacheError):
    """A cache holds something other than what the config asks for (teachers, fingerprints, views)."""


class ManifestDamaged(CacheError):
    """The manifest's content differs from its recorded checksum: rebuilt from the shards by the job's rerun."""


class CacheFormatError(CacheError):
    """A cache written in another format version."""


def format_error(uri: str, found: object) -> CacheFormatError:
    return CacheFormatError(
        f"cache {uri} is in format v{found}, this version of radio reads format v{FORMAT_VERSION} only "
        "(v3 keeps a commit record beside every shard and each teacher's statistics in one file; v2 kept "
        "them in every shard's "
        "footer; v1 caches hold center-cropped, padded targets). Rebuild it: rerun the `radio cache` "
        "command that built it with a new output=PATH, "
        f"or delete {uri} and rerun it unchanged."
    )


@dataclass
class CacheIdentity:
    """What every table of a cache must agree on; changing any of it needs a new cache root."""

    source_fingerprint: str
    views: dict  # the ViewPolicy, as plain data
    student_resolution: int
    student_image_format: str
    images_per_shard: int

    @property
    def cache_id(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CacheIdentity:
        return cls(**d)


@dataclass
class Moments:
    """Per-channel mean and population std over ``count`` rows (or positions)."""

    mean: list[float]
    std: list[float]
    count: int


@dataclass
class TeacherStats:
    features: Moments
    summary: Moments | None = None
    exact: bool = True

    def to_dict(self) -> dict:
        d = {"exact": self.exact, "features": asdict(self.features)}
        if self.summary is not None:
            d["summary"] = asdict(self.summary)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TeacherStats:
        return cls(
            Moments(**d["features"]), Moments(**d["summary"]) if d.get("summary") else None, d.get("exact", True)
        )


@dataclass
class TargetLayout:
    """How one teacher's targets are stored: the grid (covering exactly the view) and the dtype.

    ``extra_grids``: further grids the same targets are stored at, for the lower resolutions a multi-resolution
    run trains at (columns ``features@HxW``, see ``codec.feature_columns``); ``grid`` is the grid of the
    stored student resolution, the highest."""

    grid: tuple[int, int]
    dtype: str  # float16 | float32 | int8
    native_grid: tuple[int, int]  # the teacher's own grid for a square view
    extra_grids: tuple[tuple[int, int], ...] = ()

    @property
    def grids(self) -> list[tuple[int, int]]:
        """Every grid stored, the main one first."""
        return [hw(self.grid), *(hw(g) for g in self.extra_grids)]

    @classmethod
    def stored(
        cls,
        native_grid: tuple[int, int],
        target_grid: tuple[int, int] | None,
        extra_targets: Sequence[tuple[int, int]],
        dtype: str,
    ) -> TargetLayout:
        """The layout of a teacher with grid ``native_grid`` asked for ``target_grid`` (None: native) and the
        grids ``extra_targets`` of lower resolutions: each capped by the teacher's own grid
        (``radio.targets.stored_grid``), none stored twice, the extra grids finest first."""
        from ..targets import stored_grid

        main = stored_grid(native_grid, target_grid)
        extra = {stored_grid(native_grid, g) for g in extra_targets} - {main}
        return cls(main, dtype, hw(native_grid), tuple(sorted(extra, reverse=True)))

    def encode(self, summary: torch.Tensor | None, maps: list) -> dict:
        """The stored columns of one batch: ``maps`` holds the feature maps at ``self.grids``, in that order; the
        main grid's columns keep their names, each extra grid's are suffixed (``@HxW``)."""
        cols = encode_targets(summary, maps[0], self.dtype)
        for g, m in zip(self.extra_grids, maps[1:], strict=True):
            cols.update({k + grid_suffix(g): v for k, v in encode_targets(None, m, self.dtype).items()})
        return cols

    def columns_at(self, cols: dict, grid: tuple[int, int] | None) -> dict:
        """A row batch's columns as served at stored ``grid`` (None: the main grid; see ``pick_grid``), under the
        main grid's names. The summary is the same at every grid."""
        suffix = grid_suffix(grid)
        return {k: cols[k + suffix] if k + suffix in cols else cols[k] for k in cols if "@" not in k}

    def feature_columns(self) -> list[str]:
        """Every stored feature column, the main grid's first."""
        return [*feature_columns(self.dtype), *(c for g in self.extra_grids for c in feature_columns(self.dtype, g))]

    def pick_grid(self, want: tuple[int, int]) -> tuple[int, int] | None:
        """The stored grid that serves a student grid ``want`` best: ``want`` itself, else the coarsest grid
        finer than it (area-averaged down in the loss), else the finest grid (upsampled). None: the main grid."""
        grids = self.grids
        want = (int(want[0]), int(want[1]))
        if want in grids:
            best = want
        else:
            finer = [g for g in grids if g[0] >= want[0] and g[1] >= want[1]]
            best = min(finer, key=lambda g: g[0] * g[1]) if finer else max(grids, key=lambda g: g[0] * g[1])
        return None if best == tuple(self.grid) else best

    def to_dict(self) -> dict:
        d = {"grid": list(self.grid), "dtype": self.dtype, "native_grid": list(self.native_grid)}
        if self.extra_grids:  # absent for a one-resolution cache: its layout (and resume checks) as before
            d["extra_grids"] = [list(g) for g in self.extra_grids]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TargetLayout:
        return cls(
            tuple(d["grid"]), d["dtype"], tuple(d["native_grid"]), tuple(tuple(g) for g in d.get("extra_grids", ()))
        )


class _Shards:
    """Totals over a ``shards`` list (one place for what every table entry derives from its shards)."""

    shards: list[ShardInfo]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def by_unit(self) -> dict[int, ShardInfo]:
        return {s.unit: s for s in self.shards}


@dataclass
class TeacherEntry(_Shards):
    spec: dict  # the teacher's TeacherSpec as plain data (the teachers package owns its fields)
    layout: TargetLayout
    stats: TeacherStats
    shards: list[ShardInfo]
    complete: bool
    moments: FileRef | None = None  # the merged moments (stats/<teacher>.moments), with its size and sha256
    request: str | None = None  # the request key the targets were computed for (planning without loading the teacher)

    @property
    def fingerprint(self) -> str:
        return self.spec["fingerprint"]

    @property
    def summary_dim(self) -> int | None:
        return self.spec.get("summary_dim")

    @property
    def feature_dim(self) -> int:
        return int(self.spec["feature_dim"])

    @property
    def bytes_per_view(self) -> float:
        return self.bytes / max(1, self.rows)

    @property
    def float32_native_bytes_per_view(self) -> int:
        """What a view would cost as float32 at the teacher's own grid (the format before target grids)."""
        return bytes_per_row(self.layout.native_grid, self.feature_dim, self.summary_dim, "float32")

    def to_dict(self) -> dict:
        return {
            "spec": self.spec,
            "fingerprint": self.fingerprint,
            "layout": self.layout.to_dict(),
            "stats": self.stats.to_dict(),
            "shards": [s.to_dict() for s in self.shards],
            "rows": self.rows,
            "bytes": self.bytes,
            "bytes_per_view": self.bytes_per_view,
            "float32_native_bytes_per_view": self.float32_native_bytes_per_view,
            "complete": self.complete,
            "moments": self.moments.to_dict() if self.moments else None,
            "request": self.request,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TeacherEntry:
        return cls(
            d["spec"],
            TargetLayout.from_dict(d["layout"]),
            TeacherStats.from_dict(d["stats"]),
            [ShardInfo(**s) for s in d["shards"]],
            d["complete"],
            FileRef(**d["moments"]) if d.get("moments") else None,
            d.get("request"),
        )


@dataclass
class ViewsEntry(_Shards):
    policy: dict
    shards: list[ShardInfo]

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "rows": self.rows,
            "bytes": self.bytes,
            "shards": [s.to_dict() for s in self.shards],
        }

    @classmethod
    def from_dict(cls, d: dict) -> ViewsEntry:
        return cls(d["policy"], [ShardInfo(**s) for s in d["shards"]])


@dataclass
class Skipped:
    image_id: str
    reason: str


@dataclass
class Manifest:
    identity: CacheIdentity
    source: dict  # the source's description (kind, path, split, labels, fingerprint) and its config
    units: int
    images: int
    views: ViewsEntry
    teachers: dict[str, TeacherEntry]
    skipped: list[Skipped]
    complete: bool
    config: dict  # the resolved job config
    mlflow_run_id: str | None = None
    updated: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def cache_id(self) -> str:
        return self.identity.cache_id

    @property
    def labels(self) -> list[str]:
        return list(self.source.get("labels", []))

    @property
    def student_resolution(self) -> int:
        return self.identity.student_resolution

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "cache_id": self.cache_id,
            "identity": self.identity.to_dict(),
            "source": self.source,
            "units": self.units,
            "images": self.images,
            "views": self.views.to_dict(),
            "teachers": {t: e.to_dict() for t, e in self.teachers.items()},
            "skipped": [asdict(s) for s in self.skipped],
            "complete": self.complete,
            "config": self.config,
            "mlflow_run_id": self.mlflow_run_id,
            "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        return cls(
            CacheIdentity.from_dict(d["identity"]),
            d["source"],
            d["units"],
            d["images"],
            ViewsEntry.from_dict(d["views"]),
            {t: TeacherEntry.from_dict(e) for t, e in d["teachers"].items()},
            [Skipped(**s) for s in d["skipped"]],
            d["complete"],
            d.get("config", {}),
            d.get("mlflow_run_id"),
            d.get("updated", ""),
            d["format_version"],
        )


def load_manifest(loc: CacheLocation) -> Manifest | None:
    """The manifest at ``loc``, or None when there is none. A manifest of another format version, one that
    is not valid JSON, or one missing fields is a :class:`CacheError` naming the file and what to do."""
    path = loc.full(MANIFEST_NAME)
    try:
        data = loc.read_bytes(
            MANIFEST_NAME
        )  # one read (no separate existence check: a request less on an object store)
    except OSError:
        if not loc.exists(MANIFEST_NAME):
            return None
        raise
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestDamaged(
            f"{path} is not valid JSON ({e}): it was damaged since the job wrote it. The shards are intact and "
            f"carry their own records: `radio cache repair {loc.shell} CONFIG` (the config that built it) rewrites "
            "the manifest from them."
        ) from None
    version = d.get("format_version") if isinstance(d, dict) else None
    if version != FORMAT_VERSION:
        raise format_error(loc.uri, version)
    recorded = d.pop("sha256", None)
    if recorded != _digest(d):
        what = "has no recorded sha256" if recorded is None else "does not match its recorded sha256"
        raise ManifestDamaged(
            f"{path} {what}: it was edited or damaged since the job wrote it, and its layouts, statistics "
            "and shard list cannot be trusted. "
            "The shards are intact and carry their own records: "
            f"`radio cache repair {loc.shell}` rewrites the manifest from them."
        )
    try:
        return Manifest.from_dict(d)
    except (KeyError, TypeError) as e:
        raise ManifestDamaged(
            f"{path} is missing or has malformed field {e}: it was damaged since the job wrote it. "
            f"`radio cache repair {loc.shell}` rewrites it from the shards' own records."
        ) from None


def _digest(d: dict) -> str:
    """sha256 of a manifest's content (every field but the checksum itself), independent of indentation."""
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_manifest(loc: CacheLocation, manifest: Manifest) -> None:
    d = manifest.to_dict()
    d = json.loads(json.dumps(d))  # as it reads back (tuples as lists), so the checksum covers what a reader sees
    loc.write_bytes_atomic(MANIFEST_NAME, json.dumps({**d, "sha256": _digest(d)}, indent=1, sort_keys=True).encode())
