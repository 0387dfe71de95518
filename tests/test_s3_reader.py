"""Streaming a cache from an object store (issue 31): the same rows as local disk, the fewest requests, every
value checked, and the buffers rows are received into never reused under a value still in use.

A synthetic cache (two teachers, three units whose row counts are not multiples of the row group) is copied to
the loopback SeaweedFS of tests/s3server.py; each test streams it as training does and compares with the
local copy. Both ways of receiving bytes run: radio's own ranged GETs (`radio.cache.s3http`) and pyarrow's
client (`RADIO_S3_CLIENT=pyarrow`, what a location whose credentials come from elsewhere uses).
"""

from __future__ import annotations

import collections
import contextlib
import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from radio.cache import CacheError, CacheReader
from radio.cache.arrow import column_digest
from radio.data import CacheStream

pytest_plugins = ["tests.s3server"]

TEACHERS = {"t-sum": (8, 16, (4, 4)), "t-feat": (None, 32, (2, 2))}
ROWS_PER_GROUP = 4  # units of 5 images x 2 views: 10 rows, row groups of 4, 4, 2


@pytest.fixture(scope="module")
def caches(s3_server, tmp_path_factory):
    """(local root, s3 uri, the s3 prefix) of one synthetic cache, on local disk and copied to the store."""
    from pipelines.synthetic import make_synthetic_cache

    root = tmp_path_factory.mktemp("s3-reader") / "c"
    make_synthetic_cache(
        root, limit=15, views=2, per_shard=5, teachers=TEACHERS, row_group_rows=ROWS_PER_GROUP, split="all"
    )
    pafs.copy_files(str(root), s3_server.path("reader/c"), destination_filesystem=s3_server.filesystem())
    return root, s3_server.uri("reader/c"), "reader/c"


@pytest.fixture(params=["http", "pyarrow"])
def client(request, monkeypatch):
    monkeypatch.setenv("RADIO_S3_CLIENT", "" if request.param == "http" else "pyarrow")
    return request.param


def _epoch(uri: str, epoch: int = 0, keep: bool = True) -> list[dict]:
    stream = CacheStream(uri, list(TEACHERS), batch_size=4, shuffle_buffer=8, read_rows=3, seed=7)
    stream.set_epoch(epoch)
    return [b for b in stream] if keep else [{"n": len(b["image_id"])} for b in stream]


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["image_id"] == y["image_id"]
        for k, v in x.items():
            if hasattr(v, "shape"):
                assert np.array_equal(np.asarray(v), np.asarray(y[k])), k


def _shard_layout(root) -> tuple[int, int]:
    """(files, row groups) of the cache's Parquet shards."""
    files = sorted(root.rglob("unit-*.parquet"))
    return len(files), sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)


def test_an_epoch_from_s3_equals_local_in_one_footer_and_one_get_per_row_group(caches, s3_server, client):
    root, uri, _ = caches
    want = _epoch(str(root))
    stream = CacheStream(uri, list(TEACHERS), batch_size=4, shuffle_buffer=8, read_rows=3, seed=7)
    with s3_server.counting() as n:
        got = list(stream)
    _same(got, want)
    files, groups = _shard_layout(root)
    parquet = [r for r in n.requests if r.path.endswith(".parquet")]
    kinds = collections.Counter(("GET_RANGE" if r.code == "206" else r.method) for r in parquet)
    print(f"[s3 requests] one epoch ({client}): {dict(n)}; {files} files, {groups} row groups", flush=True)
    # per file: its footer, then each row group in one ranged GET; no HEAD (the manifest has every size), no
    # listing, nothing else
    assert kinds == {"GET_RANGE": files + groups}, kinds
    assert n.total == len(parquet), n.requests
    assert len({r.path for r in parquet}) == files
    from radio.cache.store import RemoteShard

    opened = CacheReader(uri, check=False)._open_unit(0)
    for name, f in opened.items():  # checked by digest; the tensor columns used where they were received
        assert isinstance(f, RemoteShard) and f.digests is not None, name
        if name is not None:
            assert "features" in f.digests["plain"], f.digests


