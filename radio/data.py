"""Streaming a cache into training: units split across ranks and workers, shuffled, resumable.

Each epoch, the cache's units are permuted with ``(seed, epoch)`` and dealt round-robin to the
``world_size x num_workers`` readers, so every ``(image_id, view_index)`` is read exactly once per epoch
across all processes: the split is done here, once, and the DataLoader must *not* also be passed to
``accelerator.prepare`` (that would split it twice).

Distributed steps must stay in lockstep, but units hold different row counts. Every reader therefore
emits the same number of batches per epoch; the shortfall is filled with *padding rows* (``weight`` 0,
copies of a real row) that the trainer drops before computing the loss. Padding never repeats a key's
contribution, so "exactly once" holds for the real rows.

A reader's output is a pure function of ``(seed, epoch, rank, worker)``: resuming at batch ``b`` of an
epoch replays the row stream without decoding the skipped rows and continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .cache import CacheReader, Manifest, TargetLayout
from .images import decode_student_image
from .prefetch import ThreadPrefetcher
from .views import derive_resolution

__all__ = [
    "LoaderConfig",
    "ResolutionSchedule",
    "CacheStream",
    "make_loader",
    "resolve_workers",
    "epoch_assignment",
    "batches_per_epoch",
]


@dataclass
class LoaderConfig:
    batch_size: int = 32
    shuffle_buffer: int = 256  # rows held for shuffling, per reader
    # DataLoader worker processes per rank; 0: a reader thread in the training process. None: worker processes
    # when CUDA is present (one per spare core of this rank's share, at most 8), the reader thread on CPU-only
    # machines, where it is measured faster (BENCHMARKS.md)
    num_workers: int | None = None
    prefetch_factor: int = 4  # batches each worker (or the reader thread) keeps ready
    read_rows: int = 64  # rows per Parquet read
    # row groups requested ahead per shard from an object store: more where each connection is slow (a store that
    # caps each connection's throughput: 3 -> 6 took views/s 1191 -> 1389 at 100 MB/s per connection, BENCHMARKS.md)
    fetch_ahead: int = 3


@dataclass
class ResolutionSchedule:
    """The student resolution of each batch (multi-resolution distillation).

    ``fixed``: every batch at ``resolutions[0]``. ``cycle``: batch b at ``resolutions[b % n]``, so every teacher
    is matched at every resolution in turn (RADIOv2.5's low + high resolution training: ``[432, 1024]``).
    ``sample``: each batch draws its resolution from ``resolutions`` with probabilities ``weights`` (uniform when
    empty), as C-RADIOv4 samples from {128..432} and {512..1152}. Empty ``resolutions``: the cache's stored
    resolution. A batch's resolution is a pure function of (seed, epoch, batch index), the same on every rank,
    so resume replays it exactly. Lower resolutions are derived from the stored views in the loader
    (``radio.views.derive_resolution``); each teacher's targets come from the stored grid nearest the student's
    grid at that resolution (``lower_resolutions`` of ``radio cache`` stores them).

    ``partitions``: C-RADIOv4's stochastic resolutions. ``partitions`` lists the size sets, e.g. a low
    ``[128, 192, 224, 256, 384, 432]`` and a high ``[512, 768, 1024, 1152]``; every optimizer step holds one
    batch of each partition (batch b of a rank belongs to partition ``b % len(partitions)``, and the trainer
    accumulates that many batches per step), each at a size drawn uniformly from its partition. A cache built with
    the same ``partitions`` stores each teacher's targets once per partition, at the grid of its largest size,
    and that one set serves every size of the partition (resampled to the student's grid in the loss).
    ``resolutions`` is then filled with every size of every partition.
    """

    mode: Literal["fixed", "cycle", "sample", "partitions"] = "fixed"
    resolutions: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    partitions: list[list[int]] = field(default_factory=list)

    def __post_init__(self):
        if self.mode == "partitions":
            sizes = sorted(r for part in self.partitions for r in part)
            if not self.partitions or any(not part for part in self.partitions):
                raise ValueError(
                    f"resolution.mode is partitions but resolution.partitions is {self.partitions}: list one or more "
                    "non-empty size sets, e.g. resolution.partitions=[[128,192,224,256,384,432],[512,768,1024,1152]]"
                )
            if self.resolutions and sorted(self.resolutions) != sizes:
                raise ValueError(
                    f"resolution.resolutions {self.resolutions} and resolution.partitions {self.partitions} disagree: "
                    "with mode=partitions leave resolution.resolutions empty (it is filled from the partitions)"
                )
            self.resolutions = sizes
        elif self.partitions:
            raise ValueError(
                f"resolution.partitions is set but resolution.mode is {self.mode}: use resolution.mode=partitions"
            )
        if self.mode == "fixed" and len(self.resolutions) > 1:
            raise ValueError(
                f"resolution.resolutions lists {self.resolutions} but resolution.mode is fixed: use mode=cycle "
                "or mode=sample, or one resolution"
            )
        if self.weights and (
            len(self.weights) != len(self.resolutions) or any(w < 0 for w in self.weights) or sum(self.weights) <= 0
        ):
            raise ValueError(
                f"resolution.weights {self.weights} must be one non-negative weight per resolution "
                f"in {self.resolutions}, not all zero"
            )
        if self.weights and self.mode != "sample":
            raise ValueError(
                f"resolution.weights is set but resolution.mode is {self.mode}: weights apply to mode=sample"
            )

    def resolved(self, stored: int) -> ResolutionSchedule:
        return self if self.resolutions else ResolutionSchedule("fixed", [stored])

    @property
    def period(self) -> int:
        """Batches per optimizer step the schedule needs: one per partition (1 outside mode=partitions)."""
        return len(self.partitions) if self.mode == "partitions" else 1

    def partition_of(self, batch: int) -> int:
        """The partition batch ``batch`` of a rank belongs to (mode=partitions)."""
        return batch % self.period

    def resolution(self, seed: int, epoch: int, batch: int) -> int:
        """The resolution of batch ``batch`` (of a rank, counted from the epoch's start) of ``epoch``."""
        rs = self.resolutions
        if self.mode == "partitions":
            part = self.partitions[self.partition_of(batch)]
            return part[int(np.random.default_rng([seed, epoch, batch, 0x9A7]).integers(len(part)))]
        if self.mode == "fixed" or len(rs) == 1:
            return rs[0]
        if self.mode == "cycle":
            return rs[batch % len(rs)]
        p = np.asarray(self.weights or [1.0] * len(rs), dtype=np.float64)
        return rs[int(np.random.default_rng([seed, epoch, batch, 0x2E5]).choice(len(rs), p=p / p.sum()))]


def epoch_assignment(units: list[int], seed: int, epoch: int, n_readers: int) -> list[list[int]]:
    """Units of one epoch for each of ``n_readers`` readers (reader = rank * num_workers + worker)."""
    order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(np.asarray(units, dtype=np.int64)).tolist()
    return [order[r::n_readers] for r in range(n_readers)]


def shuffled(items: Iterable, buffer: int, rng: np.random.Generator) -> Iterator:
    """``items`` through a shuffle buffer of ``buffer`` items: once it is full, each new item sends a uniformly
    drawn one out; the rest leave in random order at the end. The order is a function of ``rng`` and the number
    of items only, which is what lets :class:`_Placement` know every row's slot before its bytes arrive."""
    buf: list = []
    for x in items:
        buf.append(x)
        if len(buf) >= buffer:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    while buf:
        j = int(rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()


class _Placement:
    """Where each row of a reader's epoch lands, known before any of it is read: an object store's bytes for
    tensor columns are then received straight into their batch's tensors (``RemoteShard.placer``), the one copy
    a row costs, where receiving into a buffer and gathering from it cost two (BENCHMARKS.md, issue 31).

    A row is placed if its batch is materialized (not skipped on resume) and leaves the shuffle buffer within
    ``ahead`` rows of the earliest it could (most do): a row that lingers in the buffer, and the epoch's last
    row (the one padding copies), are received into the read buffer and gathered from there, so the batches
    being filled at once stay within about ``ahead + shuffle_buffer`` rows of memory."""

    def __init__(self, stream: CacheStream, units: list[int], rng_seed: list[int], role: int, skip: int) -> None:
        import threading

        self.stream, self.role, self.skip = stream, role, skip
        self.first = {}  # unit -> the epoch's count of rows before it
        n = 0
        for u in units:
            self.first[u], n = n, n + stream.rows_per_unit[u]
        order = np.fromiter(shuffled(range(n), stream.shuffle_buffer, np.random.default_rng(rng_seed)), np.int64, n)
        self.slot = np.empty(n, np.int64)
        self.slot[order] = np.arange(n)
        self.last = int(order[-1]) if n else -1
        self.ahead = stream.shuffle_buffer
        self.tensors: dict[int, dict[str, torch.Tensor]] = {}  # batch -> served column key -> its tensor
        self._names: dict[tuple[str, int], dict[str, str]] = {}  # (teacher, resolution) -> stored -> served
        self._lock = threading.Lock()

    def placed(self, row: int, position: int | None = None) -> bool:
        """Whether ``row`` (of the epoch) is received into its batch (at ``position`` of the epoch, if given)."""
        t = int(self.slot[row])
        if position is not None and t != position:
            return False
        return (
            row != self.last
            and t // self.stream.batch_size >= self.skip
            and t - max(0, row - self.stream.shuffle_buffer + 1) < self.ahead
        )

    def served(self, teacher: str, resolution: int, stored: list[str]) -> dict[str, str]:
        """Stored column -> the name it is served under in a batch at ``resolution`` (absent: not served)."""
        key = (teacher, resolution)
        if key not in self._names:
            s = self.stream
            by_served = s.layouts[teacher].columns_at({c: c for c in stored}, s.served[resolution][teacher])
            self._names[key] = {v: k for k, v in by_served.items()}
        return self._names[key]

    def __call__(self, unit: int, teacher: str, column: str, field, row0: int, rows: int) -> list | None:
        """Destinations of rows ``row0 .. row0 + rows`` of ``column`` of ``teacher``'s file of ``unit``."""
        from .cache.arrow import TENSOR_META

        if unit not in self.first or TENSOR_META not in (field.metadata or {}):
            return None
        import json

        meta = json.loads(field.metadata[TENSOR_META])
        shape, dtype = tuple(meta["shape"]), torch.from_numpy(np.empty(0, meta["dtype"])).dtype
        stored = ["summary", *self.stream.layouts[teacher].feature_columns()]  # every column a teacher may have
        out: list = []
        base = self.first[unit] + row0
        any_placed = False
        for r in range(rows):
            row = base + r
            if not self.placed(row):
                out.append(None)
                continue
            k, p = divmod(int(self.slot[row]), self.stream.batch_size)
            name = self.served(teacher, self.stream.batch_resolution(k, self.role), stored).get(column)
            if name is None:
                out.append(None)
                continue
            key = f"{teacher}/{name}"
            with self._lock:
                batch = self.tensors.setdefault(k, {})
                if key not in batch:
                    batch[key] = self.stream._empty((self.stream.batch_size, *shape), dtype)
                t = batch[key]
            out.append(memoryview(t.numpy()[p].reshape(-1).view(np.uint8)))
            any_placed = True
        return out if any_placed else None

    def take(self, k: int) -> dict[str, torch.Tensor]:
        """Batch ``k``'s placed tensors, handed over (forgotten here)."""
        with self._lock:
            return self.tensors.pop(k, {})


def batches_per_epoch(
    rows_per_unit: dict[int, int],
    units: list[int],
    seed: int,
    epoch: int,
    n_readers: int,
    batch_size: int,
    multiple: int = 1,
) -> int:
    """Batches each reader emits in ``epoch``: enough for the fullest reader, the others pad; rounded up to a
    ``multiple`` (the resolution partitions: every optimizer step holds one batch of each)."""
    assignment = epoch_assignment(units, seed, epoch, n_readers)
    most = max(sum(rows_per_unit[u] for u in a) for a in assignment)
    return max(1, -(-most // (batch_size * multiple))) * multiple


class CacheStream(IterableDataset):
    """Yields ready batches (dicts of tensors) for one rank; use with ``DataLoader(batch_size=None)``.

    Batch contents: ``image`` uint8 (B, 3, H, W) at the batch's ``resolution`` (int; see
    :class:`ResolutionSchedule`); ``weight`` float (B,) (0 marks padding); ``image_id``
    list[str]; ``view_index`` and ``label`` int64 (B,); per teacher its stored columns in their stored dtype
    (``<t>/summary`` (B, D), ``<t>/features`` (B, h, w, C) at the stored grid, and for int8 caches
    ``<t>/features_scale`` and ``<t>/features_offset`` (B, C)): decode them where they are used, with
    ``radio.cache.decode_features`` (the trainer does so on its device).
    """

    def __init__(
        self,
        uri: str,
        teachers: list[str],
        *,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 1,
        batch_size: int = 32,
        shuffle_buffer: int = 256,
        read_rows: int = 64,
        fetch_ahead: int = 3,
        seed: int = 0,
        expect_fingerprints: dict[str, str] | None = None,
        schedule: ResolutionSchedule | None = None,
        patch_size: int = 16,
        manifest: Manifest | None = None,
    ) -> None:
        super().__init__()
        self.uri, self.teachers = uri, list(teachers)
        self.rank, self.world_size, self.num_workers = rank, world_size, max(1, num_workers)
        self.batch_size, self.shuffle_buffer, self.read_rows, self.seed = batch_size, shuffle_buffer, read_rows, seed
        self.fetch_ahead = fetch_ahead
        reader = CacheReader(
            uri, self.teachers, expect_fingerprints, check=False, manifest=manifest
        )  # the trainer's own reader checked the manifest
        self.manifest = reader.manifest  # read once; each epoch's readers reuse it
        self.memo = reader.memo  # where shards found intact are noted: hashed once per run, not per epoch
        self.units = reader.units
        if not self.units:
            raise ValueError(
                f"cache {uri} has no complete units for teachers {self.teachers}; finish it with `radio cache`"
            )
        self.rows_per_unit = {u: reader.rows_per_unit[u] for u in self.units}
        self.image_format, self.resolution = reader.image_format, reader.manifest.student_resolution
        self.schedule = (schedule or ResolutionSchedule()).resolved(self.resolution)
        self.patch_size = patch_size
        self.layouts: dict[str, TargetLayout] = {t: reader.entry(t).layout for t in self.teachers}
        # resolution -> teacher -> the stored grid its batches are served from (None: the main grid), decided once
        self.served = {
            r: {t: lay.pick_grid((r // patch_size, r // patch_size)) for t, lay in self.layouts.items()}
            for r in self.schedule.resolutions
        }
        for r in self.schedule.resolutions:
            if r > self.resolution:
                raise ValueError(
                    f"resolution {r} is above the {self.resolution}px views cache {uri} stores: "
                    f"build a cache with student_resolution={r} (and lower_resolutions for the others)"
                )
        self.pin_memory = torch.cuda.is_available()  # in a worker process, shared memory takes precedence
        self.epoch = 0
        self.skip_batches = 0  # batches of this epoch already consumed (by the whole rank)

    def grids_read(self) -> dict[str, list[tuple[int, int]]]:
        """Per teacher, the extra stored grids some resolution of the schedule is served from (the others are not
        read)."""
        return {t: sorted({g for by_t in self.served.values() if (g := by_t[t]) is not None}) for t in self.layouts}

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    @property
    def n_readers(self) -> int:
        return self.world_size * self.num_workers

    def batches_per_reader(self, epoch: int | None = None) -> int:
        return batches_per_epoch(
            self.rows_per_unit,
            self.units,
            self.seed,
            self.epoch if epoch is None else epoch,
            self.n_readers,
            self.batch_size,
            self.schedule.period,
        )

    def __len__(self) -> int:  # batches per epoch for this rank
        return self.batches_per_reader() * self.num_workers

    def _rows(self, reader: CacheReader, units: list[int], rng: np.random.Generator):
        """(batch, row) references in shuffled order; nothing is decoded here."""

        def refs():
            # Parquet reads (page CRC32 checks, decompression, the key join) run one thread ahead of the shuffle
            # and batch assembly below: Arrow releases the GIL, so on a spare core the checks cost no views/s
            count = 0
            for batch in ThreadPrefetcher(reader.iter_units(units, self.read_rows), depth=2):
                batch.first_row, count = count, count + len(batch)
                for i in range(len(batch)):
                    yield batch, i

        return shuffled(refs(), self.shuffle_buffer, rng)

    def _materialize(
        self,
        refs: list,
        weights: list[float],
        resolution: int | None = None,
        placed: dict[str, torch.Tensor] | None = None,
        here: list[bool] | None = None,
    ) -> dict:
        """One batch from row references, column by column: rows are gathered per source chunk, targets keep
        their stored dtype. ``placed``: tensors whose rows were received in place (:class:`_Placement`), at the
        positions where ``here`` is true; the other positions are gathered into them.

        At a ``resolution`` below the stored one, the views are derived here and each teacher's columns come
        from the stored grid that serves the student's grid best (``TargetLayout.pick_grid``), under the main
        grid's names."""
        groups: dict[int, tuple] = {}
        for pos, (b, i) in enumerate(refs):
            g = groups.get(id(b))
            if g is None:
                g = groups[id(b)] = (b, [], [])
            g[1].append(pos)
            g[2].append(i)

        def gather(get, into: torch.Tensor | None = None) -> torch.Tensor:
            first = get(refs[0][0])
            t = into
            if t is None:
                t = self._empty((len(refs), *first.shape[1:]), torch.from_numpy(np.empty(0, first.dtype)).dtype)
            out = t.numpy()
            for b, pos, rows in groups.values():
                src = get(b)
                if into is not None:  # only the rows that were not received in place
                    assert here is not None
                    keep = [(p, r) for p, r in zip(pos, rows, strict=True) if not here[p]]
                    pos, rows = [p for p, _ in keep], [r for _, r in keep]
                if src.ndim > 1:  # row by row: ``out[pos] = src[rows]`` copies every byte twice (via a temporary)
                    for p, r in zip(pos, rows, strict=True):
                        out[p] = src[r]
                elif pos:
                    out[pos] = src[rows]
            return t

        if isinstance(refs[0][0].student_image, np.ndarray):  # raw views: one array per chunk already
            images = gather(lambda b: b.student_image)
        else:
            images = self._empty((len(refs), self.resolution, self.resolution, 3), torch.uint8)
            for k, (b, i) in enumerate(refs):
                images[k] = torch.from_numpy(
                    decode_student_image(b.student_image[i], self.image_format, (self.resolution, self.resolution))
                )
        images = images.permute(0, 3, 1, 2)  # (B, 3, H, W) view of channels-last pixels
        resolution = resolution or self.resolution
        if resolution != self.resolution:
            images = derive_resolution(images, resolution)
        out: dict = {
            "image": images,
            "resolution": resolution,
            "weight": torch.tensor(weights, dtype=torch.float32),
            "image_id": [b.image_id[i] for b, i in refs],
            "view_index": gather(lambda b: b.view_index).long(),
            "label": gather(lambda b: b.label_index).long(),
        }
        for t in self.teachers:
            names = self.layouts[t].columns_at(
                {k: k for k in refs[0][0].teachers[t]}, self.served[resolution][t]
            )  # served name -> stored name
            for key, src in names.items():
                into = (placed or {}).get(f"{t}/{key}")
                out[f"{t}/{key}"] = gather(lambda b, t=t, src=src: b.teachers[t][src], into)
        return out

    def batch_resolution(self, k: int, role: int) -> int:
        """The resolution of this epoch's batch ``k`` of reader role ``role``."""
        return self.schedule.resolution(self.seed, self.epoch, k * self.num_workers + role)

    def _empty(self, shape, dtype) -> torch.Tensor:
        """Where a batch is assembled: shared memory in a DataLoader worker (handed to the training process
        without another copy), pinned memory for a CUDA device fed by the reader thread (copied to the GPU
        with non_blocking=True), otherwise plain memory reused once nothing refers to it any more
        (:func:`radio.cache.store.reusable_empty`): batches are assembled in the reader's and the fetching
        threads, whose allocator arenas map fresh pages for each batch of tens of MB, and the kernel zeroes
        every page first (up to a quarter of a local reader's CPU in a `perf` profile)."""
        if get_worker_info() is not None:
            return torch.empty(shape, dtype=dtype).share_memory_()
        if self.pin_memory:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        from .cache.store import reusable_empty

        n = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
        return torch.from_numpy(reusable_empty(n)).view(dtype).view(shape)

    def __iter__(self):
        _warn_arrow_first()
        info = get_worker_info()
        worker = info.id if info is not None else 0
        n_workers = info.num_workers if info is not None else 1
        if n_workers != self.num_workers:
            raise RuntimeError(
                f"CacheStream was built for num_workers={self.num_workers} but runs under {n_workers} "
                "DataLoader workers"
            )
        # The DataLoader takes batches from its workers round-robin, always starting with worker 0:
        # batch k of an epoch comes from role k % W. After skipping S batches, worker 0 must play the
        # role that owns batch S, so roles are rotated by S.
        role = (worker + self.skip_batches) % self.num_workers
        reader_index = self.rank * self.num_workers + role
        units = epoch_assignment(self.units, self.seed, self.epoch, self.n_readers)[reader_index]
        n_batches = self.batches_per_reader()
        skip = len(range(role, self.skip_batches, self.num_workers))
        reader = CacheReader(
            self.uri, self.teachers, check=False, manifest=self.manifest, memo=self.memo
        )  # each file's footer is checked as it is opened
        reader.extra_grids = self.grids_read()  # only the grids this schedule's resolutions use
        reader.fetch_ahead = self.fetch_ahead
        seed = [self.seed, self.epoch, reader_index]
        placement = None
        if not reader.loc.is_local and reader.loc.ranges() is not None:  # received by radio's own client
            placement = reader.placer = _Placement(self, units, seed, role, skip)
        rows = self._rows(reader, units, np.random.default_rng(seed))
        last = None
        for k in range(n_batches):
            refs, weights = [], []
            for _ in range(self.batch_size):
                ref = next(rows, None)
                if ref is None:
                    if last is None:
                        break
                    refs.append(last)
                    weights.append(0.0)
                else:
                    last = ref
                    refs.append(ref)
                    weights.append(1.0)
            if k < skip:
                continue
            if not refs:  # a reader without any unit this epoch: borrow one row of the cache, weight 0
                first = next(reader.iter_unit(self.units[0], 1))
                refs, weights = [(first, 0)] * self.batch_size, [0.0] * self.batch_size
            resolution = self.batch_resolution(k, role)
            if placement is None or last is None:  # (no rows of its own: the borrowed one was gathered)
                yield self._materialize(refs, weights, resolution)
                continue
            here = [placement.placed(b.first_row + i, k * self.batch_size + p) for p, (b, i) in enumerate(refs)]
            yield self._materialize(refs, weights, resolution, placement.take(k), here)


_WARNED = False


def _warn_arrow_first() -> None:
    """Once per process: say so where pyarrow was loaded before radio could keep its allocator's memory."""
    global _WARNED
    import radio

    if radio._ARROW_FIRST and not _WARNED:
        import pyarrow as pa

        _WARNED = True
        if pa.default_memory_pool().backend_name == "mimalloc":
            import logging

            logging.getLogger(__name__).warning(
                "pyarrow was imported before radio, so Arrow's allocator gives memory back to the kernel 10 ms "
                "after use and every batch lands on fresh pages (the local reader up to 1.5x slower, BENCHMARKS.md): "
                "import radio first, or set MIMALLOC_PURGE_DELAY=-1 in the environment"
            )


def resolve_workers(cfg: LoaderConfig) -> int:
    """``cfg.num_workers``, or its default for this machine (see :class:`LoaderConfig`)."""
    if cfg.num_workers is not None:
        if cfg.num_workers < 0:
            raise ValueError(f"loader.num_workers must be >= 0, got {cfg.num_workers}")
        return cfg.num_workers
    if not torch.cuda.is_available():
        return 0
    import os

    per_rank = (os.cpu_count() or 1) // max(1, torch.cuda.device_count())
    return max(1, min(8, per_rank - 1))


def make_loader(stream: CacheStream, cfg: LoaderConfig, num_workers: int | None = None) -> DataLoader:
    """A DataLoader over ``stream`` that only prefetches: batching and splitting happen in the stream."""
    workers = resolve_workers(cfg) if num_workers is None else num_workers
    kwargs = {"prefetch_factor": cfg.prefetch_factor, "persistent_workers": False} if workers > 0 else {}
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(), **kwargs)
