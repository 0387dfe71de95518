"""Student contracts: shapes for every size, position interpolation, CPE, heads, target resampling, losses,
statistics, export."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radio.adapters import AdapterConfig, AdapterHeads, resample_targets, resample_valid_mask
from radio.checkpoint import save_student
from radio.losses import LossConfig, distill_loss
from radio.model import DistillModel, RadioModel, load_student
from radio.normalize import RunningStats, TargetStats
from radio.student import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIZES,
    StudentConfig,
    ViTStudent,
    global_blocks,
    normalize_uint8,
    trunk_param_count,
)

CLIP = AdapterConfig("clip", feature_dim=24, feature_grid=(4, 4), summary_dim=16, hidden=32)
SAM = AdapterConfig("sam", feature_dim=12, feature_grid=(16, 16), summary_dim=None, hidden=32)


# ---- trunk ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", list(SIZES))
def test_forward_shapes_for_every_size(size):
    torch.manual_seed(0)
    cfg = StudentConfig(size=size, summary_teachers=["a", "b"], num_registers=2)
    D, depth, heads = SIZES[size]
    device = "cpu" if size in ("nano", "tiny", "small") else "meta"  # big sizes: shapes without the FLOPs
    with torch.device(device):
        m = ViTStudent(cfg).eval()
    assert (m.cfg.dim, len(m.blocks), m.blocks[0].attn.heads) == (D, depth, heads)
    assert sum(p.numel() for p in m.parameters()) == trunk_param_count(cfg)
    for H, W in [(224, 224), (64, 96)]:
        with torch.no_grad():
            out = m(torch.zeros(2, 3, H, W, device=device))
        h, w = H // 16, W // 16
        assert out.summary_BTD.shape == (2, 2, D) and out.grid_hw == (h, w)
        assert out.features_BLC.shape == (2, h * w, D)
        assert out.features_BCHW().shape == (2, D, h, w)
        if device == "cpu":
            assert torch.isfinite(out.features_BLC).all()
            torch.testing.assert_close(out.features_BCHW()[:, :, 1, 2], out.features_BLC[:, 1 * w + 2])


def test_param_count_matches_vit_b16_and_l16():
    # timm's vit_base_patch16_224 / vit_large_patch16_224 trunks (without the 1000-class head) have
    # 85,798,656 / 303,301,632 parameters; ours has one position row fewer (no position on the summary token).
    assert trunk_param_count(StudentConfig(size="base", num_registers=0)) == 85_798_656 - 768
    assert trunk_param_count(StudentConfig(size="large", num_registers=0)) == 303_301_632 - 1024


def test_config_presets_and_overrides():
    c = StudentConfig(size="small", depth=3).resolved()
    assert (c.dim, c.depth, c.heads) == (384, 3, 6)
    assert StudentConfig(size="base").resolved().dim == 768
    with pytest.raises(ValueError, match="unknown student size 'huge'"):
        StudentConfig(size="huge")
    with pytest.raises(ValueError, match="not divisible by heads"):
        StudentConfig(size="nano", heads=5).resolved()
    with pytest.raises(ValueError, match="cpe_max_img_size"):
        StudentConfig(img_size=224, cpe_max_img_size=112)


def test_position_interpolation_any_multiple_and_clear_error_otherwise():
    torch.manual_seed(0)
    m = ViTStudent(StudentConfig(size="nano", patch_size=8, img_size=64)).eval()
    G, D = 8, m.cfg.dim
    grid = m.pos_embed.reshape(1, G, G, D).permute(0, 3, 1, 2)
    torch.testing.assert_close(m._pos(1, G, G), m.pos_embed, rtol=0, atol=0)  # reference size: as learned
    ref = F.interpolate(grid, size=(4, 16), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(m._pos(1, 4, 16), ref)
    for hw in [(8, 8), (64, 64), (32, 128), (96, 160)]:
        assert m(torch.randn(1, 3, *hw)).grid_hw == (hw[0] // 8, hw[1] // 8)
    with pytest.raises(ValueError, match="input size 30x32 is not a multiple of the student's patch size 8"):
        m(torch.randn(1, 3, 30, 32))


def test_registers_are_not_in_outputs_and_influence_them():
    torch.manual_seed(0)
    m = ViTStudent(StudentConfig(size="nano", num_registers=3)).eval()
    x = torch.randn(1, 3, 32, 32)
    a = m(x)
    assert a.features_BLC.shape[1] == 4 and a.summary_BTD.shape[1] == 1
    with torch.no_grad():
        m.register_tokens.add_(1.0)
    assert not torch.allclose(a.features_BLC, m(x).features_BLC)


def test_cpe_random_windows_in_training_deterministic_in_eval():
    torch.manual_seed(0)
    m = ViTStudent(StudentConfig(size="nano", img_size=64, cpe_max_img_size=128, patch_size=16))
    x = torch.randn(1, 3, 64, 64).expand(2, -1, -1, -1)
    m.train()
    a = m(x).features_BLC
    assert not torch.allclose(a[0], a[1])  # each sample its own window
    assert not torch.allclose(a, m(x).features_BLC)  # and new ones every step
    m.eval()
    e = m(x).features_BLC
    assert torch.equal(e, m(x).features_BLC) and torch.equal(e[0], e[1])
    # eval: the whole 8x8 grid resized to the input's 4x4; non-square: the centred window of a 6x6 resize
    grid = m.pos_embed.reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(
        m._pos(1, 4, 4), F.interpolate(grid, size=(4, 4), mode="bicubic").flatten(2).transpose(1, 2)
    )
    torch.testing.assert_close(
        m._pos(1, 4, 6), F.interpolate(grid, size=(6, 6), mode="bicubic")[:, :, 1:5].flatten(2).transpose(1, 2)
    )
    # a full training window reads exactly what eval reads
    m.train()
    m.CPE_SCALE, m.CPE_ASPECT = (1.0, 1.0), (1.0, 1.0)
    torch.testing.assert_close(m._pos(2, 4, 4), m.eval()._pos(1, 4, 4).expand(2, -1, -1))


def test_without_cpe_train_equals_eval():
    torch.manual_seed(0)
    m = ViTStudent(StudentConfig(size="nano", img_size=64))
    x = torch.randn(2, 3, 48, 64)
    torch.testing.assert_close(m.train()(x).features_BLC, m.eval()(x).features_BLC)


def test_vitdet_global_blocks_are_spaced_as_radios():
    assert global_blocks(12, 4) == {2, 5, 8, 11}  # ViT-B: 4 global blocks, the last one among them
    assert global_blocks(24, 4) == {5, 11, 17, 23}  # ViT-L/H
    assert global_blocks(4, 4) == {3} and global_blocks(2, 4) == {1}  # period 1: all windowed but the last
    assert global_blocks(12, 2) == {5, 11}


def test_vitdet_windowed_blocks_attend_within_windows_and_prefix_tokens_sit_out():
    """Block 0 windowed, block 1 global: the output equals running block 0 on each window's patches alone (the
    summary and register tokens untouched), then block 1 on the whole sequence."""
    torch.manual_seed(0)
    m = ViTStudent(StudentConfig(size="nano", depth=2, patch_size=8, img_size=64, vitdet_window_size=2)).eval()
    assert m.window_size == 2 and m.global_blocks == {1}
    x = torch.randn(2, 3, 32, 48)  # a 4x6 patch grid: 2x3 windows of 2x2 patches
    with torch.no_grad():
        got = m(x)
        tokens, (h, w) = m._tokens(x)
        P = tokens.shape[1] - h * w
        grid = tokens[:, P:].reshape(2, h, w, -1).clone()
        for wy in range(0, h, 2):
            for wx in range(0, w, 2):
                win = grid[:, wy : wy + 2, wx : wx + 2].reshape(2, 4, -1)
                grid[:, wy : wy + 2, wx : wx + 2] = m.blocks[0](win).reshape(2, 2, 2, -1)
        ref = m.blocks[1](torch.cat([tokens[:, :P], grid.reshape(2, h * w, -1)], 1))
        ref = m._split(m.norm(ref), (h, w))
    torch.testing.assert_close(got.features_BLC, ref.features_BLC)
    torch.testing.assert_close(got.summary_BTD, ref.summary_BTD)
    # intermediates run the same blocks, and stop early as asked
    final, inter = m.forward_intermediates(x, indices=[0, 1])
    torch.testing.assert_close(final.features_BLC, got.features_BLC)
    assert len(inter) == 2 and m.forward_intermediates(x, indices=[0], stop_early=True)[0] is None
    with pytest.raises(ValueError, match=r"vitdet_window_size=2: the patch grid 5x6 is not a multiple.*32x48"):
        m(torch.randn(1, 3, 40, 48))
    with pytest.raises(ValueError, match="vitdet_window_size=0"):
        StudentConfig(vitdet_window_size=0)


def test_vitdet_chosen_at_load_and_back_to_global(tmp_path):
    torch.manual_seed(0)
    d = save_student(
        tmp_path / "s",
        DistillModel(StudentConfig(size="nano", patch_size=8, img_size=64, summary_teachers=["clip"]), [CLIP]),
    )
    x = torch.rand(1, 3, 64, 64)
    glob = load_student(d)
    assert glob.window_size is None
    win = load_student(d, vitdet_window_size=4)
    assert win.window_size == 4
    a, b = glob(x).features, win(x).features
    assert not torch.equal(a, b) and F.cosine_similarity(a, b, -1).mean() > 0.5
    win.window_size = None  # RADIO's attribute, settable: back to global attention, the same numbers
    torch.testing.assert_close(win(x).features, a)
    with pytest.raises(ValueError, match="vitdet_window_size=-1"):
        load_student(d, vitdet_window_size=-1)


def test_normalize_uint8():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    want = (x.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(normalize_uint8(x), want)
    with pytest.raises(TypeError, match="uint8"):
        normalize_uint8(x.float())


# ---- heads and target resampling --------------------------------------------------------------------


def test_heads_shapes_sam_like_and_clip_like():
    torch.manual_seed(0)
    clip = AdapterConfig("clip", feature_dim=64, feature_grid=(7, 7), summary_dim=48, hidden=32)
    sam = AdapterConfig("sam", feature_dim=256, feature_grid=(64, 64), summary_dim=None, hidden=32)
    student = ViTStudent(StudentConfig(size="nano", summary_teachers=["clip"])).eval()
    heads = AdapterHeads([clip, sam], student.cfg.dim, ["clip"])
    preds = heads(student(torch.randn(2, 3, 224, 224)))
    assert preds["clip"]["summary"].shape == (2, 48) and preds["clip"]["features"].shape == (2, 14, 14, 64)
    assert set(preds["sam"]) == {"features"} and preds["sam"]["features"].shape == (2, 14, 14, 256)
    sam_target = torch.randn(2, 64, 64, 256)
    valid = torch.tensor([[64, 48], [64, 64]])  # a 4:3 view: SAM's right quarter is padding
    assert resample_targets(sam_target, (14, 14), valid).shape == (2, 14, 14, 256)
    assert resample_targets(torch.randn(2, 7, 7, 64), (14, 14)).shape == (2, 14, 14, 64)
    with pytest.raises(ValueError, match="no summary token"):
        AdapterHeads([clip], student.cfg.dim, [])


def test_resampling_area_when_shrinking_bilinear_when_growing():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 16, 16, 5, generator=g)
    nchw = t.permute(0, 3, 1, 2)
    torch.testing.assert_close(resample_targets(t, (4, 8)), F.avg_pool2d(nchw, (4, 2)).permute(0, 2, 3, 1))
    torch.testing.assert_close(
        resample_targets(t, (32, 24)), F.interpolate(nchw, size=(32, 24), mode="bilinear").permute(0, 2, 3, 1)
    )
    # a non-integer ratio (SAM's 64 -> 14) is an exact area average, fractional overlaps included
    ramp = torch.arange(64.0).view(1, 64, 1, 1).expand(1, 64, 64, 1)
    r = resample_targets(ramp, (14, 14))
    torch.testing.assert_close(r.mean(), ramp.mean())
    # reference: split every teacher cell into 7 (64 x 7 = 14 x 32), then plain 32-cell means
    fine = np.repeat(np.arange(64.0), 7).reshape(14, 32).mean(1)
    np.testing.assert_allclose(r[0, :, 0, 0].numpy(), fine, rtol=1e-6)


def test_resampling_uses_only_the_valid_region():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 16, 16, 5, generator=g)
    valid = torch.tensor([[16, 8], [12, 16]])  # first: right half padding; second: bottom quarter
    out = resample_targets(t, (4, 4), valid)
    # the valid region is what the student sees, so it fills the whole student grid
    want0 = F.interpolate(t[:1, :16, :8].permute(0, 3, 1, 2), size=(4, 4), mode="area")
    want1 = F.avg_pool2d(t[1:, :12, :16].permute(0, 3, 1, 2), (3, 4))
    torch.testing.assert_close(out, torch.cat([want0, want1]).permute(0, 2, 3, 1))
    t2 = t.clone()
    t2[0, :, 8:] = 1e6
    t2[1, 12:] = float("nan")
    torch.testing.assert_close(resample_targets(t2, (4, 4), valid), out)
    with pytest.raises(ValueError, match="valid_hw"):
        resample_targets(t, (4, 4), torch.tensor([[17, 8], [16, 16]]))


def test_valid_mask_marks_padding():
    valid = torch.tensor([[16, 8], [16, 16], [6, 16]])
    m = resample_valid_mask(valid, (16, 16), (4, 4))
    assert m.shape == (3, 4, 4) and m.dtype == torch.float32
    assert m[0].sum() == 8 and m[0][:, :2].all() and not m[0][:, 2:].any()
    assert m[1].all()
    assert m[2][:2].all() and not m[2][2:].any()  # row 1 of 4 covers rows 4..8: half valid counts


# ---- losses -----------------------------------------------------------------------------------------


def _targets(B=2):
    g = torch.Generator().manual_seed(0)
    return {
        "clip": {"summary": torch.randn(B, 16, generator=g), "features": torch.randn(B, 4, 4, 24, generator=g)},
        "sam": {"features": torch.randn(B, 16, 16, 12, generator=g)},
    }


def test_loss_dict_terms_and_values():
    tg = _targets()
    perfect = {
        "clip": {"summary": tg["clip"]["summary"], "features": tg["clip"]["features"]},
        "sam": {"features": resample_targets(tg["sam"]["features"], (4, 4), kernel="linear")},
    }
    out = distill_loss(perfect, tg, LossConfig())
    assert set(out) == {
        "loss",
        "loss/clip/summary",
        "loss/clip/features",
        "loss/sam/features",
        "cos/clip/summary",
        "cos/clip/features",
        "cos/sam/features",
        "angle/clip/summary",
    }
    assert out["angle/clip/summary"].item() < 0.1  # degrees
    assert out["loss"].item() < 1e-5 and all(abs(out[k].item() - 1) < 1e-5 for k in out if k.startswith("cos/"))
    assert not any(out[k].requires_grad for k in out if k.startswith("cos/"))
    # known values: negated predictions -> cosine -1; features add 0.1 x smooth-L1 of |2x|
    neg = {t: {k: -v for k, v in p.items()} for t, p in perfect.items()}
    out = distill_loss(neg, tg, LossConfig(weights={"sam": 0.5}, summary_weight=2.0))
    torch.testing.assert_close(out["loss/clip/summary"], torch.tensor(2.0))
    sl1 = F.smooth_l1_loss(-2 * tg["clip"]["features"], torch.zeros(2, 4, 4, 24))
    torch.testing.assert_close(out["loss/clip/features"], 0.9 * 2 + 0.1 * sl1)
    torch.testing.assert_close(out["loss"], 2.0 * 2 + out["loss/clip/features"] + 0.5 * out["loss/sam/features"])


def test_teacher_weight_zero_removes_its_gradient():
    tg = _targets()

    def grads(weights):
        p = {
            "clip": {
                "summary": torch.randn(2, 16, requires_grad=True),
                "features": torch.randn(2, 4, 4, 24, requires_grad=True),
            },
            "sam": {"features": torch.randn(2, 4, 4, 12, requires_grad=True)},
        }
        out = distill_loss(p, tg, LossConfig(weights=weights))
        out["loss"].backward()
        g = p["sam"]["features"].grad
        return (0.0 if g is None else g.abs().sum().item()), p["clip"]["features"].grad.abs().sum().item(), out

    sam_g, clip_g, out = grads({"sam": 0.0})
    assert sam_g == 0 and clip_g > 0 and out["loss/sam/features"] > 0  # still logged
    assert grads({"sam": 1.0})[0] > 0


# ---- statistics -------------------------------------------------------------------------------------


def test_running_stats_exact_and_mergeable():
    x = np.random.default_rng(0).normal(1e4, 2, (1000, 5))  # a large offset: sum-of-squares would lose digits
    a, b = RunningStats(), RunningStats()
    for chunk in np.array_split(x[:600], 7):
        a.update(chunk)
    b.update(torch.from_numpy(x[600:]))  # torch input too
    merged = RunningStats.from_dict(a.to_dict()).merge(b)
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.std, x.std(0), rtol=1e-9)
    assert merged.count == 1000
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        a.update(x[:, :, None])


def test_target_stats_roundtrip_and_standardization():
    g = torch.Generator().manual_seed(0)
    feats = (
        torch.randn(4, 5, 5, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64)
        + 7
    )
    summ = torch.randn(40, 2, generator=g, dtype=torch.float64) * 3 - 1
    st = TargetStats.from_running(RunningStats().update(feats.reshape(-1, 3)), RunningStats().update(summ))
    n = st.normalize({"features": feats, "summary": summ})
    torch.testing.assert_close(n["features"].mean((0, 1, 2)), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(
        n["features"].std((0, 1, 2), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0
    )  # eps=1e-6 on std 0.1
    back = st.denormalize(n)
    torch.testing.assert_close(back["features"], feats)
    torch.testing.assert_close(back["summary"], summ)
    assert TargetStats.from_dict(st.to_dict()) == st
    no_summary = TargetStats([0.0] * 3, [1.0] * 3)
    assert "summary" not in no_summary.to_dict() and set(no_summary.normalize({"features": feats})) == {"features"}


# ---- export -----------------------------------------------------------------------------------------


def test_export_roundtrip_bitwise_and_input_types(tmp_path):
    torch.manual_seed(0)
    model = DistillModel(
        StudentConfig(size="nano", patch_size=8, summary_teachers=["clip"], cpe_max_img_size=448), [CLIP, SAM]
    ).eval()
    stats = {
        "clip": TargetStats([0.5] * 24, [2.0] * 24, [0.0] * 16, [3.0] * 16),
        "sam": TargetStats([1.0] * 12, [1.0] * 12),
    }
    meta = {
        "stats": {t: s.to_dict() for t, s in stats.items()},
        "fingerprints": {"clip": "abc"},
        "teachers": {"clip": {"feature_dim": 24}},
    }
    save_student(tmp_path / "s", model, meta)
    loaded = load_student(tmp_path / "s")
    assert not loaded.training
    original = RadioModel(model, stats, meta)
    x = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        ref, out, out_f = original.predict(x), loaded.predict(x), loaded.predict(x.float() / 255)
    for a, b in [(ref, out), (out, out_f)]:
        assert torch.equal(a.features, b.features) and torch.equal(a.summary_tokens, b.summary_tokens)
        for t in ("clip", "sam"):
            assert a.adapters[t].keys() == b.adapters[t].keys()
            assert all(torch.equal(a.adapters[t][k], b.adapters[t][k]) for k in a.adapters[t])
    with torch.no_grad():
        raw = model(x)
    torch.testing.assert_close(out.adapters["clip"]["summary"], raw["clip"]["summary"] * (3.0 + 1e-6))
    torch.testing.assert_close(out.adapters["sam"]["features"], raw["sam"]["features"] * (1.0 + 1e-6) + 1.0)
    assert (
        out.features.shape == (2, 4, 6, 96)
        and out.summary.shape == (2, 96)
        and out.features_BCHW().shape == (2, 96, 4, 6)
    )
    assert loaded.fingerprints == {"clip": "abc"} and loaded.teacher_names == ["clip", "sam"]
    assert loaded.config.cpe_max_img_size == 448 and loaded.meta["teachers"] == meta["teachers"]
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        load_student(tmp_path)
    (tmp_path / "s" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "s" / "config.json")):
        load_student(tmp_path / "s")


def test_targets_cropped_to_valid_region_before_resampling():
    # A SAM-like target: only the left 8 of 16 columns are image, the rest padding (with garbage).
    t = torch.arange(16.0)[None, None, :, None].expand(1, 16, 16, 1).clone()
    t[:, :, 8:] = float("inf")
    out = resample_targets(t, (4, 4), torch.tensor([[16, 8]]))
    assert torch.isfinite(out).all()
    # the student's 4 columns span the 8 valid teacher columns: each the mean of 2 of them
    np.testing.assert_allclose(out[0, 0, :, 0].numpy(), [0.5, 2.5, 4.5, 6.5], atol=1e-6)
    # fractional extents (SAM's view ending inside a cell) weigh the last cell by its covered part
    half = resample_targets(
        torch.arange(4.0)[None, None, :, None].expand(1, 1, 4, 1), (1, 1), torch.tensor([[1.0, 2.5]])
    )
    np.testing.assert_allclose(half.item(), (0 + 1 + 0.5 * 2) / 2.5, atol=1e-6)
