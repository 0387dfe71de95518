"""Student contracts: shapes for every size, position interpolation, CPE, heads, losses, statistics, export."""

import numpy as np
import pytest
import torch

from radio.adapters import AdapterConfig, AdapterHeads, resample_targets, resample_valid_mask
from radio.checkpoint import DistillModel, load_student, save_student
from radio.losses import LossConfig, distill_loss
from radio.normalize import RunningStats, TargetStats
from radio.student import SIZES, StudentConfig, ViTStudent

CLIP = AdapterConfig("clip", feature_dim=24, feature_grid=(4, 4), summary_dim=16, hidden=32)
SAM = AdapterConfig("sam", feature_dim=12, feature_grid=(16, 16), summary_dim=None, hidden=32)


@pytest.mark.parametrize("size", list(SIZES))
def test_forward_shapes_for_every_size(size):
    cfg = StudentConfig(size=size, summary_teachers=["a", "b"], num_registers=2)
    D, depth, _ = SIZES[size]
    device = "cpu" if size in ("nano", "tiny") else "meta"  # big sizes: shapes without the FLOPs
    m = ViTStudent(cfg).to(device)
    assert len(m.blocks) == depth
    out = m(torch.zeros(2, 3, 64, 96, device=device))
    assert out.summary_BTD.shape == (2, 2, D)
    assert out.features_BLC.shape == (2, 4 * 6, D) and out.grid_hw == (4, 6)
    assert out.features_BCHW().shape == (2, D, 4, 6)


def test_any_multiple_of_patch_and_clear_error_otherwise():
    m = ViTStudent(StudentConfig(size="nano", patch_size=8)).eval()
    for hw in [(8, 8), (64, 64), (32, 128), (224, 224)]:
        assert m(torch.randn(1, 3, *hw)).grid_hw == (hw[0] // 8, hw[1] // 8)
    with pytest.raises(ValueError, match="multiple of the student's patch size 8"):
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


def test_cpe_random_in_training_deterministic_in_eval():
    torch.manual_seed(0)
    m = ViTStudent(StudentConfig(size="nano", img_size=64, cpe_max_img_size=128, patch_size=16))
    x = torch.randn(1, 3, 64, 64)
    m.train()
    torch.manual_seed(1)
    a = m(x).features_BLC
    torch.manual_seed(2)
    b = m(x).features_BLC
    assert not torch.allclose(a, b)
    m.eval()
    assert torch.equal(m(x).features_BLC, m(x).features_BLC)


def test_heads_and_resampling_shapes():
    student = ViTStudent(StudentConfig(size="nano", patch_size=8, summary_teachers=["clip"])).eval()
    heads = AdapterHeads([CLIP, SAM], student.cfg.dim, ["clip"])
    preds = heads(student(torch.randn(2, 3, 64, 64)))
    assert preds["clip"]["summary"].shape == (2, 16) and preds["clip"]["features"].shape == (2, 8, 8, 24)
    assert "summary" not in preds["sam"] and preds["sam"]["features"].shape == (2, 8, 8, 12)
    t = torch.randn(2, 16, 16, 12)
    assert resample_targets(t, (8, 8)).shape == (2, 8, 8, 12)
    # shrinking by 2 with antialias = the 2x2 average
    ones = torch.arange(16.0).repeat(16, 1)[None, :, :, None]
    np.testing.assert_allclose(resample_targets(ones, (8, 8))[0, 0, :, 0].numpy(), np.arange(0.5, 16, 2), atol=1e-5)


def test_valid_mask_marks_padding():
    valid = torch.tensor([[16, 8], [16, 16]])  # first image: right half is padding
    m = resample_valid_mask(valid, (16, 16), (4, 4))
    assert m[0].sum() == 8 and m[0][:, :2].all() and not m[0][:, 2:].any()
    assert m[1].all()


def _targets(B=2):
    g = torch.Generator().manual_seed(0)
    return {"clip": {"summary": torch.randn(B, 16, generator=g), "features": torch.randn(B, 4, 4, 24, generator=g)}, "sam": {"features": torch.randn(B, 16, 16, 12, generator=g)}}


def test_loss_dict_terms_and_masking():
    tg = _targets()
    valid = {"clip": torch.tensor([[4, 4], [4, 4]]), "sam": torch.tensor([[16, 8], [16, 8]])}
    perfect = {"clip": {"summary": tg["clip"]["summary"], "features": tg["clip"]["features"]}, "sam": {"features": resample_targets(tg["sam"]["features"], (4, 4))}}
    out = distill_loss(perfect, tg, valid, LossConfig())
    assert set(out) == {"loss", "loss/clip/summary", "loss/clip/features", "loss/sam/features", "cos/clip/summary", "cos/clip/features", "cos/sam/features"}
    assert out["loss"].item() < 1e-5
    # what the prediction does over the padded region does not matter
    bad = {k: {kk: vv.clone() for kk, vv in v.items()} for k, v in perfect.items()}
    bad["sam"]["features"][:, :, 2:] = 100.0
    assert distill_loss(bad, tg, valid, LossConfig())["loss/sam/features"].item() < 1e-5
    bad["sam"]["features"][:, :, :2] = -3.0
    assert distill_loss(bad, tg, valid, LossConfig())["loss/sam/features"].item() > 0.1


def test_teacher_weight_zero_removes_its_gradient():
    tg = _targets()
    valid = {"clip": torch.tensor([[4, 4]] * 2), "sam": torch.tensor([[16, 16]] * 2)}
    p = {"clip": {"summary": torch.randn(2, 16, requires_grad=True), "features": torch.randn(2, 4, 4, 24, requires_grad=True)}, "sam": {"features": torch.randn(2, 4, 4, 12, requires_grad=True)}}
    distill_loss(p, tg, valid, LossConfig(weights={"sam": 0.0}))["loss"].backward()
    assert p["sam"]["features"].grad.abs().sum() == 0 and p["clip"]["features"].grad.abs().sum() > 0


def test_running_stats_exact_and_mergeable():
    x = np.random.default_rng(0).normal(3, 2, (1000, 5))
    a, b = RunningStats(), RunningStats()
    for chunk in np.array_split(x[:600], 7):
        a.update(chunk)
    b.update(x[600:])
    merged = RunningStats.from_dict(a.to_dict()).merge(b)
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.std, x.std(0), rtol=1e-12)
    assert merged.count == 1000


