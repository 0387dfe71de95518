"""The built-in sample image set: complete, well split, reproducible, and learnable."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.samples import (
    MAX_SIDE,
    MIN_SIDE,
    SAMPLES_DIR,
    generate_samples,
    load_sample_index,
    sample_classes,
)

PER_CLASS = 32


@pytest.fixture(scope="module")
def records():
    return load_sample_index()


def test_index_lists_every_file(records):
    listed = {r.path for r in records}
    on_disk = {p.resolve() for p in SAMPLES_DIR.rglob("*.jpg")}
    assert listed == on_disk
    assert len(records) == len(sample_classes()) * PER_CLASS
    assert all(r.path.is_absolute() and r.path.is_file() for r in records)


def test_ids_unique_and_labels_consistent(records):
    ids = [r.image_id for r in records]
    assert len(set(ids)) == len(ids)
    classes = sample_classes()
    assert len(classes) == len(set(classes)) == 10
    for r in records:
        assert r.label in classes
        assert classes[r.label_index] == r.label
        assert r.image_id.startswith(r.label + "_")
        assert r.path.stem == r.image_id
        assert r.path.parent.name == r.label


def test_splits_stratified(records):
    train = load_sample_index("train")
    val = load_sample_index("val")
    assert len(train) + len(val) == len(records)
    assert not {r.image_id for r in train} & {r.image_id for r in val}
    val_per_class = Counter(r.label for r in val)
    train_per_class = Counter(r.label for r in train)
    for c in sample_classes():
        assert val_per_class[c] == PER_CLASS // 4
        assert train_per_class[c] == PER_CLASS - PER_CLASS // 4
    with pytest.raises(ValueError):
        load_sample_index("test")


def test_images_decode_rgb_in_size_range(records):
    sizes = set()
    for r in records:
        with Image.open(r.path) as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            w, h = im.size
            im.load()
        assert MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE
        sizes.add((w, h))
    assert len(sizes) > 50  # sizes and aspect ratios really vary


def test_shipped_assets_small():
    total = sum(p.stat().st_size for p in SAMPLES_DIR.rglob("*") if p.is_file())
    assert total < 1_600_000


def test_regenerating_gives_identical_files(tmp_path):
    generate_samples(tmp_path, per_class=PER_CLASS, seed=0)
    shipped = sorted(p.relative_to(SAMPLES_DIR) for p in SAMPLES_DIR.rglob("*") if p.is_file())
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert shipped == fresh
    # The pixels come from numpy alone; the JPEG bytes also depend on the libjpeg build, so a newer
    # Pillow may encode them differently. Compare decoded pixels, with a margin for that.
    import numpy as np
    from PIL import Image

    assert (SAMPLES_DIR / "index.csv").read_bytes() == (tmp_path / "index.csv").read_bytes()
    differing = []
    for p in shipped:
        if p.suffix != ".jpg" or (SAMPLES_DIR / p).read_bytes() == (tmp_path / p).read_bytes():
            continue
        a = np.asarray(Image.open(SAMPLES_DIR / p), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / p), dtype=np.int16)
        if a.shape != b.shape or np.abs(a - b).mean() > 1.0:
            differing.append(str(p))
    assert not differing, (
        f"{len(differing)} shipped files differ from the generator (e.g. {differing[:3]}); "
        "run `python -m pipelines.samples` to regenerate them"
    )
    with open(SAMPLES_DIR / "index.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["image_id", "path", "label", "split"]


# ---- learnability: a cheap descriptor + kNN separates the classes, but mean colour does not --------


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def _descriptor(img: np.ndarray) -> list[np.ndarray]:
    """Cheap hand-made features, as blocks: 8x8 downsampled colour, gradient-orientation histogram
    (circular autocorrelation, so rotation-invariant), gradient-magnitude histogram, radial power
    spectrum (log, normalised)."""
    pil = Image.fromarray(np.rint(img * 255).astype(np.uint8))
    small = np.asarray(pil.resize((8, 8), Image.Resampling.BOX), dtype=np.float64).ravel() / 255.0
    gray = np.asarray(pil.convert("L").resize((96, 96), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    gy, gx = np.gradient(gray)
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)
    orient = np.histogram(ang, bins=12, range=(0, np.pi), weights=mag)[0]
    orient = orient / (orient.sum() + 1e-9)
    orient_ac = np.array([orient @ np.roll(orient, s) for s in range(7)])
    mags = np.histogram(mag, bins=12, range=(0, 0.3))[0] / mag.size
    power = np.abs(np.fft.fft2(gray - gray.mean())) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(96), np.fft.fftfreq(96), indexing="ij")
    radial = np.histogram(np.hypot(fx, fy), bins=np.geomspace(1 / 96, 0.5, 13), weights=power)[0]
    radial = np.log(radial / (radial.sum() + 1e-12) + 1e-9)
    return [small, orient_ac, mags, radial]


def _mean_color(img: np.ndarray) -> list[np.ndarray]:
    return [img.reshape(-1, 3).mean(axis=0)]


def _knn_accuracy(feature, k: int = 5) -> float:
    """Train->val kNN accuracy; each feature block is standardised on train and weighted equally."""
    train = load_sample_index("train")
    val = load_sample_index("val")
    ft = [feature(_load(r.path)) for r in train]
    fv = [feature(_load(r.path)) for r in val]
    xt_blocks, xv_blocks = [], []
    for b in range(len(ft[0])):
        bt = np.stack([f[b] for f in ft])
        bv = np.stack([f[b] for f in fv])
        mu, sd = bt.mean(axis=0), bt.std(axis=0) + 1e-9
        scale = sd * np.sqrt(bt.shape[1])
        xt_blocks.append((bt - mu) / scale)
        xv_blocks.append((bv - mu) / scale)
    xt, xv = np.concatenate(xt_blocks, axis=1), np.concatenate(xv_blocks, axis=1)
    yt = np.array([r.label_index for r in train])
    yv = np.array([r.label_index for r in val])
    d = ((xv[:, None, :] - xt[None, :, :]) ** 2).sum(-1)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    n_cls = len(sample_classes())
    pred = np.array([np.bincount(yt[row], minlength=n_cls).argmax() for row in nn])
    return float((pred == yv).mean())


def test_classes_separable_by_cheap_descriptor():
    acc = _knn_accuracy(_descriptor)
    assert acc > 0.5, f"kNN val accuracy {acc:.2f} on the cheap descriptor (chance is 0.10)"


def test_mean_color_alone_is_not_enough():
    acc = _knn_accuracy(_mean_color)
    assert acc < 0.6, f"mean colour alone gives kNN val accuracy {acc:.2f}: classes are too easy"


def test_scenes_masks_are_shipped_deterministic_and_aligned(tmp_path):
    """The dense probe's data: scenes of 2-4 class regions with per-pixel masks, regenerated identically."""
    import numpy as np
    from PIL import Image

    from pipelines.samples import CLASSES, SCENES_DIR, generate_scenes, load_scene_index, render_scene

    recs = load_scene_index()
    assert len(recs) == 48 and {r.split for r in recs} == {"train", "val"} and len(load_scene_index("val")) == 12
    seen = set()
    for r in recs:
        img, mask = Image.open(r.path), np.asarray(Image.open(r.mask_path))
        assert img.size == (mask.shape[1], mask.shape[0]) and mask.dtype == np.uint8 and mask.max() < len(CLASSES)
        assert 2 <= len(np.unique(mask)) <= 4
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(CLASSES)))  # every class appears somewhere
    generate_scenes(tmp_path / "s", count=4)
    for i in range(4):  # masks bit-identical (they come from numpy alone); images as the samples are compared
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "s" / f"scene_{i:03d}.png")),
            np.asarray(Image.open(SCENES_DIR / f"scene_{i:03d}.png")),
        )
        a = np.asarray(Image.open(tmp_path / "s" / f"scene_{i:03d}.jpg"), dtype=np.int16)
        assert np.abs(a - np.asarray(Image.open(SCENES_DIR / f"scene_{i:03d}.jpg"), dtype=np.int16)).mean() <= 1.0
    # the mask labels the pixels: each region's texture differs from the others' (flip applied to both)
    img, mask = render_scene(5)
    x = np.asarray(img, dtype=np.float64)
    means = [x[mask == c].mean(0) for c in np.unique(mask)]
    assert min(np.abs(a - b).sum() for i, a in enumerate(means) for b in means[i + 1 :]) > 5
    assert sum(p.stat().st_size for p in SCENES_DIR.rglob("*") if p.is_file()) < 700_000
