"""A small built-in, labeled image set, generated procedurally and shipped inside the package.

The pipeline needs *some* images for tests, examples and smoke runs of ``radio cache`` /
``radio train`` / ``radio eval`` on a laptop with no network. These are ten visually distinct classes
of synthetic but natural-ish RGB images (multi-octave value noise, soft edges, blur, sensor noise,
JPEG texture), with enough intra-class variation (palette, scale, position, rotation, background,
aspect ratio) that a kNN probe on image features means something.

Everything is deterministic: every image is drawn from its own ``numpy.random.Generator`` seeded by
``(seed, class index, image index)``, so re-running :func:`generate_samples` writes byte-identical
files (given the same numpy and Pillow/libjpeg builds). The shipped copy lives in :data:`SAMPLES_DIR`;
regenerate it with ``python -m pipelines.samples``.

This module imports only numpy, Pillow and the standard library.
"""

from __future__ import annotations

import colorsys
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "SAMPLES_DIR",
    "CLASSES",
    "SampleRecord",
    "generate_samples",
    "render_sample",
    "load_sample_index",
    "sample_classes",
    "SCENES_DIR",
    "SceneRecord",
    "render_scene",
    "generate_scenes",
    "load_scene_index",
]

SAMPLES_DIR = Path(__file__).parent / "assets" / "samples"
INDEX_NAME = "index.csv"
VAL_FRACTION = 0.25
JPEG_QUALITY = 87
MIN_SIDE, MAX_SIDE = 96, 160

CLASSES: tuple[str, ...] = (
    "landscape",
    "stripes",
    "checkerboard",
    "rings",
    "bubbles",
    "waves",
    "polygons",
    "fur",
    "bricks",
    "leaves",
)


@dataclass(frozen=True)
class SampleRecord:
    image_id: str
    path: Path
    label: str
    label_index: int
    split: str


def sample_classes() -> list[str]:
    """The class names, in label-index order."""
    return list(CLASSES)


def load_sample_index(split: str | None = None, root: str | Path | None = None) -> list[SampleRecord]:
    """Read ``index.csv`` of the sample set (the shipped one unless ``root`` is given).

    ``split`` is ``"train"``, ``"val"`` or ``None`` for both. Paths come back absolute.
    """
    if split not in (None, "train", "val"):
        raise ValueError(f"split must be 'train', 'val' or None, not {split!r}")
    root = Path(root) if root is not None else SAMPLES_DIR
    label_index = {name: i for i, name in enumerate(CLASSES)}
    records = []
    with open(root / INDEX_NAME, newline="") as f:
        for row in csv.DictReader(f):
            if split is not None and row["split"] != split:
                continue
            records.append(
                SampleRecord(
                    image_id=row["image_id"],
                    path=(root / row["path"]).resolve(),
                    label=row["label"],
                    label_index=label_index[row["label"]],
                    split=row["split"],
                )
            )
    return records


# --------------------------------------------------------------------------------------------------
# noise and colour helpers


def _value_noise(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, size: int = 128) -> np.ndarray:
    """Smooth value noise in [0, 1] at continuous lattice coordinates (u, v) (one lattice cell = 1)."""
    table = rng.random((size, size))
    u = u + rng.random() * size
    v = v + rng.random() * size
    x0 = np.floor(u)
    y0 = np.floor(v)
    fx = u - x0
    fy = v - y0
    sx = fx * fx * (3.0 - 2.0 * fx)
    sy = fy * fy * (3.0 - 2.0 * fy)
    x0 = x0.astype(np.int64) % size
    y0 = y0.astype(np.int64) % size
    x1 = (x0 + 1) % size
    y1 = (y0 + 1) % size
    top = table[y0, x0] * (1 - sx) + table[y0, x1] * sx
    bot = table[y1, x0] * (1 - sx) + table[y1, x1] * sx
    return top * (1 - sy) + bot * sy