def test_target_stats_roundtrip():
    st = TargetStats([1.0, 2.0], [2.0, 4.0], [0.5], [3.0])
    x = torch.randn(3, 5, 5, 2)
    torch.testing.assert_close(st.denormalize_features(st.normalize_features(x)), x)
    assert TargetStats.from_dict(st.to_dict()) == st


def test_export_roundtrip_and_input_types(tmp_path):
    torch.manual_seed(0)
    model = DistillModel(StudentConfig(size="nano", patch_size=8, summary_teachers=["clip"]), [CLIP, SAM]).eval()
    stats = {"clip": TargetStats([0.0] * 24, [2.0] * 24, [0.0] * 16, [3.0] * 16).to_dict(), "sam": TargetStats([1.0] * 12, [1.0] * 12).to_dict()}
    save_student(tmp_path / "s", model, {"stats": stats, "fingerprints": {"clip": "abc"}})
    loaded = load_student(tmp_path / "s")
    x = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    with torch.no_grad():
        ref = model(x)
        out = loaded(x)
        out_f = loaded(x.float() / 255)
    torch.testing.assert_close(out.adapters["clip"]["summary"], ref["clip"]["summary"] * (3.0 + 1e-6))
    torch.testing.assert_close(out.adapters["sam"]["features"], ref["sam"]["features"] * (1.0 + 1e-6) + 1.0)
    torch.testing.assert_close(out_f.features, out.features)
    assert out.features.shape == (2, 4, 6, 96) and out.summary.shape == (2, 96)
    assert loaded.fingerprints == {"clip": "abc"} and loaded.teacher_names == ["clip", "sam"]
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_student(tmp_path)
