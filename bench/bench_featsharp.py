"""FeatSharp (issue 30, item 7): what plain bilinear upsampling of a low-resolution teacher map loses, and what
training-free tiling gets back, measured against a teacher run at the high resolution.

    python bench/bench_featsharp.py [--low 96] [--factors 2,3] [--scenes 24] [--teachers pool,conv,tiny-dinov2,...]

C-RADIOv4 runs SigLIP2-g at 384 px only (a 24x24 grid) and needs its map on the high partition's 32..72 grid;
radio grows it with ``radio.targets.resample_targets`` (bilinear, half-pixel centres). This mirrors that at toy
scale: a low view of ``--low`` px (patch 4: a 24x24 grid, SigLIP2-g's) and high views of ``--low`` x k px for each
factor k (2, 3: 384 -> 768, 1152), so the high grid is 24k cells a side.

Teachers (``--teachers``), each a map (B, 3, H, W) float pixels in [0, 1] -> (B, H/4, W/4, C):

- ``pool``: the mean pixel of each 4x4 cell. Content-aligned and exact at any size: its high-resolution truth is
  itself, so what bilinear loses against it is resolution alone.
- ``conv``: a fixed random patch embedding (4x4 conv, stride 4, 32 channels), GELU, then a 3x3 conv over cells
  (zero padding): content-aligned with one cell of context each side, still exact at any size.
- ``tiny-dinov2``, ``tiny-dinov3``: the registry's tiny presets (random weights, 2 layers), any-resolution ViTs
  (interpolated position embeddings; RoPE); truth: the teacher run at the high size. They stand in for a teacher
  whose features mix context; their random weights make them no model of a trained SigLIP2's features.

Methods, for factor k (high grid G = 24k, low grid g = 24):

- ``truth``: the teacher on the view at 96k px.
- ``bilinear``: the teacher on the view at 96 px, grown g -> G by ``resample_targets`` (what radio does today).
- ``tiles``: the view at 96k px cut into k x k tiles of 96 px, the teacher on each (its native size), the maps
  stitched (FeatSharp's tiling input, without its learned fusion). k^2 teacher passes per view.
- ``tiles+low``: training-free fusion, a two-band blend: the tiles' detail above the low grid (tiles minus their
  own area average on the low grid, grown back bilinearly) plus the bilinear map (the whole view's low band).
  It keeps the global view's low frequencies, which tiles get wrong where a tile lacks context or repeats the
  position pattern, and takes the detail from the tiles. k^2 + 1 passes.
- ``truth-low``: the truth averaged onto the low grid and grown back bilinearly: the best any method can do that
  knows only a g x g map (it separates resolution loss from the teacher's own shift between sizes).

Metrics, over the built-in scenes (``pipelines.samples.render_scene`` rendered at 96 x max(k) px, resized down
with antialiased bilinear), after standardizing each channel with the truth's mean and std over all scenes (as
the cache's normalization does):

- ``cos``: mean cosine per cell between method and truth;
- ``rel_mse``: mean squared error per channel, i.e. the fraction of the truth's variance not reproduced.

Ramp test: a vertical step edge between two flat colours (antialiased: each pixel the exact fraction of its
width right of the edge, rendered analytically at every size), at 16 positions from 30 % to 68 % of the width,
stepping 0.6 low cells so the edge falls at every phase inside a cell and across tile seams. For a map F (G x G x C)
the edge profile is p(x) = (mean over rows of F[:, x] - l) . d / |d|^2 with l and r the truth's mean over columns
more than 2k cells left / right of the edge and d = r - l (0 on the left colour, 1 on the right). Its steps
s_b = p(b) - p(b - 1) sit on cell boundaries b (cell x spans [x, x + 1) in high-res cells); over boundaries within
2k cells of the edge x_e (edge position in high-res cells), with weights |s_b|:

- edge position = sum b |s_b| / sum |s_b| (for ``pool``'s truth exactly x_e), reported as ``shift``: the mean
  |position - truth's position|, in high-res cells;
- ``spread``: sqrt(sum (b - position)^2 |s_b| / sum |s_b|), the edge's width (its standard deviation) in high-res
  cells; a perfect step at a boundary has 0, ``pool``'s truth at most 0.5 (sub-cell coverage), a bilinear step
  grows with k. Overshoot and ringing count as spread, since |s_b| weighs them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch
import torch.nn.functional as F

PATCH = 4
METHODS = ("bilinear", "tiles", "tiles+low", "truth-low")
COLOURS = (
    ((0.15, 0.35, 0.75), (0.85, 0.6, 0.2)),
    ((0.9, 0.9, 0.9), (0.1, 0.12, 0.1)),
    ((0.3, 0.7, 0.3), (0.7, 0.3, 0.6)),
)


def featurizer(name: str):
    """``name`` -> (B, 3, H, W) float [0, 1] -> (B, H/4, W/4, C) float32."""
    if name == "pool":
        return lambda x: F.avg_pool2d(x, PATCH).permute(0, 2, 3, 1)
    if name == "conv":
        g = torch.Generator().manual_seed(0)
        w1, w2 = (
            torch.randn(32, 3, PATCH, PATCH, generator=g) / 48**0.5,
            torch.randn(32, 32, 3, 3, generator=g) / 288**0.5,
        )
        return lambda x: F.conv2d(F.gelu(F.conv2d(x - 0.5, w1, stride=PATCH)), w2, padding=1).permute(0, 2, 3, 1)
    import teachers

    t = teachers.create_teacher(name)
    assert t.spec.patch_size == PATCH, (name, t.spec.patch_size)
    mean, std = torch.tensor(t.spec.mean).view(1, 3, 1, 1), torch.tensor(t.spec.std).view(1, 3, 1, 1)

    @torch.inference_mode()
    def run(x):
        _, tokens = t.family.forward(t.model, (x - mean) / std)
        B, _, H, W = x.shape
        return tokens.reshape(B, H // PATCH, W // PATCH, -1).float()

    return run


def resize(x_B3HW: torch.Tensor, side: int) -> torch.Tensor:
    if x_B3HW.shape[-1] == side:
        return x_B3HW
    return F.interpolate(x_B3HW, size=(side, side), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def predictions(f, x_hi: torch.Tensor, x_lo: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Every method's (B, G, G, C) map for views ``x_hi`` (96k px) and ``x_lo`` (96 px)."""
    from radio.featsharp import fuse_tiles, split_tiles, stitch_tiles
    from radio.targets import resample_targets

    truth, low = f(x_hi), f(x_lo)
    G, g = truth.shape[1], low.shape[1]
    tiles = stitch_tiles(f(split_tiles(x_hi, k)), k)
    return {
        "truth": truth,
        "bilinear": resample_targets(low, (G, G)),
        "tiles": tiles,
        "tiles+low": fuse_tiles(low, tiles),  # radio.featsharp.tiled_targets(f, x_hi, low, k)
        "truth-low": resample_targets(resample_targets(truth, (g, g)), (G, G)),
    }


