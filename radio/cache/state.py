"""What a cache holds, from one listing per directory and the commit records: no data is read.

:func:`scan_table` reconciles a table's listing with the manifest and the commit records: files the manifest
lists are trusted when their listed size matches (nothing is opened); files it does not list (a job killed
before its manifest) are adopted from their commit record's header. :class:`MomentsMerger` merges a
teacher's per-shard moments in unit order (so the result does not depend on the order shards finished, or
on kills), from records held in memory where it can and read from their files otherwise.
:func:`build_manifest` writes the manifest and the merged statistics from commits alone.
"""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..normalize import RunningMoments
from .commit import (
    Commit,
    FileRef,
    RecordError,
    commit_path,
    encode_record,
    moments_arrays,
    moments_from,
    read_record,
    sha256_bytes,
    stats_path,
)
from .manifest import CacheIdentity, Manifest, Moments, Skipped, TargetLayout, TeacherEntry, TeacherStats, ViewsEntry
from .store import CacheLocation, ShardInfo, teacher_path, views_path

__all__ = ["TableState", "scan_table", "MomentsMerger", "build_manifest", "read_merged_moments", "table_dirs"]

_UNIT = re.compile(r"^unit-(\d+)\.(parquet|commit)$")


def table_dirs(teacher: str | None) -> str:
    return "views" if teacher is None else posixpath.join("teachers", teacher)


@dataclass
class TableState:
    """One table (the views, or one teacher's targets) as found on storage."""

    teacher: str | None
    commits: dict[int, Commit] = field(default_factory=dict)  # committed, intact units (headers only)
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (shard path, reason): to set aside and recompute
    uncommitted: list[str] = field(default_factory=list)  # shards without a record: cut short by a kill
    orphans: list[str] = field(default_factory=list)  # records without a shard, and temporary files
    adopted: int = 0  # commits read from records (not listed in the manifest)

    @property
    def rel_dir(self) -> str:
        return table_dirs(self.teacher)

    def path(self, unit: int) -> str:
        return views_path(unit) if self.teacher is None else teacher_path(self.teacher, unit)


def scan_table(
    loc: CacheLocation,
    teacher: str | None,
    identity: CacheIdentity,
    listed: dict[str, ShardInfo],
    entry: TeacherEntry | None = None,
    check_bytes: bool = False,
) -> TableState:
    """The state of one table from a single listing of its directory.

    ``listed``: the manifest's shards of this table by path (trusted when the listed size matches: a changed
    size is damage). Shards it does not list are adopted from their commit record's header when the record
    names this cache, this unit, this path and the listed size; else they are damaged. ``check_bytes`` (a
    repair): every adopted shard is also hashed against its record, and a teacher's record read whole (its
    moments checked), so a changed byte anywhere is damage."""
    from .writer import open_checked

    st = TableState(teacher)
    cache_id = identity.cache_id  # a hash of the identity: once, not per file
    fingerprint, request, layout = (
        (entry.fingerprint, entry.request, entry.layout.to_dict()) if entry else (None, None, None)
    )
    files = loc.scan_stat(st.rel_dir)
    shards, records = {}, {}
    for name, (size, _) in files.items():
        if name.startswith(".tmp-"):
            st.orphans.append(posixpath.join(st.rel_dir, name))
            continue
        m = _UNIT.match(name)
        if m:
            (shards if m.group(2) == "parquet" else records)[int(m.group(1))] = size
    for u, size in sorted(shards.items()):
        rel = st.path(u)
        if u not in records:
            st.uncommitted.append(rel)
            continue
        prev = listed.get(rel)
        if prev is not None:
            mtime = files[posixpath.basename(rel)][1]
            if prev.bytes != size:
                st.damaged.append((rel, f"{size} bytes, the manifest says {prev.bytes}"))
                continue
            if prev.mtime_ns is not None and mtime is not None and mtime != prev.mtime_ns:
                # written again since the manifest listed it (same size): its own footer and checksum decide
                pf, reason = open_checked(loc, rel, identity, u, prev, fingerprint, layout)
                reason = reason or (
                    None
                    if loc.sha256(rel) == prev.sha256
                    else "checksum differs from the one recorded when it was written"
                )
                if reason:
                    st.damaged.append((rel, f"changed since it was committed: {reason}"))
                    continue
                st.adopted += 1  # the same bytes (a copied cache): recorded again with its new time
            st.commits[u] = Commit(
                ShardInfo(prev.path, prev.unit, prev.rows, prev.bytes, prev.sha256, xxh3=prev.xxh3),
                cache_id,
                teacher,
                fingerprint,
                request,
                layout,
            )
            continue
        try:
            header, _ = read_record(loc, commit_path(rel), arrays=False)
            c = Commit.from_record(header)
        except (RecordError, KeyError, TypeError, OSError) as e:
            st.damaged.append((rel, f"its commit record is unreadable ({str(e).splitlines()[0][:160]})"))
            continue
        reason = (
            "its commit record belongs to another cache"
            if c.cache_id != cache_id
            else f"its commit record is for {c.shard.path}"
            if c.shard.path != rel or c.shard.unit != u or c.teacher != teacher
            else f"{size} bytes, its commit record says {c.shard.bytes}"
            if c.shard.bytes != size
            else None
        )
        if reason is None and check_bytes:
            reason = _bytes_differ(loc, rel, c.shard, whole_record=teacher is not None)
        if reason:
            st.damaged.append((rel, reason))
        else:
            st.commits[u] = c
            st.adopted += 1
    st.orphans.extend(commit_path(st.path(u)) for u in records if u not in shards)
    return st


