"""Ranged GETs from an S3 store with the standard library, the body received straight into the caller's buffer.

Why not pyarrow's S3 client for streaming a cache: the AWS SDK under it copies every response through 16 KiB
callbacks with a dynamic cast, a clock read and header bookkeeping each, which costs about 0.7 CPU-seconds per GB
received (`bench/bench_s3_reader.py`; a `perf` profile names them), more than decoding the shard does. Here a
signed request (AWS Signature Version 4) goes out on a kept-alive connection per thread and the kernel copies
the body into the destination with ``recv_into``: one copy in all.

It is used where the location names its credentials the way pyarrow reads them first (the URI's ``access_key`` /
``secret_key``, else ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, or
``anonymous=true``); anything else (profiles, instance roles, ``role_arn``) is left to pyarrow's client
(:func:`ranges_for` returns None), which reads the same bytes, slower.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import http.client
import os
import socket
import struct
import threading
import time
import urllib.parse

__all__ = ["S3Ranges", "ranges_for"]

_RETRY_STATUS = (500, 502, 503, 504)
HASH_PIECE = 1 << 20  # bytes received then hashed at a time: stays in a core's L2 cache
_CODES = {403: "ACCESS_DENIED", 404: "NO_SUCH_KEY", 400: "INVALID_REQUEST", 416: "INVALID_RANGE"}


def ranges_for(uri: str, region: str | None = None) -> S3Ranges | None:
    """An :class:`S3Ranges` for the bucket of ``uri`` (``s3://bucket/path?query``), or None where pyarrow's
    client should read it: another scheme, or credentials that come from somewhere else than the URI or the
    environment. ``region``: the region pyarrow resolved for the bucket (``S3FileSystem.region``), when the URI
    names none."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        return None
    q = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
    if any(k in q for k in ("role_arn", "external_id", "session_name", "load_frequency", "proxy_options")):
        return None
    anonymous = q.get("anonymous", "").lower() in ("1", "true", "yes")
    if "access_key" in q or "secret_key" in q:
        key, secret, token = q.get("access_key", ""), q.get("secret_key", ""), q.get("session_token")
    else:
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        token = os.environ.get("AWS_SESSION_TOKEN") or None
    if not anonymous and not (key and secret):
        return None
    region = q.get("region") or region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        return None
    endpoint = q.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    scheme = q.get("scheme", "https")
    bucket = parsed.netloc
    if endpoint:
        if "://" in endpoint:
            scheme, endpoint = endpoint.split("://", 1)
        host, path_style = endpoint.rstrip("/"), True
    else:
        host, path_style = f"{bucket}.s3.{region}.amazonaws.com", False
    return S3Ranges(scheme, host, bucket, path_style, region, key, secret, token, anonymous)


class S3Ranges:
    """Signed ranged GETs of one bucket's objects, one kept-alive connection per calling thread."""

    def __init__(
        self,
        scheme: str,
        host: str,
        bucket: str,
        path_style: bool,
        region: str,
        access_key: str,
        secret_key: str,
        session_token: str | None = None,
        anonymous: bool = False,
        timeout: float = 60.0,
        retries: int = 3,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"S3 scheme must be http or https, not {scheme!r}")
        self.scheme, self.host, self.bucket, self.path_style, self.region = scheme, host, bucket, path_style, region
        self._key, self._secret, self._token, self.anonymous = access_key, secret_key, session_token, anonymous
        self.timeout, self.retries = timeout, retries
        self._local = threading.local()

    def __reduce__(self):  # a reader handed to a loader worker reconnects there
        return (
            S3Ranges,
            (
                self.scheme,
                self.host,
                self.bucket,
                self.path_style,
                self.region,
                self._key,
                self._secret,
                self._token,
                self.anonymous,
                self.timeout,
                self.retries,
            ),
        )

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh or getattr(self._local, "pid", None) != os.getpid():
            if conn is not None:
                conn.close()
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = cls(self.host, timeout=self.timeout)
            conn.connect()
            # a larger receive buffer: fewer, larger copies per body (measured 4.4 -> 5.0 GB per CPU-second)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            if type(conn.sock) is socket.socket:
                # blocking, its timeout kept by the kernel (SO_RCVTIMEO / SO_SNDTIMEO): a socket with a Python
                # timeout is non-blocking underneath, so every recv is a poll and a recv per ~64 KiB segment and
                # MSG_WAITALL does nothing; a blocking one waits in the kernel until a whole piece is in
                tv = struct.pack("ll", int(self.timeout), int(self.timeout % 1 * 1e6))
                conn.sock.settimeout(None)
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _path(self, key: str) -> str:
        quoted = urllib.parse.quote(key.lstrip("/"), safe="/-_.~")
        return f"/{self.bucket}/{quoted}" if self.path_style else f"/{quoted}"

    def _headers(self, path: str, extra: dict[str, str]) -> dict[str, str]:
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        headers = {"host": self.host, "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "x-amz-date": amz_date, **extra}
        if self.anonymous:
            return headers
        if self._token:
            headers["x-amz-security-token"] = self._token
        names = sorted(headers)
        canonical = "\n".join(
            ["GET", path, "", *(f"{k}:{headers[k].strip()}" for k in names), "", ";".join(names), "UNSIGNED-PAYLOAD"]
        )
        scope = f"{amz_date[:8]}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        k = hmac.new(f"AWS4{self._secret}".encode(), amz_date[:8].encode(), hashlib.sha256).digest()
        for part in (self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self._key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return headers

    def _silent(self, what: str, since: float) -> str | None:
        """The error for a try that ended because the store stopped sending for :attr:`timeout` seconds (the
        socket's kernel timeout reads as the peer closing, or as EAGAIN, underneath), else None."""
        if time.monotonic() - since < self.timeout:
            return None
        return (
            f"{what}: AWS Error NETWORK_CONNECTION during GetObject operation: the store sent nothing for "
            f"{self.timeout:g} s (the last of {self.retries + 1} tries)"
        )

    def read_into(
        self, key: str, start: int, out: memoryview, regions: list | None = None, trust: str | None = None
    ) -> tuple[list | None, str | None]:
        """Fill ``out`` with bytes ``[start, start + len(out))`` of object ``key`` (relative to the bucket): one GET,
        retried on a dropped connection or a 5xx. Failures raise ``OSError`` in pyarrow's words ("AWS Error ...
        key '...' in bucket '...'"), so they read like any other object-store failure.

        ``regions``: sorted, disjoint ``(a, b, dest, h)`` ranges of the body (offsets into ``out``): their bytes go
        to ``dest`` (a writable buffer of ``b - a`` bytes; None: to ``out`` as the rest) and, where ``h`` is not
        None, are hashed with the xxh3-64 hasher number ``h`` as they arrive, in pieces of at most ``HASH_PIECE``
        bytes, still in the CPU's cache.

        ``trust``: an ETag; when the store answers with it, the regions' bytes are not hashed. Returns (the
        hashers by number, or None where ``trust`` was answered; the ETag the store answered with, or None)."""
        n = len(out)
        if n == 0:
            return [], None
        path = self._path(key)
        what = f"When reading key '{key}' in bucket '{self.bucket}'"
        for attempt in range(self.retries + 1):
            t_try = time.monotonic()
            conn = self._connection(fresh=attempt > 0)
            try:
                conn.request("GET", path, headers=self._headers(path, {"range": f"bytes={start}-{start + n - 1}"}))
                resp = conn.getresponse()
                if resp.status == 206 or (resp.status == 200 and start == 0 and resp.length == n):
                    if resp.length is not None and resp.length != n:
                        resp.read()
                        raise OSError(
                            f"{what}: AWS Error INVALID_RANGE during GetObject operation: asked for {n} bytes at "
                            f"{start}, the store answers {resp.length} (the object is not the size recorded)"
                        )
                    etag = resp.getheader("ETag")
                    trusted = trust is not None and etag == trust
                    hashers = _receive(resp, out, regions or [], hash_regions=not trusted)
                    resp.read()  # the (empty) rest, so the connection can carry the next request
                    return (None if trusted else hashers), etag
                body = resp.read()[:300].decode("utf-8", "replace")
                if resp.status in _RETRY_STATUS and attempt < self.retries:
                    time.sleep(0.2 * 2**attempt)
                    continue
                code = _CODES.get(resp.status, f"HTTP_{resp.status}")
                raise OSError(
                    f"{what}: AWS Error {code} during GetObject operation: HTTP {resp.status} {resp.reason} "
                    f"{' '.join(body.split())}"
                )
            except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
                if attempt < self.retries:
                    time.sleep(0.1 * attempt)
                    continue
                raise OSError(
                    self._silent(what, t_try)
                    or f"{what}: AWS Error NETWORK_CONNECTION during GetObject operation: could not connect or the "
                    f"connection dropped ({type(e).__name__}: {e})"
                ) from None
            except OSError as e:
                if "AWS Error" in str(e):
                    raise
                if attempt < self.retries:
                    time.sleep(0.1 * attempt)
                    continue
                raise OSError(
                    self._silent(what, t_try)
                    or f"{what}: AWS Error NETWORK_CONNECTION during GetObject operation: could not connect "
                    f"({type(e).__name__}: {e})"
                ) from None
        raise OSError(
            f"{what}: AWS Error NETWORK_CONNECTION during GetObject operation: no answer in {self.retries + 1} tries"
        )


def _receive(resp: http.client.HTTPResponse, out: memoryview, regions: list, hash_regions: bool = True) -> list:
    """The body into ``out`` and the regions' destinations (see :meth:`S3Ranges.read_into`).

    Over plain HTTP, once the response's own buffer is drained, bytes are received straight from the socket with
    ``MSG_WAITALL``: the kernel fills the buffers as segments arrive, with no return to Python per segment.
    Consecutive pieces that are not hashed (rows going to their batches, the gaps between them) are received
    in one scattering ``recvmsg_into`` call, not one call per row."""
    import xxhash

    n = len(out)
    fill, fill_many, direct = _filler(resp, n)
    hashers = [xxhash.xxh3_64() for _ in range(1 + max((r[3] for r in regions if r[3] is not None), default=-1))]
    pending: list = []  # pieces not hashed, in body order, received together
    pos = 0
    for a, b, dest, h in regions:
        h = h if hash_regions else None
        if dest is None and h is None:
            continue  # its bytes go to ``out`` with the next gap's
        if pos < a:
            pending.append(out[pos:a])
        if dest is None:
            dest = out[a:b]
        if h is None:
            pending.append(dest[: b - a])  # a region neither hashed nor placed was skipped above
        else:
            fill_many(pending)
            pending = []
            for lo in range(a, b, HASH_PIECE):
                hi = min(b, lo + HASH_PIECE)
                piece = dest[lo - a : hi - a]
                fill(piece)
                hashers[h].update(piece)
        pos = b
    if pos < n:
        pending.append(out[pos:])
    fill_many(pending)
    if direct:
        resp.length = 0  # the body was read from the socket, past the response object
    return hashers


_IOV_MAX = 1024  # buffers one recvmsg_into call may scatter into (Linux's UIO_MAXIOV)


def _filler(resp: http.client.HTTPResponse, n: int):
    """(fill one buffer, fill a list of buffers in order, whether straight from the socket) from the body:
    straight from the socket where that is safe, else through ``resp``."""
    sock = getattr(getattr(resp.fp, "raw", None), "_sock", None)
    if type(sock) is not socket.socket or resp.length != n or resp.chunked:  # TLS (no flags on recv), or not
        one = functools.partial(_fill, resp)  # exactly the body asked for

        def each(views: list) -> None:
            for v in views:
                one(v)

        return one, each, False
    held = [len(resp.fp.peek())]  # what the response's buffer already read past the headers

    def fill(view: memoryview) -> None:
        got, want = 0, len(view)
        if held[0]:
            got = resp.fp.readinto(view[: min(want, held[0])])
            held[0] -= got
        while got < want:
            r = sock.recv_into(view[got:], want - got, socket.MSG_WAITALL)
            if not r:
                raise http.client.IncompleteRead(bytes(0), want - got)
            got += r

    def fill_many(views: list) -> None:
        views = [v for v in views if len(v)]
        i = 0
        while i < len(views) and held[0]:
            fill(views[i])
            i += 1
        while i < len(views):
            batch = views[i : i + _IOV_MAX]
            want = sum(len(v) for v in batch)
            got = sock.recvmsg_into(batch, 0, socket.MSG_WAITALL)[0]
            if not got:
                raise http.client.IncompleteRead(bytes(0), want)
            if got == want:
                i += len(batch)
                continue
            for v in batch:  # a signal or the timeout cut it short: go on from where it stopped
                if got < len(v):
                    views[i] = v[got:]
                    break
                got -= len(v)
                i += 1

    return fill, fill_many, True


def _fill(resp: http.client.HTTPResponse, view: memoryview) -> None:
    got, n = 0, len(view)
    while got < n:
        r = resp.readinto(view[got:])
        if not r:
            raise http.client.IncompleteRead(bytes(0), n - got)
        got += r
