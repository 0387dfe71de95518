"""Multi-resolution distillation at real shapes: bytes on disk, loader throughput, CPU step speed per resolution.

    python bench/bench_multires.py [--teachers clip-vit-b16,dinov2-vitb14-reg,sam-vit-h] [--high 448 --low 224] \
        [--images 48 --views 2] [--batch-size 32] [--epochs 10] [--size nano] [--steps 4]

Builds, through the project's own writer (``pipelines.synthetic``: registry dims and grids, random float16
targets, raw views), a multi-resolution cache (views at ``--high``, targets at each teacher's main grid plus
the grids of ``--low``) and, for comparison, one-resolution caches at ``--high`` and at ``--low``. Then:

1. bytes per view: each teacher's summary, main-grid features and each extra grid (Parquet column chunk
   sizes from the footers), the stored views, and whole files, multi-res vs one-res at ``--high`` (ratio).
2. loader rows/s, ``CacheStream`` iterated in this process (num_workers=0): fixed high, fixed low, cycle
   [low, high] on the multi-res cache and fixed high on the one-res cache, epochs interleaved (one warm-up).
3. a CPU training step (``DistillModel`` + ``distill_loss`` + AdamW, as ``Trainer.train_step``) on batches
   held in memory at low vs high resolution, steps/s and ratio, and ``derive_resolution``'s ms per batch.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def column_bytes(root: str) -> tuple[dict, dict, int]:
    """{table: {column: compressed bytes}} over all shards (``<column>/raw``: uncompressed), {table: file bytes}, views
    rows."""
    import pyarrow.parquet as pq

    cols, files = collections.defaultdict(lambda: collections.defaultdict(int)), collections.defaultdict(int)
    for dirpath, _, names in os.walk(root):
        for n in names:
            if not n.endswith(".parquet"):
                continue
            path, table = os.path.join(dirpath, n), os.path.relpath(dirpath, root).replace("teachers/", "")
            files[table] += os.path.getsize(path)
            md = pq.ParquetFile(path).metadata
            for i in range(md.num_row_groups):
                rg = md.row_group(i)
                for j in range(rg.num_columns):
                    c = rg.column(j)
                    cols[table][c.path_in_schema.split(".")[0]] += c.total_compressed_size
                    cols[table][c.path_in_schema.split(".")[0] + "/raw"] += c.total_uncompressed_size
    from radio.cache import CacheReader

    return cols, files, CacheReader(root).num_rows()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--teachers", default="clip-vit-b16,dinov2-vitb14-reg,sam-vit-h")
    p.add_argument("--high", type=int, default=448)
    p.add_argument("--low", type=int, default=224)
    p.add_argument("--patch", type=int, default=16, help="target_patch of the cache and the student's patch size")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10, help="timed loader epochs per schedule (after one warm-up epoch)")
    p.add_argument("--size", default="nano", help="student size (nano, tiny, ...)")
    p.add_argument("--steps", type=int, default=4, help="timed training steps per resolution per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    ns = p.parse_args()
    import torch

    if ns.threads:
        torch.set_num_threads(ns.threads)
    from pipelines.synthetic import make_synthetic_cache
    from pipelines.train import prepare_targets
    from radio.adapters import AdapterConfig
    from radio.cache import CacheReader
    from radio.data import CacheStream, ResolutionSchedule
    from radio.losses import LossConfig, distill_loss
    from radio.model import DistillModel
    from radio.student import StudentConfig
    from radio.views import derive_resolution

    teachers, hi, lo = ns.teachers.split(","), ns.high, ns.low
    tmp = tempfile.mkdtemp(prefix="bench-multires-")
    try:
        roots, t0 = {}, time.perf_counter()
        for name, res, lower in (("multi", hi, [lo]), ("one-high", hi, []), ("one-low", lo, [])):
            roots[name] = os.path.join(tmp, name)
            make_synthetic_cache(
                roots[name],
                limit=ns.images,
                views=ns.views,
                per_shard=16,
                teachers=teachers,
                student_resolution=res,
                lower_resolutions=lower,
                target_patch=ns.patch,
                row_group_rows=16,
                split="all",
            )
        reader = CacheReader(roots["multi"])
        n = reader.num_rows()
        print(
            f"caches: {n} views ({ns.images} images x {ns.views}) at {hi}px, targets for "
            f"{lo}px too (target_patch {ns.patch}); 3 caches built in {time.perf_counter() - t0:.1f}s; "
            f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
        )

        # -- 1. bytes per view ------------------------------------------------------------------------
        cols, files, _ = column_bytes(roots["multi"])
        print(
            "\n1. bytes per view (MB; Parquet column chunks; file: whole files, keys and footers "
            "(statistics, PHI-S moments) included, footers amortized over only this run's small shards)"
        )
        for t in teachers:
            lay = reader.entry(t).layout
            c = cols[t]
            parts = [f"summary {c['summary'] / n / 1e6:.3f}"] if "summary" in c else []
            parts.append(f"features {lay.grid[0]}x{lay.grid[1]} (main) {c['features'] / n / 1e6:.3f}")
            parts += [
                f"features@{g[0]}x{g[1]} (extra) {c[f'features@{g[0]}x{g[1]}'] / n / 1e6:.3f} "
                f"({c[f'features@{g[0]}x{g[1]}'] / c['features']:.2f}x main)"
                for g in lay.extra_grids
            ]
            parts += ["no extra grid (main grid already <= the low grid)"] if not lay.extra_grids else []
            data = sum(v for k, v in c.items() if not k.endswith("/raw"))
            print(
                f"  {t:<18} {'; '.join(parts)}; file {files[t] / n / 1e6:.3f} "
                f"(footer etc. {(files[t] - data) / n / 1e6:.3f})"
            )
        cv = cols["views"]
        print(
            f"  views {hi}px raw     student_image {cv['student_image'] / n / 1e6:.3f} "
            f"(zstd; {cv['student_image/raw'] / n / 1e6:.3f} uncompressed); file {files['views'] / n / 1e6:.3f}"
        )
        extra = sum(v for t in teachers for k, v in cols[t].items() if "@" in k and not k.endswith("/raw"))
        totals, datas = {}, {}
        for name in roots:
            c, f, rows = column_bytes(roots[name])
            totals[name], datas[name] = (
                sum(f.values()) / rows,
                sum(v for tab in c.values() for k, v in tab.items() if not k.endswith("/raw")) / rows,
            )
        print(
            f"  total per view: multi-res {totals['multi'] / 1e6:.3f} MB (extra grids {extra / n / 1e6:.3f}) "
            f"vs one-res {hi}px {totals['one-high'] / 1e6:.3f} "
            f"MB: ratio {totals['multi'] / totals['one-high']:.3f}; "
            f"column data only (footers left out, as in large shards): {datas['multi'] / 1e6:.3f} "
            f"vs {datas['one-high'] / 1e6:.3f} MB, ratio {datas['multi'] / datas['one-high']:.3f}"
        )
        print(
            f"  (two one-res caches, {hi}px + {lo}px, column "
            f"data: {(datas['one-high'] + datas['one-low']) / 1e6:.3f} "
            f"MB, {(datas['one-high'] + datas['one-low']) / datas['one-high']:.3f}x one-res {hi}px)"
        )

        # -- 2. loader throughput ---------------------------------------------------------------------
        runs = {
            f"fixed {hi}": ("multi", ResolutionSchedule("fixed", [hi])),
            f"fixed {lo}": ("multi", ResolutionSchedule("fixed", [lo])),
            f"cycle [{lo},{hi}]": ("multi", ResolutionSchedule("cycle", [lo, hi])),
            f"fixed {hi}, one-res cache": ("one-high", None),
        }
        streams = {
            k: CacheStream(
                roots[c],
                teachers,
                num_workers=1,
                batch_size=ns.batch_size,
                shuffle_buffer=256,
                schedule=s,
                patch_size=ns.patch,
            )
            for k, (c, s) in runs.items()
        }
        secs, rows, seen, shapes, held = (
            collections.Counter(),
            collections.Counter(),
            collections.defaultdict(collections.Counter),
            {},
            {},
        )
        for epoch in range(1 + ns.epochs):  # epoch 0: warm-up (page cache, allocator); schedules interleaved per epoch
            for k, st in streams.items():
                st.set_epoch(epoch)
                t0 = time.perf_counter()
                got = [b for b in st]
                dt = time.perf_counter() - t0
                for b in got:
                    r = b["resolution"]
                    shapes[r] = f"image {tuple(b['image'].shape)}, " + ", ".join(
                        f"{t} {tuple(b[t + '/features'].shape[1:3])}" for t in teachers
                    )
                    held.setdefault(r, b)
                    if epoch:
                        seen[k][r] += 1
                if epoch:
                    secs[k] += dt
                    rows[k] += sum(int(b["weight"].sum()) for b in got)
        print(
            f"\n2. loader, CacheStream in this process (num_workers=0), batch {ns.batch_size}, "
            f"{ns.epochs} timed epochs each (+1 warm-up), interleaved"
        )
        for r, s in sorted(shapes.items()):
            print(f"  batch at {r}px: {s}")
        rate = {k: rows[k] / secs[k] for k in streams}
        for k in streams:
            print(
                f"  {k:<26} {rate[k]:7.0f} rows/s  {secs[k] / sum(seen[k].values()) * 1000:7.1f} "
                f"ms/batch  batches by resolution {dict(sorted(seen[k].items()))}"
            )
        cyc = f"cycle [{lo},{hi}]"
        mix = seen[cyc]
        predicted = sum(mix.values()) / sum(m / (rate[f"fixed {r}"] / ns.batch_size) for r, m in mix.items())
        print(
            f"  fixed {lo} / fixed {hi}: {rate[f'fixed {lo}'] / rate[f'fixed {hi}']:.3f}; "
            " cycle / predicted from the fixed rates at its "
            f"mix: {rate[cyc] / (predicted * ns.batch_size):.3f};  "
            f"fixed {hi} multi-res / one-res cache: {rate[f'fixed {hi}'] / rate[f'fixed {hi}, one-res cache']:.3f}"
        )

        # -- 3. training step ---------------------------------------------------------------------------
        specs = reader.specs
        summary = [t for t in teachers if specs[t].get("summary_dim")]
        adapters = [
            AdapterConfig(
                name=t,
                summary_dim=specs[t].get("summary_dim"),
                feature_dim=specs[t]["feature_dim"],
                feature_grid=reader.grids[t],
            )
            for t in teachers
        ]
        model = DistillModel(
            StudentConfig(size=ns.size, patch_size=ns.patch, summary_teachers=summary, img_size=hi), adapters
        )
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        stats, loss_cfg = reader.stats, LossConfig()

        def step(b):  # Trainer.train_step on CPU, without accelerate
            targets = prepare_targets(b, teachers, stats, "cpu")
            losses = distill_loss(model(b["image"]), targets, loss_cfg)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(losses["loss"].detach())

        times = collections.defaultdict(list)
        for r in (lo, hi):
            for _ in range(2):  # warm-up
                step(held[r])
        for _ in range(ns.repeats):
            for r in (lo, hi):
                t0 = time.perf_counter()
                for _ in range(ns.steps):
                    loss = step(held[r])
                times[r].append((time.perf_counter() - t0) / ns.steps)
        img = held[hi]["image"]
        derive_res, derive = derive_resolution(img, lo), []
        for _ in range(2 + 3 * ns.repeats):
            t0 = time.perf_counter()
            derive_res = derive_resolution(img, lo)
            derive.append(time.perf_counter() - t0)
        d = statistics.median(derive[2:])
        st = {r: statistics.median(v) for r, v in times.items()}
        params = sum(q.numel() for q in model.parameters())
        print(
            f"\n3. training step on CPU: student {ns.size}/p{ns.patch} ({params / 1e6:.2f} "
            f"M parameters incl. heads), batch {ns.batch_size}, in-memory batches, median "
            f"of {ns.repeats} x {ns.steps} steps (last loss {loss:.3f})"
        )
        for r in (lo, hi):
            print(
                f"  {r}px ({r // ns.patch}x{r // ns.patch} tokens): {st[r] * 1000:8.1f} "
                f"ms/step  {1 / st[r]:6.2f} steps/s  {ns.batch_size / st[r]:6.1f} images/s"
            )
        print(f"  steps/s {lo} / {hi}: {st[hi] / st[lo]:.2f}  (token ratio {(hi / lo) ** 2:.1f})")
        print(
            f"  derive_resolution {hi}->{lo} of a {tuple(img.shape)} uint8 batch: {d * 1000:.1f} "
            f"ms = {d / st[lo] * 100:.1f} % of a {lo}px step, "
            f"{d / (secs[f'fixed {lo}'] / sum(seen[f'fixed {lo}'].values())) * 100:.0f} % of a {lo}px loader "
            f"batch; output {tuple(derive_res.shape)}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
