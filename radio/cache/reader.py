"""Reading a cache: the manifest, fingerprint checks, and streaming batches joined by key.

Rows of the views table and of each teacher's table are matched by their key ``(image_id, view_index)``:
the reader reads the files of one unit in lockstep and checks that every batch's keys agree, so a missing
or reordered row is an error, never a silent misalignment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..normalize import RunningMoments

import functools
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..images import decode_student_image
from ..normalize import TargetStats
from .arrow import column_tensor
from .codec import grid_suffix
from .manifest import (
    MANIFEST_NAME,
    CacheError,
    CacheMismatch,
    Manifest,
    TeacherEntry,
    hw,
    load_manifest,
)
from .store import CacheLocation, ChangedFile, RemoteShard, object_store_error, teacher_path, views_path

__all__ = ["CacheReader", "CacheBatch", "describe_differences", "column_types"]


def describe_differences(have: object, want: object, prefix: str = "") -> list[str]:
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
        return [
            d
            for i, (a, b) in enumerate(zip(have, want, strict=True))
            for d in describe_differences(a, b, f"{prefix}[{i}]")
        ]
    return [] if have == want else [f"{prefix or '<root>'}: {have!r} (cache) != {want!r} (config)"]


def column_types(loc: CacheLocation, manifest: Manifest, teachers: list[str] | None = None) -> dict[str, str]:
    """Column -> Arrow type of the views table and of each teacher's targets (``<teacher>.<column>``), read
    from the first shard footers (the key columns every table repeats are listed once, with the views)."""
    types = {}
    if manifest.views.shards:
        types.update({f.name: str(f.type) for f in loc.parquet_file(manifest.views.shards[0].path).schema_arrow})
    for t in manifest.teachers if teachers is None else teachers:
        shards = manifest.teachers[t].shards
        if shards:
            types.update(
                {
                    f"{t}.{f.name}": str(f.type)
                    for f in loc.parquet_file(shards[0].path).schema_arrow
                    if f.name not in ("image_id", "view_index")
                }
            )
    return types


@dataclass
class CacheBatch:
    """A batch of cache rows. Teacher columns keep their stored dtype (float16 by default).

    ``teachers[name]`` holds ``summary`` (B, D) (absent for teachers without one) and ``features``
    (B, h, w, C) at the stored grid, covering exactly the view; int8 caches add ``features_scale`` and
    ``features_offset`` (B, C). ``radio.cache.decode_features`` turns them into float32.
    """

    image_id: list[str]
    view_index: np.ndarray
    label_index: np.ndarray
    student_image: list[bytes] | np.ndarray  # encoded views; for the "raw" format one uint8 (B, H, W, 3) array
    teachers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    first_row: int = 0  # a stream's count of the rows before this batch's first in its epoch

    def __len__(self) -> int:
        return len(self.image_id)


class CacheReader:
    """Opens a cache for training or evaluation.

    ``teachers``: which teachers' targets to read (default: all). A teacher that is not in the cache is an
    error naming what the cache holds. ``expect_fingerprints``: ``{teacher: fingerprint}`` the caller was
    configured for; any difference is refused. Only units complete for every requested teacher are read.
    """

    def __init__(
        self,
        uri: str,
        teachers: list[str] | None = None,
        expect_fingerprints: dict[str, str] | None = None,
        check: bool = True,
        manifest: Manifest | None = None,
        memo: str | None = None,
    ) -> None:
        self.loc = CacheLocation(uri)
        manifest = manifest or load_manifest(
            self.loc
        )  # a stream passes the one it read: the manifest is read once per run
        if manifest is None:
            raise CacheError(
                f"no cache at {uri}: {MANIFEST_NAME} not found (build one with `radio cache CONFIG output={uri}`)"
            )
        self.manifest: Manifest = manifest
        # teacher -> the extra grids (of TargetLayout.extra_grids) to read; absent teacher: every grid stored
        self.extra_grids: dict[str, list[tuple[int, int]]] = {}
        # (unit, teacher, column, field, first row, rows) -> where each row of a teacher's in-place column is
        # received, for files on an object store read by radio's own client (RemoteShard.placer); a stream sets it
        self.placer: Callable | None = None
        self.fetch_ahead = 3  # row groups requested ahead per shard on an object store (RemoteShard.depth)
        held = manifest.teachers
        self.teachers = list(held) if teachers is None else list(teachers)
        missing = [t for t in self.teachers if t not in held]
        if missing:
            raise CacheMismatch(
                f"cache {uri} has no targets for teacher(s) {missing}; it holds {sorted(held)}. "
                "Add them with `radio cache` (only the new teachers are computed) or remove them from "
                "the training config."
            )
        for t, fp in (expect_fingerprints or {}).items():
            if t in held and held[t].fingerprint != fp:
                raise CacheMismatch(
                    f"cache {uri} holds teacher {t!r} with fingerprint {held[t].fingerprint}, "
                    f"but the config asks for {fp}: the cache is stale for this teacher. "
                    f"Rebuild it with `radio cache ... rebuild=[{t}]`."
                )
        units = {s.unit for s in manifest.views.shards}
        for t in self.teachers:
            units &= {s.unit for s in held[t].shards}
        self.units = sorted(units)
        self.rows_per_unit = {s.unit: s.rows for s in manifest.views.shards}
        self._by_unit: dict[str | None, dict] | None = None
        self._moments: dict[str, tuple] = {}
        # where this reader's processes note the local shards they found intact (CacheLocation.check_whole):
        # made here (or handed down by a stream) before any loader worker forks, so they share it; removed
        # when the process that made it exits
        self.memo = memo
        if memo is None and self.loc.is_local:
            import atexit
            import shutil
            import tempfile

            self.memo = tempfile.mkdtemp(prefix="radio-verified-")
            atexit.register(shutil.rmtree, self.memo, True)
        if check:
            self._check_manifest()

    def _damaged(self, what: str) -> CacheError:
        return CacheError(
            f"{what}. The cache is damaged or was edited: `radio cache repair {self.loc.shell}` checks every "
            "file against its record, sets the damaged ones aside and recomputes them "
            f"(`radio cache verify {self.loc.shell}` lists the problems first)."
        )

    def _check_manifest(self) -> None:
        """What a training must not start on, checked from the manifest and one listing per directory (no file
        is opened): a manifest that claims more than its shard list holds, and shards or merged statistics that
        are missing or whose size is not the one committed. Each shard's footer (identity, unit, fingerprint,
        layout, rows) is checked when it is streamed, and the merged moments' checksum when they are read."""
        m = self.manifest
        if m.complete and (
            len(m.views.shards) != m.units or any(len(m.teachers[t].shards) != m.units for t in self.teachers)
        ):
            raise self._damaged(
                f"{self.loc.full(MANIFEST_NAME)} says the cache is complete with {m.units} units, "
                f"but lists {len(m.views.shards)} "
                f"views shards and {', '.join(f'{len(m.teachers[t].shards)} for {t}' for t in self.teachers)}"
            )
        views = m.views.by_unit()
        tables: list[tuple[str, list]] = [("views", [views[u] for u in self.units])] + [
            (f"teachers/{t}", self.entry(t).shards) for t in self.teachers
        ]
        refs = [self.entry(t).moments for t in self.teachers]
        if any(r is None for r in refs):
            raise self._damaged(
                f"{self.loc.full(MANIFEST_NAME)} lists no merged statistics "
                f"for teacher(s) {[t for t, r in zip(self.teachers, refs, strict=True) if r is None]}"
            )
        tables.append(("stats", refs))
        for rel_dir, files in tables:
            sizes = self.loc.scan(rel_dir)
            for f in files:
                size = sizes.get(posixpath.basename(f.path))
                if size is None:
                    raise self._damaged(f"{self.loc.full(f.path)}: missing")
                if size != f.bytes:
                    raise self._damaged(f"{self.loc.full(f.path)}: {size} bytes, the manifest says {f.bytes}")
        for t in self.teachers:  # one small file per teacher, checksummed: the manifest's statistics must be its
            self.merged_moments(t)

    def _columns(self, t: str | None, with_images: bool = True) -> list[str]:
        """The columns read from the views table (``t`` None) or from teacher ``t``'s."""
        if t is None:
            return ["image_id", "view_index", "label_index"] + (["student_image"] if with_images else [])
        return [
            "image_id",
            "view_index",
            *(["summary"] if self.entry(t).summary_dim else []),
            *self._feature_columns(t),
        ]

    def _open_unit(self, unit: int, start: bool = False) -> dict:
        """The files of ``unit`` (None: the views; else teacher name -> ParquetFile), each footer read once and
        checked against the manifest (identity, unit, fingerprint, layout, rows) before any row is used.
        ``start``: files on an object store request their first row groups now."""
        m = self.manifest
        if self._by_unit is None:  # shard lookups by unit, built once (a cache may hold many thousands of units)
            self._by_unit = {None: m.views.by_unit(), **{t: self.entry(t).by_unit() for t in self.teachers}}
        tables = [None, *self.teachers]
        if not self.loc.is_local:  # each open is a request to the store (its footer): send them side by side
            from .store import fetch_pool

            opened = list(fetch_pool().map(lambda t: self._open_one(unit, t), tables))
            for t, f in zip(tables, opened, strict=True):
                if isinstance(f, RemoteShard) and t is not None and self.placer is not None:
                    f.placer = functools.partial(self.placer, unit, t)
            if start:
                self._start_unit(dict(zip(tables, opened, strict=True)))
        else:
            opened = [self._open_one(unit, t) for t in tables]
        return dict(zip(tables, opened, strict=True))

    def _open_one(self, unit: int, t: str | None):
        """One file of ``unit`` (``t``: None for the views), opened and its footer checked."""
        from .writer import open_checked

        m = self.manifest
        assert self._by_unit is not None
        rel = views_path(unit) if t is None else teacher_path(t, unit)
        e = None if t is None else self.entry(t)
        pf, reason = open_checked(
            self.loc,
            rel,
            m.identity,
            unit,
            self._by_unit[t][unit],
            e.fingerprint if e else None,
            e.layout.to_dict() if e else None,
            stream=True,
            ahead=self.fetch_ahead,
        )
        if reason is not None:
            if e is not None and reason.startswith("holds targets with fingerprint"):
                raise CacheMismatch(
                    f"{self.loc.full(rel)} {reason}: mixed targets in one cache. Rerun "
                    f"the `radio cache` command that built {self.loc.uri} to recompute it."
                )
            raise self._damaged(f"{self.loc.full(rel)}: {reason}")
        return pf

    def entry(self, teacher: str) -> TeacherEntry:
        return self.manifest.teachers[teacher]

    @property
    def specs(self) -> dict[str, dict]:
        return {t: self.entry(t).spec for t in self.teachers}

    @property
    def fingerprints(self) -> dict[str, str]:
        return {t: self.entry(t).fingerprint for t in self.teachers}

    @property
    def stats(self) -> dict[str, TargetStats]:
        """Each read teacher's exact per-channel statistics, as the standardization they define."""
        return {t: self.stats_of(t) for t in self.teachers}

    def stats_of(self, teacher: str) -> TargetStats:
        """The statistics of any teacher the cache holds (read or not)."""
        st = self.entry(teacher).stats
        return TargetStats(
            st.features.mean,
            st.features.std,
            st.summary.mean if st.summary else None,
            st.summary.std if st.summary else None,
        )

    def merged_moments(self, teacher: str) -> tuple[RunningMoments, RunningMoments | None]:
        """(features, summary or None) :class:`RunningMoments` of ``teacher`` merged over every unit, with full
        second moments: one file, checked against the manifest's checksum."""
        from .state import read_merged_moments, teacher_stats
        from .writer import stats_differ

        if teacher not in self._moments:
            ref = self.entry(teacher).moments
            if ref is None:
                raise self._damaged(
                    f"{self.loc.full(MANIFEST_NAME)} lists no merged statistics for teacher {teacher!r}"
                )
            f, s = read_merged_moments(self.loc, ref)
            if stats_differ(teacher_stats(f, s), self.entry(teacher).stats):
                raise self._damaged(
                    f"{self.loc.full(MANIFEST_NAME)}: the statistics of teacher {teacher!r} differ from "
                    f"those in {self.loc.full(ref.path)}"
                )
            self._moments[teacher] = (f, s)
        return self._moments[teacher]

    def phis_stats_of(self, teacher: str) -> TargetStats:
        """PHI-S standardization of ``teacher``, fitted to the exact covariance merged from its shards."""
        f, s = self.merged_moments(teacher)
        return TargetStats.phis_from_moments(f, s if s is not None and s.count else None)

    @property
    def grids(self) -> dict[str, tuple[int, int]]:
        """The grid each teacher's targets are stored at."""
        return {t: hw(self.entry(t).layout.grid) for t in self.teachers}

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    def num_rows(self, units: list[int] | None = None) -> int:
        return sum(self.rows_per_unit[u] for u in (self.units if units is None else units))

    @property
    def image_format(self) -> str:
        return self.manifest.identity.student_image_format

    def _images(self, col):
        """Encoded student views, or for "raw" all of them as one zero-copy uint8 (B, H, W, 3) array."""
        if self.image_format != "raw":
            return col.to_pylist()
        n, res = len(col), self.manifest.student_resolution
        offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset : col.offset + n + 1]
        data = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        if data.size != n * res * res * 3:
            raise CacheError(
                f"{self.loc.uri}: raw student views are not {res}x{res}x3 bytes each; the cache is damaged. "
                f"Run `radio cache verify {self.loc.shell}`."
            )
        return data.reshape(n, res, res, 3)

    def student_pixels(self, batch: CacheBatch, rows: Iterable[int]) -> np.ndarray:
        """The student views of ``rows`` of ``batch`` as uint8 (n, H, W, 3), whatever their stored format."""
        if isinstance(batch.student_image, np.ndarray):
            return batch.student_image[np.asarray(rows, dtype=np.int64)]
        res = self.manifest.student_resolution
        return np.stack([decode_student_image(batch.student_image[i], self.image_format, (res, res)) for i in rows])

    def _feature_columns(self, t: str) -> list[str]:
        """The feature columns of ``t`` that are read: the main grid's, and the extra grids in ``self.extra_grids``."""
        cols = self.entry(t).layout.feature_columns()
        if t not in self.extra_grids:
            return cols
        keep = {grid_suffix(hw(g)) for g in self.extra_grids[t]}
        return [c for c in cols if "@" not in c or c[c.index("@") :] in keep]

    # units whose files are opened (footers requested) ahead of the one streaming; the next one's first row groups
    # are requested too. Footers two units ahead: the next unit's row groups go out as the current one starts, not
    # a footer's round trip later (with 50 ms per request the store's latency showed at every unit's start)
    OPEN_AHEAD = 2

    def iter_units(self, units: list[int], batch_rows: int = 64) -> Iterator[CacheBatch]:
        """:meth:`iter_unit` of each of ``units`` in turn. From an object store, the files of the next
        :attr:`OPEN_AHEAD` units are opened (their footers requested) while the current one streams, and the next
        unit's first row groups are requested as the current one starts, so a unit's start does not wait on the
        store."""
        if self.loc.is_local or len(units) < 2:
            for u in units:
                yield from self.iter_unit(u, batch_rows)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.OPEN_AHEAD + 1, thread_name_prefix="radio-next-unit") as pool:
            opened = {0: pool.submit(self._open_unit, units[0], True)}  # unit index -> its files
            started = {}  # unit index -> its first row groups requested

            def open_ahead(k: int) -> None:
                for j in range(k + 1, min(len(units), k + 1 + self.OPEN_AHEAD)):
                    if j not in opened:
                        opened[j] = pool.submit(self._open_unit, units[j])
                if k + 1 < len(units):
                    started[k + 1] = pool.submit(lambda f: self._start_unit(f.result()), opened[k + 1])

            try:
                for k, u in enumerate(units):
                    files = opened[k].result()
                    if k in started:
                        started.pop(k).result()
                    open_ahead(k)
                    del opened[k]
                    yield from self.iter_unit(u, batch_rows, files=files)
            finally:  # a stream stopped early: the units opened ahead stop fetching
                for f in started.values():
                    f.exception()
                for f in opened.values():
                    try:
                        for shard in f.result().values():
                            if isinstance(shard, RemoteShard):
                                shard.close()
                    except Exception:  # noqa: BLE001 - its failure to open is not the error being raised
                        pass

    def _start_unit(self, files: dict) -> None:
        """Request the first row groups of ``files`` (a unit opened by :meth:`_open_unit`) now."""
        for t, f in files.items():
            if isinstance(f, RemoteShard):
                f.start(self._columns(t))

    def iter_unit(
        self, unit: int, batch_rows: int = 64, with_images: bool = True, files: dict | None = None
    ) -> Iterator[CacheBatch]:
        """Stream one unit in batches of ``batch_rows``, joining the tables by key (``files``: the unit's files,
        if :meth:`_open_unit` already opened them)."""
        from ..prefetch import ThreadPrefetcher

        files = files or self._open_unit(unit)
        view_cols = self._columns(None, with_images)
        tcols = {t: self._columns(t) for t in self.teachers}
        # each file read (pages CRC32-checked, decompressed) in a thread of its own, a batch ahead: Arrow
        # releases the GIL, so the files' checks and decoding run side by side on the cores there are
        readers = {
            t: ThreadPrefetcher(self._read(pf, unit, t, batch_rows, view_cols if t is None else tcols[t]), depth=2)
            for t, pf in files.items()
        }
        try:
            yield from self._join(unit, {t: iter(r) for t, r in readers.items()}, tcols, with_images)
        finally:
            for r in readers.values():
                r.close()

    def _read(self, pf, unit: int, teacher: str | None, batch_rows: int, columns: list[str]):
        """One shard's batches, in its reading thread: a local shard is first hashed whole against its commit
        record (the files of a unit side by side), any other has its pages' CRC32s checked as they are read."""

        rel = views_path(unit) if teacher is None else teacher_path(teacher, unit)
        assert self._by_unit is not None  # built by the epoch that hands out this shard
        info = self._by_unit[teacher][unit]
        if self.loc.hashed_whole(info):
            try:
                self.loc.check_whole(rel, info, memo=self.memo)
            except ChangedFile as e:
                raise self._damaged(f"{self.loc.full(rel)}: {e}") from None
        yield from self._checked(pf.iter_batches(batch_size=batch_rows, columns=columns), unit, teacher)

    def _join(self, unit: int, its: dict, tcols: dict, with_images: bool) -> Iterator[CacheBatch]:
        """Batches of the views table joined with each teacher's, by key, failing on any mismatch."""
        titers = {t: it for t, it in its.items() if t is not None}
        for vb in its[None]:
            ids = vb.column("image_id").to_pylist()
            vidx = vb.column("view_index").to_numpy()
            batch = CacheBatch(
                ids,
                vidx,
                vb.column("label_index").to_numpy(zero_copy_only=False),
                self._images(vb.column("student_image")) if with_images else [],
            )
            for t, it in titers.items():
                tb = next(it, None)
                if (
                    tb is None
                    or tb.column("image_id").to_pylist() != ids
                    or not np.array_equal(tb.column("view_index").to_numpy(), vidx)
                ):
                    raise CacheError(
                        f"unit {unit}: keys of teacher {t!r} do not match the views table at rows {ids[:1]}..; "
                        f"the cache is damaged. Run `radio cache verify {self.loc.shell}`."
                    )
                batch.teachers[t] = {name: column_tensor(tb, name) for name in tcols[t][2:]}
            yield batch
        for t, it in titers.items():
            if next(it, None) is not None:
                raise CacheError(f"unit {unit}: teacher {t!r} has more rows than the views table; the cache is damaged")

    def _checked(self, batches, unit: int, teacher: str | None):
        """``batches`` of one shard; a page whose checksum fails (or that does not decode) is a CacheError naming the
        file."""
        rel = views_path(unit) if teacher is None else teacher_path(teacher, unit)
        while True:
            try:
                b = next(batches)
            except StopIteration:
                return
            except ChangedFile as e:  # a row group whose digest differs (RemoteShard)
                raise self._damaged(f"{self.loc.full(rel)}: {e}") from None
            except (OSError, ValueError) as e:  # pyarrow: "CRC checksum verification failed", ArrowInvalid, ...
                if object_store_error(e) is not None:  # the store failing, not the file: said in one line upstream
                    raise
                raise self._damaged(
                    f"{self.loc.full(rel)}: a page does not read back as written ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:160]})"
                ) from None
            yield b

    def iter_batches(
        self, units: list[int] | None = None, batch_rows: int = 64, with_images: bool = True
    ) -> Iterator[CacheBatch]:
        for u in self.units if units is None else units:
            yield from self.iter_unit(u, batch_rows, with_images)