def _bytes_differ(loc: CacheLocation, rel: str, info: ShardInfo, whole_record: bool) -> str | None:
    """Why the shard at ``rel`` (or its record) is not what its record says, or None: the shard's bytes against
    the recorded xxh3 (local) or sha256, and with ``whole_record`` the record's arrays against their checksum."""
    from .store import ChangedFile

    if whole_record:
        try:
            read_record(loc, commit_path(rel))
        except (RecordError, OSError) as e:
            return f"its commit record is damaged ({str(e).splitlines()[0][:160]})"
    if info.xxh3 and loc.is_local:
        try:
            loc.check_whole(rel, info)
        except ChangedFile as e:
            return str(e)
        return None
    got = loc.sha256(rel)
    return None if got == info.sha256 else f"its sha256 {got[:12]}.. differs from its record's {info.sha256[:12]}.."


class MomentsMerger:
    """A teacher's moments merged over units ``0..n-1`` strictly in unit order (floating-point merges do not
    commute bit for bit; this order makes the merged statistics a function of the shards alone).

    Moments of units committed in this run are handed to :meth:`add` as they arrive; units committed earlier
    are read from their records when the merge reaches them. At most the out-of-order window is held."""

    def __init__(self, loc: CacheLocation, teacher: str, n_units: int, held: set[int]) -> None:
        self.loc, self.teacher, self.n_units, self.held = loc, teacher, n_units, set(held)
        self.next = 0
        self.pending: dict[int, dict] = {}
        self.features, self.summary = RunningMoments(), RunningMoments()
        self.has_summary = False
        self.read_records = 0

    def add(self, unit: int, moments: dict[str, RunningMoments]) -> None:
        self.pending[unit] = moments
        self._advance()

    def _advance(self, final: bool = False) -> None:
        while self.next < self.n_units:
            u = self.next
            if u in self.pending:
                m = self.pending.pop(u)
            elif u in self.held:
                try:
                    header, arrays = read_record(self.loc, commit_path(teacher_path(self.teacher, u)))
                except RecordError as e:  # its moments would become the merged statistics: refused, with the repair
                    from .manifest import CacheError

                    raise CacheError(
                        f"{e}. `radio cache repair {self.loc.shell}` sets it aside and recomputes its unit"
                    ) from None
                m = Commit.from_record(header, arrays).moments or {}
                self.read_records += 1
            elif final:  # a unit without targets (an incomplete cache): nothing to merge
                m = {}
            else:
                return
            if "features" in m:
                self.features.merge(m["features"])
            if "summary" in m:
                self.has_summary = True
                self.summary.merge(m["summary"])
            self.next += 1

    def finish(self) -> tuple[RunningMoments, RunningMoments | None]:
        self._advance(final=True)
        return self.features, (self.summary if self.has_summary else None)


def teacher_stats(features: RunningMoments, summary: RunningMoments | None) -> TeacherStats:
    """The manifest's per-channel statistics of a teacher's merged moments."""
    return TeacherStats(_per_channel(features), None if summary is None else _per_channel(summary))


def _per_channel(m: RunningMoments) -> Moments:
    if m.count == 0:
        return Moments([], [], 0)
    return Moments(m.mean.tolist(), m.std.tolist(), int(m.count))