def _fbm(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    octaves: int = 4,
    lacunarity: float = 2.0,
    gain: float = 0.5,
) -> np.ndarray:
    """Multi-octave value noise, rescaled to [0, 1] over the given coordinates."""
    total = np.zeros(np.broadcast(u, v).shape)
    amp, freq = 1.0, 1.0
    for _ in range(octaves):
        total += amp * _value_noise(rng, u * freq, v * freq)
        amp *= gain
        freq *= lacunarity
    lo, hi = total.min(), total.max()
    return (total - lo) / (hi - lo + 1e-12)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return yy, xx


def _rotate(xx: np.ndarray, yy: np.ndarray, angle: float, cx: float = 0.0, cy: float = 0.0):
    c, s = np.cos(angle), np.sin(angle)
    x, y = xx - cx, yy - cy
    return c * x + s * y, -s * x + c * y


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def _rand_color(rng: np.random.Generator, s=(0.25, 0.9), v=(0.25, 0.95), hue=None) -> np.ndarray:
    h = rng.random() if hue is None else rng.uniform(*hue)
    return _hsv(h, rng.uniform(*s), rng.uniform(*v))


def _lerp(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    t = t[..., None]
    return c0 * (1 - t) + c1 * t


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _over(img: np.ndarray, color, alpha: np.ndarray) -> np.ndarray:
    """Composite ``color`` (RGB or HxWx3) over ``img`` with per-pixel ``alpha``."""
    a = alpha[..., None]
    return img * (1 - a) + np.asarray(color) * a


def _shading(rng: np.random.Generator, h: int, w: int, strength: float) -> np.ndarray:
    """A soft multiplicative lighting field around 1."""
    yy, xx = _grid(h, w)
    scale = rng.uniform(30, 80)
    n = _fbm(rng, xx / scale, yy / scale, octaves=3)
    return 1.0 + strength * (n - 0.5)


# --------------------------------------------------------------------------------------------------
# the classes; each returns float RGB in [0, 1], shape (h, w, 3)


def _landscape(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    horizon = rng.uniform(0.3, 0.6) * h
    mood = rng.integers(3)
    if mood == 0:  # day
        hue = rng.uniform(0.53, 0.66)
        top = _hsv(hue, rng.uniform(0.5, 0.9), rng.uniform(0.55, 0.85))
        low = _hsv(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.1, 0.35), rng.uniform(0.85, 1.0))
    elif mood == 1:  # dusk
        top = _hsv(rng.uniform(0.62, 0.8), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.5))
        low = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.5, 0.9), rng.uniform(0.8, 1.0))
    else:  # overcast
        g = rng.uniform(0.45, 0.75)
        top = np.array([g, g, g + 0.05]) * rng.uniform(0.9, 1.05)
        low = np.clip(top * rng.uniform(1.1, 1.35), 0, 1)
    t = np.clip(yy / horizon, 0, 1) ** rng.uniform(0.6, 1.6)
    img = _lerp(t, top, low)

    if rng.random() < 0.5:  # sun or moon
        sx, sy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.15, 0.8) * horizon
        r = rng.uniform(4, 12)
        d = np.hypot(xx - sx, yy - sy)
        sun = _hsv(rng.uniform(0.08, 0.17), rng.uniform(0.0, 0.5), 1.0)
        img = _over(img, sun, 0.5 * np.exp(-((d / (3 * r)) ** 2)))
        img = _over(img, sun, np.clip(r - d + 0.5, 0, 1))

    cloudiness = rng.uniform(0.0, 0.9)
    if cloudiness > 0.1:  # clouds: horizontally stretched noise, thresholded
        sc = rng.uniform(20, 45)
        n = _fbm(rng, xx / (sc * rng.uniform(1.5, 3.0)), yy / sc, octaves=5)
        thr = rng.uniform(0.45, 0.65)
        cloud = np.clip(low * rng.uniform(1.0, 1.3) + 0.15, 0, 1) * (0.75 + 0.3 * n[..., None])
        a = cloudiness * _smoothstep(thr, thr + 0.2, n) * (yy < horizon)
        img = img * (1 - a[..., None]) + cloud * a[..., None]

    ground_hue = rng.choice([rng.uniform(0.2, 0.38), rng.uniform(0.06, 0.12), rng.uniform(0.0, 1.0)])
    ground_sat = rng.uniform(0.25, 0.75)
    n_layers = int(rng.integers(2, 5))
    for k in range(n_layers):
        depth = k / max(n_layers - 1, 1)  # 0 = far, 1 = near
        base = horizon + depth * (h - horizon) * rng.uniform(0.2, 0.5)
        amp = rng.uniform(0.1, 0.45) * h * (1.0 - 0.5 * depth)
        scale = rng.uniform(25, 70)
        ridge_noise = _fbm(rng, xx[:1] / scale, np.full((1, w), k * 7.3), octaves=4)
        ridge = base - amp * ridge_noise + 0.1 * amp  # hills rise above the base line
        near = _hsv(ground_hue + rng.uniform(-0.04, 0.04), ground_sat, rng.uniform(0.2, 0.55))
        color = near * (1 - 0.6 * (1 - depth)) + low * 0.6 * (1 - depth)  # aerial perspective
        tex_scale = rng.uniform(3, 10) * (0.5 + depth)
        tex = _fbm(rng, xx / tex_scale, yy / (tex_scale * 0.6), octaves=4)
        layer = color[None, None] * (0.75 + 0.5 * tex[..., None] * (0.3 + 0.7 * depth))
        shade = np.clip((yy - ridge) / (0.5 * h), 0, 1)
        layer = layer * (1.0 - 0.25 * shade[..., None])
        img = _over(img, layer, np.clip(yy - ridge + 0.5, 0, 1))
    return img


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    u, v = _rotate(xx, yy, rng.uniform(0, np.pi), w / 2, h / 2)
    period = rng.uniform(6, 26)
    warp_scale = rng.uniform(30, 90)
    warp = rng.uniform(0.0, 0.6) * (_fbm(rng, u / warp_scale, v / warp_scale, octaves=3) - 0.5)
    phase = u / period + warp
    sharp = rng.uniform(1.5, 12)
    s = np.sin(2 * np.pi * phase)
    t = 0.5 + 0.5 * np.tanh(sharp * s) / np.tanh(sharp)
    c0, c1 = _rand_color(rng), _rand_color(rng)
    img = _lerp(t, c0, c1)
    if rng.random() < 0.4:  # a thin third-colour pinstripe
        c2 = _rand_color(rng)
        pin = np.clip(1.0 - np.abs(((phase + 0.25) % 1.0) - 0.5) * period / rng.uniform(0.8, 1.6), 0, 1)
        img = _over(img, c2, pin)
    fibre = _fbm(rng, u / rng.uniform(1, 3), v / rng.uniform(4, 12), octaves=2)
    return img * (0.94 + 0.12 * fibre[..., None]) * _shading(rng, h, w, 0.4)[..., None]


