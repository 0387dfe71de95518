"""`radio cache` end to end on the built-in samples with tiny teachers (one shared Ray instance)."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.cache import CacheJobConfig, run_cache_job
from pipelines.cli import main
from pipelines.config import load_config
from radio.cache import CacheMismatch, CacheReader, column_tensor, load_manifest
from radio.cache.store import CacheLocation
from radio.targets import resample_targets

LIMIT, PER_SHARD, VIEWS = 24, 6, 2  # 4 units
BASE = [
    f"source.limit={LIMIT}",
    f"images_per_shard={PER_SHARD}",
    f"views.num_views={VIEWS}",
    "student_resolution=32",
    "target_patch=8",
    "mlflow.experiment=test-cache",
    "progress=false",
]


def _cfg(output, *extra) -> CacheJobConfig:
    return load_config(CacheJobConfig, None, [f"output={output}", *BASE, *extra])


def _digest(root: Path) -> dict[str, str]:
    """Content of the cache's shards, their commit records and the merged statistics (files set aside as
    damaged, .damaged-*, are not part of it; the manifest holds times)."""
    files = [p for pattern in ("*.parquet", "*.commit", "*.moments") for p in root.rglob(pattern)]
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(files)
        if not p.name.startswith(".")
    }


def _counts(root: Path) -> dict:
    """What the manifest says the cache holds (and `radio cache info` shows): must stay true through repairs."""
    m = load_manifest(CacheLocation(str(root)))
    return {
        "units": m.units,
        "images": m.images,
        "complete": m.complete,
        "views_rows": m.views.rows,
        "skipped": [(s.image_id, s.reason) for s in m.skipped],
        "teachers": {t: (e.rows, e.complete, len(e.shards)) for t, e in m.teachers.items()},
    }


@pytest.fixture(scope="module")
def cache_dir(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    assert main(["cache", f"output={out}", *BASE, "teachers=[tiny-clip,tiny-sam]"]) == 0
    return out


def test_rows_keys_and_manifest(cache_dir):
    m = load_manifest(CacheLocation(str(cache_dir)))
    assert m.complete and m.images == LIMIT and m.units == LIMIT // PER_SHARD
    assert m.views.rows == LIMIT * VIEWS
    keys = []
    for f in sorted((cache_dir / "views").glob("*.parquet")):
        t = pq.read_table(f, columns=["image_id", "view_index"])
        keys += list(zip(t["image_id"].to_pylist(), t["view_index"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == LIMIT * VIEWS
    for name in ("tiny-clip", "tiny-sam"):
        t = m.teachers[name]
        assert t.rows == LIMIT * VIEWS and t.complete and t.stats.exact
        assert len(t.stats.features.mean) == t.feature_dim
    assert m.teachers["tiny-clip"].stats.summary is not None and m.teachers["tiny-sam"].stats.summary is None
    assert m.mlflow_run_id
    # student views at 32 px, target_patch 8: targets stored at 4x4 (tiny-sam's 8x8 area-averaged, tiny-clip native)
    assert all(tuple(t.layout.grid) == (4, 4) and t.layout.dtype == "float16" for t in m.teachers.values())
    assert tuple(m.teachers["tiny-sam"].layout.native_grid) == (8, 8)


def test_a_fault_in_the_reader_is_not_called_damage(cache_dir, monkeypatch):
    """Only what a damaged file raises (pyarrow's errors, OSError, ValueError) marks a shard damaged; a bug in the
    reader's own code propagates as itself, never sending intact shards to `radio cache repair`."""
    reader = CacheReader(str(cache_dir))

    def broken(self, rel, verify_pages=True):
        raise AttributeError("a bug, not damage")

    monkeypatch.setattr(CacheLocation, "parquet_file", broken)
    with pytest.raises(AttributeError, match="a bug, not damage"):
        list(reader.iter_unit(0))


ROOT = Path(__file__).resolve().parent.parent
LEGACY_HASHING = "a65a87d^"  # the last commit whose teachers were fingerprinted by their loaded tensors


def test_a_cache_fingerprinted_by_tensors_keeps_its_targets(ray_session, tmp_path, capsys):
    """A cache written before teachers were fingerprinted by their checkpoint files (by radio itself, at the last
    commit that hashed loaded tensors) resumes with today's code: the same weights are recognised, nothing is
    recomputed, the cache keeps its fingerprint and stays byte-identical, and its stream reads."""
    old = tmp_path / "old-radio"
    old.mkdir()
    archive = subprocess.run(
        ["git", "archive", LEGACY_HASHING], cwd=ROOT, capture_output=True, timeout=120, check=False
    )
    assert archive.returncode == 0, f"this test needs the repository's history: {archive.stderr.decode()[-500:]}"
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True, timeout=120)
    out = tmp_path / "c"
    args = [f"output={out}", *BASE[:-1], "progress=false", "teachers=[tiny-clip]", "mlflow.enabled=false"]
    env = {**os.environ, "PYTHONPATH": str(old)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "cache", *args],
        cwd=old,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    before, fp = _digest(out), load_manifest(CacheLocation(str(out))).teachers["tiny-clip"].fingerprint
    s = run_cache_job(_cfg(out, "teachers=[tiny-clip]", "mlflow.enabled=false"))
    assert s.computed == {"views": 0, "tiny-clip": 0}  # a no-op rerun does not even load the teacher
    # a lost unit: the teacher loads, its fingerprint differs, the tensors are recognised, the unit is recomputed
    # under the cache's own fingerprint, and the cache ends byte-identical to what the old code wrote
    for f in ("unit-00003.parquet", "unit-00003.commit"):
        (out / "teachers" / "tiny-clip" / f).unlink()
    s = run_cache_job(_cfg(out, "teachers=[tiny-clip]", "mlflow.enabled=false"))
    assert s.computed == {"views": 0, "tiny-clip": 1}
    assert "the same weights are loaded now, so its targets stand" in capsys.readouterr().err
    assert _digest(out) == before and load_manifest(CacheLocation(str(out))).teachers["tiny-clip"].fingerprint == fp
    assert CacheReader(str(out)).teachers == ["tiny-clip"]


