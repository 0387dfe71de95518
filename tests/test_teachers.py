"""Teacher contracts, parametrized over every tiny preset in the registry."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from teachers import (
    REGISTRY,
    TeacherLoadError,
    TeacherSpec,
    UnknownTeacher,
    create_teacher,
    fingerprint_of,
    list_teachers,
    pil_resize,
)
from teachers.tiny import save_random_teacher

TINY = [n for n in list_teachers() if REGISTRY[n].tiny]
REAL = [n for n in list_teachers() if not REGISTRY[n].tiny]
# within fit_aspect's 4:1 (CLIP/DINOv2 keep the view's aspect); wider ones are tested separately
SIZES = [(1, 1), (37, 91), (120, 80), (64, 64), (33, 17), (60, 230), (301, 300)]
WIDE = [(5, 300), (900, 60), (10000, 50), (50, 10000)]


def _img(h, w, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1)


@pytest.fixture(scope="module", params=TINY)
def teacher(request):
    return create_teacher(request.param)


@pytest.fixture(scope="module")
def real_dirs(tmp_path_factory):
    """Every real registry entry as a checkpoint with its real processor config and input/patch size
    (one narrow layer, random weights): what the preprocessing and coverage tests need."""
    root = tmp_path_factory.mktemp("real")
    return {n: save_random_teacher(n, str(root / n), shrink=True) for n in REAL}


def _all_teachers(real_dirs):
    yield from ((n, create_teacher(n)) for n in TINY)
    yield from ((n, create_teacher(n, source=real_dirs[n])) for n in REAL)


def _torchvision_official(teacher, img_3HW):
    """What a torchvision-only processor (DINOv3, SAM2, SAM3; torchvision is not installed here) computes,
    written out from transformers' TorchvisionBackend and torchvision's v2 ``resize``: a fixed (height, width)
    resize with antialiased bilinear (torchvision's uint8 kernel on an AVX2 CPU, float32 + round elsewhere),
    then the fused rescale + normalize, ``(x - mean / scale) / (std / scale)``. DINOv3's processor rescales
    first and resizes in float32."""
    import torch.nn.functional as F

    d = json.load(open(os.path.join(teacher.spec.source, "preprocessor_config.json")))
    size = (d["size"]["height"], d["size"]["width"])
    scale = d["rescale_factor"]
    mean, std = torch.tensor(d["image_mean"])[:, None, None], torch.tensor(d["image_std"])[:, None, None]
    x = img_3HW[None]
    if d["image_processor_type"].startswith("DINOv3"):
        x = F.interpolate(
            x * scale, size=size, mode="bilinear", antialias=True, align_corners=False
        )  # uint8 * float -> float32
        return ((x - mean) / std).numpy()
    if "AVX2" in torch.backends.cpu.get_cpu_capability():
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    else:
        x = (
            F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            .round()
            .to(torch.uint8)
        )
    return ((x.float() - mean / scale) / (std / scale)).numpy()


def _official(teacher, img_3HW):
    """The official PIL processor's pixel_values for a whole view: as published, except that a center-crop
    processor is called with ``do_center_crop=False`` and ``size`` = our input size (the crop size for a
    square view; the aspect kept otherwise). Torchvision-only processors: :func:`_torchvision_official`."""
    from transformers import AutoImageProcessor

    if teacher.family.resize != "pillow":
        return _torchvision_official(teacher, img_3HW)

    proc = AutoImageProcessor.from_pretrained(teacher.spec.source)
    assert proc.backend == "pil"
    pil = Image.fromarray(img_3HW.permute(1, 2, 0).numpy())
    if teacher.spec.resize == "fit_aspect":
        h, w = teacher.input_size_for(*img_3HW.shape[1:])
        return proc(images=pil, return_tensors="np", do_center_crop=False, size={"height": h, "width": w})[
            "pixel_values"
        ]
    return proc(images=pil, return_tensors="np")["pixel_values"]


def test_every_family_has_a_tiny_preset():
    assert {REGISTRY[n].family for n in TINY} == {e.family for e in REGISTRY.values()}


def test_shapes_and_dtypes(teacher):
    s = teacher.spec
    out = teacher([_img(50, 50), _img(90, 90, 1)])
    assert out.features_BHWC.shape == (2, *s.feature_grid, s.feature_dim) and out.features_BHWC.dtype == torch.float32
    assert out.valid_hw_B2.tolist() == [list(map(float, s.feature_grid))] * 2
    if s.summary_dim is None:
        assert out.summary_BD is None and s.family in ("sam", "sam2", "sam3", "sam3-trunk")
    else:
        assert out.summary_BD.shape == (2, s.summary_dim) and out.summary_BD.dtype == torch.float32
    assert out.valid_hw_B2.shape == (2, 2)
    entry = REGISTRY[s.name]
    assert (s.summary_dim, s.feature_dim, tuple(s.feature_grid), tuple(s.input_size)) == (
        entry.summary_dim,
        entry.feature_dim,
        entry.feature_grid,
        entry.input_size,
    )


def test_preprocessing_equals_official_pil_processor(real_dirs):
    for name, teacher in _all_teachers(real_dirs):
        for i, (h, w) in enumerate(SIZES):
            img = _img(h, w, i)
            ours, _ = teacher.preprocess([img])
            ref = _official(teacher, img)
            assert ours[0][None].shape == ref.shape, (name, h, w)
            assert np.abs(ours[0][None].numpy() - ref).max() <= 1e-5, (name, h, w)


def test_prepare_path_inputs_equal_official_processor(real_dirs):
    """The cache job's path: the CPU prepare task resizes the view (Pillow, or torchvision's uint8 bilinear for
    SAM2/SAM3), the teacher only normalizes (resized=True). Its pixel values are bitwise those of the teacher's own
    resize
    (the torch port) and within 1e-5 of the official processor, for every registry teacher."""
    from teachers.preprocess import host_resize, resizes_on_host

    for name, teacher in _all_teachers(real_dirs):
        s = teacher.spec
        if not resizes_on_host(s):  # DINOv3 rescales before it resizes, in float: the job resizes on its device
            assert s.family == "dinov3"
            with pytest.raises(ValueError, match="resizes on its own device"):
                host_resize(s, _img(8, 8).permute(1, 2, 0).numpy())
            continue
        for i, (h, w) in enumerate(SIZES):
            img = _img(h, w, i)
            small = host_resize(s, img.permute(1, 2, 0).numpy()).copy()
            ours, ext = teacher.preprocess([torch.from_numpy(small).permute(2, 0, 1)], resized=True)
            port, port_ext = teacher.preprocess([img])
            assert torch.equal(ours[0], port[0]) and torch.equal(ext, port_ext), (name, h, w)
            assert np.abs(ours[0][None].numpy() - _official(teacher, img)).max() <= 1e-5, (name, h, w)


def test_resized_input_of_another_size_is_refused():
    t = create_teacher("tiny-dinov2")
    with pytest.raises(ValueError, match=r"tiny-dinov2 was handed a 40x40 image as already resized.*28x28"):
        t([_img(40, 40)], resized=True)


def test_fp32_teacher_equals_plain_fp32_forward_and_bf16_is_another_fingerprint():
    """fp32 means fp32: the teacher's numbers are the checkpoint's model run in float32 on the official
    processor's pixels (no autocast, no TF32); a bf16 teacher is another fingerprint with other numbers."""
    from transformers import AutoImageProcessor

    from teachers.families import FAMILIES

    t32, t16 = create_teacher("tiny-clip"), create_teacher("tiny-clip", dtype="bf16")
    assert t32.spec.fingerprint != t16.spec.fingerprint
    img = _img(50, 50, 5)
    px = AutoImageProcessor.from_pretrained(t32.spec.source)(
        images=Image.fromarray(img.permute(1, 2, 0).numpy()),
        return_tensors="pt",
        do_center_crop=False,
        size={"height": 32, "width": 32},
    )["pixel_values"]
    plain = (
        FAMILIES["clip"].load(t32.spec.source, None, torch.float32).eval()
    )  # the checkpoint's own model class, float32
    with torch.no_grad():
        ref = plain(pixel_values=px)
    out32, out16 = t32([img]), t16([img])
    torch.testing.assert_close(out32.summary_BD, ref.image_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(out32.features_BHWC.flatten(1, 2), ref.last_hidden_state[:, 1:], rtol=0, atol=1e-6)
    assert (out16.features_BHWC - out32.features_BHWC).abs().max() > 1e-4


def test_compiled_teacher_is_fingerprinted_and_matches_eager():
    eager = create_teacher("tiny-dinov2")
    compiled = create_teacher("tiny-dinov2", compile=True)
    assert compiled.spec.compiled and compiled.spec.fingerprint != eager.spec.fingerprint
    # a spec without the field (written before it existed) keeps its fingerprint
    d = eager.spec.to_dict()
    del d["compiled"]
    assert TeacherSpec.from_dict(d).with_fingerprint().fingerprint == eager.spec.fingerprint
    imgs = [_img(40, 40, 1), _img(40, 40, 2)]
    torch.testing.assert_close(compiled(imgs).features_BHWC, eager(imgs).features_BHWC, rtol=1e-4, atol=1e-4)


def _coordinate_image(h, w):
    """R encodes the column, G the row (0..255 across the image), B is flat."""
    x = np.round(np.linspace(0, 255, w))[None, :].repeat(h, 0)
    y = np.round(np.linspace(0, 255, h))[:, None].repeat(w, 1)
    return torch.from_numpy(np.stack([x, y, np.full((h, w), 128.0)]).astype(np.uint8))


@pytest.mark.parametrize("hw", [(300, 300), (97, 97), (240, 320), (400, 300)])
def test_teacher_input_covers_the_whole_view(real_dirs, hw):
    """Every teacher's input spans the whole view, edge to edge: its first and last columns (rows) show the
    view's first and last columns (rows), up to the resize kernel's reach. A center crop would start
    ~6 % (DINOv2) or ~10 % (tiny-clip) inside the view."""
    H, W = hw
    img = _coordinate_image(H, W)
    for name, teacher in _all_teachers(real_dirs):
        s = teacher.spec
        pixels, extents = teacher.preprocess([img])
        x = pixels[0].double()
        mean, std = (
            torch.tensor(s.mean, dtype=torch.float64)[:, None, None],
            torch.tensor(s.std, dtype=torch.float64)[:, None, None],
        )
        x = (x * std + mean) / s.rescale_factor  # back to 0..255
        vh, vw = (round(float(e) * s.patch_size) for e in extents[0])  # the resized view; SAM pads beyond it
        assert (vh, vw) == tuple(teacher.input_size_for(H, W)), name
        view = x[:, :vh, :vw]
        if s.pad_size is not None:
            assert float(x[:, vh:, :].abs().max() if vh < x.shape[1] else 0) <= 255  # padding (zeros) outside
        for axis, n_in, n_out, ch in ((2, W, vw, 0), (1, H, vh, 1)):
            # a kernel centred on output pixel 0 sits 0.5 * scale - 0.5 input pixels in; give it one pixel more
            reach = 255.0 * (max(0.0, 0.5 * n_in / n_out - 0.5) + 1.5) / max(1, n_in - 1)
            first = view[ch].select(axis - 1, 0).mean().item()
            last = view[ch].select(axis - 1, n_out - 1).mean().item()
            assert first <= reach and last >= 255 - reach, (name, hw, axis, first, last, reach)


def test_fit_aspect_keeps_the_view_aspect_and_refuses_wide_views(real_dirs):
    for name, teacher in _all_teachers(real_dirs):
        s = teacher.spec
        if s.resize != "fit_aspect":
            continue
        side, p = s.resize_size, s.patch_size
        assert teacher.input_size_for(300, 300) == tuple(s.input_size) == (side, side)
        h, w = teacher.input_size_for(300, 400)
        assert h == side and w % p == 0 and abs(w / h - 4 / 3) <= p / side, (name, h, w)
        out = teacher([_img(30, 40), _img(40, 40, 1)])  # mixed sizes: padded to the largest grid
        g = s.feature_grid
        assert out.features_BHWC.shape[1:3] == (g[0], w // p) and out.valid_hw_B2.tolist() == [
            [g[0], w // p],
            [g[0], g[1]],
        ]
        assert (out.features_BHWC[1, :, g[1] :] == 0).all()
        alone = teacher([_img(30, 40)])
        torch.testing.assert_close(alone.features_BHWC[0], out.features_BHWC[0], atol=1e-5, rtol=1e-5)
        for hw in WIDE:
            with pytest.raises(ValueError, match="aspect.*views.ratio"):
                teacher.preprocess([_img(*hw)])


def _pillow(img_3HW, size_hw, interpolation):
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[interpolation]
    out = Image.fromarray(img_3HW.permute(1, 2, 0).numpy()).resize((size_hw[1], size_hw[0]), resample)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


# Fixed cases: identities, 1-pixel in/out, extreme aspect ratios, one-axis resizes, and both sides of
# Pillow 13's pass-order rule (vertical first iff the height shrinks by more than 2x the width's
# pixel count): 22x40 -> 1x30 goes vertical first, 22x40 -> 2x30 horizontal first.
RESIZE_CASES = [
    ((1, 1), (1, 1)),
    ((1, 1), (7, 3)),
    ((9, 7), (1, 1)),
    ((1, 500), (1, 3)),
    ((10000, 50), (8000, 40)),
    ((50, 10000), (40, 8000)),
    ((10000, 50), (64, 1)),
    ((3, 301), (224, 224)),
    ((700, 5), (224, 224)),
    ((224, 500), (224, 224)),
    ((500, 224), (224, 224)),
    ((22, 40), (1, 30)),
    ((22, 40), (2, 30)),
    ((58, 40), (37, 30)),
    ((58, 40), (38, 30)),
    ((480, 640), (224, 298)),
]


def test_pil_resize_is_bitwise_pillow():
    rng = np.random.default_rng(7)
    cases = RESIZE_CASES + [((int(a), int(b)), (int(c), int(d))) for a, b, c, d in rng.integers(1, 130, (300, 4))]
    for i, (hw, out_hw) in enumerate(cases):
        img = _img(*hw, seed=i)
        for interpolation in ("bicubic", "bilinear"):
            ours = pil_resize(img, out_hw, interpolation)
            assert ours.dtype == torch.uint8 and torch.equal(ours, _pillow(img, out_hw, interpolation)), (
                hw,
                out_hw,
                interpolation,
            )


def test_pil_resize_pass_order_matters():
    """Guards the order rule: on these sizes the two pass orders give different pixels."""
    img = _img(22, 40, seed=3)
    vertical_first = pil_resize(pil_resize(img, (1, 40), "bicubic"), (1, 30), "bicubic")
    horizontal_first = pil_resize(pil_resize(img, (22, 30), "bicubic"), (1, 30), "bicubic")
    assert not torch.equal(vertical_first, horizontal_first)
    assert torch.equal(pil_resize(img, (1, 30), "bicubic"), vertical_first)


@pytest.mark.parametrize("hw", [(10000, 50), (50, 10000), (1, 1)])
def test_extreme_images_match_official_processor(teacher, hw):
    from transformers import AutoImageProcessor

    s = teacher.spec
    img = _img(*hw, seed=11)
    if s.resize == "fit_aspect" and hw[0] != hw[1]:
        return  # refused with a clear message: test_fit_aspect_keeps_the_view_aspect_and_refuses_wide_views
    ours, valid = teacher.preprocess([img])
    out = teacher([img])
    assert torch.isfinite(out.features_BHWC).all()
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    if s.resize == "longest_edge_pad" and min(hw) * s.resize_size / max(hw) < 0.5:
        # The short side rounds to 0 pixels: the official processor raises; we keep one pixel (a sliver of
        # one feature row/column) rather than fail a cache job on one odd image.
        with pytest.raises(ValueError):
            AutoImageProcessor.from_pretrained(s.source)(images=pil, return_tensors="np")
        assert sorted(valid[0].tolist()) == [1 / s.patch_size, s.feature_grid[0]]
        return
    ref = _official(teacher, img)
    assert ours[0][None].shape == ref.shape and np.abs(ours[0][None].numpy() - ref).max() <= 1e-5


def test_extreme_aspect_ratios_and_batch_tensor(teacher):
    for h, w in [(10000, 50), (50, 10000), (1, 1)]:
        if teacher.spec.resize == "fit_aspect" and h != w:
            continue
        out = teacher([_img(h, w)])
        assert torch.isfinite(out.features_BHWC).all()
    batch = torch.stack([_img(40, 40, 1), _img(40, 40, 2)])
    assert torch.equal(teacher(batch).features_BHWC, teacher(list(batch)).features_BHWC)
    # the batched preprocessing (one resize call for the whole batch) is bitwise the per-image one
    for hw in [(40, 40), (30, 52), (64, 64)]:
        batch = torch.stack([_img(*hw, 3), _img(*hw, 4), _img(*hw, 5)])
        (px_b, ext_b), (px_i, ext_i) = teacher.preprocess(batch), teacher.preprocess(list(batch))
        assert all(torch.equal(a, b) for a, b in zip(px_b, px_i, strict=True)) and torch.equal(ext_b, ext_i), hw


def test_sam_valid_region_excludes_padding():
    t = create_teacher("tiny-sam")
    out = t([_img(64, 32), _img(20, 64)])
    g, p = t.spec.feature_grid, t.spec.patch_size
    # the view's extent in cells, fractional where it ends inside a cell (20 px of 8-px patches: 2.5)
    assert out.valid_hw_B2.tolist() == [[g[0], 32 / p], [20 / p, g[1]]]


def test_frozen(teacher):
    assert not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()
    assert not teacher.model.training
    out = teacher([_img(30, 30)])
    assert out.features_BHWC.grad_fn is None and not out.features_BHWC.requires_grad
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_bitwise_deterministic(teacher):
    imgs = [_img(45, 67, 3), _img(20, 30, 4)]
    a = teacher(imgs)
    again = teacher(imgs)
    assert torch.equal(a.features_BHWC, again.features_BHWC)
    b = create_teacher(teacher.spec.name)(imgs)
    assert torch.equal(a.features_BHWC, b.features_BHWC)
    if a.summary_BD is not None:
        assert torch.equal(a.summary_BD, b.summary_BD)


def test_fingerprint_stable_across_processes():
    """Every tiny teacher's fingerprint, computed again in a fresh interpreter (one for all: each costs the imports)."""
    code = (
        "import json; from teachers import create_teacher; "
        f"print(json.dumps({{n: create_teacher(n).spec.fingerprint for n in {list(TINY)!r}}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {n: create_teacher(n).spec.fingerprint for n in TINY}


def test_fingerprint_changes_with_each_output_field(teacher):
    s = teacher.spec
    assert fingerprint_of(s) == s.fingerprint
    for field, value in [
        ("weights_sha256", "0" * 64),
        ("revision", "v2"),
        ("input_size", (s.input_size[0] + 1, s.input_size[1])),
        ("mean", tuple(m + 0.01 for m in s.mean)),
        ("resize_size", 999),
        ("dtype", "bf16"),
        ("attention", "eager" if s.attention != "eager" else "sdpa"),
        ("output", s.output + "!"),
        ("interpolation", "bilinear" if s.interpolation == "bicubic" else "bicubic"),
        ("compiled", True),
    ]:
        assert fingerprint_of(dataclasses.replace(s, **{field: value})) != s.fingerprint, field
    for field, value in [("source", "/elsewhere"), ("name", "renamed")]:
        assert fingerprint_of(dataclasses.replace(s, **{field: value})) == s.fingerprint, field
    assert TeacherSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_fingerprint_follows_weights_not_path(tmp_path):
    t = create_teacher("tiny-clip")
    copy = tmp_path / "copy"
    shutil.copytree(t.spec.source, copy)
    assert create_teacher("tiny-clip", source=str(copy)).spec.fingerprint == t.spec.fingerprint
    from safetensors.torch import load_file, save_file

    w = load_file(str(copy / "model.safetensors"))
    key = next(k for k in sorted(w) if k.startswith("vision_model"))
    w[key] = w[key] + 1e-3
    save_file(w, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert create_teacher("tiny-clip", source=str(copy)).spec.fingerprint != t.spec.fingerprint
    assert create_teacher("tiny-clip", dtype="bf16").spec.fingerprint != t.spec.fingerprint


def test_bf16_runs_and_returns_float32():
    out = create_teacher("tiny-dinov2", dtype="bf16")([_img(40, 40)])
    assert out.features_BHWC.dtype == torch.float32 and torch.isfinite(out.features_BHWC).all()


def test_unknown_name_lists_registry():
    with pytest.raises(UnknownTeacher) as e:
        create_teacher("dinov2-vitb41")
    msg = str(e.value)
    assert "dinov2-vitb14" in msg and "tiny-sam" in msg and "clip-vit-b16" in msg


def test_bad_local_directories(tmp_path):
    with pytest.raises(TeacherLoadError, match="does not exist"):
        create_teacher("tiny-clip", source=str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TeacherLoadError, match="no config.json"):
        create_teacher("tiny-clip", source=str(empty))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(create_teacher("tiny-clip").spec.source, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(TeacherLoadError, match=f"{no_weights}.*no model.safetensors"):
        create_teacher("tiny-clip", source=str(no_weights))
    with pytest.raises(TeacherLoadError, match="model_type 'sam'"):
        create_teacher("tiny-clip", source=create_teacher("tiny-sam").spec.source)


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(TeacherLoadError, match="HF_HUB_OFFLINE=1.*teachers.clip-vit-b16.source"):
        create_teacher("clip-vit-b16")


def test_cli_teachers_table(capsys):
    from pipelines.cli import main

    assert main(["teachers"]) == 0
    out = capsys.readouterr().out
    for name in list_teachers():
        assert name in out
    assert "facebook/sam-vit-huge" in out and "256 @ 64x64" in out
    assert main(["teachers", "--fingerprints"]) == 0
    out = capsys.readouterr().out
    assert create_teacher("tiny-sam").spec.fingerprint in out and "not loadable" in out


def test_real_architectures_have_the_registry_dims():
    """Every real registry entry's recorded architecture, at full size (on the meta device: no memory), gives the
    registry's nominal summary/feature dims and grid."""
    import transformers as T

    from teachers.families import FAMILIES
    from teachers.tiny import REAL_ARCHITECTURES

    assert set(REAL_ARCHITECTURES) == set(REAL)
    for name in REAL:
        e = REGISTRY[name]
        with torch.device("meta"):
            model, _ = REAL_ARCHITECTURES[name](T, False)
        fam = FAMILIES[e.family]
        assert fam.dims(model.config) == (e.summary_dim, e.feature_dim), name
        assert e.input_size[0] // int(fam.stride(model.config)) == e.feature_grid[0], name


LARGE = ["siglip2-g-opt-p16-384", "dinov3-vith16plus", "dinov3-vit7b16"]


@pytest.mark.parametrize("name", LARGE)
def test_large_teachers_equal_transformers_own_model(real_dirs, name):
    """The new large entries' architectures (SwiGLU FFN; ViT-7B without query/value biases), narrowed, loaded by
    create_teacher give what transformers' own model class (AutoModel) gives on the same pixels."""
    from transformers import AutoModel

    t = create_teacher(name, source=real_dirs[name], dtype="fp32")  # the 7B's registry default is bf16
    cfg = t.model.config
    if name.startswith("dinov3"):
        assert cfg.use_gated_mlp and cfg.query_bias == cfg.value_bias == (name != "dinov3-vit7b16")
    imgs = [_img(70, 70, 1), _img(64, 64, 2)]
    out = t(imgs)
    ref_model = AutoModel.from_pretrained(real_dirs[name]).eval()
    px = torch.stack(t.preprocess(imgs)[0])
    with torch.no_grad():
        ref = ref_model(pixel_values=px)
    n_skip = 1 + (getattr(cfg, "num_register_tokens", 0) or 0) if name.startswith("dinov3") else 0
    torch.testing.assert_close(out.summary_BD, ref.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.features_BHWC.flatten(1, 2), ref.last_hidden_state[:, n_skip:], rtol=0, atol=1e-6)


def test_bf16_teacher_loaded_in_dtype_equals_fp32_load_then_cast():
    """Loading straight into bf16 (no fp32 copy) gives bitwise the numbers of the old path: the fp32 model cast."""
    from teachers.families import FAMILIES

    imgs = [_img(40, 40, 1), _img(40, 40, 2)]
    for name in TINY:
        t = create_teacher(name, dtype="bf16")
        assert {p.dtype for p in t.model.parameters()} == {torch.bfloat16}, name
        old = FAMILIES[t.spec.family].load(t.spec.source, None, torch.float32).to(torch.bfloat16).eval()
        px = torch.stack(t.preprocess(imgs)[0]).to(torch.bfloat16)
        with torch.inference_mode():
            a, b = t.family.forward(t.model, px), t.family.forward(old, px)
        assert torch.equal(a[1], b[1]) and (a[0] is None or torch.equal(a[0], b[0])), name


def test_large_teacher_loads_in_dtype_without_an_fp32_copy(tmp_path):
    """One ViT-7B/16 block at its real width (4096, 32 heads, SwiGLU 8192), stored as bf16 safetensors shards, loads
    in bf16 in a fresh process with a peak RSS increase under 1.6x the weights' bytes after every weight is read
    once (an fp32 copy alone would be 2x; the path before this was 3.1x). Not timed."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    from bench_teacher_load import measure

    src = save_random_teacher("dinov3-vit7b16", str(tmp_path / "7b"), depth=1, dtype="bf16", max_shard_size="100MB")
    assert os.path.isfile(os.path.join(src, "model.safetensors.index.json"))
    r = measure("dinov3-vit7b16", src, "bf16")
    assert r["dtypes"] == ["torch.bfloat16"]
    assert r["weights_bytes"] > 300e6
    assert r["touched_peak_bytes"] < 1.6 * r["weights_bytes"], r


def test_sam3_whole_checkpoint_loads_its_vision_encoder(tmp_path):
    """The published SAM3 checkpoint is the whole model (model_type sam3): the teacher is its vision_encoder, and
    gives what transformers' Sam3Model.vision_encoder gives."""
    from transformers import Sam3Model

    from teachers.tiny import save_tiny_sam3_whole

    src = save_tiny_sam3_whole(str(tmp_path / "sam3"))
    assert json.load(open(os.path.join(src, "config.json")))["model_type"] == "sam3"
    t = create_teacher("tiny-sam3", source=src)
    whole = Sam3Model.from_pretrained(src).eval()
    img = _img(56, 56, 3)
    px = torch.stack(t.preprocess([img])[0])
    with torch.no_grad():
        levels = whole.vision_encoder(pixel_values=px).fpn_hidden_states
    ref = levels[list(whole.vision_encoder.config.scale_factors).index(1.0)].permute(0, 2, 3, 1)
    torch.testing.assert_close(t([img]).features_BHWC, ref, rtol=0, atol=1e-6)
    assert t.spec.weights_sha256 != create_teacher("tiny-sam3").spec.weights_sha256


def test_weights_hash_comes_from_the_files_not_a_second_read(tmp_path, monkeypatch):
    """A hub-cache file is named by the sha256 the hub records: taken as is, the file is not read. A local file is
    streamed once and memoized by its identity (path, size, inode, mtime)."""
    from teachers import registry

    digest = "ab" * 32
    blob = tmp_path / "blobs" / digest
    blob.parent.mkdir()
    blob.write_bytes(b"not the content that hashes to it")
    link = tmp_path / "snapshots" / "model.safetensors"
    link.parent.mkdir()
    link.symlink_to(blob)
    assert registry._file_sha256(link) == digest
    local = tmp_path / "local.safetensors"
    local.write_bytes(b"x" * 1000)
    import hashlib

    assert registry._file_sha256(local) == hashlib.sha256(b"x" * 1000).hexdigest()
    monkeypatch.setattr("builtins.open", None)  # a second call must not open the file
    assert registry._file_sha256(local) == hashlib.sha256(b"x" * 1000).hexdigest()
