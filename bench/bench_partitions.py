"""Resolution partitions: do targets stored once per partition stay aligned with the student's pixels at every size?

    python bench/bench_partitions.py                       # C-RADIOv4's sizes, a 72x72 teacher map, patch 16

The ramp test of tests/test_partitions.py at real sizes: a view whose pixels are a horizontal and a vertical ramp,
a content-aligned teacher (its feature at a cell = the mean of the pixels the cell covers) at a native grid (SAM3's
72x72), the student's view derived from the stored one (radio.views.derive_resolution, as the loader does). For each
size of each partition, the largest error (in student cells: the ramp's rise over one cell) between the targets the
student is trained on and the means of its own pixels per cell, three ways:

- ``partition, linear``: stored once per partition at its largest size's grid (area, as the cache stores), then
  resampled to the student's grid with the ``linear`` kernel, as the loss does;
- ``partition, area``: the same with a second area average;
- ``per size``: a target set stored at each size's own grid (direct area resampling; what one set per size costs
  2.5-2.8x the bytes for, bench/bench_storage.py).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="128/192/224/256/384/432,512/768/1024/1152", help="partitions, comma-separated")
    p.add_argument("--native", type=int, default=72, help="the teacher's own grid")
    p.add_argument("--patch", type=int, default=16)
    a = p.parse_args()

    import torch

    from radio.targets import resample_targets
    from radio.views import derive_resolution

    parts = [[int(x) for x in part.split("/")] for part in a.sizes.split(",")]
    H = max(max(q) for q in parts)
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(H, dtype=torch.float32), indexing="ij")
    img = torch.stack([x * 255 / (H - 1), y * 255 / (H - 1), torch.full_like(x, 128)])[None].round().to(torch.uint8)

    def cell_means(im, g):
        return torch.nn.functional.adaptive_avg_pool2d(im.float(), g)[:, :2].permute(0, 2, 3, 1)

    native = cell_means(img, a.native)
    print(f"teacher grid {a.native}x{a.native}, patch {a.patch}; max error in student cells")
    print("| size | student grid | partition, linear | partition, area | per size |")
    print("|---|---|---|---|---|")
    for sizes in parts:
        top = max(sizes) // a.patch
        stored = resample_targets(native, (top, top))
        for s in sizes:
            g = s // a.patch
            truth = cell_means(derive_resolution(img, s), g)
            step = 255 / g
            errs = [
                (resample_targets(stored, (g, g), kernel="linear") - truth).abs().max().item() / step,
                (resample_targets(stored, (g, g)) - truth).abs().max().item() / step,
                (resample_targets(native, (g, g)) - truth).abs().max().item() / step,
            ]
            print(f"| {s} | {g}x{g} | " + " | ".join(f"{e:.3f}" for e in errs) + " |")


if __name__ == "__main__":
    main()
