"""Sources: built-in samples, a plain folder, and Hugging Face data sets (imagefolder, parquet, saved)."""

import numpy as np
import pytest
from PIL import Image

from pipelines.config import load_config
from pipelines.sources import SourceConfig, SourceError, open_source
from radio.images import decode_image


def _folder(root, n_per_class=3):
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def _open(*overrides):
    return open_source(load_config(SourceConfig, None, list(overrides)))


def test_samples_splits_are_disjoint_and_labeled():
    train, val = _open("kind=samples", "split=train"), _open("kind=samples", "split=val")
    assert len(train.records) == 240 and len(val.records) == 80
    assert not {r.image_id for r in train.records} & {r.image_id for r in val.records}
    assert len(train.labels) == 10 and all(0 <= r.label_index < 10 for r in train.records)
    assert train.fingerprint != val.fingerprint
    assert _open("kind=samples", "split=train", "limit=5").records == train.records[:5]


def test_folder_labels_from_subfolders_and_fingerprint_ignores_location(tmp_path):
    a = _open("kind=folder", f"path={_folder(tmp_path / 'a')}")
    b = _open("kind=folder", f"path={_folder(tmp_path / 'b')}")
    assert a.labels == ["cats", "dogs"] and [r.label_index for r in a.records] == [0, 0, 0, 1, 1, 1]
    assert a.fingerprint == b.fingerprint  # same files elsewhere: same data
    assert decode_image(a.read_bytes(a.records[0])).shape == (20, 30, 3)
    with pytest.raises(SourceError, match="not a directory"):
        _open("kind=folder", f"path={tmp_path / 'missing'}")


def test_folder_hidden_and_unlistable_entries_are_recorded_not_fingerprinted(tmp_path, monkeypatch):
    import os

    from pipelines.sources import Unreadable

    root = _folder(tmp_path / "a")
    before = _open("kind=folder", f"path={root}")
    (root / ".DS_Store").write_bytes(b"x")
    (root / "dogs" / "locked").mkdir()
    (root / "dogs" / "locked" / "9.png").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path="."):  # a folder we may not list, even as root
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    src = _open("kind=folder", f"path={root}")
    assert src.records == before.records and src.fingerprint == before.fingerprint  # a .DS_Store changes nothing
    assert src.excluded == [
        {"image_id": ".DS_Store", "reason": "hidden file, not read (its name starts with '.')"},
        {"image_id": "dogs/locked", "reason": "folder not readable: Permission denied"},
    ]

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(Unreadable, match="^unreadable: Permission denied$"):
        src.read_bytes(src.records[0])


def test_hf_imagefolder_parquet_and_saved(tmp_path):
    import datasets

    root = _folder(tmp_path / "imgs")
    src = _open("kind=hf", "builder=imagefolder", f"path={root}", "split=train")
    assert len(src.records) == 6 and src.labels == ["cats", "dogs"]
    assert decode_image(src.read_bytes(src.records[3])).ndim == 3
    ds = datasets.load_dataset("imagefolder", data_dir=str(root), split="train")
    ds.to_parquet(str(tmp_path / "data.parquet"))
    pq_src = _open("kind=hf", "builder=parquet", f"path={tmp_path / 'data.parquet'}", "split=train", "limit=4")
    assert len(pq_src.records) == 4 and decode_image(pq_src.read_bytes(pq_src.records[0])).shape[2] == 3
    ds.save_to_disk(str(tmp_path / "saved"))
    saved = _open("kind=hf", f"path={tmp_path / 'saved'}")
    assert len(saved.records) == 6 and saved.labels == ["cats", "dogs"]
    with pytest.raises(SourceError, match="no column 'picture'"):
        _open("kind=hf", f"path={tmp_path / 'saved'}", "image_column=picture")


def test_string_labels_become_class_indices(tmp_path):
    import datasets

    rng = np.random.default_rng(1)
    import io

    rows = {"image": [], "label": [], "id": []}
    for i, name in enumerate(["zebra", "ant", "zebra", "bee", "ant"]):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
        rows["image"].append({"bytes": buf.getvalue(), "path": None})
        rows["label"].append(name)
        rows["id"].append(f"img-{i}")
    ds = datasets.Dataset.from_dict(
        rows,
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.Value("string"), "id": datasets.Value("string")}
        ),
    )
    ds.to_parquet(str(tmp_path / "s.parquet"))
    src = _open("kind=hf", "builder=parquet", f"path={tmp_path / 's.parquet'}", "split=train", "id_column=id")
    assert src.labels == ["ant", "bee", "zebra"] and [r.label_index for r in src.records] == [2, 0, 2, 1, 0]
    assert src.describe()["labels"] == ["ant", "bee", "zebra"]  # recorded in the manifest
    ds2 = datasets.Dataset.from_dict(
        {"image": rows["image"][:2], "label": [1.5, 2.5]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("float32")}),
    )
    ds2.to_parquet(str(tmp_path / "f.parquet"))
    with pytest.raises(SourceError, match="label_column 'label'.*float"):
        _open("kind=hf", "builder=parquet", f"path={tmp_path / 'f.parquet'}", "split=train")
