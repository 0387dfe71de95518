"""Cache size at today's scale: bytes per view and per dataset for a teacher set, per resolution partition.

    python bench/bench_storage.py                      # C-RADIOv4's teachers, its two partitions
    python bench/bench_storage.py --teachers clip-vit-b16,dinov2-vitb14-reg,sam-vit-h --partitions base=224

Arithmetic, not a run: each teacher's registry dims (real sizes) through the cache's own byte accounting
(``radio.cache.codec.bytes_per_row``, the uncompressed column bytes of one stored row) at the grid the cache
stores for a partition (``TargetLayout.stored``: the partition's largest size over the student patch, capped by
the teacher's own grid at its input size; a teacher that takes any size, DINOv3, is run at the partition's
largest size). One stored set of targets per view and partition, as issue 30 plans; the student views
themselves (PNG) are not counted. Totals are for one view per image; multiply by the views kept per image.
Measured targets compress little (float features; zstd saves ~5-10 %), so these are close to what lands on disk.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

DATASETS = {"ImageNet-1k": 1_281_167, "ImageNet-21k": 14_197_122}
ANY_SIZE = ("dinov2", "dinov3")  # families whose teacher runs at the view's size (patch grid follows it)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--teachers", default="siglip2-g-opt-p16-384,dinov3-vit7b16,sam3-trunk")
    p.add_argument("--partitions", default="low=432,high=1152", help="name=largest size, comma-separated")
    p.add_argument(
        "--sizes",
        default="low=128/192/224/256/384/432,high=512/768/1024/1152",
        help="every size of each partition (the partition-against-sizes table), name=s1/s2/...",
    )
    p.add_argument("--patch", type=int, default=16, help="the student's patch (the stored grid's cell)")
    a = p.parse_args()

    from radio.cache.codec import bytes_per_row
    from radio.cache.manifest import TargetLayout
    from teachers import get_spec_template

    parts = {k: int(v) for k, v in (kv.split("=") for kv in a.partitions.split(","))}
    rows = []
    for part, size in parts.items():
        want = (size // a.patch, size // a.patch)
        per = {}
        for t in a.teachers.split(","):
            e = get_spec_template(t)
            native = want if e.family in ANY_SIZE else e.feature_grid
            grid = TargetLayout.stored(native, want, (), "float16").grid
            per[t] = (grid, {d: bytes_per_row(grid, e.feature_dim, e.summary_dim, d) for d in ("float16", "int8")})
        rows.append((part, size, per))
    print(f"student patch {a.patch}; bytes per view (uncompressed target columns), one stored set per partition")
    print("| partition | teacher | stored grid | float16 MB/view | int8 MB/view |")
    print("|---|---|---|---|---|")
    for part, size, per in rows:
        for t, (grid, b) in per.items():
            print(
                f"| {part} ({size} px) | {t} | {grid[0]}x{grid[1]} | {b['float16'] / 1e6:.2f} | {b['int8'] / 1e6:.2f} |"
            )
        tot = {d: sum(b[d] for _, b in per.values()) for d in ("float16", "int8")}
        print(f"| {part} ({size} px) | **all** | | **{tot['float16'] / 1e6:.2f}** | **{tot['int8'] / 1e6:.2f}** |")
    print("\ntotal cache size, one view per image (TB = 1e12 bytes)")
    print("| dataset | images | partition | float16 TB | int8 TB |")
    print("|---|---|---|---|---|")
    for name, n in DATASETS.items():
        both = {"float16": 0, "int8": 0}
        for part, _size, per in rows:
            tot = {d: sum(b[d] for _, b in per.values()) for d in ("float16", "int8")}
            for d in both:
                both[d] += tot[d]
            print(f"| {name} | {n:,} | {part} | {n * tot['float16'] / 1e12:.1f} | {n * tot['int8'] / 1e12:.1f} |")
        if len(rows) > 1:
            print(
                f"| {name} | {n:,} | **all** | **{n * both['float16'] / 1e12:.1f}** "
                f"| **{n * both['int8'] / 1e12:.1f}** |"
            )

    # One stored set per partition against one size alone and against every size stored: what
    # `radio cache partitions=[[...],[...]]` stores (the largest size's grid, serving every size) against one target
    # set per size (lower_resolutions listing each size; each grid capped by the teacher's own)
    print("\nfloat16 target bytes per view: one set per partition against its sizes stored one by one")
    print("| partition | one set (MB) | largest size alone (MB) | every size stored (MB) | every size / one set |")
    print("|---|---|---|---|---|")
    for kv in a.sizes.split(","):
        part, sizes = kv.split("=")
        sizes = [int(x) for x in sizes.split("/")]
        per_size = {}
        for size in sizes:
            want = (size // a.patch, size // a.patch)
            total = 0
            for t in a.teachers.split(","):
                e = get_spec_template(t)
                native = want if e.family in ANY_SIZE else e.feature_grid
                grid = TargetLayout.stored(native, want, (), "float16").grid
                total += bytes_per_row(grid, e.feature_dim, e.summary_dim, "float16")
            per_size[size] = total
        one = per_size[max(sizes)]  # the partition's set is its largest size's; the teachers' grids cap both alike
        distinct = sum(per_size.values())
        print(f"| {part} {sizes} | {one / 1e6:.2f} | {one / 1e6:.2f} | {distinct / 1e6:.2f} | {distinct / one:.2f}x |")


if __name__ == "__main__":
    main()
