"""The training data path: exactly-once splitting across ranks and workers, shuffling, exact resume."""

from collections import Counter

import numpy as np
import pytest
import torch

from pipelines.synthetic import make_synthetic_cache
from radio.cache import CacheMismatch, CacheReader
from radio.data import CacheStream, LoaderConfig, make_loader

LIMIT, VIEWS = 20, 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "c"
    make_synthetic_cache(out, limit=LIMIT, views=VIEWS, per_shard=6)  # units of 6, 6, 6, 2 images
    return str(out)


def _epoch_keys(cache, world, workers, epoch, batch_size=5):
    seen, counts = [], []
    for rank in range(world):
        s = CacheStream(
            cache,
            ["syn-clip", "syn-sam"],
            rank=rank,
            world_size=world,
            num_workers=workers,
            batch_size=batch_size,
            shuffle_buffer=8,
            seed=1,
        )
        s.set_epoch(epoch)
        loader = make_loader(s, LoaderConfig(num_workers=workers, prefetch_factor=2))
        n = 0
        for b in loader:
            n += 1
            seen += [(i, int(v)) for i, v, w in zip(b["image_id"], b["view_index"], b["weight"], strict=True) if w > 0]
        counts.append(n)
        assert n == len(s)
    return seen, counts


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 1)])
def test_every_key_exactly_once_per_epoch(cache, world, workers):
    seen, counts = _epoch_keys(cache, world, workers, epoch=0)
    c = Counter(seen)
    assert len(c) == LIMIT * VIEWS and max(c.values()) == 1
    assert len(set(counts)) == 1  # every rank takes the same number of steps


def test_new_order_each_epoch(cache):
    a, _ = _epoch_keys(cache, 1, 0, epoch=0)
    b, _ = _epoch_keys(cache, 1, 0, epoch=1)
    assert sorted(a) == sorted(b) and a != b


def test_batch_contents(cache):
    s = CacheStream(cache, ["syn-clip", "syn-sam"], batch_size=4)
    b = next(iter(make_loader(s, LoaderConfig(num_workers=0))))
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (4, 3, 32, 32)
    assert b["syn-clip/summary"].shape == (4, 8) and b["syn-clip/features"].shape == (4, 4, 4, 6)
    assert "syn-sam/summary" not in b and b["syn-sam/features"].shape == (4, 8, 8, 5)
    assert b["syn-clip/features"].dtype == torch.float16  # stored dtype: decoded on the training device


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_is_exact(cache, workers):
    def stream():
        s = CacheStream(cache, ["syn-clip"], num_workers=workers, batch_size=3, shuffle_buffer=8, seed=3)
        s.set_epoch(2)
        return s

    full = [b["image_id"] for b in make_loader(stream(), LoaderConfig(num_workers=workers, prefetch_factor=2))]
    s = stream()
    s.set_epoch(2, skip_batches=5)
    rest = [b["image_id"] for b in make_loader(s, LoaderConfig(num_workers=workers, prefetch_factor=2))]
    assert rest == full[5:]


def test_reader_refuses_missing_teacher_and_stale_fingerprint(cache):
    with pytest.raises(CacheMismatch, match="syn-dino"):
        CacheReader(cache, ["syn-clip", "syn-dino"])
    with pytest.raises(CacheMismatch, match="stale"):
        CacheReader(cache, ["syn-clip"], expect_fingerprints={"syn-clip": "other"})


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_stream_equals_a_row_by_row_read(tmp_path, dtype):
    """The column-wise batches hold, for every key, exactly what a plain row-by-row read of the cache gives:
    same image, label and targets (decoded), in the stored dtype until decoded."""
    from radio.cache import decode_features

    root = tmp_path / dtype
    make_synthetic_cache(root, limit=14, views=2, per_shard=5, target_dtype=dtype)
    reader = CacheReader(str(root))
    ref = {}
    for batch in reader.iter_batches(batch_rows=3):
        for i in range(len(batch)):
            row = {t: {k: v[i : i + 1] for k, v in cols.items()} for t, cols in batch.teachers.items()}
            ref[(batch.image_id[i], int(batch.view_index[i]))] = (
                reader.student_pixels(batch, [i])[0],
                int(batch.label_index[i]),
                row,
            )
    seen = set()
    s = CacheStream(str(root), ["syn-clip", "syn-sam"], batch_size=4, shuffle_buffer=7, read_rows=3, seed=1)
    for b in make_loader(s, LoaderConfig(num_workers=0)):
        for k, (image_id, v, w) in enumerate(
            zip(b["image_id"], b["view_index"].tolist(), b["weight"].tolist(), strict=True)
        ):
            if w == 0:
                continue
            image, label, row = ref[(image_id, v)]
            seen.add((image_id, v))
            assert np.array_equal(b["image"][k].permute(1, 2, 0).numpy(), image) and int(b["label"][k]) == label
            for t in ("syn-clip", "syn-sam"):
                cols = {key[len(t) + 1 :]: val[k : k + 1] for key, val in b.items() if key.startswith(f"{t}/")}
                assert set(cols) == set(row[t])
                assert cols["features"].dtype == (torch.uint8 if dtype == "int8" else torch.float16)
                assert torch.equal(decode_features(cols), decode_features(row[t]))
                if "summary" in cols:
                    assert np.array_equal(cols["summary"].numpy(), row[t]["summary"])
    assert seen == set(ref)


