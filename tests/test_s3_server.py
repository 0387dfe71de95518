"""The loopback S3 server for tests (tests/s3server.py): Parquet through pyarrow's S3 file system, and
request counting that sees other processes too."""

import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# Registers the session-scoped `s3_server` fixture once, globally (harmless if a conftest does it as well).
pytest_plugins = ["tests.s3server"]


def test_parquet_roundtrip_and_request_counts(s3_server):
    s3 = s3_server
    table = pa.table({"i": pa.array(range(1000), pa.int64()), "s": [f"row {i}" for i in range(1000)]})

    # credentials come from the AWS_* variables the fixture exported
    assert os.environ["AWS_ACCESS_KEY_ID"] == s3.access_key
    fs, path = pafs.FileSystem.from_uri(s3.uri("roundtrip/a.parquet"))
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3.bucket}/roundtrip/a.parquet"

    with s3.counting() as n:
        pq.write_table(table, s3.uri("roundtrip/a.parquet"))
        pq.write_table(table, s3.path("roundtrip/b.parquet"), filesystem=fs)
    assert n["PUT"] >= 2, n.requests  # pyarrow uploads multipart: POST (create) + PUT (part) + POST (complete)
    assert n["LIST"] == n["GET"] == n["GET_RANGE"] == n["DELETE"] == 0, n.requests

    with s3.counting() as n:
        infos = fs.get_file_info(pafs.FileSelector(s3.path("roundtrip")))
    assert sorted(i.base_name for i in infos) == ["a.parquet", "b.parquet"]
    assert dict(n) == {"LIST": 1}, n.requests  # one listing of < 1000 keys: one ListObjectsV2

    with s3.counting() as n:
        pf = pq.ParquetFile(fs.open_input_file(s3.path("roundtrip/a.parquet")))
        got = pf.read()
    assert got.equals(table)
    assert n["HEAD"] == 1 and n["GET_RANGE"] >= 1 and n["LIST"] == n["PUT"] == 0, n.requests
    assert n.total == len(n.requests)

    with s3.counting() as n:
        assert pq.read_table(s3.uri("roundtrip/b.parquet")).equals(table)
    assert n["HEAD"] >= 1 and n["GET_RANGE"] >= 1 and n["PUT"] == 0, n.requests

    # the coarse server counter agrees (it files HEAD and ranged GETs under GET)
    before = s3.metric_counts()
    with s3.counting() as n:
        pq.read_metadata(s3.path("roundtrip/b.parquet"), filesystem=fs)
    after = s3.metric_counts()
    assert s3.delta(before, after) == {"GET": n["HEAD"] + n.reads}


def test_requests_from_other_processes_are_counted(s3_server):
    s3 = s3_server
    s3.filesystem().create_dir(s3.path("other"))
    code = textwrap.dedent(
        f"""
        import pyarrow.fs as pafs
        fs, path = pafs.FileSystem.from_uri({s3.uri("other")!r})
        fs.get_file_info(pafs.FileSelector(path))
        fs.get_file_info(pafs.FileSelector(path))
        """
    )
    with s3.counting(bucket=s3.bucket) as n:
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **s3.env}, timeout=120)
    assert dict(n) == {"LIST": 2}, n.requests
