"""The training reader from an object store against local disk, side by side, at real shapes (issue 31).

    python bench/bench_s3_reader.py --views 2560 --units 12 --delay-ms 20 --rounds 3

Builds one cache with the registry's real teacher dims (CLIP-B/16, DINOv2-B/14-reg, SAM-H by default; random
float16 targets, the worst case for bytes) and serves it from two S3 stores on loopback: SeaweedFS
(`tests/s3server.py`, the cache copied into a bucket) and a read-only stand-in that answers ranged GETs with
``sendfile`` (`tests/sendfile_store.py`; SeaweedFS on one core serves less than the reader takes from local
disk, so against it the reader waits on the store). Latency is added two ways: the sendfile store answers each
request ``--delay-ms`` after it arrived (``sendfile+20ms``: S3's time to first byte, on the same path), and a
delaying TCP proxy (`tests/latency_proxy.py`, a process of its own) sits in front of each store (``... proxy``).
The proxy is a second loopback hop: every byte crosses loopback twice and the proxy splices it, which on a
2-core machine loads the stores' core (~0.7 busy with SeaweedFS's or the sendfile store's own work) and hands
the reader its bytes in smaller pieces, costs a remote store does not put on the reader's machine; the
in-store delay has neither. With ``--conn-mbps N``, a third sendfile store also holds each connection to N
MB/s (as stores that cap a connection's throughput do), read with the default ``loader.fetch_ahead`` and with
twice it. Neither models a long path's bandwidth-delay product (data after the first byte arrives at loopback
speed). Then, alternately for ``--rounds`` rounds, it streams two epochs of the cache through ``CacheStream``
and ``make_loader`` exactly as the trainer does (its default loader workers: the reader thread on a CPU
machine) from each source.

What it reports, per source, the median over rounds of the second epoch of each round (the first epoch of a run
also hashes each local shard whole, reported on its own line):

- views/s, and its ratio to local disk's; also from each epoch's first batch on (an epoch's start waits on
  the store's round trips and on the shuffle buffer filling; a real epoch is hours long, this one is seconds);
- the reader's CPU per view: this process's CPU time (user + system, every thread), which the store's and the
  proxy's processes are not part of; and the same less the softirq time of the reader's core (pinned runs):
  on loopback the ACKs a reader sends run the sender's TCP stack (its ``tcp_write_xmit``) in the reader's
  context, work a remote store's machine does; this kernel has no IRQ time accounting, so that time is in the
  process's system time and ``/proc/stat``'s softirq column of its core tells how much;
- requests per epoch, counted by the server, against the row groups of the files streamed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import radio  # noqa: E402, F401 - before pyarrow, as a training process imports it (Arrow's allocator settings)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (every thread) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def softirq_seconds(core: int | None) -> float:
    """Softirq time of ``core`` so far (``/proc/stat``); 0 without a core."""
    if core is None:
        return 0.0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                return int(line.split()[7]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def epoch(
    stream, loader, n: int, others: tuple[int, ...] = (), core: int | None = None
) -> tuple[int, float, float, float, float, float]:
    """(views, wall seconds, process CPU seconds, CPU seconds of the ``others`` processes, softirq seconds of
    ``core``, views/s after the first batch) of epoch ``n``."""
    stream.set_epoch(n)
    t0, c0, o0, s0 = (
        time.perf_counter(),
        time.process_time(),
        sum(cpu_seconds(p) for p in others),
        softirq_seconds(core),
    )
    rows, first = 0, None
    for b in loader:
        rows += int(b["weight"].sum())
        if first is None:
            first = (rows, time.perf_counter())
    end = time.perf_counter()
    assert first is not None
    return (
        rows,
        end - t0,
        time.process_time() - c0,
        sum(cpu_seconds(p) for p in others) - o0,
        softirq_seconds(core) - s0,
        (rows - first[0]) / max(end - first[1], 1e-9),
    )


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of ``pid`` (and so the threads they start) onto ``cores``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass


RPS = "/sys/class/net/lo/queues/rx-0/rps_cpus"


@contextlib.contextmanager
def _loopback_steered_to(cores: list[int]):
    """Loopback packets processed (their softirq) on ``cores``: on loopback, the ACKs a reader sends would run the
    store's TCP stack, its next segments' transmission included, on the reader's core, work that a remote store's
    machine does. Restored on exit; skipped (said) where the file cannot be written."""
    try:
        with open(RPS) as f:
            before = f.read().strip()
        with open(RPS, "w") as f:
            f.write(f"{sum(1 << c for c in cores):x}")
    except OSError as e:
        print(
            f"loopback packet steering unchanged ({e.__class__.__name__}: {e}); the reader's core runs the stores' TCP"
        )
        yield
        return
    print(f"loopback packets processed on cores {cores} ({RPS}; was {before})")
    try:
        yield
    finally:
        with open(RPS, "w") as f:
            f.write(before)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teachers", default="clip-vit-b16,dinov2-vitb14-reg,sam-vit-h")
    p.add_argument("--views", type=int, default=2560, help="views in the cache (the built-in images are 320)")
    p.add_argument("--units", type=int, default=12, help="units (shards per table) the views are split into")
    p.add_argument("--views-per-image", type=int, default=8)
    p.add_argument("--student-resolution", type=int, default=224)
    p.add_argument("--row-group-rows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--delay-ms", type=float, default=20.0, help="latency the proxy adds to every request")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--conn-mbps",
        type=float,
        default=0.0,
        help="also read from a sendfile store that holds each connection to this many MB/s (with the latency in "
        "the store), with the default loader.fetch_ahead and with twice it",
    )
    p.add_argument("--cache", default=None, help="reuse (or keep) the local synthetic cache at this path")
    p.add_argument(
        "--no-rps",
        action="store_true",
        help="leave loopback's packet steering alone (by default, pinned and as root, loopback packets are "
        "processed on the stores' cores: /sys/class/net/lo/queues/rx-0/rps_cpus, restored at the end)",
    )
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin (by default, with 2 cores or more, this process runs on the first core and the store "
        "and the proxy on the others, so neither is charged for the other's work)",
    )
    ns = p.parse_args()

    import pyarrow.fs as pafs
    import torch

    from pipelines.synthetic import make_synthetic_cache
    from radio.cache import CacheReader
    from radio.data import CacheStream, LoaderConfig, make_loader, resolve_workers
    from tests.latency_proxy import LatencyProxy
    from tests.s3server import S3Server
    from tests.sendfile_store import SendfileStore

    torch.set_num_threads(1)
    teachers = ns.teachers.split(",")
    images = math.ceil(ns.views / ns.views_per_image)
    root = ns.cache or tempfile.mkdtemp(prefix="bench-s3-reader-")
    t0 = time.perf_counter()
    if not os.path.exists(os.path.join(root, "manifest.json")):
        make_synthetic_cache(
            root,
            limit=images,
            views=ns.views_per_image,
            per_shard=math.ceil(images / ns.units),
            teachers=teachers,
            target_dtype="float16",
            student_resolution=ns.student_resolution,
            row_group_rows=ns.row_group_rows,
            split="all",
        )
    reader = CacheReader(root)
    n_views = reader.num_rows()
    files = len(reader.units) * (1 + len(teachers))
    row_groups = sum(math.ceil(reader.rows_per_unit[u] / ns.row_group_rows) for u in reader.units) * (1 + len(teachers))
    mb = (reader.manifest.views.bytes + sum(reader.entry(t).bytes for t in teachers)) / 1e6
    print(
        f"cache: {n_views} views in {len(reader.units)} units, {files} files, {row_groups} row groups, "
        f"{mb:.0f} MB ({mb / n_views:.2f} MB per view), built in {time.perf_counter() - t0:.0f}s"
    )
    cfg = LoaderConfig(batch_size=ns.batch_size)
    workers = resolve_workers(cfg)
    print(
        f"loader: the trainer's defaults (workers {workers}, shuffle buffer {cfg.shuffle_buffer}, "
        f"prefetch {cfg.prefetch_factor}, read_rows {cfg.read_rows}), batch {ns.batch_size}; {os.cpu_count()} cores"
    )
    try:
        with contextlib.ExitStack() as stack:
            s3 = stack.enter_context(S3Server(bucket="radio-bench", export_env=True))
            fs = s3.filesystem()
            t0 = time.perf_counter()
            pafs.copy_files(root, s3.path("cache"), destination_filesystem=fs)
            print(f"copied to {s3.uri('cache')} in {time.perf_counter() - t0:.0f}s")
            served = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-s3-sendfile-"))
            os.symlink(os.path.abspath(root), os.path.join(served, "cache"))
            fast = stack.enter_context(SendfileStore(served, bucket="radio-bench"))
            slow = stack.enter_context(SendfileStore(served, bucket="radio-bench", delay_ms=ns.delay_ms))
            proxy = stack.enter_context(LatencyProxy(s3.endpoint, ns.delay_ms))
            fast_proxy = stack.enter_context(LatencyProxy(fast.endpoint, ns.delay_ms))
            servers = [s3.pid, proxy.proc.pid, fast.pid, slow.pid, fast_proxy.proc.pid]  # type: ignore[union-attr]
            capped = None
            if ns.conn_mbps > 0:
                capped = stack.enter_context(
                    SendfileStore(served, bucket="radio-bench", delay_ms=ns.delay_ms, conn_mbps=ns.conn_mbps)
                )
                servers.append(capped.pid)
            cores = sorted(os.sched_getaffinity(0))
            core = None
            if not ns.no_pin and len(cores) >= 2:
                for pid in servers:
                    pin(pid, set(cores[1:]))
                pin(os.getpid(), {cores[0]})
                core = cores[0]
                print(f"pinned: this process to core {cores[0]}, the stores and the proxies to {cores[1:]}")
                if not ns.no_rps:
                    stack.enter_context(_loopback_steered_to(cores[1:]))
            lat = f"+{ns.delay_ms:g}ms"
            proxy_pid, fast_proxy_pid = proxy.proc.pid, fast_proxy.proc.pid  # type: ignore[union-attr]
            sources = {
                "local": (root, ()),
                "seaweedfs": (s3.uri("cache"), (s3.pid,)),
                f"seaweedfs{lat} proxy": (proxy.route(s3.uri("cache")), (s3.pid, proxy_pid)),
                "sendfile": (fast.uri("cache"), (fast.pid,)),
                f"sendfile{lat}": (slow.uri("cache"), (slow.pid,)),
                f"sendfile{lat} proxy": (fast_proxy.route(fast.uri("cache")), (fast.pid, fast_proxy_pid)),
            }
            if capped is not None:
                for ahead in (cfg.fetch_ahead, 2 * cfg.fetch_ahead):
                    sources[f"sendfile{lat} {ns.conn_mbps:g}MB/s/conn ahead {ahead}"] = (
                        capped.uri("cache"),
                        (capped.pid,),
                        ahead,
                    )
            _run(ns, sources, teachers, cfg, workers, s3, files, row_groups, CacheStream, make_loader, core)
    finally:
        if not ns.cache:
            shutil.rmtree(root, ignore_errors=True)


def _run(ns, sources, teachers, cfg, workers, s3, files, row_groups, CacheStream, make_loader, core) -> None:
    streams = {}
    for name, (uri, _, *ahead) in sources.items():
        stream = CacheStream(
            uri,
            teachers,
            num_workers=max(1, workers),
            batch_size=cfg.batch_size,
            shuffle_buffer=cfg.shuffle_buffer,
            read_rows=cfg.read_rows,
            fetch_ahead=ahead[0] if ahead else cfg.fetch_ahead,
        )
        streams[name] = (stream, make_loader(stream, cfg, workers))
    first: dict[str, tuple] = {}
    later: dict[str, list[tuple]] = collections.defaultdict(list)
    requests: dict[str, collections.Counter] = {}
    for r in range(ns.rounds):
        for name, (stream, loader) in streams.items():
            for e in range(2):
                with s3.counting() as n:
                    got = epoch(stream, loader, 2 * r + e, sources[name][1], core)
                if r == 0 and e == 0:
                    first[name] = got
                elif e == 1:
                    later[name].append(got)
                if name.startswith("seaweedfs") and e == 1:
                    requests[name] = collections.Counter({k: v for k, v in n.items() if v})
            rows, wall, cpu, _, soft, _ = later[name][-1]
            print(
                f"  round {r}: {name:<36} views/s {rows / wall:7.0f}, CPU {cpu / rows * 1e3:.3f} ms/view "
                f"({(cpu - soft) / rows * 1e3:.3f} less softirq)",
                flush=True,
            )

    def med(name, what):
        xs = later[name]
        if what == "rate":
            return statistics.median(x[0] / x[1] for x in xs)
        if what == "cpu":
            return statistics.median(x[2] / x[0] for x in xs)
        if what == "cpu-soft":
            return statistics.median((x[2] - x[4]) / x[0] for x in xs)
        if what == "steady":
            return statistics.median(x[5] for x in xs)
        return statistics.median(x[3] / x[1] for x in xs)  # the store's (and proxy's) cores busy

    base = {k: med("local", k) for k in ("rate", "cpu", "cpu-soft", "steady")}
    print(f"\nsecond epoch of each round, median of {ns.rounds}:")
    for name in sources:
        rate, cpu, soft = med(name, "rate"), med(name, "cpu"), med(name, "cpu-soft")
        print(
            f"  {name:<36} {rate:7.0f} views/s ({rate / base['rate']:.2f} of local)   "
            f"reader CPU {cpu * 1e3:.3f} ms/view ({cpu / base['cpu']:.2f}x local), less softirq "
            f"{soft * 1e3:.3f} ({soft / base['cpu-soft']:.2f}x)   store + proxy busy {med(name, 'busy'):.2f} cores   "
            f"after the first batch {med(name, 'steady') / base['steady']:.2f} of local"
        )
    print("first epoch of the run (local shards hashed whole):")
    for name, (rows, wall, cpu, *_) in first.items():
        print(f"  {name:<36} {rows / wall:7.0f} views/s   reader CPU {cpu / rows * 1e3:.3f} ms/view")
    print(f"requests per epoch ({files} files, {row_groups} row groups), counted by SeaweedFS:")
    for name, n in requests.items():
        print(f"  {name:<36} {dict(sorted(n.items()))}")
    lat = f"+{ns.delay_ms:g}ms"
    for store, delayed in (("sendfile", lat), ("sendfile", lat + " proxy"), ("seaweedfs", lat + " proxy")):
        how = "in the store" if delayed == lat else "through the proxy"
        rate = med(store + delayed, "rate")
        print(
            f"\n{store} / local: reader CPU per view {med(store, 'cpu') / base['cpu']:.2f}x "
            f"({med(store, 'cpu-soft') / base['cpu-soft']:.2f}x less loopback softirq); views/s "
            f"{med(store, 'rate') / base['rate']:.2f}, with {ns.delay_ms:g} ms latency {how} "
            f"{rate / base['rate']:.2f} ({rate / med(store, 'rate'):.2f} "
            f"of {store} without it; after each epoch's first batch "
            f"{med(store + delayed, 'steady') / base['steady']:.2f})"
        )


if __name__ == "__main__":
    main()