def edge_images(side: int, g: int) -> tuple[torch.Tensor, list[float]]:
    """Step edges at 16 positions x 3 colour pairs, (48, 3, side, side), and each edge's position as a fraction of
    the width."""
    us = [(0.3 * g + 0.6 * j) / g for j in range(16)]
    cols = torch.arange(side, dtype=torch.float64)
    imgs, pos = [], []
    for a, b in COLOURS:
        for u in us:
            right = (cols + 1 - u * side).clamp(0, 1)  # the fraction of each pixel right of the edge
            a_, b_ = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
            row = a_[:, None] + (b_ - a_)[:, None] * right[None, :]  # (3, side)
            imgs.append(row[:, None, :].expand(3, side, side).float())
            pos.append(u)
    return torch.stack(imgs), pos


def edge_stats(maps: dict[str, torch.Tensor], pos: list[float], k: int) -> dict[str, tuple[float, float]]:
    """{method: (mean |position - truth's| , mean spread)} in high-res cells (see the module docstring)."""
    rows = {m: fm.double().mean(1) for m, fm in maps.items()}  # (N, G, C): each column's mean over rows
    G = rows["truth"].shape[1]
    cols = torch.arange(G, dtype=torch.float64)
    b = torch.arange(1, G, dtype=torch.float64)  # boundary b between cells b-1 and b
    out: dict[str, list] = {m: [] for m in maps}
    for i, u in enumerate(pos):
        xe = u * G
        far_l, far_r = cols + 1 < xe - 2 * k, cols > xe + 2 * k
        lv, rv = rows["truth"][i][far_l].mean(0), rows["truth"][i][far_r].mean(0)
        d = rv - lv
        near = (b - xe).abs() <= 2 * k
        for m, r in rows.items():
            p = (r[i] - lv) @ d / (d @ d)
            s = (p[1:] - p[:-1]).abs()[near]
            bb = b[near]
            c = (bb * s).sum() / s.sum()
            out[m].append((float(c), float(((bb - c) ** 2 * s).sum().div(s.sum()).sqrt())))
    t_pos = [c for c, _ in out["truth"]]
    return {
        m: (
            sum(abs(c - tc) for (c, _), tc in zip(v, t_pos, strict=True)) / len(v),
            sum(sp for _, sp in v) / len(v),
        )
        for m, v in out.items()
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--low", type=int, default=96, help="low view side, px (patch 4: 96 -> SigLIP2-g's 24x24 grid)")
    p.add_argument("--factors", default="2,3")
    p.add_argument("--scenes", type=int, default=24)
    p.add_argument("--teachers", default="pool,conv,tiny-dinov2,tiny-dinov3")
    args = p.parse_args(argv)
    import numpy as np

    from pipelines.samples import render_scene

    torch.manual_seed(0)
    factors = [int(k) for k in args.factors.split(",")]
    g, side = args.low // PATCH, args.low * max(factors)
    t0 = time.perf_counter()
    scenes = torch.stack(
        [torch.from_numpy(np.array(render_scene(i, side=side)[0])).permute(2, 0, 1) for i in range(args.scenes)]
    )
    scenes = scenes.float() / 255
    print(
        f"# {args.scenes} scenes rendered at {side} px in {time.perf_counter() - t0:.1f} s; low view {args.low} px "
        f"(grid {g}), factors {factors}"
    )
    header = (
        f"{'teacher':<12} {'k':>2} {'grid':>8} {'method':<10} {'passes':>6} {'cos':>6} {'rel_mse':>8} "
        f"{'shift':>6} {'spread':>6}"
    )
    print(header)
    print("-" * len(header))
    for name in args.teachers.split(","):
        f = featurizer(name)
        for k in factors:
            hi, lo = args.low * k, args.low
            maps = predictions(f, resize(scenes, hi), resize(scenes, lo), k)
            C = maps["truth"].shape[-1]
            t = maps["truth"].reshape(-1, C)
            mu, sd = t.mean(0), t.std(0).clamp(min=1e-6)
            z = {m: (v - mu) / sd for m, v in maps.items()}
            imgs, pos = edge_images(hi, g)  # each size rendered analytically: every view holds the exact edge
            edges = edge_stats(predictions(f, imgs, edge_images(lo, g)[0], k), pos, k)
            passes = {
                "truth": "1 hi",
                "bilinear": "1",
                "tiles": f"{k * k}",
                "tiles+low": f"{k * k + 1}",
                "truth-low": "-",
            }
            for m in ("truth", *METHODS):
                cos = F.cosine_similarity(z[m], z["truth"], dim=-1).mean()
                mse = (z[m] - z["truth"]).pow(2).mean()
                sh, sp = edges[m]
                print(
                    f"{name:<12} {k:>2} {f'{g}->{g * k}':>8} {m:<10} {passes[m]:>6} {cos:>6.3f} {mse:>8.3f} "
                    f"{sh:>6.2f} {sp:>6.2f}"
                )
    print(f"# {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