def test_shards_readable_by_plain_pyarrow_with_shapes(cache_dir):
    m = load_manifest(CacheLocation(str(cache_dir)))
    entry = m.teachers["tiny-sam"]
    spec = entry.spec
    f = cache_dir / "teachers" / "tiny-sam" / "unit-00000.parquet"
    pf = pq.ParquetFile(f)
    t = pf.read()
    feats = column_tensor(t, "features")
    assert feats.dtype == np.float16 and feats.shape == (PER_SHARD * VIEWS, *entry.layout.grid, spec["feature_dim"])
    meta = pf.schema_arrow.metadata
    assert json.loads(meta[b"radio.fingerprint"]) == spec["fingerprint"]
    # plain Arrow: one fixed-size binary value per row, shape and dtype in the field metadata
    field = pf.schema_arrow.field("features")
    shape = json.loads(field.metadata[b"radio.tensor"])
    assert shape == {"shape": [*entry.layout.grid, spec["feature_dim"]], "dtype": "float16"}
    plain = np.frombuffer(t["features"].combine_chunks().buffers()[1], np.float16).reshape(-1, *shape["shape"])
    assert np.array_equal(plain, feats)
    assert "valid_hw" not in t.column_names  # stored maps cover exactly the view: no padding


def test_shards_readable_by_datasets(cache_dir):
    import datasets

    files = sorted(str(p) for p in (cache_dir / "teachers" / "tiny-clip").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    m = load_manifest(CacheLocation(str(cache_dir)))
    entry = m.teachers["tiny-clip"]
    row = ds[0]
    feats = np.frombuffer(row["features"], np.float16).reshape(*entry.layout.grid, entry.feature_dim)
    assert np.isfinite(feats).all() and np.frombuffer(row["summary"], np.float16).shape == (entry.summary_dim,)
    assert len(ds) == LIMIT * VIEWS and row["image_id"] and row["view_index"] in range(VIEWS)


def _replayed_forward(m, batch, name: str, limit: int):
    """Teacher ``name``'s output on each row of ``batch``, recomputed from the source image and the replayed view."""
    from pipelines.sources import SourceConfig, open_source
    from radio.images import decode_image
    from radio.views import ViewPolicy, crop_view, sample_view
    from teachers import create_teacher

    src = open_source(load_config(SourceConfig, None, ["kind=samples", "split=train", f"limit={limit}"]))
    policy = ViewPolicy(**{k: tuple(v) if isinstance(v, list) else v for k, v in m.views.policy.items()})
    by_id = {r.image_id: r for r in src.records}
    teacher = create_teacher(name)
    for i in range(len(batch)):
        img = decode_image(src.read_bytes(by_id[batch.image_id[i]]))
        view = sample_view(policy, batch.image_id[i], int(batch.view_index[i]), img.shape[1], img.shape[0])
        yield teacher([torch.from_numpy(crop_view(img, view)).permute(2, 0, 1)])


def test_values_equal_direct_teacher_forward(cache_dir):
    m = load_manifest(CacheLocation(str(cache_dir)))
    reader = CacheReader(str(cache_dir), ["tiny-clip", "tiny-sam"])
    batch = next(reader.iter_unit(1, batch_rows=5))
    for name in ("tiny-clip", "tiny-sam"):
        for i, out in enumerate(_replayed_forward(m, batch, name, LIMIT)):
            want = resample_targets(out.features_BHWC, m.teachers[name].layout.grid, out.valid_hw_B2)
            np.testing.assert_allclose(
                batch.teachers[name]["features"][i].astype(np.float32), want[0].numpy(), rtol=2e-3, atol=2e-3
            )
            if out.summary_BD is not None:
                np.testing.assert_allclose(
                    batch.teachers[name]["summary"][i].astype(np.float32),
                    out.summary_BD[0].numpy(),
                    rtol=2e-3,
                    atol=2e-3,
                )
        # the stored student view is the same crop, resized (raw uint8 pixels by default)
        assert reader.student_pixels(batch, [0]).shape == (1, 32, 32, 3)


def test_prepare_task_resize_equals_device_resize_bitwise(tmp_path):
    """The job's two places to resize (in the prepare task, default: Pillow, or torchvision's uint8 bilinear for
    SAM2; on the teacher's device, teachers.<t>.resize_in=device) give bitwise the same stored targets, for
    every family that can resize on the host, square and non-square views; teachers with the same input for
    a view share one array. (DINOv3 resizes in float after rescaling: always on its device.)"""
    import pickle

    from pipelines.cache import TeacherWorker, _identity, prepare_unit
    from pipelines.sources import SourceConfig, open_source
    from radio.views import ViewPolicy

    src = open_source(SourceConfig(kind="samples", split="train", limit=6))
    from teachers import TeacherSpec
    from teachers.preprocess import resizes_on_host

    cfg = _cfg(
        tmp_path / "c", "views.ratio=[0.75,1.333]", "teachers=[tiny-clip,tiny-dinov2,tiny-sam,tiny-siglip,tiny-sam2]"
    )
    policy = ViewPolicy(num_views=3, ratio=(0.75, 1.333))
    workers = {t: TeacherWorker(t, {"batch_size": 4}, "cpu", 1, None, "float32") for t in cfg.teachers}
    specs = {t: w.spec()[0] for t, w in workers.items()}
    assert all(resizes_on_host(TeacherSpec.from_dict(d)) for d in specs.values())
    args = (src, src.records, policy, 32, "raw", 10**8, None, 0, 64, _identity(cfg, src))
    resized, _ = prepare_unit(*args, resize_for=specs, keep_crops=False)
    crops, _ = prepare_unit(*args)
    assert resized["crops"] == [] and set(resized["inputs"]) == set(specs) and crops["inputs"] == {}
    assert any(c.shape[0] != c.shape[1] for c in crops["crops"])  # non-square views are covered
    for t, w in workers.items():
        a, b = w.run(resized)["cols"], w.run(crops)["cols"]
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), t
    # tiny-clip and tiny-siglip both take a 32x32 bicubic input for a square view: one array, pickled once
    square, _ = prepare_unit(
        src, src.records, ViewPolicy(num_views=2, ratio=(1.0, 1.0)), *args[3:], resize_for=specs, keep_crops=False
    )
    clip, siglip = square["inputs"]["tiny-clip"], square["inputs"]["tiny-siglip"]
    assert (
        all(a is b and a.shape == (32, 32, 3) for a, b in zip(clip, siglip, strict=True))
        and clip[0] is not square["inputs"]["tiny-sam"][0]
    )
    assert len(pickle.dumps(square["inputs"])) < len(
        pickle.dumps({t: [np.array(x) for x in v] for t, v in square["inputs"].items()})
    )