def test_values_never_alias_a_reused_receive_buffer(caches, monkeypatch):
    """Epochs streamed with every batch kept alive, after an epoch that let the buffers be reused: the
    reader's pool of receive buffers must not hand out one that a kept value still points into."""
    import radio.cache.store as store

    monkeypatch.delenv("RADIO_S3_CLIENT", raising=False)
    monkeypatch.setattr(store, "_POOL", store._BufferPool(keep=3))
    root, uri, _ = caches
    _epoch(uri, 0, keep=False)  # fills the pool
    kept = [_epoch(uri, e) for e in (1, 2)]
    for e, got in zip((1, 2), kept, strict=True):
        _same(got, _epoch(str(root), e))


def _rewrite(s3_server, key: str, change) -> bytes:
    """Replace object ``key`` by ``change(its bytes)`` (same size); returns the original bytes."""
    fs = s3_server.filesystem()
    with fs.open_input_stream(s3_server.path(key)) as f:
        data = f.read()
    new = change(bytearray(data))
    assert len(new) == len(data)
    with fs.open_output_stream(s3_server.path(key)) as f:
        f.write(bytes(new))
    return data


def _flip(offset: int):
    def change(b: bytearray) -> bytearray:
        b[offset] ^= 0x01
        return b

    return change


@pytest.mark.parametrize("where", ["in-place tensor", "decoded column"])
def test_a_changed_byte_on_s3_is_refused_naming_the_file_and_the_repair(caches, s3_server, client, where):
    root, uri, prefix = caches
    rel = "teachers/t-sum/unit-00001.parquet"
    md = pq.ParquetFile(root / rel).metadata.row_group(1)
    col = {c.path_in_schema: c for c in (md.column(j) for j in range(md.num_columns))}
    name = "features" if where == "in-place tensor" else "view_index"
    chunk = col[name]
    offset = chunk.data_page_offset + chunk.total_compressed_size - 3  # inside the last values of the chunk
    pristine = _rewrite(s3_server, f"{prefix}/{rel}", _flip(offset))
    try:
        with pytest.raises(CacheError) as e:
            _epoch(uri)
        msg = str(e.value)
        assert rel in msg and "radio cache repair" in msg, msg
        assert len(msg.splitlines()) == 1, msg
    finally:
        _rewrite(s3_server, f"{prefix}/{rel}", lambda b: bytearray(pristine))
    _same(_epoch(uri), _epoch(str(root)))  # the pristine bytes back: the same rows as local disk


def test_an_object_checked_whole_is_not_hashed_again_until_its_etag_changes(caches, s3_server, monkeypatch):
    """Each object is checked against its digests the first time this process reads it all; later epochs
    answered with the same ETag hash nothing (as a local shard found intact is not hashed again while its stat
    holds). A rewritten object has a new ETag: checked again, and a changed byte refused."""
    from radio.cache import arrow, store
    from radio.cache.s3http import S3Ranges

    root, uri, prefix = caches
    monkeypatch.setattr(store, "_VERIFIED", {})
    hashed = collections.Counter()
    for name in ("fixed_width_digest", "column_digest"):
        real = getattr(arrow, name)
        monkeypatch.setattr(arrow, name, lambda *a, _real=real, _name=name: hashed.update([_name]) or _real(*a))
    trusted = collections.Counter()
    read_into = S3Ranges.read_into

    def counting(self, key, start, out, regions=None, trust=None):
        hashers, etag = read_into(self, key, start, out, regions, trust)
        trusted[hashers is None] += 1
        return hashers, etag

    monkeypatch.setattr(S3Ranges, "read_into", counting)
    want = _epoch(str(root))
    hashed.clear()
    _same(_epoch(uri), want)
    assert hashed["fixed_width_digest"] > 0 and hashed["column_digest"] > 0 and not trusted[True], (hashed, trusted)
    assert len(store._VERIFIED) == _shard_layout(root)[0]
    hashed.clear(), trusted.clear()
    _same(_epoch(uri, epoch=1), _epoch(str(root), epoch=1))
    assert not hashed and trusted[True] > 0, (hashed, trusted)

    rel = "teachers/t-feat/unit-00000.parquet"
    chunk = pq.ParquetFile(root / rel).metadata.row_group(0).column(2)
    pristine = _rewrite(s3_server, f"{prefix}/{rel}", _flip(chunk.data_page_offset + chunk.total_compressed_size - 3))
    try:
        with pytest.raises(CacheError, match="radio cache repair"):
            _epoch(uri)
    finally:
        _rewrite(s3_server, f"{prefix}/{rel}", lambda b: bytearray(pristine))
    _same(_epoch(uri), want)


