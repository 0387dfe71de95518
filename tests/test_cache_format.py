"""The cache format's contracts: target grids, codecs, the typed manifest and format versions."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.cache import CacheJobConfig, run_cache_job, target_grid_for
from pipelines.cli import main
from pipelines.config import load_config
from radio.cache import (
    FORMAT_VERSION,
    MIN_COS,
    CacheError,
    CacheFormatError,
    CacheLocation,
    CacheMismatch,
    CacheReader,
    decode_features,
    encode_targets,
    load_manifest,
)
from radio.targets import resample_targets, stored_grid
from teachers import create_teacher

LIMIT = 12
BASE = [
    f"source.limit={LIMIT}",
    "images_per_shard=6",
    "views.num_views=2",
    "student_resolution=32",
    "target_patch=8",
    "progress=false",
    "mlflow.enabled=false",
]
ROOT = Path(__file__).resolve().parents[1]


def _cfg(output, *extra) -> CacheJobConfig:
    return load_config(CacheJobConfig, None, [f"output={output}", *BASE, *extra])


def _worst_cos(a, b) -> float:
    a, b = a.reshape(-1, a.shape[-1]).double(), b.reshape(-1, b.shape[-1]).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


# ---- codecs ----------------------------------------------------------------------------------------


def test_int8_round_trip_within_its_bound():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 14, 14, 64, generator=g)
    x[..., 3] = 50.0 + x[..., 3]  # a channel with a large offset ("massive activation")
    x[..., 7] *= 40.0  # and one with a large range
    x[2, :, :, 5] = 1.25  # a constant channel decodes exactly
    cols = encode_targets(torch.randn(6, 32, generator=g), x, "int8")
    assert (
        cols["features"].dtype == np.uint8
        and cols["features_scale"].shape == (6, 64)
        and cols["summary"].dtype == np.float16
    )
    back = decode_features(cols)
    assert back.dtype == torch.float32 and back.shape == x.shape
    assert _worst_cos(back, x) >= 0.999 > MIN_COS["int8"]
    # the error of every value is at most half a step of its channel's scale
    step = torch.from_numpy(cols["features_scale"])[:, None, None, :]
    assert ((back - x).abs() <= 0.5 * step + 1e-5).all()
    assert torch.equal(back[2, :, :, 5], torch.full((14, 14), 1.25))
    # in the loss's space (per-channel standardized) the per-channel layout holds; one scale per position
    # would drown the ordinary channels next to the outliers
    mean, std = x.reshape(-1, 64).mean(0), x.reshape(-1, 64).std(0)
    z = lambda v: (v - mean) / std  # noqa: E731
    assert _worst_cos(z(back), z(x)) >= MIN_COS["int8"]
    per_position = x.abs().amax(-1, keepdim=True) / 127.0
    assert _worst_cos(z(torch.round(x / per_position) * per_position), z(x)) < MIN_COS["int8"]
    # per-position scaling would have lost the other channels next to the outliers
    for t in ("tiny-clip", "tiny-dinov2", "tiny-sam"):
        out = create_teacher(t)([torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8) for _ in range(4)])
        assert (
            _worst_cos(decode_features(encode_targets(None, out.features_BHWC, "int8")), out.features_BHWC) >= 0.999
        ), t


def test_float_codecs_and_bad_dtype():
    x = torch.randn(2, 3, 3, 4)
    assert decode_features(encode_targets(None, x, "float32")).equal(x)
    torch.testing.assert_close(decode_features(encode_targets(None, x, "float16")), x, atol=2e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="bfloat8"):
        encode_targets(None, x, "bfloat8")


def test_stored_grid_rule():
    assert stored_grid((64, 64), (14, 14)) == (14, 14)  # SAM: area-averaged down
    assert stored_grid((4, 4), (8, 8)) == (4, 4)  # a coarser teacher is never upsampled
    assert stored_grid((16, 16), None) == (16, 16)  # native
    cfg = _cfg(
        "x",
        "teachers={tiny-clip: {}, tiny-sam: {target_grid: native}, tiny-dinov2: {target_grid: 3}}",
        "student_resolution=224",
        "target_patch=16",
    )
    assert (
        target_grid_for(cfg, "tiny-clip") == (14, 14)
        and target_grid_for(cfg, "tiny-sam") is None
        and target_grid_for(cfg, "tiny-dinov2") == (3, 3)
    )


@pytest.mark.parametrize(
    "bad, key",
    [
        ("target_patch=0", "target_patch"),
        ("target_grid=0", "target_grid"),
        ("teachers.tiny-sam.target_grid=-2", "teachers.tiny-sam.target_grid"),
        ("target_patch=64", "target_patch"),
    ],
)
def test_bad_grid_settings_fail_before_any_work(tmp_path, capsys, bad, key):
    assert main(["cache", f"output={tmp_path / 'c'}", *BASE, bad]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_trainer_loss_does_not_read_manifest_keys():
    """The format has one home: nothing outside radio/cache reads the manifest's JSON keys."""
    offenders = []
    for path in [*ROOT.glob("pipelines/*.py"), *ROOT.glob("radio/*.py"), *ROOT.glob("bench/*.py")]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(
                r"manifest\s*\[|manifest\.get\(|\[\"teachers\"\]\[|m\[\"(views|teachers|identity|skipped)\"\]", line
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# ---- caches built by the job -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def caches(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt")
    out = {}
    out["grid"] = root / "grid"
    run_cache_job(_cfg(out["grid"], "teachers=[tiny-clip,tiny-sam]"))
    out["native"] = root / "native"
    run_cache_job(_cfg(out["native"], "teachers=[tiny-clip,tiny-sam]", "target_grid=native"))
    out["int8"] = root / "int8"
    run_cache_job(
        _cfg(out["int8"], "teachers=[tiny-clip,tiny-sam]", "target_dtype=int8", "teachers.tiny-sam.target_grid=native")
    )
    return out


def test_default_grid_and_native_give_the_same_training_targets(caches):
    grid, native = CacheReader(str(caches["grid"])), CacheReader(str(caches["native"]))
    assert grid.grids == {"tiny-clip": (4, 4), "tiny-sam": (4, 4)} and native.grids == {
        "tiny-clip": (4, 4),
        "tiny-sam": (8, 8),
    }
    student_hw = (4, 4)  # a patch-8 student on the 32-px views
    for a, b in zip(grid.iter_batches(), native.iter_batches(), strict=True):
        assert a.image_id == b.image_id
        for t in ("tiny-clip", "tiny-sam"):
            ta = resample_targets(decode_features(a.teachers[t]), student_hw)
            tb = resample_targets(decode_features(b.teachers[t]), student_hw)
            torch.testing.assert_close(ta, tb, atol=4e-3 * float(tb.abs().max()), rtol=2e-3)
    # and the default grid's bytes are a fraction of native's for the finer teacher
    g, n = load_manifest(CacheLocation(str(caches["grid"]))), load_manifest(CacheLocation(str(caches["native"])))
    assert g.teachers["tiny-sam"].bytes_per_view < 0.5 * n.teachers["tiny-sam"].bytes_per_view


def test_int8_cache_verifies_and_reports_its_worst_cosine(caches, capsys):
    m = load_manifest(CacheLocation(str(caches["int8"])))
    assert m.teachers["tiny-clip"].layout.dtype == "int8" and tuple(m.teachers["tiny-sam"].layout.grid) == (8, 8)
    assert main(["cache", "verify", str(caches["int8"]), "--sample", "3"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "worst cosine" in ln and "/features" in ln]
    assert len(lines) == 2 and all("int8" in ln and f"bound {MIN_COS['int8']}" in ln for ln in lines), out
    assert all(float(re.search(r"worst cosine ([0-9.]+)", ln).group(1)) >= MIN_COS["int8"] for ln in lines)
    assert "verify: OK" in out
    # a stricter bound than int8 can meet fails, naming the row and the bound
    assert main(["cache", "verify", str(caches["int8"]), "--sample", "3", "--min-cos", "0.9999999"]) == 1
    assert "worst cosine" in capsys.readouterr().out


def test_info_shows_bytes_per_view_and_ratio_to_float32_native(caches, capsys):
    assert main(["cache", "info", str(caches["grid"])]) == 0
    out = capsys.readouterr().out
    sam = next(ln for ln in out.splitlines() if ln.strip().startswith("tiny-sam"))
    m = load_manifest(CacheLocation(str(caches["grid"])))
    e = m.teachers["tiny-sam"]
    assert (
        f"{e.bytes_per_view / e.float32_native_bytes_per_view:.3f} vs f32 native" in sam and "4x4 (native 8x8)" in sam
    )
    assert e.float32_native_bytes_per_view == 8 * 8 * 16 * 4


def test_changing_a_teachers_grid_is_refused_then_rebuilt_alone(caches, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(caches["grid"], out)
    with pytest.raises(CacheMismatch, match="layout.grid"):
        run_cache_job(_cfg(out, "teachers=[tiny-clip,tiny-sam]", "teachers.tiny-sam.target_grid=native"))
    s = run_cache_job(
        _cfg(out, "teachers=[tiny-clip,tiny-sam]", "teachers.tiny-sam.target_grid=native", "rebuild=[tiny-sam]")
    )
    assert s.computed["tiny-clip"] == 0 and s.computed["tiny-sam"] == 2
    assert CacheReader(str(out)).grids["tiny-sam"] == (8, 8)


def test_old_format_cache_is_refused_with_the_rebuild_command(caches, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(caches["grid"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheFormatError) as e:
        CacheReader(str(old))
    msg = str(e.value)
    assert "format v1" in msg and f"format v{FORMAT_VERSION}" in msg and "radio cache" in msg and "output=" in msg
    assert main(["cache", "info", str(old)]) == 2
    assert "format v1" in capsys.readouterr().err
    with pytest.raises(CacheFormatError):
        run_cache_job(_cfg(old, "teachers=[tiny-clip,tiny-sam]"))
    # a v1 job killed before its first manifest: the shards alone are enough to refuse it
    (old / "manifest.json").unlink()
    import pyarrow.parquet as pq

    from radio.cache import decode_metadata, encode_metadata

    f = old / "views" / "unit-00000.parquet"
    t = pq.read_table(f)
    meta = decode_metadata(t.schema.metadata)
    meta["format_version"] = 1
    pq.write_table(t.replace_schema_metadata(encode_metadata(meta)), f)
    with pytest.raises(CacheFormatError, match="format v1"):
        run_cache_job(_cfg(old, "teachers=[tiny-clip,tiny-sam]"))


def test_manifest_that_is_not_json_is_a_clear_error(caches, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(caches["grid"], bad)
    (bad / "manifest.json").write_text('{"format_version": 2, "trunc')
    with pytest.raises(CacheError, match="not valid JSON.*radio cache repair"):
        CacheReader(str(bad))
    assert main(["cache", "info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "Traceback" not in err
