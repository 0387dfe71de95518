"""Where source images come from: the built-in sample set, a directory, or a Hugging Face data set.

A :class:`Source` is a list of records (a stable ``image_id``, an optional label) plus a way to read one
record's encoded bytes. It is picklable and cheap to ship to Ray workers: the data set itself is opened
lazily, once per worker. Its ``fingerprint`` identifies the data (ids, sizes, labels), not the place it
sits, so a moved directory still matches its cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["SourceConfig", "SourceRecord", "Source", "PackedStrings", "open_source", "SourceError", "Unreadable"]


class SourceError(ValueError):
    """The configured source cannot be opened; the message names it and the fix."""


class Unreadable(OSError):
    """One record cannot be read; ``reason`` is stable and human (no paths, no addresses): it is recorded."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class SourceConfig:
    """Which images to cache.

    - ``kind: samples``: the built-in sample set shipped with the package (``split``: train, val or all).
    - ``kind: folder``: every file under ``path`` (recursively); a file's parent folder name is its label
      when the images sit in class sub-folders. Non-image files are skipped and recorded.
    - ``kind: hf``: a Hugging Face data set: a hub id or a directory saved with ``save_to_disk`` in
      ``path``, or a packaged builder (``builder: imagefolder`` or ``builder: parquet``) reading ``path``.
    """

    kind: Literal["samples", "folder", "hf"] = "samples"
    path: str | None = None
    builder: str | None = None
    split: str = "train"
    image_column: str = "image"
    label_column: str | None = "label"
    id_column: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class SourceRecord:
    image_id: str
    index: int  # position in the source (a row of a data set, or the sorted file list)
    label_index: int  # -1 when unlabeled


class PackedStrings:
    """Many strings in one buffer plus int64 offsets: ~(length + 8) bytes each, against ~60 + length for a list
    of Python strings (a 10^8-image source's ids and paths must fit a driver). Immutable; slices are cheap."""

    def __init__(self, blob: bytes, offsets: np.ndarray):
        self.blob, self.offsets = blob, offsets

    @classmethod
    def of(cls, strings) -> PackedStrings:
        parts = [x.encode("utf-8", "surrogateescape") for x in strings]
        offsets = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([len(b) for b in parts], out=offsets[1:])
        return cls(b"".join(parts), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].decode("utf-8", "surrogateescape")

    def slice(self, a: int, b: int) -> PackedStrings:
        b = min(b, len(self))
        lo, hi = int(self.offsets[a]), int(self.offsets[b])
        return PackedStrings(self.blob[lo:hi], self.offsets[a : b + 1] - lo)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def nbytes(self) -> int:
        return len(self.blob) + self.offsets.nbytes


_HF_CACHE: dict = {}  # one opened data set per worker process (a task is sent a part of the source, not the data set)


