"""A TCP proxy on loopback that adds latency, as a remote object store has (this kernel has no `netem`).

    python tests/latency_proxy.py --target 127.0.0.1:PORT --delay-ms 20      # prints "listening 127.0.0.1:N"

    with LatencyProxy("127.0.0.1:8333", delay_ms=20) as p:   # a subprocess: its CPU is not the client's
        uri = p.route(s3.uri("cache"))                       # the same URI, through the proxy

Every byte a client sends reaches the server ``delay_ms`` later; the server's answers come back at once. So
each request's first byte of answer comes ``delay_ms`` later than without the proxy (S3's "time to first
byte"), and its body then streams at full speed. Bytes are forwarded in order and never held back longer than
their delay, so throughput is not capped by it; answers are moved by the kernel (``splice``), so the proxy's
own CPU stays small.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

__all__ = ["LatencyProxy"]


def _requests(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Client to server: each chunk sent ``delay`` seconds after it arrived, in order."""
    try:
        while chunk := src.recv(1 << 16):
            due = time.monotonic() + delay
            while (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _answers(src: socket.socket, dst: socket.socket) -> None:
    """Server to client at once, moved by the kernel (splice through a pipe): the proxy's CPU must not be what
    limits a benchmark's throughput."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):  # a 1 MiB pipe: 16x fewer splices than the default 64 KiB
        import fcntl

        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
    try:
        while True:
            n = os.splice(src.fileno(), w, 1 << 20)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _serve(target: str, delay: float, port: int) -> None:
    host, tport = target.rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", port))
    print(f"listening 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        client, _ = listener.accept()
        try:
            server = socket.create_connection((host, int(tport)))
        except OSError:
            client.close()
            continue
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_requests, args=(client, server, delay), daemon=True).start()
        threading.Thread(target=_answers, args=(server, client), daemon=True).start()


class LatencyProxy:
    """The proxy in a subprocess of its own; ``endpoint`` is ``127.0.0.1:PORT`` to point a client at."""

    def __init__(self, target: str, delay_ms: float) -> None:
        self.target, self.delay_ms = target, delay_ms
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    def __enter__(self) -> LatencyProxy:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--target", self.target, "--delay-ms", str(self.delay_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            self.proc.kill()
            raise RuntimeError(f"latency proxy did not start (said {line!r})")
        self.endpoint = line[1]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def route(self, uri: str) -> str:
        """``uri`` (an ``s3://...?endpoint_override=TARGET`` URI, the endpoint plain or percent-encoded) sent
        through the proxy instead."""
        from urllib.parse import quote

        out = uri.replace(self.target, self.endpoint).replace(
            quote(self.target, safe=""), quote(self.endpoint, safe="")
        )
        if out == uri:
            raise ValueError(f"{uri} does not name {self.target}")
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU the proxy has used so far (from /proc)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="HOST:PORT to forward to")
    p.add_argument("--delay-ms", type=float, default=20.0, help="delay added to every byte sent to the server")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    ns = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        _serve(ns.target, ns.delay_ms / 1000.0, ns.port)
    except KeyboardInterrupt:
        print(f"stopped after {time.monotonic() - t0:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
