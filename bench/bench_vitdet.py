"""ViTDet mode against global attention, side by side in one run, on this machine's CPU.

    python bench/bench_vitdet.py --size tiny --resolution 1024 --window 16 --rounds 3
    python bench/bench_vitdet.py --student quickstart/runs/nano-d4/student --resolution 512 --window 8

One student, two modes: every block global, then ``vitdet_window_size`` (windows of ``--window`` patches per side
in all but the global blocks, RADIO's spacing). Alternating rounds, batch 1, inference mode; prints the wall time
of each (median), their ratio, and the mean per-token cosine of the patch features (and of the summary) of the
windowed model to the global one's on the same images. Without ``--student`` the trunk is freshly initialized at
``--size`` (its cosine then says how far windowing moves an untrained trunk's features, not a trained one's).
Images: the built-in sample scenes, resized to ``--resolution``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="tiny", help="student size when no --student is given (radio.student.SIZES)")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--student", default=None, help="a trained student (directory, run id, hub id)")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--window", type=int, default=16, help="window side in patches")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    from pipelines.samples import load_sample_index
    from radio.student import StudentConfig, ViTStudent, normalize_images

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.student:
        import radio

        loaded = radio.load_student(a.student, vitdet_window_size=None)
        trunk, cfg = loaded.model.trunk, loaded.config
    else:
        cfg = StudentConfig(size=a.size, patch_size=a.patch, img_size=224)
        trunk = ViTStudent(cfg)
    trunk.eval()
    r = a.resolution
    from PIL import Image

    recs = load_sample_index("val")[: a.images]
    imgs = [torch.from_numpy(np.array(Image.open(rec.path).convert("RGB"))).permute(2, 0, 1)[None] for rec in recs]
    x = torch.cat([F.interpolate(im.float() / 255, size=(r, r), mode="bilinear", antialias=True) for im in imgs])
    x = normalize_images(x.clamp(0, 1), cfg.mean, cfg.std)
    grid = r // trunk.patch_size
    print(
        f"student {a.student or a.size}: dim {trunk.cfg.dim}, depth {trunk.cfg.depth}, patch {trunk.patch_size}; "
        f"{r} px = {grid}x{grid} patches; window {a.window} -> global blocks {sorted(trunk.global_blocks)}; "
        f"{torch.get_num_threads()} threads"
    )

    def run(window: int | None) -> tuple[float, list]:
        trunk.window_size = window
        outs, t = [], []
        with torch.inference_mode():
            for i in range(x.shape[0]):
                t0 = time.perf_counter()
                outs.append(trunk(x[i : i + 1]))
                t.append(time.perf_counter() - t0)
        return sum(t), outs

    run(None), run(a.window)  # warm-up
    times: dict = {None: [], a.window: []}
    outs: dict = {}
    for _ in range(a.rounds):
        for w in (None, a.window):
            s, o = run(w)
            times[w].append(s / x.shape[0])
            outs[w] = o
    g, v = statistics.median(times[None]), statistics.median(times[a.window])
    cos_f = torch.cat(
        [
            F.cosine_similarity(o.features_BLC, q.features_BLC, -1).flatten()
            for o, q in zip(outs[None], outs[a.window], strict=True)
        ]
    )
    cos_s = torch.cat(
        [
            F.cosine_similarity(o.summary_BTD, q.summary_BTD, -1).flatten()
            for o, q in zip(outs[None], outs[a.window], strict=True)
        ]
    )
    print(f"global attention: {g:.3f} s/image; vitdet window {a.window}: {v:.3f} s/image")
    print(
        f"vitdet speed: {g / v:.2f}x global; feature cosine to global: mean {cos_f.mean():.4f} "
        f"(min {cos_f.min():.4f}); summary cosine {cos_s.mean():.4f}"
    )


if __name__ == "__main__":
    main()
