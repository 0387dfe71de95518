"""A read-only S3 stand-in that serves a local folder with ``sendfile``: a store whose own CPU does not limit a
benchmark on a 2-core machine.

    python tests/sendfile_store.py --root DIR --bucket NAME        # prints "listening 127.0.0.1:PORT"

    with SendfileStore(root, bucket="radio-bench") as store:        # a subprocess: its CPU is not the client's
        uri = store.uri("cache")                                    # s3://radio-bench/cache?endpoint_override=...

Why: SeaweedFS on one core of this VM serves ~730 MB/s of ranged reads, less than the training reader takes
from local disk (~1.3 GB/s at real shapes), so a reader measured against it measures SeaweedFS. A real object
store serves from other machines. This one answers ranged GETs by ``sendfile`` from the page cache (~3 GB/s on
one core here) so the reader is what a benchmark measures.

What it speaks: path-style ``GET`` (whole or one ``Range: bytes=a-b``), ``HEAD`` and ``ListObjectsV2`` (prefix,
delimiter; one page) of the objects under ``root`` (the key is the path below it). It does not check request
signatures (any credentials are accepted) and cannot be written to: it is a bench fixture, not a store.
"""

from __future__ import annotations

import argparse
import email.utils
import http.server
import os
import re
import socketserver
import subprocess
import sys
import time
import urllib.parse
from xml.sax.saxutils import escape

__all__ = ["SendfileStore"]

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = ""
    bucket = ""
    delay = 0.0  # seconds each answer waits after its request arrived (time to first byte)
    rate = 0.0  # bytes/s each connection's body is held to (0: as fast as it goes)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok and self.delay:
            time.sleep(self.delay)
        return ok

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def _key(self) -> tuple[str | None, dict[str, str]]:
        parsed = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
        parts = urllib.parse.unquote(parsed.path).lstrip("/").split("/", 1)
        if parts[0] != self.bucket:
            return None, query
        return (parts[1] if len(parts) > 1 else ""), query

    def _error(self, code: int, what: str) -> None:
        body = f"<Error><Code>{what}</Code><Message>{what}</Message></Error>".encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _file(self, key: str) -> str | None:
        path = os.path.normpath(os.path.join(self.root, key))  # a link below root is followed (a bench links a cache)
        if not path.startswith(self.root + os.sep) or not os.path.isfile(path):
            return None
        return path

    def do_HEAD(self) -> None:
        self._object(body=False)

    def do_GET(self) -> None:
        key, query = self._key()
        if key is None:
            return self._error(404, "NoSuchBucket")
        if key == "" or "list-type" in query:
            return self._list(query)
        self._object(body=True)

    def _object(self, body: bool) -> None:
        key, _ = self._key()
        path = self._file(key) if key else None
        if path is None:
            return self._error(404, "NoSuchKey")
        size = os.path.getsize(path)
        a, b, code = 0, size, 200
        m = _RANGE.match(self.headers.get("Range", ""))
        if m:
            a = int(m[1])
            b = min(size, int(m[2]) + 1) if m[2] else size
            if a >= size or b <= a:
                return self._error(416, "InvalidRange")
            code = 206
        self.send_response(code)
        self.send_header("Content-Length", str(b - a))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", email.utils.formatdate(os.path.getmtime(path), usegmt=True))
        self.send_header("ETag", f'"{int(os.path.getmtime(path) * 1e6):x}-{size:x}"')
        if code == 206:
            self.send_header("Content-Range", f"bytes {a}-{b - 1}/{size}")
        self.end_headers()
        if not body:
            return
        self.wfile.flush()
        chunk, t0, a0 = (b - a) if not self.rate else 1 << 18, time.monotonic(), a
        with open(path, "rb") as f:
            while a < b:
                sent = os.sendfile(self.connection.fileno(), f.fileno(), a, min(chunk, b - a))
                if sent == 0:
                    break
                a += sent
                if self.rate and (ahead := (a - a0) / self.rate - (time.monotonic() - t0)) > 0:
                    time.sleep(ahead)  # this connection's bytes/s held to ``rate``

    def _list(self, query: dict[str, str]) -> None:
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        keys, prefixes = [], set()
        for folder, _, files in os.walk(self.root, followlinks=True):
            for name in files:
                key = os.path.relpath(os.path.join(folder, name), self.root).replace(os.sep, "/")
                if not key.startswith(prefix):
                    continue
                rest = key[len(prefix) :]
                if delimiter and delimiter in rest:
                    prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                else:
                    keys.append(key)
        contents = "".join(
            f"<Contents><Key>{escape(k)}</Key><Size>{os.path.getsize(os.path.join(self.root, k))}</Size>"
            f"<LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>&quot;0&quot;</ETag>"
            f"<StorageClass>STANDARD</StorageClass></Contents>"
            for k in sorted(keys)
        )
        common = "".join(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in sorted(prefixes))
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(self.bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(keys)}</KeyCount>"
            f"<MaxKeys>1000</MaxKeys><Delimiter>{escape(delimiter)}</Delimiter><IsTruncated>false</IsTruncated>"
            f"{contents}{common}</ListBucketResult>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(
    root: str, bucket: str, host: str = "127.0.0.1", port: int = 0, delay_ms: float = 0.0, conn_mbps: float = 0.0
) -> None:
    attrs = {"root": os.path.abspath(root), "bucket": bucket, "delay": delay_ms / 1e3, "rate": conn_mbps * 1e6}
    handler = type("Handler", (_Handler,), attrs)
    with _Server((host, port), handler) as server:
        print(f"listening {host}:{server.server_address[1]}", flush=True)
        server.serve_forever()


class SendfileStore:
    """:func:`serve` in a subprocess (its CPU is not the caller's); ``endpoint``, ``pid``, ``uri(path)``."""

    def __init__(
        self,
        root: str,
        bucket: str = "radio-bench",
        region: str = "us-east-1",
        delay_ms: float = 0,
        conn_mbps: float = 0,
    ) -> None:
        self.root, self.bucket, self.region, self.delay_ms, self.conn_mbps = root, bucket, region, delay_ms, conn_mbps
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    def __enter__(self) -> SendfileStore:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, __file__, "--root", self.root, "--bucket", self.bucket),
                *("--delay-ms", str(self.delay_ms), "--conn-mbps", str(self.conn_mbps)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "listening":
            self.proc.kill()
            raise RuntimeError(f"sendfile store did not start (said {line!r})")
        self.endpoint = line[1]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def uri(self, path: str) -> str:
        q = urllib.parse.urlencode({"endpoint_override": self.endpoint, "scheme": "http", "region": self.region})
        return f"s3://{self.bucket}/{path.strip('/')}?{q}"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay-ms", type=float, default=0.0, help="each answer starts this long after its request")
    p.add_argument("--conn-mbps", type=float, default=0.0, help="MB/s each connection's bodies are held to (0: no cap)")
    ns = p.parse_args()
    serve(ns.root, ns.bucket, port=ns.port, delay_ms=ns.delay_ms, conn_mbps=ns.conn_mbps)