class Source:
    """An opened source: records in a fixed, deterministic order, held compactly (ids and file names packed,
    labels as an int32 array), and a way to read one record's bytes.

    ``part(a, b)`` is the source restricted to records ``a..b-1``: what one prepare task is sent (pickling the
    whole source into every task would cost O(source) per unit, O(source^2) per job)."""

    def __init__(
        self,
        cfg: SourceConfig,
        ids: PackedStrings | None,
        label_idx: np.ndarray,
        labels: list[str],
        fingerprint: str,
        files: PackedStrings | None = None,
        root: str | None = None,
        excluded: list[dict] | None = None,
        offset: int = 0,
    ):
        self.cfg, self.labels, self.fingerprint = cfg, labels, fingerprint
        self._ids, self._label_idx, self._files, self._root, self._offset = (
            ids,
            np.asarray(label_idx, np.int32),
            files,
            root,
            offset,
        )
        # Entries of a folder that are not read at all (hidden, links to folders, unreadable folders):
        # recorded in the manifest's skipped list, kept out of the records and the fingerprint, so a
        # `.DS_Store` appearing between runs does not change the cache's identity.
        self.excluded = excluded or []
        self._ds = None

    def __len__(self) -> int:
        return len(self._label_idx)

    def image_id(self, i: int) -> str:
        """The id of record ``i`` (counted within this source or part)."""
        if self._ids is None:  # a data set without an id column: ids are split and row
            return f"{self.cfg.split}-{self._offset + i:08d}"
        return self._ids[i]

    def record(self, i: int) -> SourceRecord:
        return SourceRecord(self.image_id(i), self._offset + i, int(self._label_idx[i]))

    @property
    def records(self) -> list[SourceRecord]:
        """Every record as an object (for a part or a small source; the job itself never builds this list)."""
        return [self.record(i) for i in range(len(self))]

    def part(self, a: int, b: int) -> Source:
        """Records ``a..b-1`` only, with what is needed to read them (the excluded list stays with the driver)."""
        b = min(b, len(self))
        p = Source(
            self.cfg,
            self._ids.slice(a, b) if self._ids is not None else None,
            self._label_idx[a:b],
            self.labels,
            self.fingerprint,
            self._files.slice(a, b) if self._files is not None and self._files is not self._ids else None,
            self._root,
            None,
            self._offset + a,
        )
        if self._files is not None and self._files is self._ids:
            p._files = p._ids
        return p

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ds"] = None  # reopened lazily in each worker
        return state

    def describe(self) -> dict:
        return {
            "kind": self.cfg.kind,
            "path": self.cfg.path,
            "builder": self.cfg.builder,
            "split": self.cfg.split,
            "num_images": len(self),
            "fingerprint": self.fingerprint,
            "labels": self.labels,
        }

    def read_bytes(self, rec: SourceRecord) -> bytes:
        """Encoded bytes of one record. OSError for an unreadable file (the job records it as a skip)."""
        if self._files is not None:
            return _read_regular_file(os.path.join(self._root, self._files[rec.index - self._offset]))
        ds = self._dataset()
        value = ds[rec.index][self.cfg.image_column]
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                return value["bytes"]
            if value.get("path"):
                with open(value["path"], "rb") as f:
                    return f.read()
        raise OSError(f"row {rec.index} of {self.cfg.path} has no image bytes in column {self.cfg.image_column!r}")

    def _dataset(self):
        if self._ds is None:
            key = json.dumps(asdict(self.cfg), sort_keys=True)
            if key not in _HF_CACHE:
                _HF_CACHE[key] = _load_hf(self.cfg)[0]
            self._ds = _HF_CACHE[key]
        return self._ds