def test_a_shard_written_without_digests_has_its_pages_checked(caches, s3_server, client, tmp_path):
    """Shards from before digests existed stream with Parquet's page CRC32s as their check."""
    from radio.cache.store import DIGESTS, encode_metadata

    root, uri, prefix = caches
    rel = "teachers/t-feat/unit-00002.parquet"
    table = pq.read_table(root / rel)
    assert encode_metadata({DIGESTS: 0}).popitem()[0] in pq.ParquetFile(root / rel).metadata.metadata
    old = tmp_path / "old.parquet"  # as the writer made it before digests: the same table, no digests
    pq.write_table(table, old, row_group_size=ROWS_PER_GROUP, write_page_checksum=True)
    size = old.stat().st_size
    reader = CacheReader(str(root), check=False)
    info = reader.entry("t-feat").by_unit()[2]
    assert info.bytes != size  # a different file: the manifest must name it, as a repair would have
    fs = s3_server.filesystem()
    key = f"{prefix}-old"
    pafs.copy_files(str(root), s3_server.path(key), destination_filesystem=fs)
    with fs.open_output_stream(s3_server.path(f"{key}/{rel}")) as f:
        f.write(old.read_bytes())
    from radio.cache.manifest import save_manifest
    from radio.cache.store import CacheLocation

    info.bytes = size  # the manifest names the file by its size, as the job that wrote it would have
    save_manifest(CacheLocation(s3_server.uri(key)), reader.manifest)
    remote = CacheReader(s3_server.uri(key), check=False)
    got = [b for b in remote.iter_unit(2, 3)]
    want = [b for b in CacheReader(str(root), check=False).iter_unit(2, 3)]
    assert [b.image_id for b in got] == [b.image_id for b in want]
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g.teachers["t-feat"]["features"], w.teachers["t-feat"]["features"])
    chunk = pq.ParquetFile(old).metadata.row_group(0).column(2)
    offset = chunk.data_page_offset + chunk.total_compressed_size - 3
    _rewrite(s3_server, f"{key}/{rel}", _flip(offset))
    with pytest.raises(CacheError, match="does not read back as written"):
        list(CacheReader(s3_server.uri(key), check=False).iter_unit(2, 3))


def test_wrong_credentials_for_radios_own_gets_are_one_object_store_line(caches, s3_server):
    from radio.cache.s3http import ranges_for
    from radio.cache.store import object_store_error

    _, uri, prefix = caches
    bad = ranges_for(uri.replace("?", "?access_key=nobody&secret_key=wrong&"))
    assert bad is not None
    with pytest.raises(OSError) as e:
        bad.read_into(f"{prefix}/manifest.json", 0, memoryview(bytearray(10)))
    line = object_store_error(e.value)
    assert line is not None and "credentials refused" in line, (str(e.value), line)
    good = ranges_for(uri)
    assert good is not None
    buf = bytearray(10)
    good.read_into(f"{prefix}/manifest.json", 0, memoryview(buf))
    assert buf.startswith(b"{")
    with pytest.raises(OSError, match="NO_SUCH_KEY"):
        good.read_into(f"{prefix}/no-such-object", 0, memoryview(bytearray(10)))


