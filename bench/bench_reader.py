"""The training reader alone, on a synthetic cache with the real shapes of registry teachers.

    python bench/bench_reader.py --teachers clip-vit-b16,dinov2-vitb14-reg,sam-vit-h --views 2048 \
        --student-resolution 224 --workers 1

Builds the cache through the project's own writer (the registry's nominal dims, stored at the default target
grid, random float16 targets: zstd cannot shrink them, so this is the worst case for bytes), then iterates
``CacheStream`` exactly as training does (shuffle buffer, Parquet reads, PNG decode of the student views,
batch assembly) and times it. ``--workers 0``: the stream in this process; ``--workers N``: N DataLoader worker
processes (the figure is then per worker process). Ends with ``reader: N views/s per process``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--teachers", default="clip-vit-b16,dinov2-vitb14-reg,sam-vit-h")
    p.add_argument("--views", type=int, default=2048)
    p.add_argument("--student-resolution", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (0: read in this process)")
    p.add_argument("--target-dtype", default="float16")
    p.add_argument("--cache", default=None, help="reuse (or keep) the synthetic cache at this path")
    p.add_argument(
        "--checksums",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="instead: time in-process epochs with every byte checked and without, alternately, ROUNDS "
        "times each; print the ratios",
    )
    p.add_argument(
        "--hash-speed",
        action="store_true",
        help="instead: xxh3-128 and CRC32 throughput on one core, from a buffer in L2 up to one in memory",
    )
    ns = p.parse_args()
    if ns.hash_speed:
        return hash_speed()
    import torch

    from pipelines.synthetic import make_synthetic_cache
    from radio.cache import CacheReader

    teachers = ns.teachers.split(",")
    images = min(320, ns.views)
    views = math.ceil(ns.views / images)
    root = ns.cache or tempfile.mkdtemp(prefix="bench-reader-")
    t0 = time.perf_counter()
    if not os.path.exists(os.path.join(root, "manifest.json")):
        make_synthetic_cache(
            root,
            limit=images,
            views=views,
            per_shard=64,
            teachers=teachers,
            target_dtype=ns.target_dtype,
            student_resolution=ns.student_resolution,
            row_group_rows=64,
            split="all",
        )
    t_build = time.perf_counter() - t0
    reader = CacheReader(root)
    n_views = reader.num_rows()
    per_view = sum(reader.entry(t).bytes_per_view for t in teachers) + reader.manifest.views.bytes / n_views
    print(
        f"cache: {n_views} views ({images} images x {views}), {per_view / 1e6:.3f} MB per view on disk, "
        f"built in {t_build:.0f}s; "
        f"teachers {', '.join(f'{t} {reader.grids[t][0]}x{reader.grids[t][1]}' for t in teachers)}"
    )
    torch.set_num_threads(1)
    if ns.checksums:
        return _checksum_cost(root, teachers, ns, cleanup=not ns.cache)
    try:
        rows, dt, b = read_rate(root, teachers, ns.workers, ns.batch_size)
        keys = sorted(k for k in b if isinstance(b[k], torch.Tensor))
        print("batch: " + ", ".join(f"{k} {tuple(b[k].shape)} {str(b[k].dtype).replace('torch.', '')}" for k in keys))
        rate = rows / dt / max(1, ns.workers)
        print(
            f"{rows} views in {dt:.2f}s with {ns.workers} worker process(es) ({os.cpu_count()} "
            f"cores): {rows / dt:.0f} views/s in all, {rows / dt * per_view / 1e6:.0f} MB/s"
        )
        print(f"reader: {rate:.0f} views/s per process")
    finally:
        if not ns.cache:
            shutil.rmtree(root, ignore_errors=True)


def read_rate(
    root: str, teachers: list[str], workers: int, batch_size: int, epochs: int = 2
) -> tuple[int, float, dict]:
    """(views, seconds, last batch) of the last of ``epochs`` epochs of ``CacheStream`` through ``make_loader``, as
    training reads (shuffle buffer, Parquet reads, batch assembly); earlier epochs warm the page cache and start the
    ``workers`` (0: the stream in this process)."""
    from radio.data import CacheStream, LoaderConfig, make_loader

    cfg = LoaderConfig(batch_size=batch_size, num_workers=workers, shuffle_buffer=1024, prefetch_factor=2)
    stream = CacheStream(
        root,
        teachers,
        num_workers=max(1, workers),
        batch_size=cfg.batch_size,
        shuffle_buffer=cfg.shuffle_buffer,
        read_rows=cfg.read_rows,
    )
    loader = make_loader(stream, cfg)
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        t0 = time.perf_counter()
        rows = 0
        for b in loader:
            rows += int(b["weight"].sum())
        dt = time.perf_counter() - t0
    return rows, dt, b


def hash_speed(sizes=(256 << 10, 1 << 20, 8 << 20, 256 << 20)) -> None:
    """GB/s of xxh3-128 (what a stream checks) and zlib's CRC32 (Parquet's page checksum) per buffer size: a
    buffer that fits the core's L2 against one that streams from memory. Best of 3."""
    import zlib

    import numpy as np
    import xxhash

    for size in sizes:
        buf = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
        reps = max(1, (1 << 30) // size)
        rates = []
        for fn, n in ((xxhash.xxh3_128_hexdigest, reps), (zlib.crc32, max(1, reps // 8))):
            best = min(_timed(fn, buf, n) for _ in range(3))
            rates.append(n * size / best / 1e9)
        print(f"  {size >> 10:>7} KiB: xxh3-128 {rates[0]:5.1f} GB/s   crc32 {rates[1]:4.1f} GB/s")


def _timed(fn, buf, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn(buf)
    return time.perf_counter() - t0


def checked_over_unchecked(
    root: str, teachers: list[str], workers: int, batch_size: int, rounds: int = 3
) -> tuple[float, float, float]:
    """(median ratio, checked views/s, unchecked views/s): epochs through the training loader (``workers``
    processes, forked per epoch so they inherit the switch) with every byte checked and without, alternately,
    after one warm-up epoch."""
    import radio.cache.store as store
    from radio.data import CacheStream, LoaderConfig, make_loader

    cfg = LoaderConfig(batch_size=batch_size, num_workers=workers, shuffle_buffer=1024, prefetch_factor=2)
    stream = CacheStream(
        root,
        teachers,
        num_workers=max(1, workers),
        batch_size=cfg.batch_size,
        shuffle_buffer=cfg.shuffle_buffer,
        read_rows=cfg.read_rows,
    )
    loader = make_loader(stream, cfg)
    if workers:  # the switch reaches the workers by inheritance: a spawned worker would check every epoch
        import multiprocessing as mp

        ctx = loader.multiprocessing_context
        method = ctx.get_start_method() if ctx is not None else mp.get_start_method()
        if method != "fork":
            raise RuntimeError(
                f"checked_over_unchecked needs fork-started loader workers (got {method!r}): "
                "the check's switch would not reach them"
            )
    rates = {True: [], False: []}
    try:
        for r in range(2 * rounds + 1):
            on = r % 2 == 1
            store.VERIFY_PAGES = on
            stream.set_epoch(r)
            t0 = time.perf_counter()
            rows = sum(int(b["weight"].sum()) for b in loader)
            if r:
                rates[on].append(rows / (time.perf_counter() - t0))
    finally:
        store.VERIFY_PAGES = True
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    return med[True] / med[False], med[True], med[False]


def _checksum_cost(root, teachers, ns, cleanup: bool):
    """The reader's cost of checking every byte it reads, side by side in one run: epochs without the check,
    with it on a first epoch (every local shard hashed whole with xxh3-128 when a stream opens it), and with it
    on a later epoch of the same run (a shard noted intact is only stat'ed), in rotation. Reports the ratio of
    views/s, of views per CPU-second (less sensitive to a noisy machine), and best round to best."""
    import radio.cache.store as store
    from radio.data import CacheStream

    modes = {"off": False, "on, first epoch": True, "on, later epoch": True}
    try:
        stream = CacheStream(root, teachers, num_workers=1, batch_size=ns.batch_size, shuffle_buffer=1024)
        rates, cpu = {m: [] for m in modes}, {m: [] for m in modes}
        order = list(modes)
        for r in range(len(order) * ns.checksums + 1):
            mode = order[(r - 1) % len(order)] if r else "off"  # round 0 warms the page cache (timed but not counted)
            store.VERIFY_PAGES = modes[mode]
            if mode == "on, first epoch" and stream.memo:  # forget what earlier epochs found intact
                for name in os.listdir(stream.memo):
                    os.unlink(os.path.join(stream.memo, name))
            stream.set_epoch(r)
            t0, c0 = time.perf_counter(), time.process_time()
            rows = sum(int(b["weight"].sum()) for b in stream)
            rate, cpu_rate = rows / (time.perf_counter() - t0), rows / (time.process_time() - c0)
            if r:
                rates[mode].append(rate)
                cpu[mode].append(cpu_rate)
            print(f"  round {r}: {mode:<16} {rate:.0f} views/s, {cpu_rate:.0f} views per CPU-second (all threads)")
        med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
        cmed = {k: sorted(v)[len(v) // 2] for k, v in cpu.items()}
        for m in ("on, first epoch", "on, later epoch"):
            print(
                f"reader checking every byte ({m}) / without checks: {med[m] / med['off']:.3f} of views/s (medians "
                f"{med[m]:.0f} / {med['off']:.0f}), "
                f"{cmed[m] / cmed['off']:.3f} of views per CPU-second (medians {cmed[m]:.0f} / {cmed['off']:.0f}), "
                f"{max(rates[m]) / max(rates['off']):.3f} best round to best round, over {ns.checksums} rounds each"
            )
    finally:
        store.VERIFY_PAGES = True
        if cleanup:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
