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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from .s3http import S3Ranges

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


# metadata key (radio.digests): {"rows": rows per row group, "columns": {name: [hex per group]}, "plain": [names of
# the columns whose every row group is one uncompressed PLAIN page]}
DIGESTS = "digests"
PAGE_BYTES = 1 << 30  # a data page holds up to this many bytes: a row group's column is one page below it


def row_group_digests(table: pa.Table, rows: int) -> dict:
    """The digest (:func:`radio.cache.arrow.column_digest`) of each column in each ``rows``-row slice of ``table``:
    the row groups ``pq.write_table(table, row_group_size=rows)`` writes. Columns it does not cover are left out."""
    from .arrow import column_digest

    cols = {}
    for name in table.column_names:
        col = table.column(name)
        got = [column_digest(col.slice(i, rows)) for i in range(0, table.num_rows, rows)]
        if all(d is not None for d in got):
            cols[name] = got
    return {"rows": rows, "columns": cols}


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


# (pid, URI, AWS settings) -> (filesystem, root), and with "ranges" -> S3Ranges or None: made once per process
_REMOTE: dict[tuple, Any] = {}


def _aws_env() -> tuple:
    """The environment an object store's client reads its credentials and endpoint from."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


class CacheLocation:
    """A cache root on some pyarrow filesystem, with the few operations the cache needs."""

    def __init__(self, uri: str) -> None:
        self.uri = str(uri)
        if "://" in self.uri:
            key = (os.getpid(), self.uri, _aws_env())
            if key not in _REMOTE:  # an S3 client costs ~0.15 CPU-seconds to make: once per process and URI
                _REMOTE[key] = pafs.FileSystem.from_uri(self.uri)
            self.fs, self.root = _REMOTE[key]
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(self.uri)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __reduce__(self):  # picklable for Ray tasks: rebuilt from the URI on the worker
        return (CacheLocation, (self.uri,))

    @property
    def shell(self) -> str:
        """The URI as a shell word (an object store's ``?...&...`` quoted), for commands a message names."""
        import shlex

        return shlex.quote(self.uri)

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
        """Commit one Parquet file atomically (``compression``: one codec, or one per column). Its metadata records
        the digest of every column of every row group (``radio.digests``), which a reader from an object store
        checks after decoding instead of each page's CRC32 (:class:`RemoteShard`)."""
        rows = max(1, row_group_rows)
        digests = row_group_digests(table, rows)
        dictionary = [c for c in table.column_names if c in ("image_id", "label")]
        codec = {
            c: compression.get(c, "snappy") if isinstance(compression, dict) else compression
            for c in table.column_names
        }
        # tensor columns stored as they are, one page per row group: their values are one contiguous run of the
        # file, which a reader from an object store uses in place (RemoteShard) instead of decoding a copy
        digests["plain"] = [
            f.name
            for f in table.schema
            if pa.types.is_fixed_size_binary(f.type)
            and str(codec[f.name]).lower() in ("none", "uncompressed")
            and f.name not in (byte_stream_split or ())
            and f.name not in dictionary
            and not f.nullable
            and rows * f.type.byte_width < PAGE_BYTES
        ]
        kw: dict[str, Any] = dict(
            compression=compression,
            use_byte_stream_split=byte_stream_split or False,
            use_dictionary=dictionary,
            write_statistics=["image_id", "view_index"],
            write_page_checksum=True,  # CRC32 per page: every byte a reader uses is checked as it is read
            data_page_size=PAGE_BYTES,
        )
        with self._atomic(rel) as sink:
            pause = os.environ.get(PAUSE_WRITES_ENV)
            if pause and rel.startswith("teachers/") and not os.path.exists(os.path.join(pause, "paused")):
                _write_pausing(sink, table, rows, kw, pause, self.full(rel))
            with pq.ParquetWriter(sink, table.schema, **kw) as writer:
                writer.write_table(table, row_group_size=rows)
                writer.add_key_value_metadata(
                    encode_metadata({DIGESTS: digests})
                )  # the footer's only, not the schema's
        return ShardInfo(rel, unit, table.num_rows, sink.tell(), sink.sha256, xxh3=sink.xxh3)

    def parquet_file(self, rel: str, verify_pages: bool | None = None) -> pq.ParquetFile:
        """The shard, its pages' CRC32 checked as they are read (``VERIFY_PAGES``; ``verify_pages=False`` when the
        caller checks the whole file, see :meth:`check_whole`): a changed byte is an error, never a value."""
        verify = VERIFY_PAGES if verify_pages is None else verify_pages and VERIFY_PAGES
        if self.is_local:  # memory-mapped: uncompressed tensor pages are read without an extra copy
            return pq.ParquetFile(pa.memory_map(self.full(rel)), page_checksum_verification=verify)
        return pq.ParquetFile(self.fs.open_input_file(self.full(rel)), page_checksum_verification=verify)

    def ranges(self) -> S3Ranges | None:
        """The :class:`radio.cache.s3http.S3Ranges` this location's shards are streamed through, or None
        (pyarrow's client reads them): made once per location."""
        if not hasattr(self, "_ranges"):
            from .s3http import ranges_for

            use = not self.is_local and os.environ.get("RADIO_S3_CLIENT", "") != "pyarrow"
            key = (os.getpid(), self.uri, _aws_env(), "ranges")
            if use and key not in _REMOTE:  # one per process and URI: its kept-alive connections serve every epoch
                _REMOTE[key] = ranges_for(self.uri, getattr(self.fs, "region", None))
            self._ranges = _REMOTE[key] if use else None
        return self._ranges

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


_FETCH: tuple[int, Any] | None = None

# (scheme, host, bucket, key) -> (ETag, columns): objects of which this process checked every row group of those
# columns against their digests while the store answered with that ETag. Later reads answered with the same ETag
# are not hashed again, as a local shard found intact is not hashed again while its size, inode, mtime and ctime
# hold (CacheLocation.check_whole): a rewritten object has a new ETag and is checked again. A forked loader
# worker starts from its parent's.
_VERIFIED: dict[tuple, tuple[str, frozenset]] = {}
_COLUMN_SETS: dict[frozenset, frozenset] = {}  # one object per set of columns: the memo's entries share them


def fetch_pool() -> ThreadPoolExecutor:
    """The threads this process fetches shards from an object store with (opening files, row groups ahead):
    one pool, so their kept-alive connections serve file after file."""
    global _FETCH
    from concurrent.futures import ThreadPoolExecutor

    if _FETCH is None or _FETCH[0] != os.getpid():  # a forked loader worker makes its own
        _FETCH = (os.getpid(), ThreadPoolExecutor(48, thread_name_prefix="radio-fetch"))
    return _FETCH[1]


class RemoteShard:
    """A shard streamed from an object store, in as few requests as its layout allows, checked without CRC32.

    Opened from the size the manifest recorded (no HEAD). Its footer is one ranged GET; each row group is one
    ranged GET of the columns read (neighbours within ``HOLE_LIMIT`` bytes coalesced), sent ``depth`` row groups
    ahead of the decoding so the store's latency overlaps it. A row group is checked after decoding: each
    column read against the digest the writer recorded for it (``radio.digests``, xxh3 at memory speed), where
    Parquet's page CRC32s would cost a second, slower pass; a shard written before digests existed has its
    pages' CRC32s checked instead. It offers what a stream uses of ``pq.ParquetFile``: ``schema_arrow``,
    ``metadata`` and ``iter_batches``.

    Bytes come through :mod:`radio.cache.s3http` (received straight into place) where the location's
    credentials allow it, else through pyarrow's client (set ``RADIO_S3_CLIENT=pyarrow`` to force that)."""

    HOLE_LIMIT = 1 << 20
    FOOTER_READ = 64 << 10  # what pyarrow reads first from a file's end to find its footer

    def __init__(self, loc: CacheLocation, rel: str, size: int, depth: int = 3) -> None:
        self.loc, self.rel, self.size, self.depth = loc, rel, size, max(1, depth)
        self._started: tuple | None = None  # (columns, pool, futures of the row groups requested ahead)
        # (column, field, first row, rows) -> a destination per row (a writable byte buffer, or None: the receive
        # buffer), or None for none: where a stream wants rows of in-place columns received (CacheStream)
        self.placer: Callable | None = None
        self.etag: str | None = None
        self._http = loc.ranges()
        if self._http is not None:
            self._file = _Ranges(self._http, self.loc.full(rel).split("/", 1)[1], size)
            tail = min(size, self.FOOTER_READ)
            self._file.fetch(size - tail, size)
            self.etag = next(iter(self._file.etags))  # the version of the object this footer belongs to
            pf = pq.ParquetFile(pa.PythonFile(self._file, mode="r"), page_checksum_verification=False)
            self.metadata, self.schema_arrow = pf.metadata, pf.schema_arrow
            self._file.drop(size - tail)
        else:
            self._fragment = self._make_fragment(verify_pages=False)
            self.metadata = self._fragment.metadata  # the footer: one ranged GET
            self.schema_arrow = self._fragment.physical_schema
        digests = decode_metadata(self.metadata.metadata).get(DIGESTS)  # the file's key-value metadata
        self.digests: dict | None = digests if isinstance(digests, dict) else None
        verify_pages = self.digests is None and VERIFY_PAGES  # an older shard: its pages' CRC32s are its check
        if self._http is not None:
            self._pf = pq.ParquetFile(
                pa.PythonFile(self._file, mode="r"), metadata=self.metadata, page_checksum_verification=verify_pages
            )
        elif verify_pages:
            self._fragment = self._make_fragment(verify_pages=True)

    def _make_fragment(self, verify_pages: bool):
        import pyarrow.dataset as ds

        opts = ds.ParquetFragmentScanOptions(
            pre_buffer=True,
            cache_options=pa.CacheOptions(hole_size_limit=self.HOLE_LIMIT, range_size_limit=1 << 40, lazy=False),
            page_checksum_verification=verify_pages,
        )
        fmt = ds.ParquetFileFormat(default_fragment_scan_options=opts)
        return fmt.make_fragment(self.loc.full(self.rel), filesystem=self.loc.fs, file_size=self.size)

    def _checked_columns(self, columns: list[str]) -> bool:
        d = self.digests
        if d is None or not VERIFY_PAGES:
            return False
        groups = self.metadata.num_row_groups
        missing = [c for c in columns if len(d.get("columns", {}).get(c, ())) != groups]
        if missing:
            raise ChangedFile(f"its metadata has no digests for column(s) {missing} of its {groups} row groups")
        return True

    def spans(self, i: int, columns: list[str]) -> list[tuple[int, int]]:
        """The byte ranges holding ``columns`` of row group ``i``, neighbours closer than ``HOLE_LIMIT`` merged."""
        rg, want, out = self.metadata.row_group(i), set(columns), []
        for j in range(rg.num_columns):
            c = rg.column(j)
            if c.path_in_schema.split(".")[0] in want:
                start = c.data_page_offset
                if c.has_dictionary_page and c.dictionary_page_offset and 0 < c.dictionary_page_offset < start:
                    start = c.dictionary_page_offset
                out.append((start, start + c.total_compressed_size))
        merged: list[tuple[int, int]] = []
        for a, b in sorted(out):
            if merged and a - merged[-1][1] <= self.HOLE_LIMIT:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        return merged

    def _verified_as(self) -> tuple:
        assert self._http is not None
        return (self._http.scheme, self._http.host, self._http.bucket, self._file._key)

    def _trust(self, columns: list[str]) -> str | None:
        """The ETag under which this process already checked every row group of ``columns`` of this object
        (None: not yet, or the store gives no ETag): answers with it are not hashed again."""
        seen = _VERIFIED.get(self._verified_as())
        if self.etag and seen is not None and seen[0] == self.etag and set(columns) <= seen[1]:
            return self.etag
        return None

    def _fetch(self, i: int, columns: list[str]) -> tuple[list[tuple[int, int]], dict[str, str], bool]:
        """Receive row group ``i``'s ``columns``: (the spans fetched, the digest of each in-place column, hashed
        as its bytes arrived, whether the store answered every span with an ETag already checked whole, see
        :data:`_VERIFIED`). Rows that :attr:`placer` gives a destination go there instead of the buffer."""
        from .arrow import fixed_width_digest

        got, digests, trusted, trust = self.spans(i, columns), {}, True, self._trust(columns)
        plain = self._plain_values(i, columns)
        dests = {}
        if self.placer is not None and plain:
            row0 = sum(self.metadata.row_group(j).num_rows for j in range(i))
            for c, (_, _, rows) in plain.items():
                d = self.placer(c, self.schema_arrow.field(c), row0, rows)
                if d is not None:
                    dests[c] = d
        for a, b in got:
            inside = sorted((v[0], v[1], c) for c, v in plain.items() if a <= v[0] and v[1] <= b)
            regions = []
            for h, (x, y, c) in enumerate(inside):
                if c not in dests:
                    regions.append((x - a, y - a, None, h))
                    continue
                width = (y - x) // len(dests[c])
                for r, dest in enumerate(dests[c]):
                    regions.append((x - a + r * width, x - a + (r + 1) * width, dest, h))
            hashers = self._file.fetch(a, b, regions, trust)
            if hashers is None:
                continue
            trusted = False
            for h, (_, _, c) in enumerate(inside):
                digests[c] = fixed_width_digest(plain[c][2], hashers[h])
        return got, digests, trusted

    def _plain_values(self, i: int, columns: list[str]) -> dict[str, tuple[int, int, int]]:
        """The columns of row group ``i`` that are one uncompressed PLAIN page of fixed-size values (the writer
        says which, the footer confirms it): name -> (start, end, rows) of the values in the file, the page's
        last ``rows * width`` bytes."""
        plain = set((self.digests or {}).get("plain", ()))
        rg, out = self.metadata.row_group(i), {}
        for j in range(rg.num_columns):
            c = rg.column(j)
            name = c.path_in_schema
            if name not in plain or name not in columns:
                continue
            width, rows = self.schema_arrow.field(name).type.byte_width, rg.num_rows
            if (
                c.compression != "UNCOMPRESSED"
                or not set(c.encodings) <= {"PLAIN", "RLE", "BIT_PACKED"}
                or c.num_values != rows
                or c.total_compressed_size < rows * width
            ):
                continue
            end = c.data_page_offset + c.total_compressed_size
            out[name] = (end - rows * width, end, rows)
        return out

    def _in_place(self, i: int, columns: list[str]) -> dict[str, pa.Array]:
        """The in-place columns of row group ``i`` (:meth:`_plain_values`) as arrays over the received bytes.
        Whether they are the values written is the digest's to say."""
        out = {}
        for name, (a, b, rows) in self._plain_values(i, columns).items():
            values = self._file.buffer(a, b)
            if values is not None:
                out[name] = pa.FixedSizeBinaryArray.from_buffers(
                    self.schema_arrow.field(name).type, rows, [None, values]
                )
        return out

    def _decode(self, i: int, columns: list[str], check: bool, hashed: dict[str, str] | None = None) -> pa.Table:
        """Row group ``i`` as a table, checked (``hashed``: digests of columns computed as they were received)."""
        if self._http is not None:
            got = self._in_place(i, columns)
            rest = [c for c in columns if c not in got]
            if rest:
                decoded = self._pf.read_row_group(i, columns=rest)
                got.update({c: decoded.column(c) for c in rest})
            table = pa.Table.from_arrays(
                [got[c] for c in columns], schema=pa.schema([self.schema_arrow.field(c) for c in columns])
            )
        else:
            table = self._fragment.subset(row_group_ids=[i]).to_table(columns=columns)
        if check:
            from .arrow import column_digest

            for c in columns:
                got = (hashed or {}).get(c) or column_digest(table.column(c))
                want = self.digests["columns"][c][i]  # type: ignore[index]
                if got != want:
                    raise ChangedFile(
                        f"row group {i}, column {c!r} does not read back as written (digest {got}, written {want})"
                    )
        return table

    def start(self, columns: list[str]) -> None:
        """Request the first ``depth`` row groups of ``columns`` now, before the shard is iterated (a stream does
        this for the next unit while the current one streams)."""
        if self._started is None:
            pool = fetch_pool()
            job = self._decode_job(columns) if self._http is None else (lambda i: self._fetch(i, columns))
            groups = self.metadata.num_row_groups
            self._started = (list(columns), pool, [pool.submit(job, i) for i in range(min(self.depth, groups))])

    def _decode_job(self, columns: list[str]):
        check = self._checked_columns(columns)
        return lambda i: self._decode(i, columns, check)

    def _tables(self, columns: list[str]) -> Iterator[pa.Table]:
        """Each row group's table, checked; the next ``depth`` row groups' bytes are on their way meanwhile
        (pyarrow's client fetches and decodes a fragment in one call: there whole calls run ahead)."""
        check = self._checked_columns(columns)
        groups = self.metadata.num_row_groups
        if self._started is not None and self._started[0] != list(columns):
            self.close()
        self.start(columns)
        assert self._started is not None
        _, pool, ahead = self._started
        job = self._decode_job(columns) if self._http is None else (lambda i: self._fetch(i, columns))
        try:
            for i in range(groups):
                got = ahead.pop(0).result()
                if i + self.depth < groups:
                    ahead.append(pool.submit(job, i + self.depth))
                if self._http is None:
                    yield got
                    continue
                spans, hashed, trusted = got
                try:
                    yield self._decode(i, columns, check and not trusted, hashed)
                finally:
                    for start, _ in spans:
                        self._file.drop(start)
            if check and self._http is not None and self.etag and self._file.etags == {self.etag}:
                # every row group of these columns checked (or trusted) under one version of the object
                seen = _VERIFIED.get(self._verified_as())
                cols = (seen[1] if seen is not None and seen[0] == self.etag else frozenset()) | frozenset(columns)
                cols = _COLUMN_SETS.setdefault(cols, cols)
                _VERIFIED[self._verified_as()] = (self.etag, cols)
        finally:
            self.close()

    def close(self) -> None:
        """Stop fetching ahead (waits for the requests in flight)."""
        if self._started is not None:
            from concurrent.futures import wait

            futures = self._started[2]
            for f in futures:
                f.cancel()
            wait(futures)
            self._started = None

    def iter_batches(self, batch_size: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Record batches of ``batch_size`` rows (the last may be shorter) of ``columns``, row groups checked."""
        carry: pa.Table | None = None
        for table in self._tables(columns):
            if carry is not None:
                table = pa.concat_tables([carry, table]).combine_chunks()
                carry = None
            whole = table.num_rows // batch_size * batch_size
            yield from table.slice(0, whole).combine_chunks().to_batches(max_chunksize=batch_size)
            if whole < table.num_rows:
                carry = table.slice(whole)
        if carry is not None and carry.num_rows:
            yield from carry.combine_chunks().to_batches()


class _BufferPool:
    """Buffers that row groups are received into, reused: a fresh allocation of tens of MB per row group is a
    fresh mapping whose every page the kernel zeroes before the body lands on it (a third of the reader's CPU
    in a `perf` profile). Decoded columns may be views of the buffer they were read from, so a buffer given
    back is reused only once nothing refers to it any more (its reference count), never while a value aliases
    it.

    How much it keeps: free buffers up to the larger of ``max_bytes`` and the most bytes ever in use at once
    (the stream's working set, which the process needed anyway). A row stays in the shuffle buffer long after
    its row group was read and keeps the whole buffer alive, so the working set is several times the shuffle
    buffer's rows; a pool capped below it (64 buffers, 512 MiB before) dropped buffers at every epoch's end
    and allocated ~28 % of an epoch's bytes fresh in the next one (`bench/bench_s3_reader.py`: reader CPU
    0.90 -> 0.77 ms per view once it stopped)."""

    def __init__(self, keep: int = 1024, max_bytes: int = 1 << 29) -> None:
        import threading

        self._held: list = []  # given back, maybe still referred to by decoded batches
        self._keep, self._max_bytes = keep, max_bytes  # at most this many buffers; free bytes, at least
        self._out = 0  # bytes taken and not given back yet
        self._peak = 0  # the most bytes in use at once (taken, or given back and still referred to)
        self._lock = threading.Lock()

    def take(self, n: int):
        import sys

        import numpy as np

        with self._lock:
            held = self._held  # a free buffer is referred to by this list and getrefcount's argument only
            free = [i for i in range(len(held)) if held[i].size >= n and sys.getrefcount(held[i]) <= 2]
            if free:
                got = self._held.pop(min(free, key=lambda i: self._held[i].size))
            else:
                got = np.empty(max(n, 1), np.uint8)
            self._out += got.size
            return got

    def give(self, base) -> None:
        import sys

        with self._lock:
            held = self._held
            self._out -= base.size
            held.append(base)
            free = [b for b in held if sys.getrefcount(b) <= 3]  # held, this list, getrefcount's argument
            free_ids = {id(b) for b in free}
            in_use = self._out + sum(b.size for b in held if id(b) not in free_ids)
            self._peak = max(self._peak, in_use)
            if len(held) > self._keep:  # forget a free one (or, if all are in use, the oldest)
                drop = free[0] if free else held[0]
                _forget(held, drop)
                free = [b for b in free if b is not drop]
            spare = sum(b.size for b in free) - max(self._max_bytes, self._peak)
            for b in free:  # the oldest free ones go first, until the free bytes fit
                if spare <= 0:
                    break
                spare -= b.size
                _forget(held, b)
            del free


def _forget(held: list, b) -> None:
    """Remove ``b`` from ``held`` by identity (``list.remove`` compares arrays element by element)."""
    del held[next(i for i, x in enumerate(held) if x is b)]


_POOL = _BufferPool()
_TENSORS = _BufferPool()  # batch tensors rows are received into (CacheStream): their sizes repeat, batch to batch


def reusable_empty(nbytes: int) -> np.ndarray:
    """``nbytes`` uninitialized bytes, reused once nothing refers to them any more (as receive buffers are): for
    batch tensors allocated in fetching threads, where the allocator's per-thread arenas map fresh pages (the
    kernel zeroing each) for every batch."""
    base = _TENSORS.take(nbytes)
    _TENSORS.give(base)  # in use by what the caller builds on it until that is gone
    return base[:nbytes]


class _Ranges:
    """The file pyarrow parses a :class:`RemoteShard` through: reads are served from byte ranges fetched ahead
    (zero-copy); a read outside them (a footer longer than ``FOOTER_READ``) is fetched when it is asked for."""

    def __init__(self, http, key: str, size: int) -> None:
        import threading

        self._http, self._key, self._size, self._pos = http, key, size, 0
        self._parts: dict[int, tuple[int, Any]] = {}
        self._lock = threading.Lock()
        self.etags: set[str | None] = set()
        self.closed = False

    def fetch(self, start: int, end: int, regions: list | None = None, trust: str | None = None) -> list | None:
        """Receive bytes ``[start, end)``; ``regions`` (offsets relative to ``start``) and ``trust`` as in
        :meth:`radio.cache.s3http.S3Ranges.read_into`, whose hashers are returned. Every ETag the store answered
        with is noted in :attr:`etags`."""
        base = _POOL.take(end - start)
        hashers, etag = self._http.read_into(self._key, start, base[: end - start].data, regions, trust)
        with self._lock:
            self._parts[start] = (end, base)
            self.etags.add(etag)
        return hashers

    def drop(self, start: int) -> None:
        with self._lock:
            part = self._parts.pop(start, None)
        if part is not None:
            _POOL.give(part[1])

    def _find(self, a: int, b: int):
        with self._lock:
            for start, (end, base) in self._parts.items():
                if start <= a and b <= end:
                    return pa.py_buffer(base[a - start : b - start])  # holds a reference to base while used
        return None

    def buffer(self, a: int, b: int) -> pa.Buffer | None:
        """Bytes ``[a, b)`` if they were fetched (a zero-copy view), else None."""
        return self._find(a, b)

    def read_buffer(self, n: int = -1) -> pa.Buffer:
        a = self._pos
        b = self._size if n < 0 else min(self._size, a + n)
        got = self._find(a, b)
        if got is None:
            self.fetch(a, b)
            got = self._find(a, b)
            self.drop(a)
        self._pos = b
        return got

    def read(self, n: int = -1) -> bytes:
        return self.read_buffer(n).to_pybytes()

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos if whence == 1 else self._size + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


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
