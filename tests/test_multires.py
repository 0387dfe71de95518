"""Multi-resolution distillation: views stored once at the highest resolution, lower ones derived in the
loader, each teacher's targets stored at every grid it supervises, a per-batch resolution schedule."""

import numpy as np
import pytest
import torch

from pipelines.cli import main
from pipelines.config import ConfigError, load_config
from pipelines.synthetic import make_synthetic_cache
from radio.cache import CacheReader, TargetLayout, load_manifest
from radio.cache.store import CacheLocation
from radio.data import CacheStream, LoaderConfig, ResolutionSchedule, make_loader
from radio.targets import resample_targets
from radio.views import derive_resolution

TEACHERS = {"syn-clip": (8, 6, (4, 4)), "syn-sam": (None, 5, (8, 8))}
PATCH = 8


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("multires") / "c"
    # stored at 64 px (grid 8 with patch 8); also trained at 32 (grid 4) and 16 (grid 2)
    make_synthetic_cache(
        out,
        limit=12,
        views=2,
        per_shard=5,
        teachers=TEACHERS,
        student_resolution=64,
        lower_resolutions=[16, 32],
        target_patch=PATCH,
    )
    return str(out)


def _stream(cache, schedule, **kw):
    kw = {"batch_size": 4, "shuffle_buffer": 8, "seed": 2, **kw}
    return CacheStream(cache, list(TEACHERS), schedule=schedule, patch_size=PATCH, **kw)


def test_layout_holds_every_grid_once(cache):
    m = load_manifest(CacheLocation(cache))
    # syn-clip's own grid (4x4) caps 64 // 8 = 8: its 32-px grid is the main grid, stored once
    assert m.teachers["syn-clip"].layout.grids == [(4, 4), (2, 2)]
    assert m.teachers["syn-sam"].layout.grids == [(8, 8), (4, 4), (2, 2)]
    reader = CacheReader(cache, list(TEACHERS))
    batch = next(reader.iter_unit(0, batch_rows=3))
    cols = batch.teachers["syn-sam"]
    assert set(cols) == {"features", "features@4x4", "features@2x2"}
    # each extra grid is the area average of the teacher's map (here the main grid), as the cache job stores it
    main_grid = torch.from_numpy(cols["features"].astype(np.float32))
    np.testing.assert_allclose(
        cols["features@4x4"].astype(np.float32), resample_targets(main_grid, (4, 4)).numpy(), atol=2e-3
    )


def test_pick_grid():
    lay = TargetLayout((8, 8), "float16", (64, 64), ((4, 4), (2, 2)))
    assert lay.pick_grid((8, 8)) is None and lay.pick_grid((4, 4)) == (4, 4) and lay.pick_grid((2, 2)) == (2, 2)
    assert lay.pick_grid((3, 3)) == (4, 4)  # the coarsest finer grid: area-averaged down in the loss
    assert lay.pick_grid((16, 16)) is None  # above every grid: the finest, upsampled
    assert lay.pick_grid((1, 1)) == (2, 2)
    assert TargetLayout.from_dict(lay.to_dict()) == lay
    assert (
        "extra_grids" not in TargetLayout((8, 8), "float16", (8, 8)).to_dict()
    )  # one-resolution caches keep their layout


def test_cycle_visits_every_teacher_resolution_pair_with_derived_views(cache):
    sched = ResolutionSchedule("cycle", [16, 32, 64])
    s = _stream(cache, sched)
    ref = _stream(cache, ResolutionSchedule())  # the same rows at the stored 64 px
    pairs, n = set(), 0
    for b, full in zip(
        make_loader(s, LoaderConfig(num_workers=0)), make_loader(ref, LoaderConfig(num_workers=0)), strict=True
    ):
        r = b["resolution"]
        assert r == [16, 32, 64][n % 3] and b["image"].shape[2:] == (r, r) and b["image"].dtype == torch.uint8
        assert b["image_id"] == full["image_id"]  # the schedule changes no row order
        assert torch.equal(b["image"], derive_resolution(full["image"], r))
        for t in TEACHERS:
            pairs.add((t, r, tuple(b[f"{t}/features"].shape[1:3])))
            assert not any("@" in k for k in b)
        assert torch.equal(b["syn-clip/summary"], full["syn-clip/summary"])  # a summary is the same at every resolution
        n += 1
    assert n == len(s) >= 3
    assert pairs == {
        ("syn-clip", 16, (2, 2)),
        ("syn-clip", 32, (4, 4)),
        ("syn-clip", 64, (4, 4)),
        ("syn-sam", 16, (2, 2)),
        ("syn-sam", 32, (4, 4)),
        ("syn-sam", 64, (8, 8)),
    }


