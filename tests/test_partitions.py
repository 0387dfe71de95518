"""C-RADIOv4's stochastic resolutions: a cache built with `partitions` stores each teacher's targets once per
partition (at the grid of its largest size) and that one set serves every size of the partition; every optimizer
step of a `resolution.mode=partitions` run holds one batch of each partition, at a size drawn from it."""

import numpy as np
import pytest
import torch

from pipelines.cli import main
from pipelines.config import ConfigError, load_config
from radio.cache import load_manifest
from radio.cache.codec import bytes_per_row
from radio.cache.store import CacheLocation
from radio.data import CacheStream, LoaderConfig, ResolutionSchedule, make_loader
from radio.targets import resample_targets
from radio.views import derive_resolution

PARTS = [[16, 24, 32], [48, 64]]
PARTS_ARG = "[[16,24,32],[48,64]]"
TEACHERS = ["tiny-clip", "tiny-sam"]


@pytest.fixture(scope="module")
def cache(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("partitions") / "c"
    args = [
        "cache",
        f"output={out}",
        "source.limit=12",
        "images_per_shard=6",
        "views.num_views=1",
        "target_patch=8",
        f"partitions={PARTS_ARG}",
        f"teachers=[{','.join(TEACHERS)}]",
        "teachers.tiny-clip.input_size=64",  # an any-size teacher run at the high partition's size
        "mlflow.enabled=false",
        "progress=false",
    ]
    assert main(args) == 0
    return str(out)


def test_cache_stores_one_target_set_per_partition(cache):
    m = load_manifest(CacheLocation(cache))
    assert m.student_resolution == 64  # views at the largest size of all
    # tiny-sam (8x8 at its input): the high partition at 64 // 8 = 8, the low one at 32 // 8 = 4, once each
    assert m.teachers["tiny-sam"].layout.grids == [(8, 8), (4, 4)]
    # tiny-clip runs at 64 px (input_size): its 8x8 map is the high set, area-averaged to 4x4 for the low one
    assert m.teachers["tiny-clip"].layout.grids == [(8, 8), (4, 4)]
    assert m.teachers["tiny-clip"].spec["input_size"] == [64, 64]
    # bytes per view for the low partition, against one size alone and against every size stored (what
    # lower_resolutions=[16,24] would add): the partition costs what its largest size alone costs
    c = m.teachers["tiny-sam"].spec["feature_dim"]
    one = {r: bytes_per_row((r // 8, r // 8), c, None, "float16") for r in PARTS[0]}
    assert bytes_per_row((4, 4), c, None, "float16") == one[32]
    assert sum(one.values()) / one[32] == pytest.approx((4 + 9 + 16) / 16)


def test_partition_refusals(tmp_path):
    from pipelines.cache import CacheJobConfig, validate
    from pipelines.train import TrainJobConfig
    from pipelines.train import validate as validate_train

    def cache_err(*over):
        with pytest.raises(ConfigError) as e:
            load_config(CacheJobConfig, None, [f"output={tmp_path}/c", "target_patch=8", *over], validate=validate)
        return str(e.value)

    assert "interleave" in cache_err("partitions=[[16,64],[32,48]]")
    assert "partitions[0][1]" in cache_err("partitions=[[16,20],[32,48]]") and "target_patch (8)" in cache_err(
        "partitions=[[16,20],[32,48]]"
    )
    msg = cache_err("partitions=[[16,32],[48,64]]", "lower_resolutions=[16]")
    assert "'lower_resolutions' [16] disagrees" in msg and "leave lower_resolutions unset" in msg
    assert "leave student_resolution unset" in cache_err("partitions=[[16,32],[48,64]]", "student_resolution=128")
    ok = load_config(CacheJobConfig, None, [f"output={tmp_path}/c", "target_patch=8", "partitions=[[16,32],[64]]"])
    assert (ok.student_resolution, ok.lower_resolutions) == (64, [32])

    def train_err(*over):
        with pytest.raises(ConfigError) as e:
            load_config(TrainJobConfig, None, ["student.patch_size=8", *over], validate=validate_train)
        return str(e.value)

    assert "resolution.partitions=[[128" in train_err("resolution.mode=partitions")
    assert "use resolution.mode=partitions" in train_err("resolution.partitions=[[16],[32]]")
    assert "'resolution.partitions[0][1]' must be a positive multiple of student.patch_size (8)" in train_err(
        "resolution.mode=partitions", "resolution.partitions=[[16,20],[32]]"
    )
    assert "distinct resolutions ([32] repeated)" in train_err(
        "resolution.mode=partitions", "resolution.partitions=[[16,32],[32,48]]"
    )


def test_every_step_holds_one_batch_of_each_partition(cache):
    sched = ResolutionSchedule("partitions", partitions=PARTS)
    assert sched.resolutions == [16, 24, 32, 48, 64] and sched.period == 2
    draws = [sched.resolution(0, 0, b) for b in range(200)]
    assert set(draws[0::2]) == set(PARTS[0]) and set(draws[1::2]) == set(PARTS[1])
    assert draws == [sched.resolution(0, 0, b) for b in range(200)] != [sched.resolution(0, 1, b) for b in range(200)]
    for workers in (0, 2):
        s = CacheStream(cache, TEACHERS, schedule=sched, patch_size=8, batch_size=5, seed=1, num_workers=workers)
        batches = list(make_loader(s, LoaderConfig(num_workers=workers, prefetch_factor=2)))
        assert len(batches) == len(s) and len(batches) % 2 == 0  # padded to whole steps
        for k, b in enumerate(batches):
            r = b["resolution"]
            assert r in PARTS[k % 2] and b["image"].shape[2:] == (r, r)
            # each partition is served from its own stored grid, whatever its size
            assert b["tiny-sam/features"].shape[1:3] == ((4, 4) if k % 2 == 0 else (8, 8))
        assert sum(int(b["weight"].sum()) for b in batches) == 12  # every view once


def test_targets_stay_aligned_with_the_pixels_at_every_size():
    """The ramp test: a content-aligned teacher (its feature = the mean of the pixels its cell covers) on a view
    whose pixels are a horizontal and a vertical ramp. For every size of a partition, the one stored target set
    resampled to the student's grid matches the mean of the student's (derived) pixels per cell as closely as
    targets stored at that size's own grid do (today's per-size storage)."""
    H, cell = 96, 8  # stored view and the teacher's cell (its native grid 12x12)
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(H, dtype=torch.float32), indexing="ij")
    img = torch.stack([x * 255 / (H - 1), y * 255 / (H - 1), torch.full_like(x, 128)])[None].round().to(torch.uint8)

    def cell_means(im: torch.Tensor, g: int) -> torch.Tensor:  # (1, 3, S, S) -> (1, g, g, 2)
        return torch.nn.functional.adaptive_avg_pool2d(im.float(), g)[:, :2].permute(0, 2, 3, 1)

    native = cell_means(img, H // cell)
    partitions = {"low": [16, 24, 32, 48], "high": [64, 80, 96]}
    for sizes in partitions.values():
        stored = resample_targets(native, (max(sizes) // 8, max(sizes) // 8))  # one set per partition
        for s in sizes:
            g = s // 8
            truth = cell_means(derive_resolution(img, s), g)
            served = resample_targets(stored, (g, g), kernel="linear")  # as the loss resamples
            today = resample_targets(native, (g, g))  # stored at this size's own grid
            err, err_today = (served - truth).abs().max().item(), (today - truth).abs().max().item()
            step = 255 / g  # the ramp's rise across one student cell
            assert err <= err_today + 0.02 * step, (s, err, err_today)
            assert err < 0.1 * step, (s, err, step)


def test_train_end_to_end_with_both_partitions(cache, tmp_path):
    from pipelines.train import Trainer, TrainJobConfig

    args = [
        f"cache={cache}",
        f"teachers=[{','.join(TEACHERS)}]",
        "student.patch_size=8",
        "student.depth=2",
        "loader.batch_size=4",
        "loader.num_workers=0",
        "mlflow.enabled=false",
        "epochs=1",
        "resolution.mode=partitions",
        f"resolution.partitions={PARTS_ARG}",
    ]
    cfg = load_config(TrainJobConfig, None, [*args, f"output={tmp_path}/a"])
    t = Trainer(cfg, "")
    assert t.acc.gradient_accumulation_steps == 2 and t.total_steps * 2 == len(t.stream)
    # the start line says which stored grid each partition reads: one per partition
    assert "[16, 24, 32] from tiny-clip 4x4, tiny-sam 4x4; [48, 64] from tiny-clip 8x8, tiny-sam 8x8" in (
        t.partitions_line()
    )
    assert main(["train", *args, f"output={tmp_path}/run"]) == 0
    from radio import load_student

    model = load_student(str(tmp_path / "run" / "student"))
    for r in (16, 64):
        out = model.predict(torch.randint(0, 255, (1, 3, r, r), dtype=torch.uint8))  # inference: no graph
        assert not out.features.requires_grad
        assert out.features.shape[1:3] == (r // 8, r // 8) and np.isfinite(out.features.numpy()).all()


def test_an_any_size_teacher_runs_at_the_input_size_asked(tmp_path):
    from teachers import create_teacher

    base, big = create_teacher("tiny-dinov2"), create_teacher("tiny-dinov2", input_size=56)
    assert base.spec.feature_grid == (7, 7) and big.spec.feature_grid == (14, 14)
    assert big.spec.fingerprint != base.spec.fingerprint and big.spec.weights_sha256 == base.spec.weights_sha256
    out = big.forward(torch.randint(0, 255, (1, 3, 56, 56), dtype=torch.uint8))
    assert out.features_BHWC.shape[1:3] == (14, 14)
    assert create_teacher("tiny-dinov2", input_size=28).spec == base.spec  # its own size: the same teacher
    with pytest.raises(ValueError, match="only teachers that take any size"):
        create_teacher("tiny-sam", input_size=128)
    with pytest.raises(ValueError, match="multiple of tiny-dinov2's patch"):
        create_teacher("tiny-dinov2", input_size=30)