def test_complete_cache_rerun_is_a_fast_noop(cache_dir):
    before = _digest(cache_dir)
    t0 = time.perf_counter()
    s = run_cache_job(_cfg(cache_dir, "teachers=[tiny-clip,tiny-sam]"))
    assert time.perf_counter() - t0 < 30
    assert s.computed == {"views": 0, "tiny-clip": 0, "tiny-sam": 0}
    assert _digest(cache_dir) == before


def test_changed_view_policy_is_refused(cache_dir, capsys):
    before = _digest(cache_dir)
    with pytest.raises(CacheMismatch, match="views.num_views"):
        run_cache_job(_cfg(cache_dir, "teachers=[tiny-clip]", "views.num_views=3"))
    assert main(["cache", f"output={cache_dir}", *BASE, "views.seed=7"]) == 2
    assert "views.seed" in capsys.readouterr().err
    assert _digest(cache_dir) == before  # a refused run touches nothing


def test_changed_teacher_is_refused_then_rebuilt_alone(cache_dir, tmp_path):
    before = _digest(cache_dir)
    with pytest.raises(CacheMismatch, match="dtype"):
        run_cache_job(_cfg(cache_dir, "teachers=[tiny-clip,tiny-sam]", "teachers.tiny-sam.dtype=bf16"))
    assert _digest(cache_dir) == before