@pytest.mark.parametrize("pause", [0.0, 0.7])
def test_a_body_in_pieces_lands_in_its_regions(pause):
    """Bytes received straight from the socket, scattered over many destinations in one call: a body that
    arrives in pieces (part of it already in the response's buffer, the rest later; with ``pause``, pauses
    that together outlast the client's 1 s timeout within one scattering call, which then returns short and
    goes on) lands byte for byte where
    the regions say, hashed or not; a body cut short is an error, not a short row."""
    import socket
    import threading

    import xxhash

    from radio.cache.s3http import S3Ranges

    body = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()

    def serve(listener, cut: bool) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            head = f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            conn.sendall(head + body[:3000])
            time.sleep(0.2)
            conn.sendall(body[3000:21_000])
            time.sleep(pause)
            conn.sendall(body[21_000:30_000])
            time.sleep(pause)
            conn.sendall(body[30_000 : 40_000 if cut else None])

    rows = [np.zeros(4000, np.uint8) for _ in range(6)]
    # rows of 4000 bytes at 5000, 9000, ..., two of them hashed; the rest of the body to ``out``
    regions = [(5000 + 4000 * r, 9000 + 4000 * r, memoryview(rows[r]), 0 if r in (2, 3) else None) for r in range(6)]
    for cut in (False, True):
        listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=serve, args=(listener, cut), daemon=True).start()
        http = S3Ranges("http", f"127.0.0.1:{listener.getsockname()[1]}", "b", True, "r", "", "", anonymous=True)
        http.timeout, http.retries = 1.0, 0
        out = bytearray(len(body))
        if cut:
            with pytest.raises(OSError, match="NETWORK_CONNECTION"):
                http.read_into("k", 0, memoryview(out), regions)
            continue
        hashers, _ = http.read_into("k", 0, memoryview(out), regions)
        for r in range(6):
            assert rows[r].tobytes() == body[5000 + 4000 * r : 9000 + 4000 * r], r
        assert out[:5000] == body[:5000] and out[29_000:] == body[29_000:]
        assert hashers is not None and hashers[0].intdigest() == xxhash.xxh3_64(body[13_000:21_000]).intdigest()


@pytest.mark.parametrize("stall", ["before the answer", "mid-body"])
def test_a_store_that_stops_sending_is_one_line_after_the_timeout(stall):
    """radio's sockets wait in the kernel (SO_RCVTIMEO), where a timeout reads as the peer closing or as EAGAIN:
    the error still says the store sent nothing for the timeout, names the key, and comes after the tries."""
    import socket
    import threading

    from radio.cache.s3http import S3Ranges
    from radio.cache.store import object_store_error

    held = []

    def serve(listener) -> None:
        while True:
            conn, _ = listener.accept()
            held.append(conn)  # kept open, never closed: the store just stops
            conn.recv(65536)
            if stall == "mid-body":
                conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100000\r\n\r\n" + bytes(5000))

    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    http = S3Ranges("http", f"127.0.0.1:{listener.getsockname()[1]}", "b", True, "r", "", "", anonymous=True)
    http.timeout, http.retries = 1.0, 1
    t0 = time.perf_counter()
    with pytest.raises(OSError) as e:
        http.read_into("cache/unit-7.parquet", 0, memoryview(bytearray(100_000)))
    took = time.perf_counter() - t0
    msg = str(e.value)
    assert "cache/unit-7.parquet" in msg and "sent nothing for 1 s (the last of 2 tries)" in msg, msg
    assert 2.0 <= took < 120, took
    assert object_store_error(e.value) is not None
    for c in held:
        c.close()


def test_ranges_for_uses_pyarrow_where_credentials_come_from_elsewhere(monkeypatch):
    from radio.cache.s3http import ranges_for

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    assert ranges_for("s3://b/c?region=us-east-1") is None  # a profile or an instance role: pyarrow's chain
    assert ranges_for("s3://b/c?region=us-east-1&role_arn=arn:aws:iam::1:role/x&access_key=a&secret_key=s") is None
    assert ranges_for("gs://b/c") is None
    r = ranges_for("s3://b/c?region=eu-west-1&access_key=a&secret_key=s")
    assert r is not None and (r.host, r.path_style, r.scheme) == ("b.s3.eu-west-1.amazonaws.com", False, "https")
    r = ranges_for("s3://b/c?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1&anonymous=true")
    assert r is not None and (r.host, r.path_style, r.scheme, r.anonymous) == ("127.0.0.1:9000", True, "http", True)


