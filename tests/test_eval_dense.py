"""The new evaluations on cases with a known answer: mIoU, the dense linear probe, zero-shot, text towers."""

import pytest
import torch
import torch.nn.functional as F

from radio.metrics import dense_probe_miou, mean_iou, zero_shot_top1


def test_mean_iou_known_values():
    gt = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    assert mean_iou(gt, gt, 3) == 1.0  # class 2 is absent from both: not averaged in
    pred = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1]])
    # class 0: inter 4, union 5; class 1: inter 3, union 4
    assert mean_iou(pred, gt, 3) == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert mean_iou(torch.full_like(gt, 2), gt, 3) == 0.0


def _blocky(n, grid, patch, classes, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n, grid, grid), generator=g)
    masks = labels.repeat_interleave(patch, 1).repeat_interleave(patch, 2)  # (n, grid*patch, grid*patch)
    return labels, masks


def test_dense_probe_recovers_separable_patches_and_not_noise():
    K = 5
    tr_l, tr_m = _blocky(24, 6, 4, K, 0)
    te_l, te_m = _blocky(8, 6, 4, K, 1)
    basis = torch.randn(K, 16, generator=torch.Generator().manual_seed(2))

    def feat(labels):
        return basis[labels] + 0.05 * torch.randn(*labels.shape, 16, generator=torch.Generator().manual_seed(3))

    # the known answer: an ideal head's logits (one-hot per patch), upsampled bilinearly as the probe's are; only
    # pixels near a corner where patches of other classes meet can be lost
    oracle = F.interpolate(
        F.one_hot(te_l, K).permute(0, 3, 1, 2).float(), size=te_m.shape[-2:], mode="bilinear", align_corners=False
    ).argmax(1)
    best = mean_iou(oracle, te_m, K)
    assert 0.85 < best < 1.0
    assert dense_probe_miou(feat(tr_l), tr_m, feat(te_l), te_m, K, epochs=150) == pytest.approx(best, abs=0.02)

    def noise(labels, seed):
        return torch.randn(*labels.shape, 16, generator=torch.Generator().manual_seed(seed))

    assert dense_probe_miou(noise(tr_l, 4), tr_m, noise(te_l, 5), te_m, K, epochs=150) < 0.5


def test_zero_shot_top1_known_answer():
    emb = torch.eye(4)[torch.tensor([0, 1, 2, 3, 1])] + 0.01
    labels = torch.tensor([0, 1, 2, 3, 1])
    assert zero_shot_top1(emb, labels, torch.eye(4)) == 1.0
    assert zero_shot_top1(emb, labels, torch.eye(4)[[1, 2, 3, 0]]) == 0.0


def test_text_embeddings_are_the_text_towers_own():
    """The real loading path (from_pretrained of the whole checkpoint and its tokenizer) equals the model's
    get_text_features called directly; teachers without a text tower, or a checkpoint without a tokenizer, are
    refused."""
    import transformers as T

    from teachers import TeacherLoadError, text_embeddings
    from teachers.tiny import materialize_tiny

    prompts = ["a photo of a landscape.", "a photo of a fur."]
    got = text_embeddings("tiny-clip", prompts)
    d = materialize_tiny("tiny-clip")
    model, tok = T.CLIPModel.from_pretrained(d).eval(), T.AutoTokenizer.from_pretrained(d)
    with torch.no_grad():
        want = model.get_text_features(**tok(prompts, padding=True, return_tensors="pt"))
    want = want if isinstance(want, torch.Tensor) else want.pooler_output
    torch.testing.assert_close(got, want.float())
    assert got.shape == (2, model.config.projection_dim) and not torch.allclose(got[0], got[1])
    with pytest.raises(TeacherLoadError, match="no text tower"):
        text_embeddings("tiny-dinov2", prompts)


def test_text_embeddings_refuse_a_checkpoint_without_tokenizer(tmp_path):
    import shutil

    from teachers import TeacherLoadError, text_embeddings
    from teachers.tiny import materialize_tiny

    d = tmp_path / "clip"
    shutil.copytree(materialize_tiny("tiny-clip"), d)
    for f in d.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(TeacherLoadError, match="holds no tokenizer"):
        text_embeddings("tiny-clip", ["a photo of a fur."], source=str(d))


def test_zero_shot_through_an_adaptor_that_equals_its_teacher(monkeypatch):
    """A student whose adaptor reproduces the teacher's summary exactly gets the teacher's zero-shot accuracy."""
    from pipelines.evaluate import class_text_embeddings

    class Fake:
        meta = {"teachers": {"tiny-clip": {}}}

    names = ["landscape", "stripes", "rings"]
    text = class_text_embeddings(Fake(), ["tiny-clip", "tiny-dinov2"], names, ["a photo of a {}.", "{}"])
    assert list(text) == ["tiny-clip"] and text["tiny-clip"].shape[0] == 3  # DINOv2 has no text tower: left out
    torch.testing.assert_close(text["tiny-clip"].norm(dim=-1), torch.ones(3))
    images = text["tiny-clip"][torch.tensor([2, 0, 1, 1])] + 0.001  # image embeddings next to their class's text
    assert zero_shot_top1(images, torch.tensor([2, 0, 1, 1]), text["tiny-clip"]) == 1.0