def _readable_id(name: str) -> str:
    """A file name as a valid UTF-8 image id: bytes that are not UTF-8 (surrogate-escaped by the OS layer)
    are written as \\xNN, so the id is stable, printable and storable (Arrow strings must be UTF-8)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _read_regular_file(path: str) -> bytes:
    """A file's bytes; never blocks on a FIFO or a device. Unreadable with a stable reason otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if os.path.islink(path) and not os.path.exists(path):
            raise Unreadable("broken symbolic link") from None
        raise Unreadable(f"unreadable: {e.strerror or type(e).__name__}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Unreadable(f"not a regular file ({_file_kind(mode)})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except Unreadable:
        raise
    except OSError as e:
        raise Unreadable(f"unreadable: {e.strerror or type(e).__name__}") from None
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def _list_folder(root: Path) -> tuple[list[str], list[dict]]:
    """(files to read, entries not read with their reason), both relative to ``root``, sorted.

    Files are every non-hidden entry that is not a folder: regular files, symbolic links to files, and
    also FIFOs, sockets, devices and broken links, which are listed so that reading them records a skip.
    Hidden entries (name starting with '.'), links to folders (not followed: no loops) and folders that
    cannot be listed are not read, and come back as excluded with a reason."""
    files: list[str] = []
    excluded: list[dict] = []

    def rel(path: str) -> str:
        return Path(os.path.relpath(path, root)).as_posix()

    def unlistable(e: OSError):
        if e.filename and os.path.abspath(e.filename) != str(root):
            excluded.append(
                {
                    "image_id": _readable_id(rel(e.filename)),
                    "reason": f"folder not readable: {e.strerror or type(e).__name__}",
                }
            )

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable, followlinks=False):
        prefix = rel(dirpath) + "/" if dirpath != str(root) else ""  # once per folder, not per file (10^6 files)
        for d in list(dirnames):
            if d.startswith("."):
                dirnames.remove(d)
                excluded.append(
                    {
                        "image_id": _readable_id(prefix + d),
                        "reason": "hidden folder, not read (its name starts with '.')",
                    }
                )
            elif os.path.islink(os.path.join(dirpath, d)):
                excluded.append(
                    {"image_id": _readable_id(prefix + d), "reason": "symbolic link to a folder, not followed"}
                )
        for f in filenames:
            if f.startswith("."):
                excluded.append(
                    {"image_id": _readable_id(prefix + f), "reason": "hidden file, not read (its name starts with '.')"}
                )
            else:
                files.append(prefix + f)
    files.sort()
    excluded.sort(key=lambda e: e["image_id"])
    return files, excluded


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _folder_source(cfg: SourceConfig, root: Path, files: list[str] | None = None, label_of=None) -> Source:
    excluded: list[dict] = []
    if files is None:
        if not root.is_dir():
            raise SourceError(f"source.path {root} is not a directory (source.kind=folder)")
        if not os.access(root, os.R_OK | os.X_OK):
            raise SourceError(
                f"source.path {root} cannot be read (permission denied): check its permissions (source.kind=folder)"
            )
        files, excluded = _list_folder(root)
        if not files:
            hint = f" ({len(excluded)} hidden or unreadable entries; see the manifest after a run)" if excluded else ""
            raise SourceError(f"source.path {root} contains no files to read{hint}")
    if label_of is None:
        parents = sorted({posixpath.dirname(f) for f in files} - {""})
        labelled = parents and all(
            posixpath.dirname(f) != "" for f in files if posixpath.splitext(f)[1].lower() in _IMAGE_SUFFIXES
        )
        labels = parents if labelled else []
        # a file beside the class folders (README.txt) has no class; it is recorded as skipped when it is
        # not an image (were it an image, the tree would not count as class folders at all)
        position = {c: i for i, c in enumerate(labels)}
        label_of = (lambda f: position.get(posixpath.dirname(f) or ".", -1)) if labels else (lambda f: -1)
    else:
        labels = label_of.labels
    if cfg.limit is not None:
        files = files[: cfg.limit]
    h = hashlib.sha256()
    label_idx = np.empty(len(files), np.int32)
    ids = []
    base = str(root) + os.sep
    readable = 0
    for i, f in enumerate(files):
        li = label_idx[i] = label_of(f)
        ids.append(_readable_id(f))
        try:
            size = os.stat(base + f).st_size
        except OSError:
            size = -1  # vanished or unreadable: recorded as skipped when it is read
        readable += size > 0
        h.update(f"{f}\0{size}\0{li}\n".encode("utf-8", "surrogateescape"))
    if files and not readable:  # before Ray starts: a cache of zero images is not a result
        raise SourceError(
            f"source folder {root}: all {len(files)} file(s) are empty or unreadable (e.g. {files[0]}); "
            "nothing to cache. Point source.path at the images"
        )
    packed_ids = PackedStrings.of(ids)
    del ids
    packed_files = (
        packed_ids if all(packed_ids[i] == f for i, f in enumerate(files)) else PackedStrings.of(files)
    )  # ids are the paths unless a name is not UTF-8
    return Source(
        cfg, packed_ids, label_idx, labels, h.hexdigest()[:16], files=packed_files, root=str(root), excluded=excluded
    )


def _load_hf(cfg: SourceConfig):
    import datasets

    if not cfg.path:
        raise SourceError(
            "source.path is required for source.kind=hf (a hub id, a save_to_disk directory, or files "
            "for source.builder)"
        )
    try:
        if cfg.builder:
            p = Path(cfg.path)
            kwargs = {"data_dir": cfg.path} if p.is_dir() else {"data_files": cfg.path}
            ds = datasets.load_dataset(cfg.builder, split=cfg.split, **kwargs)
        elif (Path(cfg.path) / "dataset_info.json").exists() or (Path(cfg.path) / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(cfg.path)
            if isinstance(ds, datasets.DatasetDict):
                if cfg.split not in ds:
                    raise SourceError(f"{cfg.path} has splits {list(ds)}, not source.split={cfg.split!r}")
                ds = ds[cfg.split]
        else:
            ds = datasets.load_dataset(cfg.path, split=cfg.split)
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(
            f"cannot open Hugging Face data set {cfg.path!r} (split {cfg.split!r}, builder {cfg.builder!r}): "
            f"{type(e).__name__}: {e}"
        ) from None
    if cfg.image_column not in ds.column_names:
        raise SourceError(
            f"data set {cfg.path!r} has no column {cfg.image_column!r} (source.image_column); "
            f"columns: {ds.column_names}"
        )
    if cfg.limit is not None:
        ds = ds.select(range(min(cfg.limit, len(ds))))
    ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))  # we decode, so bad files become recorded skips
    return ds, datasets