@pytest.mark.parametrize("where", ["proxy", "store"])
def test_latency_on_the_path_changes_no_value(caches, s3_server, where):
    """Through the delaying proxy the bench uses, or from the sendfile store answering each request late: the
    same rows, and no request answered sooner than the delay."""
    from radio.cache.s3http import ranges_for
    from tests.latency_proxy import LatencyProxy
    from tests.sendfile_store import SendfileStore

    root, uri, prefix = caches
    with contextlib.ExitStack() as stack:
        if where == "proxy":
            slow = stack.enter_context(LatencyProxy(s3_server.endpoint, delay_ms=40)).route(uri)
        else:
            slow = stack.enter_context(SendfileStore(str(root.parent), bucket="b", delay_ms=40)).uri(root.name)
            prefix = root.name
        _same(_epoch(slow), _epoch(str(root)))
        r = ranges_for(slow)
        assert r is not None
        for _ in range(2):  # a new connection, then a kept-alive one
            t0 = time.perf_counter()
            r.read_into(f"{prefix}/manifest.json", 0, memoryview(bytearray(10)))
            assert time.perf_counter() - t0 >= 0.04


def test_fetch_ahead_is_the_row_groups_each_shard_requests_ahead(caches, monkeypatch):
    """``loader.fetch_ahead`` reaches every shard a stream opens on the store; the rows are the same."""
    from radio.cache import store

    depths = []
    init = store.RemoteShard.__init__

    def spy(self, loc, rel, size, depth=3):
        depths.append(depth)
        init(self, loc, rel, size, depth)

    monkeypatch.setattr(store.RemoteShard, "__init__", spy)
    root, uri, _ = caches
    want = _epoch(str(root))
    for ahead in (1, 5):
        depths.clear()
        stream = CacheStream(
            uri, list(TEACHERS), batch_size=4, shuffle_buffer=8, read_rows=3, seed=7, fetch_ahead=ahead
        )
        _same(list(stream), want)
        assert len(depths) == _shard_layout(root)[0] and set(depths) == {ahead}, depths


def test_a_stream_stopped_early_leaves_nothing_fetching(caches, s3_server):
    """Units are opened and their row groups requested ahead of the one streaming; a stream abandoned after
    its first batch stops all of them: no request reaches the store once it is closed."""
    _, uri, _ = caches
    stream = CacheStream(uri, list(TEACHERS), batch_size=4, shuffle_buffer=8, read_rows=3, seed=7)
    files, groups = _shard_layout(caches[0])
    with s3_server.counting() as before:
        it = iter(stream)
        assert len(next(it)["image_id"]) == 4
        it.close()
    with s3_server.counting() as after:
        time.sleep(1.0)
    assert after.total == 0, after.requests
    assert 0 < before.total <= files + groups, before.requests


def test_column_digest_is_the_values_not_their_layout():
    rng = np.random.default_rng(0)
    strings = pa.array([f"img-{i}" for i in range(10)])
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(6), 10, [None, pa.py_buffer(rng.bytes(60))])
    lists = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(40, dtype=np.int32)), 4)
    for arr in (strings, fixed, lists, pa.array(np.arange(10, dtype=np.int16)), pa.array([True, False] * 5)):
        whole = column_digest(arr)
        assert whole is not None
        assert column_digest(pa.chunked_array([arr.slice(0, 3), arr.slice(3)])) == whole
        assert column_digest(pa.concat_arrays([arr.slice(0, 3), arr.slice(3)])) == whole
        assert column_digest(arr.slice(1)) != whole
        assert column_digest(arr.slice(2, 4)) == column_digest(pa.concat_arrays([arr.slice(2, 4)]))
    assert column_digest(pa.array(["ab", "c"])) != column_digest(pa.array(["a", "bc"]))  # boundaries count
    assert column_digest(pa.array([1, None], type=pa.int32())) is None  # nulls: left to the page checks