def test_sample_schedule_is_deterministic_and_follows_weights():
    s = ResolutionSchedule("sample", [16, 32, 48], [1.0, 0.0, 3.0])
    draws = [s.resolution(0, 1, b) for b in range(400)]
    assert draws == [s.resolution(0, 1, b) for b in range(400)]
    assert 32 not in draws and 0.65 < draws.count(48) / 400 < 0.85
    assert draws != [s.resolution(0, 2, b) for b in range(400)]  # a new draw each epoch
    uniform = ResolutionSchedule("sample", [16, 32])
    assert set(uniform.resolution(0, 0, b) for b in range(50)) == {16, 32}


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_replays_the_schedule(cache, workers):
    def run(skip):
        s = _stream(cache, ResolutionSchedule("sample", [16, 32, 64]), num_workers=workers, batch_size=3)
        s.set_epoch(1, skip_batches=skip)
        return [
            (b["image_id"], b["resolution"], b["image"].shape[-1])
            for b in make_loader(s, LoaderConfig(num_workers=workers, prefetch_factor=2))
        ]

    full = run(0)
    assert len({r for _, r, _ in full}) > 1
    assert run(4) == full[4:]


@pytest.mark.parametrize(
    "bad,needle",
    [
        (["resolution.resolutions=[16,32]"], "mode is fixed"),
        (
            ["resolution.mode=sample", "resolution.resolutions=[16,32]", "resolution.weights=[1]"],
            "one non-negative weight per resolution",
        ),
        (["resolution.mode=cycle", "resolution.resolutions=[16,20]"], "resolution.resolutions[1]"),
    ],
)
def test_schedule_settings_are_checked(bad, needle):
    from pipelines.train import TrainJobConfig, validate

    with pytest.raises(ConfigError) as e:
        load_config(TrainJobConfig, None, ["student.patch_size=8", *bad], validate=validate)
    assert needle in str(e.value)


def test_cache_refuses_a_lower_resolution_that_is_not_lower(tmp_path):
    from pipelines.cache import CacheJobConfig, validate

    with pytest.raises(ConfigError) as e:
        load_config(
            CacheJobConfig,
            None,
            [f"output={tmp_path}/c", "student_resolution=64", "target_patch=8", "lower_resolutions=[32,64]"],
            validate=validate,
        )
    assert "lower_resolutions[1]" in str(e.value) and "student_resolution (64)" in str(e.value)


def test_train_end_to_end_at_two_resolutions_and_refusal_above_the_stored_one(cache, tmp_path, capsys):
    args = [
        f"cache={cache}",
        "teachers=[syn-clip,syn-sam]",
        "student.patch_size=8",
        "student.depth=2",
        "loader.batch_size=4",
        "loader.num_workers=0",
        "mlflow.enabled=false",
        "epochs=1",
    ]
    assert (
        main(["train", *args, f"output={tmp_path}/run", "resolution.mode=cycle", "resolution.resolutions=[32,64]"]) == 0
    )
    from radio import load_student

    model = load_student(str(tmp_path / "run" / "student"))
    for r in (32, 64):  # the exported student answers at both resolutions
        out = model.predict(torch.randint(0, 255, (1, 3, r, r), dtype=torch.uint8))
        assert out.features.shape[1:3] == (r // PATCH, r // PATCH)
    assert (
        main(["train", *args, f"output={tmp_path}/run2", "resolution.mode=cycle", "resolution.resolutions=[32,128]"])
        == 2
    )
    err = capsys.readouterr().err
    assert "[128] above the 64px views" in err and "student_resolution=128" in err


def test_only_the_grids_a_schedule_uses_are_read(cache):
    assert _stream(cache, ResolutionSchedule()).grids_read() == {
        "syn-clip": [],
        "syn-sam": [],
    }  # 64 px: main grids only
    assert _stream(cache, ResolutionSchedule("cycle", [32, 64])).grids_read() == {"syn-clip": [], "syn-sam": [(4, 4)]}
    reader = CacheReader(cache, list(TEACHERS))
    reader.extra_grids = {"syn-sam": [(4, 4)]}
    cols = next(reader.iter_unit(0, batch_rows=2)).teachers
    assert set(cols["syn-sam"]) == {"features", "features@4x4"} and set(cols["syn-clip"]) == {
        "summary",
        "features",
        "features@2x2",
    }
    # the stream at 64 px on a multi-resolution cache gives what it gives on the main grids alone
    b = next(iter(make_loader(_stream(cache, ResolutionSchedule()), LoaderConfig(num_workers=0))))
    assert b["syn-sam/features"].shape[1:3] == (8, 8)
