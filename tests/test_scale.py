"""Bookkeeping that scales: commit records, planning from listings without Ray, exact merged statistics,
sources sent to tasks by the unit, and verify that reads a sample."""

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.cache import CacheJobConfig, _identity, plan_cache_job, run_cache_job, teacher_request
from pipelines.cache_tools import verify_cache
from pipelines.config import load_config
from pipelines.sources import SourceConfig, open_source
from pipelines.synthetic import make_synthetic_cache
from radio.cache import (
    CacheLocation,
    CacheReader,
    Commit,
    MomentsMerger,
    commit_path,
    decode_features,
    decode_summary,
    load_manifest,
    read_record,
)

LIMIT, PER_SHARD = 16, 2  # 8 units
BASE = [
    f"source.limit={LIMIT}",
    f"images_per_shard={PER_SHARD}",
    "views.num_views=2",
    "student_resolution=32",
    "target_patch=8",
    "progress=false",
    "mlflow.enabled=false",
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(out, *extra) -> CacheJobConfig:
    return load_config(CacheJobConfig, None, [f"output={out}", *BASE, *extra])


@pytest.fixture(scope="module")
def built(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "c"
    run_cache_job(_cfg(out, "teachers=[tiny-clip,tiny-sam]"))
    return out


def _plan(out, *extra):
    cfg = _cfg(out, "teachers=[tiny-clip,tiny-sam]", *extra)
    src = open_source(cfg.source)
    return plan_cache_job(
        cfg,
        LIMIT // PER_SHARD,
        _identity(cfg, src),
        {t: teacher_request(cfg, t) for t in cfg.teachers},
        say=lambda m: None,
    )


def test_noop_rerun_does_not_start_ray_or_load_a_teacher(built):
    """A complete cache's rerun, in a fresh process with no Ray to join: nothing started, nothing written."""
    code = textwrap.dedent(f"""
        import sys, time
        t0 = time.perf_counter()
        from pipelines.cli import main
        rc = main(["cache", "output={built}", *{BASE!r}, "teachers=[tiny-clip,tiny-sam]"])
        import ray, teachers.registry as reg
        print("RESULT", rc, ray.is_initialized(), round(time.perf_counter() - t0, 2))
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    before = {p: os.stat(p).st_mtime_ns for p in map(str, built.rglob("*"))}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line is not None, r.stderr[-3000:]
    _, rc, ray_started, _ = line.split()
    assert rc == "0" and ray_started == "False"
    assert {
        p: os.stat(p).st_mtime_ns for p in map(str, built.rglob("*"))
    } == before  # not even the manifest is rewritten


def test_plan_lists_each_directory_once_and_reads_nothing(built, monkeypatch):
    from radio.cache import CacheLocation as Loc

    calls = {"scan": [], "read": 0, "open": 0}
    real_scan = Loc.scan_stat

    def scan(self, rel):
        calls["scan"].append(rel)
        return real_scan(self, rel)

    monkeypatch.setattr(Loc, "scan_stat", scan)
    monkeypatch.setattr(
        Loc,
        "read_bytes",
        lambda self, rel, _r=Loc.read_bytes: (calls.__setitem__("read", calls["read"] + 1), _r(self, rel))[1],
    )
    monkeypatch.setattr(
        Loc,
        "parquet_file",
        lambda self, rel, _p=Loc.parquet_file: (calls.__setitem__("open", calls["open"] + 1), _p(self, rel))[1],
    )
    plan = _plan(built)
    assert plan.up_to_date and not plan.work_units
    assert sorted(calls["scan"]) == [
        "stats",
        "teachers/tiny-clip",
        "teachers/tiny-sam",
        "views",
    ]  # one listing per directory
    assert calls["open"] == 0 and calls["read"] == 1  # the manifest, nothing else


def test_commit_record_is_the_commit(built, tmp_path):
    """A shard without its record (a kill between the two writes) is recomputed; a record without its shard is
    removed; a record that names another size marks its shard damaged; all bytes come back identical."""
    import shutil

    out = tmp_path / "c"
    shutil.copytree(built, out)
    (out / "manifest.json").unlink()  # as if killed before the manifest: every record is read back
    os.remove(out / "teachers" / "tiny-sam" / "unit-00003.commit")
    os.remove(out / "teachers" / "tiny-clip" / "unit-00005.parquet")
    # a record claiming another size for its shard
    rel = "teachers/tiny-clip/unit-00006.parquet"
    loc = CacheLocation(str(out))
    header, arrays = read_record(loc, commit_path(rel))
    c = Commit.from_record(header, arrays)
    c.shard.bytes += 1
    c.write(loc)
    plan = _plan(out)
    assert plan.todo == {"tiny-clip": [5, 6], "tiny-sam": [3]} and plan.todo_views == []
    assert plan.views.adopted == LIMIT // PER_SHARD  # read from their records: no manifest listed them
    s = run_cache_job(_cfg(out, "teachers=[tiny-clip,tiny-sam]"))
    assert s.computed == {"views": 0, "tiny-clip": 2, "tiny-sam": 1}
    from tests.test_cache import _digest

    assert _digest(out) == _digest(built)


def test_same_size_rewrite_is_found_from_the_listing(built, tmp_path, capsys):
    """A shard written again with other bytes of the same size lists another time: the rerun checks it and sets it
    aside."""
    import shutil

    out = tmp_path / "c"
    shutil.copytree(built, out, copy_function=shutil.copy2)  # times kept: the copy is the same cache
    assert _plan(out).up_to_date
    a, b = out / "teachers" / "tiny-sam" / "unit-00001.parquet", out / "teachers" / "tiny-sam" / "unit-00002.parquet"
    if a.stat().st_size == b.stat().st_size:
        data = b.read_bytes()
    else:  # flip one byte in place
        data = bytearray(a.read_bytes())
        data[len(data) // 2] ^= 0xFF
        data = bytes(data)
    a.write_bytes(data)
    s = run_cache_job(_cfg(out, "teachers=[tiny-clip,tiny-sam]"))
    assert s.computed["tiny-sam"] == 1
    assert "changed since it was committed" in capsys.readouterr().err
    from tests.test_cache import _digest

    assert _digest(out) == _digest(built)


def test_merged_statistics_equal_numpy_over_every_stored_target(built):
    reader = CacheReader(str(built))
    m = load_manifest(CacheLocation(str(built)))
    for t in reader.teachers:
        feats, summ = [], []
        for batch in reader.iter_batches(batch_rows=64, with_images=False):
            cols = batch.teachers[t]
            f = decode_features(cols).numpy().astype(np.float64)
            feats.append(f.reshape(-1, f.shape[-1]))
            if "summary" in cols:
                summ.append(decode_summary(cols).numpy().astype(np.float64))
        F = np.concatenate(feats)
        f_m, s_m = reader.merged_moments(t)
        # the file (float64 full second moments) equals numpy over every stored position
        np.testing.assert_allclose(f_m.mean, F.mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(
            f_m.cov, np.cov(F.T, bias=True), rtol=1e-4, atol=1e-6
        )  # shards keep the centered products in float32
        np.testing.assert_allclose(
            m.teachers[t].stats.features.std, F.std(0), rtol=1e-6, atol=1e-9
        )  # M2 is the diagonal of the float32 product
        assert f_m.count == len(F)
        if summ:
            S = np.concatenate(summ)
            np.testing.assert_allclose(s_m.mean, S.mean(0), rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(s_m.cov, np.cov(S.T, bias=True), rtol=1e-4, atol=1e-6)
        # and it is bit for bit the unit-ordered merge of the commit records
        merger = MomentsMerger(CacheLocation(str(built)), t, m.units, {s.unit for s in m.teachers[t].shards})
        f2, s2 = merger.finish()
        assert merger.read_records == m.units
        assert np.array_equal(f2.mean, f_m.mean) and np.array_equal(f2.cov, f_m.cov)


def test_phis_trains_from_the_merged_file_and_refuses_an_edited_one(built, tmp_path):
    import shutil

    from radio.cache import CacheError

    out = tmp_path / "c"
    shutil.copytree(built, out)
    st = CacheReader(str(out)).phis_stats_of("tiny-clip")
    assert st.phis_features is not None
    p = out / "stats" / "tiny-clip.moments"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x01  # same size, other statistics
    p.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"stats/tiny-clip\.moments.*checksum.*`radio cache repair "):
        CacheReader(str(out))
    buf = io.StringIO()
    assert not verify_cache(str(out), sample=0, out=buf)
    assert "tiny-clip.moments" in buf.getvalue()
    # the job's rerun notices the file was written again (its listed time) and rewrites it from the commit records
    s = run_cache_job(_cfg(out, "teachers=[tiny-clip,tiny-sam]"))
    assert sum(s.computed.values()) == 0
    CacheReader(str(out)).phis_stats_of("tiny-clip")
    p.unlink()  # and a missing one
    run_cache_job(_cfg(out, "teachers=[tiny-clip,tiny-sam]"))
    from tests.test_cache import _digest

    assert _digest(out) == _digest(built)


def test_verify_reads_a_sample_and_says_what_it_read(built):
    buf = io.StringIO()
    assert verify_cache(str(built), sample=2, out=buf)
    text = buf.getvalue()
    assert "checksums of 2 sampled unit(s)" in text and "recomputed 2 rows" in text
    read = float(text.split("read ")[1].split(" MB")[0])
    share = float(text.split("of the cache's ")[1].split("(")[1].split(" %")[0])
    # two units of eight, plus every footer and key column: in files this small, footers are most of the bytes
    # (96 %), so the share, not the MB rounded to two places, tells that not everything was read
    assert 0 < read and 0 < share < 100, text


def test_prepare_task_gets_its_units_records_only(tmp_path):
    src = open_source(SourceConfig(kind="samples", split="all"))
    part = src.part(10, 14)
    assert [r.image_id for r in part.records] == [r.image_id for r in src.records[10:14]] and [
        r.index for r in part.records
    ] == [10, 11, 12, 13]
    assert part.read_bytes(part.records[0]) == src.read_bytes(src.records[10])
    blob = pickle.dumps(part)
    assert len(blob) < len(pickle.dumps(src)) / 10  # not the whole source: no other record travels with it
    assert not any(r.image_id.encode() in blob for r in src.records[:10] + src.records[14:])
    # a folder of class folders: labels by position, every record labeled
    for i, cls in enumerate(["b", "a", "c"] * 4):
        d = tmp_path / "f" / cls
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.png").write_bytes(b"x")
    f = open_source(SourceConfig(kind="folder", path=str(tmp_path / "f")))
    assert f.labels == ["a", "b", "c"] and all(f.labels[r.label_index] == r.image_id.split("/")[0] for r in f.records)


def test_synthetic_cache_is_complete_and_its_stats_match(tmp_path):
    m = make_synthetic_cache(tmp_path / "syn", limit=12, per_shard=3)
    assert m.complete and all(e.moments is not None for e in m.teachers.values())
    r = CacheReader(str(tmp_path / "syn"))
    assert set(r.stats) == {"syn-clip", "syn-sam"}
    for t in r.teachers:
        f, _ = r.merged_moments(t)  # checksummed against the manifest
        assert f.count == m.teachers[t].stats.features.count
    assert json.loads((tmp_path / "syn" / "manifest.json").read_text())["format_version"] == 3


def test_a_changed_byte_is_refused_where_it_is_read(built, tmp_path):
    """Same size and, as with `cp -p`, the same time: the listing cannot tell. A stream hashes each local shard
    whole (xxh3-128, recorded at commit) when it opens it, and every Parquet page carries a CRC32 that the
    other readers check: training stops naming the file, and verify's checksums find it."""
    import shutil

    from radio.cache import CacheError

    out = tmp_path / "c"
    shutil.copytree(built, out, copy_function=shutil.copy2)
    victim = out / "teachers" / "tiny-clip" / "unit-00004.parquet"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    chunk = pq.ParquetFile(victim).metadata.row_group(0).column(0)  # a byte of the data, not of the footer
    for k in range(8):
        data[chunk.data_page_offset + chunk.total_compressed_size // 2 + k] ^= 0x5A
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    reader = CacheReader(str(out))  # opens: sizes and times are those committed
    with pytest.raises(
        CacheError,
        match=r"tiny-clip/unit-00004\.parquet: its content changed since it was committed \(xxh3 .*radio cache verify",
    ):
        list(reader.iter_unit(4))
    import radio.cache.store as store

    assert reader.manifest.teachers["tiny-clip"].by_unit()[4].xxh3  # recorded at commit
    pf = store.CacheLocation(str(out)).parquet_file(
        "teachers/tiny-clip/unit-00004.parquet"
    )  # what eval, verify and the job's rerun open
    with pytest.raises(OSError, match="CRC"):
        pf.read()
    buf = io.StringIO()
    assert not verify_cache(str(out), sample=0, full=True, out=buf)
    assert "tiny-clip/unit-00004.parquet" in buf.getvalue() and "verify: FAILED" in buf.getvalue()