def test_adding_a_teacher_computes_only_that_teacher(ray_session, tmp_path):
    out = tmp_path / "add"
    run_cache_job(_cfg(out, "teachers=[tiny-clip]"))
    before = _digest(out)
    s = run_cache_job(_cfg(out, "teachers=[tiny-clip,tiny-dinov2]"))
    assert s.computed == {"views": 0, "tiny-clip": 0, "tiny-dinov2": LIMIT // PER_SHARD}
    after = _digest(out)
    assert {k: v for k, v in after.items() if "tiny-dinov2" not in k} == before
    m = load_manifest(CacheLocation(str(out)))
    assert set(m.teachers) == {"tiny-clip", "tiny-dinov2"} and m.complete
    # dropping one leaves the other untouched
    assert main(["cache", "drop", str(out), "tiny-dinov2"]) == 0
    assert _digest(out) == before
    assert set(load_manifest(CacheLocation(str(out))).teachers) == {"tiny-clip"}
    # rebuilding one recomputes only it
    s = run_cache_job(_cfg(out, "teachers=[tiny-clip]", "rebuild=[tiny-clip]"))
    assert s.computed == {"views": 0, "tiny-clip": LIMIT // PER_SHARD}
    assert _digest(out) == before  # deterministic: the same bytes again


def test_kill_inside_a_shard_write_and_resume_equals_uninterrupted(cache_dir, tmp_path, ray_session):
    """The job, on its own Ray, is killed (every process of it, SIGKILL) while a teacher shard is half written:
    the test hook RADIO_TEST_PAUSE_WRITES holds the writer after the first row group, so the kill lands inside
    the write every time. The rerun removes the orphan and ends byte-identical to a one-shot build."""
    from radio.cache.store import PAUSE_WRITES_ENV

    out, hold = tmp_path / "killed", tmp_path / "hold"
    hold.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, whose workers see the hook
    env.update({"PYTHONUNBUFFERED": "1", PAUSE_WRITES_ENV: str(hold)})
    args = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "cache",
        f"output={out}",
        *BASE,
        "teachers=[tiny-clip,tiny-sam]",
        "mlflow.enabled=false",
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (hold / "paused").exists():
            time.sleep(0.05)
        assert (hold / "paused").exists(), (
            f"no write paused: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else 'timed out'}"
        )
        half = Path((hold / "paused").read_text())
        assert not half.exists() and list(half.parent.glob(".*")), (
            "the shard is being written to a hidden temporary file"
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray and the paused writer: a machine losing power
        proc.wait()
    assert load_manifest(CacheLocation(str(out))) is None or not load_manifest(CacheLocation(str(out))).complete
    s = run_cache_job(_cfg(out, "teachers=[tiny-clip,tiny-sam]", "mlflow.enabled=false"))
    assert (
        sum(s.computed.values()) < 3 * (LIMIT // PER_SHARD) and s.computed[half.parent.name] >= 1
    )  # only what was missing
    assert _digest(out) == _digest(cache_dir)
    assert not [p for p in out.rglob(".*") if ".tmp" in p.name], "the orphaned temporary file is removed"


def test_bad_files_are_skipped_and_recorded(ray_session, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(src / f"ok{i}.jpg")
    good = (src / "ok0.jpg").read_bytes()
    (src / "empty.jpg").write_bytes(b"")
    (src / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (src / "notes.txt").write_text("not an image")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")
    (src / "bomb.png").write_bytes(bomb.getvalue())
    Image.new("L", (30, 30), 7).save(src / "gray.png")
    Image.new("RGBA", (30, 20), (1, 2, 3, 100)).save(src / "rgba.png")
    out = tmp_path / "bad"
    s = run_cache_job(
        load_config(
            CacheJobConfig,
            None,
            [
                f"output={out}",
                "source.kind=folder",
                f"source.path={src}",
                "teachers=[tiny-dinov2]",
                "views.num_views=2",
                "student_resolution=32",
                "progress=false",
                "mlflow.enabled=false",
            ],
        )
    )
    m = load_manifest(CacheLocation(str(out)))
    reasons = {x.image_id: x.reason for x in m.skipped}
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "notes.txt", "bomb.png"}
    assert "empty" in reasons["empty.jpg"] and "too large" in reasons["bomb.png"]
    assert s.skipped == 4 and m.images == 7 and m.views.rows == 14


def test_info_verify_and_file_uri(ray_session, cache_dir, tmp_path, capsys):
    assert main(["cache", "info", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "tiny-clip" in out and "KiB/view" in out and "complete" in out
    assert main(["cache", "verify", str(cache_dir), "--sample", "3"]) == 0
    assert "verify: OK" in capsys.readouterr().out
    # a cache on a pyarrow filesystem URI
    uri_out = tmp_path / "uri"
    s = run_cache_job(_cfg(f"file://{uri_out}", "teachers=[tiny-clip]", "source.limit=6"))
    assert s.views == 12 and (uri_out / "manifest.json").exists()
    # tampering is caught
    victim = cache_dir / "teachers" / "tiny-clip" / "unit-00001.parquet"
    data = bytearray(victim.read_bytes())
    saved = bytes(data)
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    try:
        assert main(["cache", "verify", str(cache_dir), "--sample", "0"]) == 0  # structure only: same size, same footer
        assert main(["cache", "verify", str(cache_dir), "--sample", "0", "--full"]) == 1  # every checksum
        assert "checksum" in capsys.readouterr().out
        assert (
            main(["cache", "verify", str(cache_dir), "--sample", "8", "--seed", "3"]) == 1
        )  # a sample covering every unit
        assert "unit-00001.parquet: checksum differs" in capsys.readouterr().out
    finally:
        victim.write_bytes(saved)


def test_sigkill_of_a_teacher_actor_mid_run_still_completes_exactly(ray_session, cache_dir, tmp_path):
    import threading

    import psutil

    def teacher_actor_pids():  # Ray names its actor processes "ray::<Class>"
        return [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if any("ray::TeacherWorker" in c for c in (p.info["cmdline"] or []))
        ]

    out = tmp_path / "actor-killed"
    result = {}

    def run():
        try:
            result["summary"] = run_cache_job(
                _cfg(out, "teachers=[tiny-clip,tiny-sam]", "max_inflight_units=1", "mlflow.enabled=false")
            )
        except BaseException as e:  # surfaced below
            result["error"] = e

    th = threading.Thread(target=run)
    th.start()
    killed = None
    deadline = time.time() + 120
    while th.is_alive() and time.time() < deadline and killed is None:
        if (out / "teachers").exists() and list((out / "teachers").glob("*/unit-*.parquet")):
            pids = teacher_actor_pids()
            if pids:
                killed = pids[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    th.join(timeout=300)
    assert killed is not None, "the job finished before an actor could be killed"
    assert "error" not in result, result.get("error")
    assert load_manifest(CacheLocation(str(out))).complete
    assert _digest(out) == _digest(cache_dir)


def test_cache_run_in_mlflow(cache_dir):
    from mlflow.tracking import MlflowClient

    m = load_manifest(CacheLocation(str(cache_dir)))
    client = MlflowClient()
    run = client.get_run(m.mlflow_run_id)
    assert run.data.tags["radio.kind"] == "cache" and run.data.tags["radio.cache_id"] == m.cache_id
    assert run.data.params["views.num_views"] == str(VIEWS) and run.data.params["teachers.tiny-sam.actors"] == "1"
    metrics = run.data.metrics
    assert (
        metrics["cache/images"] == LIMIT
        and metrics["cache/views"] == LIMIT * VIEWS
        and metrics["system/images_per_s"] > 0
    )
    sam = m.teachers["tiny-sam"]
    assert metrics["cache/bytes_per_view/tiny-sam"] == pytest.approx(sam.bytes_per_view)
    assert metrics["cache/bytes_ratio_to_float32_native/tiny-sam"] == pytest.approx(
        sam.bytes_per_view / (8 * 8 * 16 * 4)
    )
    assert "system/views_per_s/tiny-clip" in metrics and "system/gpu_hours/tiny-clip" in metrics
    assert 0 < metrics["system/busy_fraction/tiny-clip"] <= 1.0 + 1e-6  # compute time over the time work was in flight
    assert all(k.split("/")[0] in ("cache", "system") for k in metrics), sorted(metrics)
    [inp] = run.inputs.dataset_inputs  # the cache, as an MLflow dataset of its run
    assert (
        inp.dataset.digest == m.cache_id[:36] and {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "output"
    )
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"manifest.json", "config.yaml"}


def test_input_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["cache", f"output={tmp_path / 'x'}", "teachers=[tiny-clop]"]) == 2
    err = capsys.readouterr().err
    assert "unknown teacher 'tiny-clop'" in err and "tiny-clip" in err and "Traceback" not in err
    assert main(["cache", f"output={tmp_path / 'y'}", "source.kind=folder", f"source.path={tmp_path / 'none'}"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_mixed_folder_every_file_cached_or_recorded(ray_session, tmp_path, capsys):
    """Whatever a folder holds, every good image is cached and every other entry is recorded with a
    stable, human reason; the job exits 0, and a rerun changes nothing."""
    rng = np.random.default_rng(5)
    src = tmp_path / "mixed"
    good = set()
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        for i in range(int(rng.integers(2, 5))):
            ext = ["png", "jpg", "bmp"][i % 3]
            Image.fromarray(
                rng.integers(0, 255, (int(rng.integers(8, 60)), int(rng.integers(8, 60)), 3), dtype=np.uint8)
            ).save(src / c / f"{i}.{ext}")
            good.add(f"{c}/{i}.{ext}")
    # a phone photo with EXIF orientation, and a name that is not valid UTF-8
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(src / "a" / "rotated.jpg", exif=exif.tobytes())
    good.add("a/rotated.jpg")
    Image.new("RGB", (12, 12), (1, 2, 3)).save(
        os.fsdecode(os.path.join(os.fsencode(str(src / "b")), b"caf\xe9.png")), format="PNG"
    )
    good.add("b/caf\\xe9.png")
    bad = {
        "README.txt": b"about this data set",
        "a/empty.jpg": b"",
        "b/notes.jpg": b"text, not a jpeg",
        "a/truncated.png": None,
    }
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    for name, data in bad.items():
        (src / name).write_bytes(buf.getvalue()[:200] if data is None else data)
    # entries that are not plain files, hidden ones, and ones we may not read
    os.mkfifo(src / "a" / "pipe.png")  # opening it for reading would block forever
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "b" / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(src / "b" / ".cache" / "thumb.png")
    (src / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (src / "b" / "linked").symlink_to(src / "a", target_is_directory=True)
    (src / "a" / "secret.png").write_bytes(buf.getvalue())
    (src / "a" / "secret.png").chmod(0)
    as_root = os.geteuid() == 0  # root reads anything: then the file is simply cached
    (good if as_root else bad).update({"a/secret.png": None})
    bad.update({"a/pipe.png": None, ".DS_Store": None, "b/.cache": None, "a/gone.jpg": None, "b/linked": None})
    out = tmp_path / "c"
    args = [
        "cache",
        f"output={out}",
        "source.kind=folder",
        f"source.path={src}",
        "teachers=[tiny-clip]",
        "views.num_views=1",
        "student_resolution=32",
        "progress=false",
        "mlflow.enabled=false",
    ]
    assert main(args) == 0
    m = load_manifest(CacheLocation(str(out)))
    cached = set()
    for f in sorted((out / "views").glob("*.parquet")):
        cached |= set(pq.read_table(f, columns=["image_id"])["image_id"].to_pylist())
    skipped = {s.image_id: s.reason for s in m.skipped}
    assert cached == good and set(skipped) == set(bad)
    assert all("0x" not in r and r and str(tmp_path) not in r for r in skipped.values())
    assert (
        skipped["a/pipe.png"] == "not a regular file (named pipe)" and skipped["a/gone.jpg"] == "broken symbolic link"
    )
    assert (
        skipped[".DS_Store"].startswith("hidden file")
        and skipped["b/.cache"].startswith("hidden folder")
        and skipped["b/linked"].startswith("symbolic link to a folder")
    )
    if not as_root:
        assert skipped["a/secret.png"] == "unreadable: Permission denied"
    assert m.labels == ["a", "b"]
    views = pq.read_table(out / "views" / "unit-00000.parquet", columns=["image_id", "source_hw"]).to_pylist()
    assert {r["image_id"]: r["source_hw"] for r in views}["a/rotated.jpg"] == [
        40,
        20,
    ]  # EXIF applied: upright, portrait
    capsys.readouterr()
    assert main(args) == 0  # a rerun is a no-op with the same record
    assert [(s.image_id, s.reason) for s in load_manifest(CacheLocation(str(out))).skipped] == [
        (s.image_id, s.reason) for s in m.skipped
    ]


def test_actors_that_leave_no_cpu_for_tasks_are_refused_not_a_hang(ray_session, tmp_path, capsys):
    cpus = int(ray_session.cluster_resources()["CPU"])
    assert (
        main(
            [
                "cache",
                f"output={tmp_path / 'c'}",
                "teachers=[tiny-clip]",
                f"teachers.tiny-clip.cpus_per_actor={cpus}",
                "source.limit=2",
                "mlflow.enabled=false",
                "progress=false",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"Ray has {cpus} CPUs, but the teacher actors reserve {cpus}" in err and f"num_cpus >= {cpus + 1}" in err


def test_unloadable_teacher_fails_in_seconds_before_ray(tmp_path, capsys):
    t0 = time.perf_counter()
    args = ["cache", f"output={tmp_path / 'c'}", "source.limit=2", "mlflow.enabled=false"]
    assert main([*args, "teachers=[clip-vit-b16]"]) == 2  # a hub id, offline
    err = capsys.readouterr().err
    assert (
        "clip-vit-b16" in err
        and "HF_HUB_OFFLINE=1" in err
        and "teachers.clip-vit-b16.source=" in err
        and "Traceback" not in err
    )
    assert (
        main([*args, "teachers=[tiny-clip]", f"teachers.tiny-clip.source={tmp_path}"]) == 2
    )  # a directory without a checkpoint
    err = capsys.readouterr().err
    assert "teacher tiny-clip" in err and "no config.json" in err and err.count("\n") <= 2
    assert time.perf_counter() - t0 < 20 and not (tmp_path / "c").exists()


def _damaged_copy(cache_dir, tmp_path, name):
    import shutil

    out = tmp_path / name
    shutil.copytree(cache_dir, out)
    return out


def test_truncated_or_foreign_shard_is_named_refused_and_recomputed(ray_session, cache_dir, tmp_path, capsys):
    from radio.cache import CacheError

    good = _digest(cache_dir)
    out = _damaged_copy(cache_dir, tmp_path, "trunc")
    victim = out / "teachers" / "tiny-sam" / "unit-00002.parquet"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    # a views shard of another cache (another source), copied over this one's
    other = tmp_path / "other"
    run_cache_job(_cfg(other, "teachers=[tiny-clip]", "source.limit=12", "mlflow.enabled=false"))
    (out / "views" / "unit-00001.parquet").write_bytes((other / "views" / "unit-00001.parquet").read_bytes())
    capsys.readouterr()
    assert main(["cache", "verify", str(out), "--sample", "0"]) == 1
    text = capsys.readouterr().out
    assert (
        "teachers/tiny-sam/unit-00002.parquet: not a readable Parquet file" in text
        and "views/unit-00001.parquet: belongs to another cache" in text
    )
    # sampling every unit: the damaged files are named, not recomputed, and the intact units still are
    assert main(["cache", "verify", str(out), "--sample", "4"]) == 1
    text = capsys.readouterr().out
    assert "not a readable Parquet file" in text and "belongs to another cache" in text and "Traceback" not in text
    swapped = _damaged_copy(cache_dir, tmp_path, "swap")  # two shards of one teacher swapped, their records not
    a, b = (
        swapped / "teachers" / "tiny-clip" / "unit-00000.parquet",
        swapped / "teachers" / "tiny-clip" / "unit-00003.parquet",
    )
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    assert main(["cache", "verify", str(swapped), "--sample", "4"]) == 1
    text = capsys.readouterr().out
    assert (
        "teachers/tiny-clip/unit-00000.parquet" in text
        and "teachers/tiny-clip/unit-00003.parquet" in text
        and "verify: FAILED" in text
    ), text
    with pytest.raises(
        CacheError, match=r"tiny-sam/unit-00002\.parquet: \d+ bytes, the manifest says \d+.*radio cache verify"
    ):
        CacheReader(str(out))  # what training opens: refused before the first step, from one listing per directory
    reader = CacheReader(str(out), check=False)  # a stream's reader checks each file's own footer as it opens it
    with pytest.raises(CacheError, match=r"tiny-sam/unit-00002\.parquet: not a readable Parquet file"):
        list(reader.iter_unit(2))
    with pytest.raises(CacheError, match=r"views/unit-00001\.parquet: belongs to another cache"):
        list(reader.iter_unit(1))
    # rerunning the job recomputes exactly what was damaged
    s = run_cache_job(_cfg(out, "teachers=[tiny-clip,tiny-sam]", "mlflow.enabled=false"))
    # only the damaged files: unit 1's views (replayed, so its teachers' shards still match) and unit 2 of tiny-sam
    assert s.computed == {"views": 1, "tiny-clip": 0, "tiny-sam": 1}
    assert "it will be recomputed" in capsys.readouterr().err
    assert (
        len(list((out / "teachers" / "tiny-sam").glob(".damaged-*.parquet"))) == 1
    )  # kept aside (with its record), not deleted
    assert _digest(out) == good
    assert _counts(out) == _counts(cache_dir)  # the units taken from the listing keep their images in the count
    assert main(["cache", "verify", str(out), "--sample", "0"]) == 0


def test_edited_manifest_is_refused_and_rewritten_from_the_shards(ray_session, cache_dir, tmp_path, capsys):
    """The manifest carries its own sha256: edited statistics, a dropped shard or a layout that lies (float16
    for int8 shards) are refused by training, eval's reader and verify, and the job's rerun rewrites the
    manifest from the shards' own records (nothing recomputed), byte for byte what it was."""
    from radio.cache import ManifestDamaged

    original = json.loads((cache_dir / "manifest.json").read_text())
    edits = {
        "stats": lambda m: m["teachers"]["tiny-clip"]["stats"]["features"]["mean"].__setitem__(
            0, m["teachers"]["tiny-clip"]["stats"]["features"]["mean"][0] + 0.5
        ),
        "dropped": lambda m: m["views"]["shards"].pop(),
        "layout": lambda m: m["teachers"]["tiny-sam"]["layout"].__setitem__(
            "dtype", "float16" if m["teachers"]["tiny-sam"]["layout"]["dtype"] != "float16" else "int8"
        ),
    }
    for name, edit in edits.items():
        out = _damaged_copy(cache_dir, tmp_path, f"edit-{name}")
        m = json.loads(json.dumps(original))
        edit(m)
        (out / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))
        with pytest.raises(ManifestDamaged, match=r"manifest.json does not match its recorded sha256"):
            CacheReader(str(out))
        assert (
            main(
                [
                    "train",
                    f"cache={out}",
                    f"output={tmp_path / name}",
                    "teachers=[tiny-clip,tiny-sam]",
                    "mlflow.enabled=false",
                ]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert (
            "does not match its recorded sha256" in err
            and f"radio cache repair {out}" in err
            and "Traceback" not in err
        )
        assert main(["cache", "verify", str(out)]) == 1
        assert "MISMATCH" in capsys.readouterr().out
    # the rerun: the shards win, no unit is recomputed, and the manifest is what the job wrote
    s = run_cache_job(_cfg(out, "teachers=[tiny-clip,tiny-sam]"))
    assert sum(s.computed.values()) == 0, s.computed
    assert "rewriting it from the shards' own records" in capsys.readouterr().err
    fixed = json.loads((out / "manifest.json").read_text())
    assert (
        fixed["teachers"]["tiny-sam"]["layout"] == original["teachers"]["tiny-sam"]["layout"]
        and fixed["views"] == original["views"]
    )
    CacheReader(str(out))  # accepted again


def test_lower_resolutions_store_each_teachers_targets_at_every_grid(ray_session, tmp_path):
    """Multi-resolution caches: one stored view per row, and each teacher's targets at the grid of every
    resolution (capped by its own grid), each the area average of the teacher's map over the whole view."""
    out = tmp_path / "mr"
    assert (
        main(
            [
                "cache",
                f"output={out}",
                "source.limit=6",
                "images_per_shard=6",
                "views.num_views=2",
                "student_resolution=32",
                "lower_resolutions=[16]",
                "target_patch=8",
                "mlflow.enabled=false",
                "progress=false",
                "teachers=[tiny-clip,tiny-sam]",
            ]
        )
        == 0
    )
    m = load_manifest(CacheLocation(str(out)))
    lay = {t: m.teachers[t].layout for t in ("tiny-clip", "tiny-sam")}
    assert lay["tiny-sam"].grids == [(4, 4), (2, 2)] and lay["tiny-clip"].grids == [(4, 4), (2, 2)]
    batch = next(CacheReader(str(out), ["tiny-clip", "tiny-sam"]).iter_unit(0, batch_rows=3))
    for name in ("tiny-clip", "tiny-sam"):
        for i, got in enumerate(_replayed_forward(m, batch, name, 6)):
            for g, col in (((4, 4), "features"), ((2, 2), "features@2x2")):
                want = resample_targets(got.features_BHWC, g, got.valid_hw_B2)[0].numpy()
                np.testing.assert_allclose(batch.teachers[name][col][i].astype(np.float32), want, rtol=2e-3, atol=2e-3)
    # the same job with other lower resolutions is another layout: refused, not mixed into the cache
    assert (
        main(
            [
                "cache",
                f"output={out}",
                "source.limit=6",
                "images_per_shard=6",
                "views.num_views=2",
                "student_resolution=32",
                "target_patch=8",
                "mlflow.enabled=false",
                "progress=false",
                "teachers=[tiny-clip,tiny-sam]",
            ]
        )
        != 0
    )


def test_unreachable_ray_address_fails_in_seconds_with_one_line(tmp_path):
    """RAY_ADDRESS naming a port where nothing listens: one radio line naming it, well within 30 s (Ray alone
    retries its GCS connection for minutes, printing only its own timeouts), and nothing written."""
    import socket

    with socket.socket() as s:  # a free port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "c"
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "cache",
            "teachers=[tiny-clip]",
            "source.limit=4",
            f"output={out}",
            "mlflow.enabled=false",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - t0
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert (
        lines[-1].startswith(f"radio: error: RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers")
        and "unset RAY_ADDRESS" in lines[-1]
    ), p.stderr[-2000:]
    assert "Traceback" not in p.stderr and took < 60, took  # 10 s of retries plus interpreter start on a loaded machine
    assert not out.exists()


def test_disk_full_mid_job_is_one_line_and_the_rerun_completes_byte_identical(
    ray_session, cache_dir, small_disk, capsys
):
    """A real full disk under the job (a 200 KB tmpfs for a ~300 KB cache): one line naming the cache and what is
    kept, no traceback; with space freed, the same command finishes it byte for byte as a one-shot build."""
    disk = small_disk(200 * 1024)
    out = disk / "c"
    assert main(["cache", f"output={out}", *BASE, "teachers=[tiny-clip,tiny-sam]"]) == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("radio: error:")]
    assert line and f"no space left writing cache {out}" in line[0] and "rerun the same command to resume" in line[0], (
        err
    )
    assert "Traceback" not in err
    small_disk.resize(disk, 16 * 2**20)
    assert main(["cache", f"output={out}", *BASE, "teachers=[tiny-clip,tiny-sam]"]) == 0
    assert _digest(out) == _digest(cache_dir)


def _flip(path: Path, at: int) -> None:
    """Change one byte in place, keeping the size and the modification time: what a listing cannot see."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# every kind of file a cache holds, and where in it a byte changes (a negative offset counts from the end)
DAMAGE = {
    "views shard, a data page": ("views/unit-00001.parquet", 0.4),
    "teacher shard, a data page": ("teachers/tiny-sam/unit-00002.parquet", 0.4),
    "teacher shard, its footer": ("teachers/tiny-clip/unit-00003.parquet", -40),
    "views commit record, its header": ("views/unit-00000.commit", 40),
    "teacher commit record, its moments": ("teachers/tiny-clip/unit-00001.commit", -8),
    "merged statistics": ("stats/tiny-sam.moments", -8),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_named_and_the_named_repair_restores_the_pristine_cache(
    ray_session, cache_dir, tmp_path, capsys, kind
):
    """A changed byte in any file of a cache (size and time kept) is found by verify --full, named by its own
    path, and the command every refusal names, `radio cache repair CACHE`, sets it aside and recomputes it:
    the shards, records and statistics are byte for byte the pristine cache's, and so are the manifest's counts."""
    rel, where = DAMAGE[kind]
    out = _damaged_copy(cache_dir, tmp_path, "damaged")
    victim = out / rel
    size = victim.stat().st_size
    _flip(victim, int(size * where) if isinstance(where, float) else where % size)
    capsys.readouterr()
    assert main(["cache", "verify", str(out), "--full", "--sample", "0"]) == 1
    text = capsys.readouterr().out
    named = [line for line in text.splitlines() if line.startswith("MISMATCH")]
    assert named and all(rel in line for line in named), text  # the file that holds the damage, and only it
    assert f"radio cache repair {out}" in text
    assert main(["cache", "repair", str(out)]) == 0
    assert "moved to" in capsys.readouterr().err
    assert list(victim.parent.glob(f".damaged-*{victim.name}")), "the damaged file is kept aside, not deleted"
    assert _digest(out) == _digest(cache_dir)
    assert _counts(out) == _counts(cache_dir)
    assert main(["cache", "verify", str(out), "--full", "--sample", "0"]) == 0
    CacheReader(str(out)).merged_moments("tiny-sam")


def test_a_stream_refusing_a_changed_shard_names_the_repair(cache_dir, tmp_path):
    """What training meets: the error names the file and the exact repair command."""
    from radio.cache import CacheError

    out = _damaged_copy(cache_dir, tmp_path, "stream")
    _flip(out / "views/unit-00002.parquet", 200)
    reader = CacheReader(str(out))
    with pytest.raises(CacheError, match=rf"views/unit-00002\.parquet: .*`radio cache repair {out}`"):
        list(reader.iter_unit(2))


def test_a_manifest_edited_with_its_checksum_recomputed_is_rebuilt_by_the_repair(ray_session, cache_dir, tmp_path):
    from radio.cache.manifest import _digest as manifest_digest

    out = _damaged_copy(cache_dir, tmp_path, "forged")
    m = json.loads((out / "manifest.json").read_text())
    m.pop("sha256")
    m["images"] = 0
    m["views"]["shards"][1]["rows"] += 2
    m["sha256"] = manifest_digest(m)
    (out / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))
    assert main(["cache", "repair", str(out)]) == 0
    assert _digest(out) == _digest(cache_dir) and _counts(out) == _counts(cache_dir)


def test_rebuild_names_a_teacher_of_the_job_or_views(tmp_path, capsys):
    assert main(["cache", f"output={tmp_path / 'c'}", *BASE, "teachers=[tiny-clip]", "rebuild=[tiny-nope]"]) == 2
    err = capsys.readouterr().err
    assert "rebuild[0]" in err and "tiny-nope" in err and "Traceback" not in err


def _listeners(pid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of ``pid`` and its descendants."""
    import psutil

    root = psutil.Process(pid)
    out = []
    for p in [root, *root.children(recursive=True)]:
        try:
            out += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections("inet") if c.status == "LISTEN"]
        except psutil.Error:  # a worker that ended meanwhile
            pass
    return out


def _loopback(ip: str) -> bool:
    import ipaddress

    a = ipaddress.ip_address(ip)
    return a.is_loopback or (a.version == 6 and a.ipv4_mapped is not None and a.ipv4_mapped.is_loopback)


def test_the_jobs_own_ray_listens_on_loopback_only_and_requires_its_token(tmp_path):
    """A job without RAY_ADDRESS starts a Ray only it can use: while it runs (held inside a shard write by the
    test hook), every socket its processes listen on is bound to loopback, and the cluster's processes run with
    token authentication on and a token of the job's own."""
    import psutil

    from radio.cache.store import PAUSE_WRITES_ENV

    hold = tmp_path / "hold"
    hold.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_AUTH")}
    env.update({"PYTHONUNBUFFERED": "1", PAUSE_WRITES_ENV: str(hold)})
    args = [sys.executable, "-m", "pipelines.cli", "cache", f"output={tmp_path / 'c'}", *BASE, "teachers=[tiny-clip]"]
    proc = subprocess.Popen(
        [*args, "mlflow.enabled=false"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (hold / "paused").exists():
            time.sleep(0.05)
        assert (hold / "paused").exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "hung"
        found = _listeners(proc.pid)
        names = {n for n, _, _ in found}
        assert {"gcs_server", "raylet"} <= names, found  # the job's own cluster, listening
        assert all(_loopback(ip) for _, ip, _ in found), [f for f in found if not _loopback(f[1])]
        gcs = next(p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "gcs_server")
        gcs_env = gcs.environ()
        assert gcs_env.get("RAY_AUTH_MODE") == "token" and len(gcs_env.get("RAY_AUTH_TOKEN", "")) >= 32
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _job_joining(address: str, out: Path) -> subprocess.CompletedProcess:
    """A cache job told to join ``address``, in its own process: a test process may already hold the session's
    Ray, which an in-process job would reuse without looking at RAY_ADDRESS."""
    env = {**os.environ, "RAY_ADDRESS": address}
    args = [sys.executable, "-m", "pipelines.cli", "cache", f"output={out}", *BASE, "teachers=[tiny-clip]"]
    return subprocess.run([*args, "mlflow.enabled=false"], env=env, capture_output=True, text=True, timeout=300)


def test_ray_address_that_is_not_an_address_is_one_line(tmp_path):
    r = _job_joining("127.0.0.1:notaport", tmp_path / "c")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "RAY_ADDRESS=127.0.0.1:notaport: not a cluster address" in r.stderr and "Traceback" not in r.stderr


def test_ray_address_where_another_service_answers_is_one_line(tmp_path):
    """An HTTP server on the port RAY_ADDRESS names: the job says so in seconds (Ray alone retries for minutes)."""
    import http.server
    import threading

    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        r = _job_joining(f"127.0.0.1:{httpd.server_port}", tmp_path / "c")
    finally:
        httpd.shutdown()
    assert r.returncode == 2, r.stderr[-2000:]
    assert "not Ray's GCS" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_damaged_record_never_becomes_the_statistics(ray_session, cache_dir, tmp_path, capsys):
    """The statistics are merged again from the records (their file is gone) while one record's moments were
    changed: the plain rerun refuses, naming the record and the repair, instead of merging them; the repair
    then restores the pristine statistics."""
    out = _damaged_copy(cache_dir, tmp_path, "record")
    record = out / "teachers/tiny-sam/unit-00002.commit"
    _flip(record, record.stat().st_size - 8)
    (out / "stats/tiny-sam.moments").unlink()
    capsys.readouterr()
    assert main(["cache", f"output={out}", *BASE, "teachers=[tiny-clip,tiny-sam]", "mlflow.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert "unit-00002.commit" in err and f"radio cache repair {out}" in err and "Traceback" not in err, err
    assert main(["cache", "repair", str(out)]) == 0
    assert _digest(out) == _digest(cache_dir) and _counts(out) == _counts(cache_dir)