def write_merged_moments(
    loc: CacheLocation, teacher: str, fingerprint: str, features: RunningMoments, summary: RunningMoments | None
) -> FileRef:
    """Write ``stats/<teacher>.moments`` (full second moments in float64); returns its reference."""
    head, arrays = {"teacher": teacher, "fingerprint": fingerprint}, {}
    for k, m in (("features", features), ("summary", summary)):
        if m is None:
            continue
        h, a = moments_arrays(k, m)
        if m.count:  # merged: keep the covariance exact (float64), unlike a shard's float32 triangle
            a[f"{k}.cov_triu"] = m.cov_m2[np.triu_indices(len(m.mean))]
        head.update(h)
        arrays.update(a)
    data = encode_record(head, arrays)
    rel = stats_path(teacher)
    loc.write_bytes_atomic(rel, data)
    return FileRef(rel, len(data), sha256_bytes(data))


def read_merged_moments(
    loc: CacheLocation, ref: FileRef, where: str = ""
) -> tuple[RunningMoments, RunningMoments | None]:
    """A teacher's merged moments, checked against the size and sha256 the manifest recorded for them."""
    from .manifest import CacheError

    data = loc.read_bytes(ref.path)
    if len(data) != ref.bytes or sha256_bytes(data) != ref.sha256:
        raise CacheError(
            f"{loc.full(ref.path)}: {len(data)} bytes with a checksum that differs from the manifest's "
            f"({ref.bytes} bytes); the statistics are damaged. "
            f"`radio cache repair {loc.shell}` merges them again from the commit records."
        )
    header, arrays = read_record(loc, ref.path, data=data)
    f = moments_from("features", header, arrays)
    if f is None:
        raise CacheError(
            f"{loc.full(ref.path)}: holds no feature moments; the statistics are damaged. "
            f"`radio cache repair {loc.shell}` merges them again from the commit records."
        )
    return f, moments_from("summary", header, arrays)


def build_manifest(
    loc: CacheLocation,
    identity: CacheIdentity,
    source: dict,
    policy: dict,
    config: dict,
    n_units: int,
    required: list[str],
    views: dict[int, Commit],
    teachers: dict[str, tuple[dict, TeacherEntry | None, dict[int, Commit], MomentsMerger | None, str | None]],
    old: Manifest | None = None,
    excluded: Sequence[dict] = (),
) -> Manifest:
    """Write the merged statistics and build the manifest from commit records (the caller saves it).

    ``teachers``: name -> (spec, its old manifest entry or None, its commits by unit, a merger holding this run's
    moments or None when none were computed, the request key its targets are known to answer or None). A teacher whose
    shards are exactly those of its old entry
    keeps its merged statistics file. ``excluded``: source entries never read, recorded after the skips."""
    skipped = [Skipped(**s) for u in sorted(views) for s in views[u].skipped] + [Skipped(**s) for s in excluded]
    if old is not None:
        # units taken from the manifest's listing carry no record (so no skips): the old manifest holds theirs, in
        # the order they were found; a recomputed unit skips the same images again (the source is in the identity)
        known = {s.image_id for s in old.skipped}
        skipped = list(old.skipped) + [s for s in skipped if s.image_id not in known]
    # every image read gives exactly num_views rows: the count follows from the shards, listed or recorded
    images = sum(c.shard.rows for c in views.values()) // max(1, int(policy.get("num_views", 1)))
    entries = {}
    for name, (spec, old_entry, commits, merger, request) in teachers.items():
        if not commits:
            continue
        shards = [commits[u].shard for u in sorted(commits)]
        recorded = next(iter(commits.values())).layout
        if recorded is None and old_entry is not None:
            recorded = old_entry.layout.to_dict()
        if recorded is None:
            from .manifest import CacheError

            raise CacheError(f"{loc.full('teachers/' + name)}: no commit record holds the targets' layout")
        layout = TargetLayout.from_dict(recorded)
        key = lambda sh: (sh.path, sh.rows, sh.bytes, sh.sha256)  # noqa: E731
        same = (
            old_entry is not None
            and old_entry.moments is not None
            and list(map(key, old_entry.shards)) == list(map(key, shards))
            and merger is None
        )
        if same and old_entry is not None:
            ref, stats = old_entry.moments, old_entry.stats
        else:
            merger = merger or MomentsMerger(loc, name, n_units, set(commits))
            f, s = merger.finish()
            ref = write_merged_moments(loc, name, spec["fingerprint"], f, s)
            stats = teacher_stats(f, s)
        entries[name] = TeacherEntry(spec, layout, stats, shards, len(shards) == n_units, ref, request)
    manifest = Manifest(
        identity=identity,
        source=source,
        units=n_units,
        images=images,
        views=ViewsEntry(policy, [views[u].shard for u in sorted(views)]),
        teachers=entries,
        skipped=skipped,
        complete=len(views) == n_units and all(name in entries and entries[name].complete for name in required),
        config=config,
        mlflow_run_id=old.mlflow_run_id if old else None,
        updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return manifest