def _checkerboard(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    cx, cy = w / 2, h / 2
    if rng.random() < 0.5:  # a floor seen at an angle
        p = rng.uniform(0.5, 1.6)
        denom = 1.0 + p * (yy - h) / h * -1.0
        xx = cx + (xx - cx) / denom
        yy = cy + (yy - cy) / denom
    u, v = _rotate(xx, yy, rng.uniform(0, np.pi / 2), cx, cy)
    cell = rng.uniform(7, 26)
    off_u, off_v = rng.uniform(0, cell, 2)
    s = np.sin(np.pi * (u + off_u) / cell) * np.sin(np.pi * (v + off_v) / cell)
    t = 0.5 + 0.5 * np.tanh(rng.uniform(4, 14) * s)
    c0 = _rand_color(rng)
    c1 = _hsv(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.05, 1.0))
    if np.abs(c0 - c1).sum() < 0.5:
        c1 = 1.0 - c1
    img = _lerp(t, c0, c1)
    grain = _fbm(rng, xx / rng.uniform(2, 6), yy / rng.uniform(2, 6), octaves=3)
    return img * (0.92 + 0.16 * grain[..., None]) * _shading(rng, h, w, 0.6)[..., None]


def _rings(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    cx, cy = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
    u, v = _rotate(xx, yy, rng.uniform(0, np.pi), cx, cy)
    squash = rng.uniform(0.7, 1.0)
    r = np.hypot(u, v / squash)
    wscale = rng.uniform(20, 60)
    r = r + rng.uniform(0, 4) * (_fbm(rng, xx / wscale, yy / wscale, octaves=3) - 0.5)
    period = rng.uniform(5, 18)
    n_col = int(rng.integers(2, 5))
    colors = [_rand_color(rng) for _ in range(n_col)]
    band = r / period
    idx = np.floor(band).astype(np.int64) % n_col
    frac = band - np.floor(band)
    img = np.zeros((h, w, 3))
    for k in range(n_col):
        img[idx == k] = colors[k]
    # anti-alias the band edges by blending with the next colour over ~1 px
    nxt = np.zeros_like(img)
    for k in range(n_col):
        nxt[idx == k] = colors[(k + 1) % n_col]
    edge = _smoothstep(1.0 - 1.0 / period, 1.0, frac)
    img = img * (1 - edge[..., None]) + nxt * edge[..., None]
    grain = _fbm(rng, xx / 3, yy / 3, octaves=2)
    return img * (0.94 + 0.12 * grain[..., None]) * _shading(rng, h, w, 0.5)[..., None]


def _bubbles(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    c0, c1 = _rand_color(rng, v=(0.1, 0.9)), _rand_color(rng, v=(0.1, 0.9))
    bg = _fbm(rng, xx / rng.uniform(30, 80), yy / rng.uniform(30, 80), octaves=4)
    img = _lerp(bg, c0, c1)
    n = int(rng.integers(8, 30) * (h * w) / (128 * 128))
    base_hue = rng.random()
    for _ in range(n):
        r = float(np.exp(rng.uniform(np.log(3), np.log(20))))
        bx, by = rng.uniform(-r, w + r), rng.uniform(-r, h + r)
        d = np.hypot(xx - bx, yy - by)
        inside = np.clip(r - d + 0.5, 0, 1)
        if not inside.any():
            continue
        col = _hsv(base_hue + rng.uniform(-0.15, 0.15), rng.uniform(0.2, 0.9), rng.uniform(0.5, 1.0))
        img = _over(img, col, inside * rng.uniform(0.25, 0.7))
        rim_w = max(1.0, 0.12 * r)
        rim = np.clip(1.0 - np.abs(d - r + rim_w) / rim_w, 0, 1) * inside
        img = _over(img, np.clip(col + 0.35, 0, 1), rim * 0.8)
        hx, hy = bx - 0.4 * r, by - 0.4 * r
        hl = np.exp(-((np.hypot(xx - hx, yy - hy) / (0.22 * r + 0.5)) ** 2))
        img = _over(img, np.ones(3), hl * 0.85 * inside)
    return img


def _waves(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    if rng.random() < 0.6:  # seen towards a horizon: waves shrink with distance
        depth = 1.0 + rng.uniform(0.5, 2.5) * (1.0 - yy / h)
        ys = np.cumsum(depth, axis=0)
        xs = (xx - w / 2) * depth + w / 2
    else:
        xs, ys = xx, yy
    main = rng.uniform(0, 2 * np.pi)
    height = np.zeros((h, w))
    gx = np.zeros((h, w))
    for _ in range(int(rng.integers(4, 8))):
        ang = main + rng.normal(0, 0.45)
        lam = rng.uniform(8, 40)
        k = 2 * np.pi / lam
        amp = lam / 40
        ph = k * (np.cos(ang) * xs + np.sin(ang) * ys) + rng.uniform(0, 2 * np.pi)
        height += amp * np.sin(ph)
        gx += amp * k * np.cos(ph) * (np.cos(ang) + np.sin(ang))
    height += 0.3 * (_fbm(rng, xs / 6, ys / 6, octaves=3) - 0.5)
    hn = (height - height.min()) / (np.ptp(height) + 1e-9)
    if rng.random() < 0.7:
        hue = rng.uniform(0.45, 0.65)
    else:
        hue = rng.random()
    deep = _hsv(hue, rng.uniform(0.5, 1.0), rng.uniform(0.15, 0.45))
    shallow = _hsv(hue + rng.uniform(-0.06, 0.06), rng.uniform(0.3, 0.8), rng.uniform(0.55, 0.9))
    img = _lerp(hn, deep, shallow)
    spec = _smoothstep(0.4, 1.0, gx / (np.abs(gx).max() + 1e-9)) * rng.uniform(0.3, 0.8)
    img = _over(img, np.ones(3), spec)
    foam = _smoothstep(rng.uniform(0.8, 0.95), 1.0, hn) * rng.uniform(0.3, 0.9)
    return _over(img, np.array([0.95, 0.97, 1.0]), foam)


def _polygons(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    c0, c1 = _rand_color(rng, s=(0.0, 0.6)), _rand_color(rng, s=(0.0, 0.6))
    sc = rng.uniform(2, 12)
    bg = _fbm(rng, xx / sc, yy / sc, octaves=4)
    img = _lerp(bg, c0, c1)
    ss = 3  # supersample the vector shapes, then box-filter down
    layer = Image.new("RGBA", (w * ss, h * ss), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(3, 10))):
        n_sides = int(rng.choice([3, 3, 4, 4, 5, 6]))
        r = rng.uniform(8, 0.4 * min(h, w))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        a0 = rng.uniform(0, 2 * np.pi)
        angles = (
            a0 + np.sort(rng.uniform(0, 2 * np.pi, n_sides))
            if rng.random() < 0.4
            else (a0 + np.arange(n_sides) * 2 * np.pi / n_sides)
        )
        radii = r * rng.uniform(0.7, 1.0, n_sides)
        pts = [
            (float((cx + rr * np.cos(a)) * ss), float((cy + rr * np.sin(a)) * ss))
            for a, rr in zip(angles, radii, strict=True)
        ]
        col = tuple(int(c) for c in np.rint(_rand_color(rng) * 255)) + (255,)
        outline = (0, 0, 0, 255) if rng.random() < 0.4 else None
        draw.polygon(pts, fill=col, outline=outline, width=ss if outline else 0)
    layer = layer.resize((w, h), Image.Resampling.BOX)
    arr = np.asarray(layer, dtype=np.float64) / 255.0
    return _over(img, arr[..., :3], arr[..., 3]) * _shading(rng, h, w, 0.3)[..., None]


def _fur(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    u, v = _rotate(xx, yy, rng.uniform(0, np.pi), w / 2, h / 2)
    flow_scale = rng.uniform(30, 80)
    v = v + rng.uniform(4, 20) * (_fbm(rng, xx / flow_scale, yy / flow_scale, octaves=3) - 0.5)  # hair bends
    length, width = rng.uniform(6, 18), rng.uniform(0.9, 2.0)
    hair = _fbm(rng, u / length, v / width, octaves=3, gain=0.6)
    fine = _fbm(rng, u / (length / 3), v / (width / 1.5), octaves=2)
    strand = np.clip(0.65 * hair + 0.35 * fine, 0, 1) ** rng.uniform(0.8, 1.6)
    hue = rng.choice([rng.uniform(0.02, 0.12), rng.random()])
    dark = _hsv(hue, rng.uniform(0.3, 0.9), rng.uniform(0.03, 0.3))
    light = _hsv(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.1, 0.7), rng.uniform(0.5, 1.0))
    img = _lerp(strand, dark, light)
    if rng.random() < 0.5:  # patches / tabby markings
        ps = rng.uniform(15, 40)
        patch = _smoothstep(0.45, 0.6, _fbm(rng, u / (ps * 1.5), v / ps, octaves=3))
        other = _hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.05, 1.0))
        img = _over(img, other[None, None] * (0.6 + 0.6 * strand[..., None]), patch * rng.uniform(0.5, 0.9))
    return img * _shading(rng, h, w, 0.5)[..., None]


def _bricks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    u, v = _rotate(xx, yy, rng.uniform(-0.2, 0.2) + (np.pi / 2 if rng.random() < 0.15 else 0.0), w / 2, h / 2)
    u, v = u + 1000.0, v + 1000.0
    bh = rng.uniform(8, 20)
    bw = bh * rng.uniform(1.8, 3.5)
    mortar = rng.uniform(0.8, 3.0)
    row = np.floor(v / bh).astype(np.int64)
    shift = np.where(row % 2 == 1, 0.5 * bw, 0.0)
    uu = u + shift
    col = np.floor(uu / bw).astype(np.int64)
    lu = uu - col * bw
    lv = v - row * bh
    edge = np.minimum(np.minimum(lu, bw - lu), np.minimum(lv, bh - lv))
    brick_a = _smoothstep(mortar * 0.5, mortar * 0.5 + 1.0, edge)
    base_hue = rng.choice([rng.uniform(0.0, 0.07), rng.uniform(0.07, 0.14), rng.random()])
    base_sat, base_val = rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.8)
    var = rng.random((17, 13, 3))
    palette = np.stack(
        [
            _hsv(
                base_hue + 0.05 * (var[i, j, 0] - 0.5),
                base_sat * (0.7 + 0.6 * var[i, j, 1]),
                base_val * (0.7 + 0.5 * var[i, j, 2]),
            )
            for i in range(17)
            for j in range(13)
        ]
    ).reshape(17, 13, 3)
    brick_rgb = palette[row % 17, col % 13]
    tex = _fbm(rng, xx / rng.uniform(2, 5), yy / rng.uniform(2, 5), octaves=3)
    brick_rgb = brick_rgb * (0.85 + 0.3 * tex[..., None])
    brick_rgb = brick_rgb * (0.85 + 0.15 * _smoothstep(0, 3, edge))[..., None]  # worn edges
    mortar_hue, mortar_sat = rng.uniform(0.05, 0.15), rng.uniform(0, 0.25)
    mortar_val = rng.choice([rng.uniform(0.55, 0.9), rng.uniform(0.1, 0.3)])  # light or dark mortar
    mortar_rgb = _hsv(mortar_hue, mortar_sat, mortar_val)
    mortar_img = mortar_rgb[None, None] * (0.85 + 0.3 * tex[..., None])
    img = _over(mortar_img, brick_rgb, brick_a)
    return img * _shading(rng, h, w, 0.5)[..., None]