def open_source(cfg: SourceConfig) -> Source:
    """Enumerate the configured source. Raises SourceError naming the input and the fix."""
    if cfg.kind == "samples":
        from pipelines.samples import load_sample_index, sample_classes

        split = None if cfg.split in ("all", None) else cfg.split
        if split not in (None, "train", "val"):
            raise SourceError(
                f"source.split={cfg.split!r} is not a split of the built-in samples; use train, val or all"
            )
        recs = load_sample_index(split)
        if cfg.limit is not None:
            recs = recs[: cfg.limit]
        classes = sample_classes()
        root = recs[0].path.parent.parent if recs else Path(".")
        files = [str(r.path.relative_to(root)) for r in recs]
        index = {str(r.path.relative_to(root)): r.label_index for r in recs}

        def label_of(f, _index=index):
            return _index[f]

        label_of.labels = classes
        src = _folder_source(cfg, root, files, label_of)
        # ids of the sample set are its own stable names, not file paths
        src._ids = PackedStrings.of([r.image_id for r in recs])
        return src
    if cfg.kind == "folder":
        if not cfg.path:
            raise SourceError("source.path is required for source.kind=folder")
        return _folder_source(cfg, Path(cfg.path).expanduser().resolve())
    if cfg.kind == "hf":
        ds, datasets = _load_hf(cfg)
        labels: list[str] = []
        label_col = cfg.label_column if cfg.label_column in ds.column_names else None
        feat = ds.features.get(label_col) if label_col else None
        cols = [c for c in (label_col, cfg.id_column) if c]
        meta = ds.select_columns(cols).to_dict() if cols else {}
        label_index = None
        if isinstance(feat, datasets.ClassLabel):
            labels = list(feat.names)
        elif label_col:
            values = meta[label_col]
            if all(isinstance(v, str) for v in values) or all(
                isinstance(v, int) and not isinstance(v, bool) for v in values
            ):
                # string (or plain integer) labels: classes are their sorted distinct values, recorded in the manifest
                labels = [str(v) for v in sorted(set(values))]
                position = {v: i for i, v in enumerate(sorted(set(values)))}
                label_index = [position[v] for v in values]
            else:
                kinds = sorted({type(v).__name__ for v in values})
                raise SourceError(
                    f"source.label_column {label_col!r} of {cfg.path!r} holds {kinds} values; "
                    "labels must be class names (strings), integers or a ClassLabel. Set source.label_column "
                    "to another column, or null for no labels"
                )
        if cfg.id_column and cfg.id_column not in ds.column_names:
            raise SourceError(
                f"source.id_column {cfg.id_column!r} is not a column of {cfg.path!r}; columns: {ds.column_names}"
            )
        if label_index is None:
            label_index = [int(v) for v in meta[label_col]] if label_col and labels else np.full(len(ds), -1, np.int32)
        ids = None
        if cfg.id_column:
            values = [str(v) for v in meta[cfg.id_column]]
            if len(set(values)) != len(values):
                raise SourceError(
                    f"source.id_column {cfg.id_column!r} of {cfg.path!r} has duplicate values; ids must be unique"
                )
            ids = PackedStrings.of(values)
        fp = hashlib.sha256(
            json.dumps([ds._fingerprint, cfg.split, cfg.limit, cfg.image_column, cfg.id_column]).encode()
        ).hexdigest()[:16]
        src = Source(cfg, ids, np.asarray(label_index, np.int32), labels, fp)
        src._ds = ds
        return src
    raise SourceError(f"unknown source.kind {cfg.kind!r}")
