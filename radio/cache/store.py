"""Where a cache lives and how its files are committed.

A cache root is a local path or any pyarrow filesystem URI (``file://``, ``s3://``, ``gs://``). Its layout::

    manifest.json                          provenance, specs, statistics, shard list, skipped inputs
    views/unit-00000.parquet               keys, crop boxes, flips, the student's view as image bytes
    views/unit-00000.commit                its commit record: size, sha256, rows, skips (radio.cache.commit)
    teachers/<name>/unit-00000.parquet     keys and that teacher's targets, one file per unit
    teachers/<name>/unit-00000.commit      its commit record: size, sha256, rows, exact moments (binary)
    stats/<name>.moments                   the teacher's moments merged over every unit (PHI-S, standardization)

A *unit* is a fixed, deterministic chunk of source images. Each (unit, table) file is written once,
atomically: to a temporary name, then renamed (object stores make a single PUT atomic already). A file
that exists is therefore complete, which is what makes resume exactly-once.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "CacheLocation",
    "ShardInfo",
    "unit_name",
    "views_path",
    "teacher_path",
    "encode_metadata",
    "decode_metadata",
]

_META_PREFIX = "radio."
VERIFY_PAGES = (
    True  # check every Parquet page's CRC32 as it is read (bench/bench_reader.py --checksums measures the cost)
)


def unit_name(unit: int) -> str:
    return f"unit-{unit:05d}.parquet"


def views_path(unit: int) -> str:
    return posixpath.join("views", unit_name(unit))


def teacher_path(teacher: str, unit: int) -> str:
    return posixpath.join("teachers", teacher, unit_name(unit))


def encode_metadata(meta: dict) -> dict[bytes, bytes]:
    """Schema metadata: every value JSON-encoded under a ``radio.`` key."""
    return {f"{_META_PREFIX}{k}".encode(): json.dumps(v, sort_keys=True).encode() for k, v in meta.items()}


def decode_metadata(schema_metadata: dict[bytes, bytes] | None) -> dict:
    out = {}
    for k, v in (schema_metadata or {}).items():
        key = k.decode()
        if key.startswith(_META_PREFIX):
            out[key[len(_META_PREFIX) :]] = json.loads(v)
    return out


def object_store_error(e: BaseException) -> str | None:
    """One line for a failing object store (pyarrow's S3 errors name the key and the AWS error, in a paragraph),
    saying which store, what failed and what to do; None for any other error."""
    cause = getattr(e, "cause", None)  # a Ray task's error carries the worker's exception
    text = str(cause if isinstance(cause, BaseException) else e)
    if "AWS Error" not in text:
        return None
    first = " ".join(text.split())
    where = re.search(r"(?:key '([^']*)' in )?bucket '([^']*)'", first)
    name = f"s3://{where.group(2)}/{where.group(1) or ''}" if where else "the object store"
    low = first.lower()
    if any(k in low for k in ("access_denied", "invalidaccesskeyid", "signaturedoesnotmatch", "forbidden")):
        what, fix = "credentials refused", "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the role)"
    elif "could not resolve host" in low or "curlcode: 6" in low:
        what, fix = (
            "the endpoint's host does not resolve",
            "name an S3-compatible server in the URI (?endpoint_override=HOST:PORT&scheme=http), or check the network",
        )
    elif "network_connection" in low or "could not connect" in low or "curlcode: 7" in low:
        what, fix = "the server does not answer", "start it or fix the endpoint in the URI"
    elif "no_such_bucket" in low or "nosuchbucket" in low:
        what, fix = "no such bucket", "create it or fix the URI"
    else:
        what, fix = "a request failed", "see the store's message"
    detail = re.sub(r"^When [^:]*: ", "", first)[:200]
    return (
        f"object store {name}: {what} ({detail}). To do: {fix}. What was committed is kept: rerun the same "
        "command to resume"
    )


class ChangedFile(OSError):
    """A shard whose bytes differ from the hash recorded when it was committed."""


@dataclass
class ShardInfo:
    """One committed file: its path relative to the root, row count, size and content checksum, and (in the
    manifest) the modification time storage listed for it when the manifest was written: a file changed since
    lists another, which a rerun notices from its listing alone."""

    path: str
    unit: int
    rows: int
    bytes: int
    sha256: str
    mtime_ns: int | None = None
    xxh3: str | None = (
        None  # xxh3-128 of the file: what a stream checks when it opens a local shard (21 GB/s vs CRC32's ~2)
    )

    def to_dict(self) -> dict:
        d = {"path": self.path, "unit": self.unit, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}
        if self.xxh3 is not None:
            d["xxh3"] = self.xxh3
        if self.mtime_ns is not None:  # commit records leave it out: they stay byte-identical across reruns
            d["mtime_ns"] = self.mtime_ns
        return d


class _HashingSink:
    """File-like object that forwards to a pyarrow output stream and hashes what passes through."""

    def __init__(self, stream) -> None:
        import xxhash

        self._stream, self._hash, self._fast, self._n, self.closed = (
            stream,
            hashlib.sha256(),
            xxhash.xxh3_128(),
            0,
            False,
        )

    def write(self, data) -> int:
        mv = memoryview(data)
        self._hash.update(mv)
        self._fast.update(mv)
        self._stream.write(mv)
        self._n += mv.nbytes
        return mv.nbytes

    def tell(self) -> int:
        return self._n

    @property
    def xxh3(self) -> str:
        return self._fast.hexdigest()

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class CacheLocation:
    """A cache root on some pyarrow filesystem, with the few operations the cache needs."""

    def __init__(self, uri: str) -> None:
        self.uri = str(uri)
        if "://" in self.uri:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        else:
            import os

            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(self.uri)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __reduce__(self):  # picklable for Ray tasks: rebuilt from the URI on the worker
        return (CacheLocation, (self.uri,))

    def full(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.full(rel)).type != pafs.FileType.NotFound

    def list_files(self, rel_dir: str, suffix: str = ".parquet") -> list[str]:
        info = self.fs.get_file_info(pafs.FileSelector(self.full(rel_dir), allow_not_found=True))
        return sorted(
            posixpath.relpath(i.path, self.root)
            for i in info
            if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and not i.base_name.startswith(".")
        )

    def scan_stat(self, rel_dir: str) -> dict[str, tuple[int, int | None]]:
        """Every file directly in ``rel_dir`` (hidden and temporary ones included): name -> (size, mtime_ns).
        One listing (one paginated LIST on an object store), however many files it holds."""
        info = self.fs.get_file_info(pafs.FileSelector(self.full(rel_dir), allow_not_found=True))
        return {i.base_name: (i.size, i.mtime_ns) for i in info if i.type == pafs.FileType.File}

    def scan(self, rel_dir: str) -> dict[str, int]:
        """:meth:`scan_stat`, sizes only."""
        return {k: v[0] for k, v in self.scan_stat(rel_dir).items()}

    def list_dirs(self, rel_dir: str) -> list[str]:
        info = self.fs.get_file_info(pafs.FileSelector(self.full(rel_dir), allow_not_found=True))
        return sorted(i.base_name for i in info if i.type == pafs.FileType.Directory)

    def delete(self, rel: str) -> None:
        self.fs.delete_file(self.full(rel))

    def move_aside(self, rel: str) -> str:
        """Rename a file to ``.damaged-<time>-<name>`` beside it (hidden from listings, kept for inspection)."""
        import time

        target = posixpath.join(
            posixpath.dirname(self.full(rel)), f".damaged-{time.strftime('%Y%m%dT%H%M%S')}-{posixpath.basename(rel)}"
        )
        self.fs.move(self.full(rel), target)
        return target

    def delete_dir(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_dir(self.full(rel))

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.full(rel)) as f:
            return f.read()

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        with self._atomic(rel) as sink:
            sink.write(data)

    def sha256(self, rel: str) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.full(rel)) as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        return h.hexdigest()

    def size(self, rel: str) -> int:
        return self.fs.get_file_info(self.full(rel)).size

    class _Atomic:
        def __init__(self, loc: CacheLocation, rel: str) -> None:
            self.loc, self.rel = loc, rel
            final = loc.full(rel)
            self.final = final
            self.tmp = (
                posixpath.join(posixpath.dirname(final), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(final)}")
                if loc.is_local
                else final
            )

        def __enter__(self) -> _HashingSink:
            if (
                self.loc.is_local
            ):  # an object store has no folders: creating one is a HEAD and a marker PUT per level, per file
                self.loc.fs.create_dir(posixpath.dirname(self.final), recursive=True)
            self.sink = _HashingSink(self.loc.fs.open_output_stream(self.tmp))
            return self.sink

        def __exit__(self, exc_type, exc, tb):
            self.sink.close()
            if exc_type is not None:
                if self.tmp != self.final:
                    self.loc.fs.delete_file(self.tmp)
                return False
            if self.tmp != self.final:
                self.loc.fs.move(self.tmp, self.final)  # rename(2): atomic on a local filesystem
            return False

    def _atomic(self, rel: str) -> CacheLocation._Atomic:
        return CacheLocation._Atomic(self, rel)

    def write_table(
        self,
        rel: str,
        unit: int,
        table: pa.Table,
        *,
        row_group_rows: int,
        byte_stream_split: list[str],
        compression: str | dict = "zstd",
    ) -> ShardInfo:
        """Commit one Parquet file atomically (``compression``: one codec, or one per column)."""
        kw: dict[str, Any] = dict(
            compression=compression,
            use_byte_stream_split=byte_stream_split or False,
            use_dictionary=[c for c in table.column_names if c in ("image_id", "label")],
            write_statistics=["image_id", "view_index"],
            write_page_checksum=True,
        )  # CRC32 per page: every byte a reader uses is checked as it is read
        with self._atomic(rel) as sink:
            pause = os.environ.get(PAUSE_WRITES_ENV)
            if pause and rel.startswith("teachers/") and not os.path.exists(os.path.join(pause, "paused")):
                _write_pausing(sink, table, max(1, row_group_rows), kw, pause, self.full(rel))
            pq.write_table(table, sink, row_group_size=max(1, row_group_rows), **kw)
        return ShardInfo(rel, unit, table.num_rows, sink.tell(), sink.sha256, xxh3=sink.xxh3)

    def parquet_file(self, rel: str, verify_pages: bool | None = None) -> pq.ParquetFile:
        """The shard, its pages' CRC32 checked as they are read (``VERIFY_PAGES``; ``verify_pages=False`` when the
        caller checks the whole file, see :meth:`check_whole`): a changed byte is an error, never a value."""
        verify = VERIFY_PAGES if verify_pages is None else verify_pages and VERIFY_PAGES
        if self.is_local:  # memory-mapped: uncompressed tensor pages are read without an extra copy
            return pq.ParquetFile(pa.memory_map(self.full(rel)), page_checksum_verification=verify)
        return pq.ParquetFile(self.fs.open_input_file(self.full(rel)), page_checksum_verification=verify)

    def hashed_whole(self, info: ShardInfo | None) -> bool:
        """Whether a stream checks this shard whole (:meth:`check_whole`) instead of page by page."""
        return self.is_local and VERIFY_PAGES and info is not None and bool(info.xxh3)

    def check_whole(self, rel: str, info: ShardInfo, memo: str | None = None) -> None:
        """Hash a local shard about to be streamed whole (every byte, footer included; xxh3-128 at ~21 GB/s
        against Arrow's page CRC32 at ~2) and raise :class:`ChangedFile` if it differs from its record.

        ``memo``: a folder shared by the processes of one run (the training process and its loader workers).
        A file found intact is noted there with its identity (size, inode, mtime and ctime: any write to it
        changes its ctime, which no user call can set back), and is not hashed again while that identity holds:
        later epochs of the run check each shard with one stat."""
        import xxhash

        path = self.full(rel)
        note = ident = None
        if memo is not None:
            st = os.stat(path)
            ident = f"{st.st_size} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns} {info.xxh3}"
            note = os.path.join(memo, hashlib.sha1(path.encode()).hexdigest())
            try:
                with open(note) as f:
                    if f.read() == ident:
                        return
            except OSError:
                pass
        with pa.memory_map(path) as mm:
            got = xxhash.xxh3_128_hexdigest(memoryview(mm.read_buffer()))
        if got != info.xxh3:
            raise ChangedFile(
                f"its content changed since it was committed (xxh3 {got[:12]}.., "
                f"the record says {(info.xxh3 or '')[:12]}..)"
            )
        if note is not None and ident is not None:
            try:  # a rename: a worker reading it sees all of the note or none
                tmp = f"{note}.{os.getpid()}"
                with open(tmp, "w") as f:
                    f.write(ident)
                os.replace(tmp, note)
            except OSError:  # the memo is an optimisation; the check above already ran
                pass


# A test hook, off unless the variable names a folder: the first teacher shard written stops after its first
# row group (the file open, no footer), says so with a file ``paused`` in that folder, and waits to be killed,
# so a test can land a kill inside a shard write every time.
PAUSE_WRITES_ENV = "RADIO_TEST_PAUSE_WRITES"


def _write_pausing(sink, table: pa.Table, rows: int, kw: dict, folder: str, path: str) -> NoReturn:
    w = pq.ParquetWriter(sink, table.schema, **kw)
    w.write_table(table.slice(0, rows), row_group_size=rows)
    sink.flush() if hasattr(sink, "flush") else None
    with open(os.path.join(folder, "paused"), "w") as f:
        f.write(path)
    time.sleep(600)  # killed long before; never left running if the test is not there to kill it
    raise RuntimeError(f"{PAUSE_WRITES_ENV}: nobody killed the paused writer of {path}")