def _leaves(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    soil = _hsv(rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.8), rng.uniform(0.08, 0.3))
    bg = _fbm(rng, xx / 8, yy / 8, octaves=4)
    img = soil[None, None] * (0.6 + 0.8 * bg[..., None])
    season = rng.choice([rng.uniform(0.2, 0.38), rng.uniform(0.0, 0.15), rng.random()])
    n = int(rng.integers(15, 40) * (h * w) / (128 * 128))
    for _ in range(n):
        length = rng.uniform(8, 28)
        width = length * rng.uniform(0.25, 0.5)
        lx, ly = rng.uniform(-10, w + 10), rng.uniform(-10, h + 10)
        a, b = _rotate(xx, yy, rng.uniform(0, 2 * np.pi), lx, ly)
        t = (a / length + 1) / 2
        inside_t = (t > 0) & (t < 1)
        half = width * np.sin(np.pi * np.clip(t, 0, 1)) ** rng.uniform(0.6, 1.0)
        alpha = np.clip(half - np.abs(b) + 0.5, 0, 1) * inside_t
        stem = np.clip(0.8 - np.abs(b), 0, 1) * (t <= 0) * (t > -0.25)
        if not (alpha.any() or stem.any()):
            continue
        col = _hsv(season + rng.uniform(-0.05, 0.05), rng.uniform(0.4, 0.95), rng.uniform(0.3, 0.85))
        shade = 1.0 - 0.35 * np.clip(np.abs(b) / (half + 1e-6), 0, 1)
        vein_phase = (a + np.abs(b) * rng.uniform(0.8, 1.5)) / rng.uniform(3, 6)
        veins = np.clip(1.0 - np.abs((vein_phase % 1.0) - 0.5) * 8, 0, 1) * 0.2
        midrib = np.clip(1.0 - np.abs(b), 0, 1) * 0.35
        leaf = col[None, None] * shade[..., None] + (veins + midrib)[..., None] * 0.6
        img = _over(img, leaf, alpha)
        img = _over(img, col * 0.6, stem)
    return img * _shading(rng, h, w, 0.4)[..., None]