def test_receive_buffer_pool_keeps_its_working_set_across_epochs():
    """Buffers of mixed sizes, some still referred to: giving them back never compares arrays (``list.remove`` did,
    raising inside the reader as if a page were damaged), and once every one is free again the pool keeps up to the
    most bytes it had in use, so the next epoch takes every buffer from it instead of fresh zeroed pages."""
    import radio.cache.store as store

    pool = store._BufferPool(keep=1024, max_bytes=1)
    sizes = [300, 100, 200, 100, 300, 250] * 3
    epoch = [pool.take(n) for n in sizes]
    kept = epoch[::2]  # values still aliasing half of them
    for b in epoch:
        pool.give(b)
    del b
    assert len(pool._held) == len(sizes)  # nothing forgotten while in use, nothing compared
    del epoch, kept
    again = [pool.take(n) for n in sizes]
    pooled = {id(b) for b in pool._held}
    assert all(a.size >= n for a, n in zip(again, sizes, strict=True))
    assert not pooled & {id(a) for a in again} and len(pool._held) == 0  # every one came from the pool
    for b in again:
        pool.give(b)
    del b, again
    pool.give(pool.take(10_000))  # a larger one raises the peak (it was in use while given back)
    pool.give(pool.take(20))  # (a 100-byte one, in use as it is given) the 10 000 are free: past the peak
    free = sum(b.size for b in pool._held) - 100
    assert pool._peak == 10_000 and 10_000 - 300 < free <= 10_000  # the oldest free ones were forgotten


@pytest.fixture(scope="module")
def multires(s3_server, tmp_path_factory):
    """(local root, s3 uri) of an int8 cache holding every teacher at three grids (64 px views, patch 8)."""
    from pipelines.synthetic import make_synthetic_cache

    root = tmp_path_factory.mktemp("s3-placed") / "c"
    make_synthetic_cache(
        root,
        limit=14,
        views=2,
        per_shard=5,
        teachers=TEACHERS,
        student_resolution=64,
        lower_resolutions=[16, 32],
        target_patch=8,
        target_dtype="int8",
        row_group_rows=ROWS_PER_GROUP,
        split="all",
    )
    pafs.copy_files(str(root), s3_server.path("reader/multires"), destination_filesystem=s3_server.filesystem())
    return root, s3_server.uri("reader/multires")


@pytest.mark.parametrize("case", ["cycle", "resumed", "rank 1 of 2", "rank 3 of 4", "buffer 1"])
def test_rows_received_into_their_batches_equal_local_disk(multires, monkeypatch, case):
    """From an object store, tensor rows are received straight into their batch's tensors (the plan knows every
    row's slot before its bytes arrive); rows that linger in the shuffle buffer and the epoch's last row are
    gathered instead. Every batch must equal local disk's, whatever the schedule (columns served from other
    grids), the batches skipped on resume, the padding of a short reader, or the shuffle buffer."""
    from radio.data import ResolutionSchedule, _Placement

    monkeypatch.delenv("RADIO_S3_CLIENT", raising=False)
    placed = collections.Counter()
    call = _Placement.__call__

    def counting(self, *a):
        got = call(self, *a)
        placed["in place"] += sum(d is not None for d in got or ())
        placed["gathered"] += a[-1] - sum(d is not None for d in got or ())
        return got

    monkeypatch.setattr(_Placement, "__call__", counting)
    root, uri = multires
    kw = {"batch_size": 4, "shuffle_buffer": 6, "read_rows": 3, "seed": 3, "patch_size": 8}
    kw["schedule"] = ResolutionSchedule("cycle", [16, 32, 64])
    skip = 0
    if case == "resumed":
        skip = 3
    elif case == "rank 1 of 2":
        kw.update(world_size=2, rank=1)
    elif case == "rank 3 of 4":  # 3 units: this rank has none, and borrows a row (weight 0) for every batch
        kw.update(world_size=4, rank=3)
    elif case == "buffer 1":
        kw.update(shuffle_buffer=1, schedule=ResolutionSchedule())
    for epoch in (0, 1):
        got, want = (CacheStream(u, list(TEACHERS), **kw) for u in (uri, str(root)))
        for s in (got, want):
            s.set_epoch(epoch, skip)
        a, b = list(got), list(want)
        _same(a, b)
        assert {x["resolution"] for x in a} == ({64} if case == "buffer 1" else {16, 32, 64})
        assert any(float(x["weight"].min()) == 0 for x in a) or not case.startswith("rank")  # it pads
    if case == "rank 3 of 4":
        assert placed["in place"] == 0, placed
    else:
        assert placed["in place"] > 0 and (placed["gathered"] > 0 or case == "buffer 1"), placed
