"""The shift-equivariant loss (issue 30, item 3): the student sees a shifted crop of the cached view and is compared
with the teacher's map over exactly that crop; a fixed-position artifact of the teacher is then not learned."""

import importlib.util
from pathlib import Path

import pytest
import torch

from pipelines.config import ConfigError, load_config
from radio.shift import draw_offsets, shift_batch
from radio.targets import resample_window

ROOT = Path(__file__).resolve().parent.parent


def _ramp_map(B: int, n: int) -> torch.Tensor:
    """(B, n, n, 2): each cell holds its centre's (row, col) coordinate, the mean of a ramp over the cell."""
    c = torch.arange(n, dtype=torch.float32) + 0.5
    return torch.stack(torch.meshgrid(c, c, indexing="ij"), -1)[None].repeat(B, 1, 1, 1)


def test_window_resampling_is_exact_for_a_ramp_at_sub_cell_offsets():
    x = _ramp_map(3, 8)
    origin = torch.tensor([[0.0, 0.0], [1.25, 0.5], [0.3, 1.9]])
    out = resample_window(x, origin, (6.0, 6.0), (4, 4))  # windows of 6 cells onto 4 cells of 1.5
    for b in range(3):
        centres = origin[b, :, None] + (torch.arange(4) + 0.5) * 1.5  # (2, 4)
        torch.testing.assert_close(out[b, :, 0, 0], centres[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[b, 0, :, 1], centres[1], atol=1e-5, rtol=0)
    whole = resample_window(torch.randn(2, 8, 8, 3), torch.tensor([[0.0, 1.0], [2.0, 2.0]]), (6.0, 6.0), (6, 6))
    assert whole.shape == (2, 6, 6, 3)
    x = torch.randn(2, 8, 8, 3)
    got = resample_window(x, torch.tensor([[0.0, 1.0], [2.0, 2.0]]), (6.0, 6.0), (6, 6))
    assert torch.equal(got[0], x[0, 0:6, 1:7]) and torch.equal(got[1], x[1, 2:8, 2:8])  # whole cells: sliced
    with pytest.raises(ValueError, match="leave the 8x8 map"):
        resample_window(x, torch.tensor([[3.0, 0.0], [0.0, 0.0]]), (6.0, 6.0), (6, 6))


@pytest.mark.parametrize("step", [8, 3])
def test_shifted_crops_keep_their_targets_on_their_pixels(step):
    """A content-aligned teacher (its cell = the mean of the pixels under it) on ramp views: after shift_batch, each
    crop's targets are the means of the crop's own pixels per student patch, at whole-patch and sub-patch shifts."""
    S, P, margin = 64, 8, 16
    y, x = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    images = torch.stack([y, x, torch.zeros_like(x)])[None].repeat(4, 1, 1, 1)  # pixel value = its coordinate

    def cell_means(im, cells):
        return torch.nn.functional.adaptive_avg_pool2d(im, cells)[:, :2].permute(0, 2, 3, 1)

    targets = {"t": {"features": cell_means(images, S // P), "summary": torch.randn(4, 5)}}
    offsets = draw_offsets(4, margin, [0, 1], step)
    assert ((offsets % step) == 0).all() and offsets.max() <= margin and len(set(offsets.flatten().tolist())) > 1
    crops, shifted = shift_batch(images, targets, margin, P, offsets)
    assert crops.shape == (4, 3, 48, 48)
    for b in range(4):
        oy, ox = offsets[b].tolist()
        assert torch.equal(crops[b], images[b, :, oy : oy + 48, ox : ox + 48])
    torch.testing.assert_close(shifted["t"]["features"], cell_means(crops, 6), atol=1e-4, rtol=0)
    assert shifted["t"]["summary"] is targets["t"]["summary"]  # a whole-view quantity: kept
    assert torch.equal(draw_offsets(4, margin, [0, 1], step), offsets)  # a pure function of the seed: resume
    with pytest.raises(ValueError, match="whole patch grid"):
        shift_batch(images, targets, 12, P, torch.zeros(4, 2, dtype=torch.long))


def test_settings_are_checked():
    from pipelines.train import TrainJobConfig, validate

    def err(*over):
        with pytest.raises(ConfigError) as e:
            load_config(TrainJobConfig, None, ["student.patch_size=8", *over], validate=validate)
        return str(e.value)

    assert "'loss.shift_px' must be 0 (off) or a positive multiple of student.patch_size (8)" in err("loss.shift_px=5")
    assert "loss.shift_px" in err("loss.shift_px=64", "resolution.mode=cycle", "resolution.resolutions=[64,128]")
    assert "loss.shift_step_px" in err("loss.shift_px=8", "loss.shift_step_px=0")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_shift_artifact", ROOT / "bench" / "bench_shift_artifact.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_shift_loss_removes_most_of_a_fixed_position_artifact():
    """bench/bench_shift_artifact.py end to end (the real cache writer, `radio train` twice): the plain student
    reproduces most of the teacher's artifact, the shift-equivariant one little of it, at the same fidelity on the
    rest of the map."""
    res = _bench().run(epochs=10, limit=160)  # the bench at two thirds of its default size
    plain, shifted = res["plain"], res["shifted"]
    assert plain["artifact"] > 0.6, res
    assert shifted["artifact"] < 0.3 * plain["artifact"], res
    assert plain["fidelity"] > 0.95 and shifted["fidelity"] > 0.95, res