def test_a_shard_checked_once_is_not_hashed_again_while_unchanged(cache, tmp_path, monkeypatch):
    """Checking every byte costs one hash per shard per run, not per epoch: a shard found intact is noted with
    its identity (size, inode, mtime, ctime) and later epochs, in fresh loader workers, only stat it. Any write
    to it changes its ctime, so it is hashed again, and a changed byte is still an error."""
    import os
    import shutil

    import xxhash

    from radio.cache import CacheError

    local = tmp_path / "c"
    shutil.copytree(cache, local)
    log = tmp_path / "hashed.log"
    real = xxhash.xxh3_128_hexdigest

    def counting(data):
        with open(log, "a") as f:  # from the loader's worker processes too
            f.write("x\n")
        return real(data)

    monkeypatch.setattr(xxhash, "xxh3_128_hexdigest", counting)
    s = CacheStream(str(local), ["syn-clip", "syn-sam"], num_workers=2, batch_size=5, shuffle_buffer=8, seed=1)

    def epoch(e: int) -> int:
        log.write_text("")
        s.set_epoch(e)
        for _ in make_loader(s, LoaderConfig(num_workers=2, prefetch_factor=2)):
            pass
        return len(log.read_text().splitlines())

    files = 3 * len(list((local / "views").glob("unit-*.parquet")))  # views and two teachers per unit
    assert epoch(0) == files
    assert epoch(1) == 0
    victim = local / "teachers" / "syn-sam" / "unit-00001.parquet"
    victim.write_bytes(victim.read_bytes())  # the same bytes written again: a new ctime
    assert epoch(2) == 1
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x5A
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime kept: only ctime tells
    with pytest.raises(CacheError, match=r"syn-sam/unit-00001\.parquet: its content changed"):
        epoch(3)


@pytest.mark.parametrize("first", ["radio", "pyarrow"])
def test_arrows_allocator_keeps_its_memory_where_radio_is_imported_first(first):
    """Arrow's mimalloc gives freed memory back after 10 ms unless told otherwise, which it reads when pyarrow
    loads: ``import radio`` sets it first (a user's own value kept); after pyarrow it is too late, and a stream
    says so once instead of running slower unexplained."""
    import subprocess
    import sys

    other = "pyarrow" if first == "radio" else "radio"
    code = (
        f"import os, {first}, {other}, radio; "
        "import pyarrow as pa; "
        "print(os.environ['MIMALLOC_PURGE_DELAY'], radio._ARROW_FIRST, pa.default_memory_pool().backend_name)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "MIMALLOC_PURGE_DELAY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    delay, late, backend = out.split()
    assert delay == "-1" and late == str(first == "pyarrow") and backend == "mimalloc", out
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, "MIMALLOC_PURGE_DELAY": "5"}
    ).stdout
    assert out.split()[:2] == ["5", "False"], out


def test_a_stream_says_once_when_pyarrow_was_loaded_first(cache, monkeypatch, caplog):
    import radio
    import radio.data

    monkeypatch.setattr(radio, "_ARROW_FIRST", True)
    monkeypatch.setattr(radio.data, "_WARNED", False)
    stream = CacheStream(cache, ["syn-clip"], batch_size=4)
    with caplog.at_level("WARNING", logger="radio.data"):
        for _ in range(2):
            stream.set_epoch(0)
            next(iter(stream))
    said = [r.getMessage() for r in caplog.records if "imported before radio" in r.getMessage()]
    assert len(said) == 1 and "MIMALLOC_PURGE_DELAY=-1" in said[0], said
