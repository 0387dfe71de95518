"""A student distilled from a whole tiny SAM3 (``radio cache`` + ``radio train``) in front of SAM3's own decoder
(radio/sam3.py): the same call and outputs as ``Sam3Model``, masks close to SAM3's own, far closer than an untrained
student's. The experiment itself is bench/bench_sam3_dropin.py's (here with fewer epochs and scenes)."""

import os
import sys

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

from bench_sam3_dropin import TEXT_PROMPTS, distill, mask_iou, masks, scene_pixels, untrained_like  # noqa: E402

SCENES = 24


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    from transformers import Sam3Model

    import radio

    # One thread: this tiny student trains ~20x faster so on a shared 2-core machine, where torch's threads would
    # wait on each other behind other processes (1100 against 50 images/s measured there).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sam3_dir, student_dir = distill(tmp_path_factory.mktemp("sam3-dropin"), epochs=12)
        sam3 = Sam3Model.from_pretrained(sam3_dir).eval()
        yield sam3_dir, sam3, radio.load_student(student_dir), scene_pixels(sam3_dir, SCENES)
    finally:
        torch.set_num_threads(threads)


def test_the_student_learned_from_this_sam3s_own_vision_encoder(run):
    """The SAM3 the student goes into is the one its targets came from: same weights hash and fingerprint as the
    teacher recorded in the student, and that teacher gives exactly what this Sam3Model's vision encoder gives."""
    from teachers.registry import create_teacher

    sam3_dir, sam3, student, px = run
    for name in ("tiny-sam3-trunk", "tiny-sam3"):
        t = create_teacher(name, source=sam3_dir)
        assert student.meta["teachers"][name]["weights_sha256"] == t.spec.weights_sha256
        assert student.fingerprints[name] == t.spec.fingerprint
    t = create_teacher("tiny-sam3-trunk", source=sam3_dir)
    with torch.no_grad():
        own = sam3.vision_encoder(px[:4]).last_hidden_state
        _, mine = t.family.forward(t.model, px[:4])  # the cache's own call, on SAM3's pixels
    torch.testing.assert_close(mine.flatten(1, 2), own, rtol=0, atol=1e-6)


def test_dropin_is_called_as_sam3_and_leaves_sam3_as_it_was(run):
    from transformers.models.sam3.modeling_sam3 import Sam3VisionModel

    from radio.sam3 import StudentSam3VisionEncoder, sam3_with_student

    _, sam3, student, px = run
    model = sam3_with_student(sam3, student)  # the student's only trunk adaptor is the default
    assert isinstance(model.vision_encoder, StudentSam3VisionEncoder) and model.vision_encoder.target == "trunk"
    assert isinstance(sam3.vision_encoder, Sam3VisionModel)
    assert model.detr_decoder is sam3.detr_decoder and model.mask_decoder is sam3.mask_decoder
    ids = torch.tensor([TEXT_PROMPTS[0]]).expand(len(px), -1)
    with torch.no_grad():
        ref, got = sam3(pixel_values=px, input_ids=ids), model(pixel_values=px, input_ids=ids)
        own, mine = sam3.get_vision_features(px), model.get_vision_features(pixel_values=px)
    for key in ("pred_masks", "pred_boxes", "pred_logits", "presence_logits", "semantic_seg"):
        assert getattr(got, key).shape == getattr(ref, key).shape, key
        assert torch.isfinite(getattr(got, key)).all(), key
    assert ref.pred_masks.shape == (len(px), sam3.config.detr_decoder_config.num_queries, 16, 16)  # 4x the 4x4 grid
    assert [x.shape for x in mine.fpn_hidden_states] == [x.shape for x in own.fpn_hidden_states]
    for a, b in zip(mine.fpn_position_encoding, own.fpn_position_encoding, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="not a SAM3 adaptor"):
        sam3_with_student(sam3, student, "tiny-sam3-nope")


class _Oracle(nn.Module):
    """A perfect student: its SAM3 adaptor gives the teacher's own map for the batch it was given."""

    patch_size = 8

    def __init__(self, teacher: str, features_BHWC: torch.Tensor):
        super().__init__()
        self.teacher, self.features = teacher, features_BHWC

    def predict(self, x):
        assert x.shape[-2:] == (32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1  # SAM3's grid x patch 8
        return type("P", (), {"adapters": {self.teacher: {"features": self.features}}})()


def test_a_perfect_trunk_gives_sam3s_own_masks_and_the_level_path_its_level(run):
    """Trunk path: the teacher's trunk through SAM3's own neck is SAM3, exactly. Level path: the least-norm trunk
    reproduces the given scale-1 level, and the level reaches the decoder as it is."""
    from radio.sam3 import StudentSam3VisionEncoder

    _, sam3, student, px = run
    with torch.no_grad():
        own = sam3.vision_encoder(px)
    trunk = own.last_hidden_state.reshape(len(px), 4, 4, -1)
    spec = student.meta["teachers"]
    enc = StudentSam3VisionEncoder(_Oracle("t", trunk), "t", spec["tiny-sam3-trunk"], sam3.vision_encoder)
    with torch.no_grad():
        mine = enc(px)
    for a, b in zip(mine.fpn_hidden_states, own.fpn_hidden_states, strict=True):
        torch.testing.assert_close(a, b)
    level = own.fpn_hidden_states[2].permute(0, 2, 3, 1)
    enc = StudentSam3VisionEncoder(_Oracle("t", level), "t", spec["tiny-sam3"], sam3.vision_encoder)
    with torch.no_grad():
        mine = enc(px)
        t = mine.last_hidden_state.transpose(1, 2).reshape(len(px), -1, 4, 4)
        err = (enc.neck.fpn_layers[2](t) - own.fpn_hidden_states[2]).norm() / own.fpn_hidden_states[2].norm()
    assert float(err) < 0.01  # conjugate gradients, 100 steps in float32: SAM3's 3x3 projection is ill-conditioned
    assert torch.equal(mine.fpn_hidden_states[2], own.fpn_hidden_states[2])
    # the trunk has twice the level's channels: the least-norm one is not SAM3's, only its projection is
    assert float((t - trunk.permute(0, 3, 1, 2)).norm() / trunk.norm()) > 0.1


def test_trained_student_masks_are_far_closer_to_sam3s_than_an_untrained_ones(run):
    """Mask IoU (pred_masks > 0, every query, 3 text prompts) to SAM3's own masks on held-out scenes: the trained
    student through its trunk adaptor well above the same student untrained, and above SAM3 fed another scene."""
    from radio.sam3 import sam3_with_student

    _, sam3, student, px = run
    ref = masks(sam3, px)
    iou = {}
    for name, s in (("trained", student), ("untrained", untrained_like(student))):
        for adaptor in ("tiny-sam3-trunk", "tiny-sam3"):
            got = masks(sam3_with_student(sam3, s, adaptor), px)
            assert got.shape == ref.shape
            iou[name, adaptor] = mask_iou(got, ref)
    with torch.no_grad():
        own = sam3.vision_encoder(px)
    other = type(own)(
        fpn_hidden_states=tuple(x.roll(1, 0) for x in own.fpn_hidden_states),
        fpn_position_encoding=own.fpn_position_encoding,
    )
    chance = mask_iou(masks(sam3, px, other), ref)
    print(iou, chance)
    assert iou["trained", "tiny-sam3-trunk"] > iou["untrained", "tiny-sam3-trunk"] + 0.08, iou
    assert iou["trained", "tiny-sam3-trunk"] > chance + 0.1, (iou, chance)
    assert iou["trained", "tiny-sam3"] > iou["untrained", "tiny-sam3"], iou