_GENERATORS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "landscape": _landscape,
    "stripes": _stripes,
    "checkerboard": _checkerboard,
    "rings": _rings,
    "bubbles": _bubbles,
    "waves": _waves,
    "polygons": _polygons,
    "fur": _fur,
    "bricks": _bricks,
    "leaves": _leaves,
}


# --------------------------------------------------------------------------------------------------
# rendering one image, and the whole set


def _finish(rng: np.random.Generator, img: np.ndarray, masks: list | None = None) -> Image.Image:
    """Camera-ish post-processing: exposure/contrast/saturation, optional flip, blur and sensor noise.
    ``masks``: per-pixel label maps of the image, flipped in place (list items replaced) with it."""
    img = np.clip(img, 0, 1)
    gray = img.mean(axis=-1, keepdims=True)
    img = gray + (img - gray) * rng.uniform(0.75, 1.2)  # saturation
    img = (img - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.06, 0.06)  # contrast, exposure
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.2)
    if rng.random() < 0.5:
        img = img[:, ::-1]
        for k in range(len(masks or [])):
            masks[k] = np.ascontiguousarray(masks[k][:, ::-1])
    pil = Image.fromarray(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")
    radius = rng.uniform(0.0, 1.0)
    if radius > 0.35:
        pil = pil.filter(ImageFilter.GaussianBlur(radius))
    sigma = rng.uniform(0.0, 2.5)
    arr = np.asarray(pil, dtype=np.float64) + rng.normal(0.0, sigma, (pil.height, pil.width, 1)) * np.array(
        [1.0, 0.9, 1.1]
    )
    return Image.fromarray(np.rint(np.clip(arr, 0, 255)).astype(np.uint8), "RGB")


def render_sample(label: str, index: int, seed: int = 0) -> Image.Image:
    """Render image ``index`` of class ``label`` (deterministic in ``(seed, label, index)``)."""
    class_index = CLASSES.index(label)
    rng = np.random.default_rng([seed, class_index, index])
    w, h = (int(x) for x in rng.integers(MIN_SIDE, MAX_SIDE + 1, 2))
    return _finish(rng, _GENERATORS[label](rng, h, w))


def _encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


def _val_indices(per_class: int, seed: int, class_index: int) -> set[int]:
    n_val = max(1, int(round(per_class * VAL_FRACTION))) if per_class > 1 else 0
    perm = np.random.default_rng([seed, class_index, 1_000_003]).permutation(per_class)
    return {int(i) for i in perm[:n_val]}


def generate_samples(out_dir: str | Path, per_class: int = 32, seed: int = 0) -> list[dict[str, str]]:
    """Write the sample set to ``out_dir`` and return its index rows.

    Writes ``<out_dir>/<class>/<class>_<i:03d>.jpg`` for every class and ``<out_dir>/index.csv`` with
    columns ``image_id,path,label,split`` (path relative to ``out_dir``; a deterministic, per-class
    stratified 25% of images are ``val``).
    """
    out_dir = Path(out_dir)
    rows: list[dict[str, str]] = []
    for class_index, label in enumerate(CLASSES):
        (out_dir / label).mkdir(parents=True, exist_ok=True)
        val = _val_indices(per_class, seed, class_index)
        for i in range(per_class):
            image_id = f"{label}_{i:03d}"
            rel = f"{label}/{image_id}.jpg"
            (out_dir / rel).write_bytes(_encode_jpeg(render_sample(label, i, seed)))
            split = "val" if i in val else "train"
            rows.append({"image_id": image_id, "path": rel, "label": label, "split": split})
    with open(out_dir / INDEX_NAME, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image_id", "path", "label", "split"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


# --------------------------------------------------------------------------------------------------
# scenes: images made of regions of several classes, with per-pixel masks (the dense linear probe's data)

SCENES_DIR = Path(__file__).parent / "assets" / "scenes"
SCENE_SIDE = 128


@dataclass(frozen=True)
class SceneRecord:
    image_id: str
    path: Path
    mask_path: Path  # uint8 PNG, the class index (``CLASSES``) of every pixel
    split: str


def render_scene(index: int, seed: int = 0, side: int = SCENE_SIDE) -> tuple[Image.Image, np.ndarray]:
    """Scene ``index``: 2-4 regions (a warped Voronoi partition), each a texture of a distinct class.
    Returns the RGB image and its uint8 (H, W) mask of class indices (deterministic in ``(seed, index, side)``).
    ``side``: the image's side in pixels; textures keep their pixel scale, so a larger side shows more of them."""
    rng = np.random.default_rng([seed, 7_919, index])
    h = w = side
    k = int(rng.integers(2, 5))
    classes = rng.choice(len(CLASSES), size=k, replace=False)
    yy, xx = _grid(h, w)
    warp = 12.0 * (_fbm(rng, xx / 40, yy / 40, octaves=3) - 0.5)
    centers = rng.uniform(0.15, 0.85, (k, 2)) * (h, w)
    dist = np.stack([np.hypot(yy + warp - cy, xx - warp - cx) for cy, cx in centers])
    region = dist.argmin(0)
    mask = classes[region].astype(np.uint8)
    img = np.zeros((h, w, 3))
    for j, c in enumerate(classes):
        layer = _GENERATORS[CLASSES[int(c)]](np.random.default_rng([seed, 7_919, index, j]), h, w)
        img[region == j] = layer[region == j]
    masks = [mask]
    pil = _finish(rng, img, masks)
    return pil, masks[0]


def generate_scenes(out_dir: str | Path, count: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """Write ``count`` scenes (JPEG + PNG mask) and ``index.csv`` (image_id, path, mask, split; every 4th is val)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        img, mask = render_scene(i, seed)
        image_id = f"scene_{i:03d}"
        (out_dir / f"{image_id}.jpg").write_bytes(_encode_jpeg(img))
        Image.fromarray(mask, "L").save(out_dir / f"{image_id}.png", optimize=True)
        rows.append(
            {
                "image_id": image_id,
                "path": f"{image_id}.jpg",
                "mask": f"{image_id}.png",
                "split": "val" if i % 4 == 3 else "train",
            }
        )
    with open(out_dir / INDEX_NAME, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image_id", "path", "mask", "split"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def load_scene_index(split: str | None = None, root: str | Path | None = None) -> list[SceneRecord]:
    """The scenes (shipped in :data:`SCENES_DIR` unless ``root``) of ``split`` ("train", "val" or None)."""
    if split not in (None, "train", "val"):
        raise ValueError(f"split must be 'train', 'val' or None, not {split!r}")
    root = Path(root) if root is not None else SCENES_DIR
    with open(root / INDEX_NAME, newline="") as f:
        return [
            SceneRecord(r["image_id"], (root / r["path"]).resolve(), (root / r["mask"]).resolve(), r["split"])
            for r in csv.DictReader(f)
            if split in (None, r["split"])
        ]


if __name__ == "__main__":
    import shutil

    if SAMPLES_DIR.exists():
        shutil.rmtree(SAMPLES_DIR)
    rows = generate_samples(SAMPLES_DIR)
    total = sum(p.stat().st_size for p in SAMPLES_DIR.rglob("*") if p.is_file())
    print(f"wrote {len(rows)} images to {SAMPLES_DIR} ({total / 1e6:.2f} MB)")
    if SCENES_DIR.exists():
        shutil.rmtree(SCENES_DIR)
    rows = generate_scenes(SCENES_DIR)
    total = sum(p.stat().st_size for p in SCENES_DIR.rglob("*") if p.is_file())
    print(f"wrote {len(rows)} scenes with masks to {SCENES_DIR} ({total / 1e6:.2f} MB)")
