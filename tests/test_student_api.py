"""The loaded student's public surface: NVIDIA RADIO's API, the hub (save/load/hub id/torch.hub), ONNX."""

import json
import os
from pathlib import Path

import pytest
import torch

import radio
from radio.adapters import AdapterConfig
from radio.checkpoint import MODEL_TYPE, save_student
from radio.model import DistillModel, RadioModel, RadioOutput, Resolution
from radio.normalize import TargetStats
from radio.student import StudentConfig

ROOT = Path(__file__).resolve().parent.parent
CLIP = AdapterConfig("tiny-clip", 24, (4, 4), 16, hidden=32)
SAM = AdapterConfig("tiny-sam", 12, (8, 8), None, hidden=32)
META = {
    "teachers": {
        "tiny-clip": {"family": "clip", "source": "builtin:tiny-clip", "feature_dim": 24},
        "tiny-sam": {"family": "sam", "source": "builtin:tiny-sam", "feature_dim": 12},
    },
    "fingerprints": {"tiny-clip": "fp-clip", "tiny-sam": "fp-sam"},
    "cache_id": "c0ffee",
    "mlflow_run_id": None,
    "resolution": 32,
    "stats": {
        "tiny-clip": TargetStats([0.5] * 24, [2.0] * 24, [0.1] * 16, [3.0] * 16).to_dict(),
        "tiny-sam": TargetStats([1.0] * 12, [0.5] * 12).to_dict(),
    },
}


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = DistillModel(
        StudentConfig(size="nano", patch_size=8, summary_teachers=["tiny-clip"], img_size=32), [CLIP, SAM]
    ).eval()
    return save_student(tmp_path_factory.mktemp("s") / "student", model, META)


def test_radio_call_conventions(student_dir):
    model = radio.load_student(str(student_dir))
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        summary, features = model(x)  # RADIO: tuple unpacking
        nchw = model(x, feature_fmt="NCHW")
        full = model.predict(x)
    assert summary.shape == (2, model.summary_dim) == (2, 96) and features.shape == (2, 24, 96)
    assert nchw.features.shape == (2, 96, 4, 6) and torch.equal(
        nchw.features.permute(0, 2, 3, 1).reshape(2, 24, 96), features
    )
    assert torch.equal(full.features.reshape(2, 24, 96), features) and torch.equal(
        full.summary, summary
    )  # one summary token here
    with torch.no_grad():
        assert torch.equal(
            model((x * 255).round().to(torch.uint8)).features, model((x * 255).round() / 255).features
        )  # uint8 works too
    assert (model.patch_size, model.min_resolution_step, model.embed_dim, model.num_summary_tokens) == (8, 8, 96, 1)
    assert model.preferred_resolution == Resolution(32, 32) and model.config.img_size == 32
    assert model.get_nearest_supported_resolution(30, 41) == (32, 40) and model.get_nearest_supported_resolution(
        1, 1
    ) == (8, 8)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*, got values in \[0\.\d+, 25\d\]: divide by 255"):
        model(x * 255)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*normalizes itself"):
        model((x - 0.5) / 0.2)  # an image normalized twice
    with torch.no_grad():  # bicubic overshoot, as RADIO takes it
        assert (
            model(x * 0.95 + 0.06).features.shape == features.shape
            and model(x * 1.02 - 0.01).features.shape == features.shape
        )
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[0, 1, 2, 3] = bad
        with pytest.raises(ValueError, match=rf"images hold 1 NaN or Inf value\(s\) of {y.numel()}:"):
            model(y)
    with pytest.raises(
        ValueError, match=r"multiple of min_resolution_step=8; got \(30, 48\), nearest supported: \(32, 48\)"
    ):
        model(torch.rand(1, 3, 30, 48))
    with pytest.raises(ValueError, match="feature_fmt='NHWC'"):
        model(x, feature_fmt="NHWC")


def test_adaptors_at_load_time_in_teacher_space(student_dir):
    model = radio.load_student(str(student_dir), adaptor_names=["clip", "tiny-sam"])  # a family name, a teacher name
    assert model.adaptor_names == ["clip", "tiny-sam"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        full = model.predict(x)
    assert set(out) == {"backbone", "clip", "tiny-sam"} and isinstance(out["clip"], RadioOutput)
    torch.testing.assert_close(out["clip"].summary, full.adapters["tiny-clip"]["summary"])
    torch.testing.assert_close(out["clip"].features, full.adapters["tiny-clip"]["features"].reshape(2, 16, 24))
    assert out["tiny-sam"].summary is None and out["tiny-sam"].features.shape == (2, 16, 12)
    with torch.no_grad():
        raw = model.model(x)
    torch.testing.assert_close(
        out["tiny-sam"].features, (raw["tiny-sam"]["features"] * (0.5 + 1e-6) + 1.0).reshape(2, 16, 12)
    )  # standardization undone
    with pytest.raises(
        ValueError,
        match=r"adaptor 'dino' is not one of this student's teachers \['tiny-clip', 'tiny-sam'\] or their "
        r"families \['clip', 'sam'\]",
    ):
        radio.load_student(str(student_dir), adaptor_names="dino")


def test_external_preprocessor_and_intermediates(student_dir):
    model = radio.load_student(str(student_dir))
    x = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        ref = model(x)
        inter = model.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", intermediates_only=True)
        final, with_prefix = model.forward_intermediates(x, indices=2, return_prefix_tokens=True, norm=True)
    assert len(inter) == 2 and inter[0].shape == (2, 20, 96)
    assert (
        len(with_prefix) == 2
        and with_prefix[0].summary.shape == (2, 96)
        and with_prefix[0].features.shape == (2, 96, 4, 5)
    )
    # the last block, normed, is the final output
    torch.testing.assert_close(with_prefix[-1].features.flatten(2).transpose(1, 2), ref.features)
    torch.testing.assert_close(final.features.flatten(2).transpose(1, 2), ref.features)
    with pytest.raises(ValueError, match="indices=\\[7\\]"):
        model.forward_intermediates(x, indices=[7])
    cond = model.make_preprocessor_external()
    with torch.no_grad():
        ext = model(cond(x))
    torch.testing.assert_close(ext.features, ref.features)
    with pytest.raises(TypeError, match="expects normalized float input"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def _hub_layout(cache: Path, repo_id: str, src: Path, revision: str = "main") -> Path:
    """Lay ``src`` out as huggingface_hub's cache does (refs/<rev> -> snapshots/<commit>/files)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / revision).write_text(commit)
    for f in src.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    return snap


def test_pretrained_roundtrip_hub_id_offline_and_torch_hub(student_dir, tmp_path, monkeypatch):
    model = radio.load_student(str(student_dir))
    d = model.save_pretrained(tmp_path / "pretrained")
    card = (d / "README.md").read_text()
    assert (
        "fp-clip" in card
        and "c0ffee" in card
        and "radio.load_student" in card
        and "pipeline_tag: image-feature-extraction" in card
    )
    assert (
        f"\n# {d.resolve()}\n" in card
        and "PATH_OR_HUB_ID" not in card
        and f'radio.load_student("{d.resolve()}"' in card
    )
    again = RadioModel.from_pretrained(str(d))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x).features, model(x).features)
    cache = tmp_path / "hub"
    _hub_layout(cache, "acme/radio-nano", d)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    hub = radio.load_student("acme/radio-nano", adaptor_names="clip")
    with torch.no_grad():
        assert torch.equal(hub(x)["backbone"].features, model(x).features)
    with pytest.raises(FileNotFoundError, match="hub student 'acme/missing'.*HF_HUB_OFFLINE=1"):
        radio.load_student("acme/missing")
    with pytest.raises(FileNotFoundError, match="not a student directory, an MLflow run id or URI"):
        radio.load_student("no such thing")
    hubbed = torch.hub.load(str(ROOT), "radio_student", str(d), source="local", adaptor_names=["sam"])
    assert hubbed.adaptor_names == ["sam"]


def test_onnx_export_matches_pytorch(student_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra (installed by the test extra) is not installed")
    from pipelines.cli import main
    from radio.export import ATOL

    out = tmp_path / "student.onnx"
    assert main(["export", str(student_dir), "--onnx", str(out)]) == 0
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names == ["summary", "features", "tiny-clip.features", "tiny-clip.summary", "tiny-sam.features"]
    model = radio.load_student(str(student_dir), adaptor_names=["tiny-clip", "tiny-sam"])
    for shape in ((3, 3, 48, 24), (1, 3, 16, 64)):  # batch and resolution are dynamic
        x = torch.rand(*shape)
        got = dict(zip(names, sess.run(None, {"images": x.numpy()}), strict=True))
        with torch.no_grad():
            ref = model(x)
        torch.testing.assert_close(torch.from_numpy(got["features"]), ref["backbone"].features, atol=ATOL, rtol=0)
        torch.testing.assert_close(
            torch.from_numpy(got["tiny-clip.summary"]), ref["tiny-clip"].summary, atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            torch.from_numpy(got["tiny-sam.features"]), ref["tiny-sam"].features, atol=ATOL, rtol=0
        )
    assert main(["export", str(student_dir)]) == 2
    # one self-contained file at this size, and a partial patch refused as by PyTorch (never floored to a grid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx"]
    # PyTorch's words, in the refusing node's name, and its nearest supported resolution as the requested shape
    with pytest.raises(
        ValueError, match=r"multiple of min_resolution_step=8; got \(65, 44\), nearest supported: \(64, 48\)"
    ):
        model(torch.rand(1, 3, 65, 44))
    with pytest.raises(
        Exception,
        match=r"refused__the_input_resolution_must_be_a_multiple_of_min_resolution_step_8_.*requested shape:\{64,48\}",
    ):
        sess.run(None, {"images": torch.rand(1, 3, 65, 44).numpy()})
    with pytest.raises(Exception, match=r"(?s)Unexpected input data type.*tensor\(double\)"):  # one dtype per graph
        sess.run(None, {"images": torch.rand(1, 3, 16, 16, dtype=torch.float64).numpy()})
    x64 = torch.rand(1, 3, 16, 16, dtype=torch.float64)  # which PyTorch casts, as numpy's default dtype
    torch.testing.assert_close(
        torch.from_numpy(sess.run(None, {"images": x64.float().numpy()})[1]),
        model(x64)["backbone"].features,
        atol=ATOL,
        rtol=0,
    )
    # PyTorch's input checks, in the graph: a 0-255 float image and NaN are refused by a node that says why;
    # bicubic overshoot is accepted as PyTorch accepts it
    x = torch.rand(1, 3, 16, 16)
    for bad, why in (
        (x * 255, "float_images_must_lie_in_0_1"),
        (x.masked_fill(x > 0.9, float("nan")), "images_hold_NaN_or_Inf"),
    ):
        with pytest.raises(Exception, match=f"refused__{why}"):
            sess.run(None, {"images": bad.numpy()})
        with pytest.raises(ValueError):
            model(bad)
    over = x * 1.2 - 0.1  # [-0.1, 1.1]
    got = dict(zip(names, sess.run(None, {"images": over.numpy()}), strict=True))
    torch.testing.assert_close(torch.from_numpy(got["features"]), model(over)["backbone"].features, atol=ATOL, rtol=0)
    # weights too big for one file go to OUT.onnx.data once (the guard rewrites the graph only), even when the
    # export runs in the output folder
    import radio.export as export

    ext = tmp_path / "ext"
    ext.mkdir()
    monkeypatch.setattr(export, "ONNX_SINGLE_FILE_LIMIT", 0)
    monkeypatch.chdir(ext)
    assert main(["export", str(student_dir), "--onnx", "student.onnx"]) == 0
    weights = sum(v.numel() * v.element_size() for v in model.state_dict().values() if v.is_floating_point())
    assert sorted(q.name for q in ext.iterdir()) == ["student.onnx", "student.onnx.data"]
    assert (ext / "student.onnx.data").stat().st_size < 1.5 * weights and (
        ext / "student.onnx"
    ).stat().st_size < 0.25 * weights
    got = dict(
        zip(
            names,
            ort.InferenceSession(str(ext / "student.onnx"), providers=["CPUExecutionProvider"]).run(
                None, {"images": x.numpy()}
            ),
            strict=True,
        )
    )
    torch.testing.assert_close(torch.from_numpy(got["features"]), model(x)["backbone"].features, atol=ATOL, rtol=0)
    # uint8, as PyTorch takes it, from a graph exported for it
    out8 = tmp_path / "u8" / "student.onnx"
    assert main(["export", str(student_dir), "--onnx", str(out8), "--onnx-input", "uint8"]) == 0
    sess8 = ort.InferenceSession(str(out8), providers=["CPUExecutionProvider"])
    x8 = torch.randint(0, 256, (2, 3, 16, 32), dtype=torch.uint8)
    got = dict(zip(names, sess8.run(None, {"images": x8.numpy()}), strict=True))
    torch.testing.assert_close(
        torch.from_numpy(got["tiny-clip.summary"]), model(x8)["tiny-clip"].summary, atol=ATOL, rtol=0
    )
    with pytest.raises(Exception, match=r"refused__the_input_resolution_must.*requested shape:\{16,64\}"):
        sess8.run(None, {"images": torch.randint(0, 256, (1, 3, 16, 63), dtype=torch.uint8).numpy()})


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_damaged_student_is_one_clear_error(student_dir, tmp_path, capsys):
    import shutil

    from pipelines.cli import main

    for name, damage in (("config.json", b"{not json"), ("model.safetensors", b"\x00" * 10)):
        bad = tmp_path / name
        shutil.copytree(student_dir, bad)
        (bad / name).write_bytes(damage)
        assert main(["export", str(bad), "--pretrained", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert f"{bad / name}" in err and "damaged" in err and "Traceback" not in err
    # 64 bytes flipped in the weights, same size: the sha256 in config.json refuses them, in the API and the CLI
    flipped = tmp_path / "flipped"
    shutil.copytree(student_dir, flipped)
    w = bytearray((flipped / "model.safetensors").read_bytes())
    for i in range(64):
        w[len(w) // 2 + i] ^= 0xFF
    (flipped / "model.safetensors").write_bytes(bytes(w))
    with pytest.raises(
        radio.checkpoint.CheckpointError,
        match=r"model.safetensors does not match the sha256 recorded in .*config.json .*changed or damaged",
    ):
        radio.load_student(str(flipped))
    assert main(["export", str(flipped), "--pretrained", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "does not match the sha256" in err and "Traceback" not in err and not (tmp_path / "out2").exists()
    cfg = json.loads((student_dir / "config.json").read_text())
    assert (
        len(cfg["weights_sha256"]) == 64
        and (student_dir / "model.safetensors").stat().st_mode & 0o777 == 0o644 & ~_umask()
    )
    assert main(["export", str(tmp_path / "nowhere"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "not a student directory" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["mean", "mlp_ratio"])
def test_an_edited_student_config_is_refused_naming_it(student_dir, tmp_path, field):
    """The whole config.json is covered, not only the weights: an edited normalization mean (which would load
    and give other outputs) or width (torch's size mismatch) is one CheckpointError naming the file."""
    import shutil

    edited = tmp_path / field
    shutil.copytree(student_dir, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["student"][field] = [0.5, 0.5, 0.5] if field == "mean" else 2.0
    (edited / "config.json").write_text(json.dumps(cfg, indent=1))
    with pytest.raises(
        radio.checkpoint.CheckpointError, match=r"config.json does not match its recorded config_sha256"
    ):
        radio.load_student(str(edited))
    with pytest.raises(radio.checkpoint.CheckpointError, match=r"config.json does not match"):
        torch.hub.load(str(ROOT), "radio_student", str(edited), source="local")


def test_export_to_an_unwritable_place_is_one_line(student_dir, tmp_path, small_disk, capsys):
    """A destination under a file, or on a read-only mount (a real one): refused before anything is written."""
    from pipelines.cli import main

    f = tmp_path / "a-file"
    f.write_text("x")
    ro = small_disk(1 << 20, read_only=True)
    for flag, dest in (
        ("--pretrained", f / "sub"),
        ("--pretrained", ro / "out"),
        ("--onnx", ro / "x.onnx"),
        ("--onnx", f / "x.onnx"),
    ):
        assert main(["export", str(student_dir), flag, str(dest)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("radio: config error: ") and flag in err and "Traceback" not in err, err
        assert ("is a file, not a folder" in err) if str(dest).startswith(str(f)) else ("is not writable" in err), err


def test_push_to_hub_uploads_the_student_directory(student_dir, monkeypatch, capsys):
    """No network here: a stand-in HfApi records what would be sent."""
    import huggingface_hub

    from pipelines.cli import main

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok, repo_type):
            calls["repo"] = (repo_id, private, exist_ok, repo_type)

        def upload_folder(self, repo_id, folder_path, commit_message, repo_type):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["card"] = (Path(folder_path) / "README.md").read_text()
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["export", str(student_dir), "--push-to-hub", "acme/radio-nano"]) == 0
    assert calls["repo"] == ("acme/radio-nano", True, True, "model")  # private unless --public
    assert calls["files"] == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert 'radio.load_student("acme/radio-nano"' in calls["card"]
    assert "https://huggingface.co/acme/radio-nano/commit/abc" in capsys.readouterr().out


def test_radio_style_script_runs_with_only_the_repository_changed(student_dir):
    """User code written as NVlabs/RADIO's README and examples use the model; only REPO differs."""
    REPO, version = str(ROOT), str(student_dir)
    model = torch.hub.load(
        REPO,
        "radio_model",
        version=version,
        progress=True,
        skip_validation=True,
        adaptor_names=["clip"],
        source="local",
    )
    model.eval()
    model.switch_to_deploy()  # a no-op here: nothing to fuse
    conditioner = model.make_preprocessor_external()
    assert conditioner.norm_mean.shape == (3, 1, 1) and conditioner.norm_std.shape == (3, 1, 1)
    nearest = model.get_nearest_supported_resolution(30, 41)
    x = torch.nn.functional.interpolate(
        torch.rand(1, 3, 60, 70), size=tuple(nearest), mode="bicubic", align_corners=False
    )  # overshoots [0, 1]
    x = conditioner(x)
    with torch.no_grad():
        out = model(x)
        summary, spatial = out["backbone"]
        clip_summary, clip_features = out["clip"]
        sparse = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        same = model.forward_intermediates(
            x, indices=[0, 1], intermediates_only=True, aggregation="dense"
        )  # one block per group
        inter = model.forward_intermediates(
            x, indices=[1], intermediates_only=True, aggregation="dense"
        )  # blocks 0 and 1 averaged
    assert summary.shape[0] == 1 and spatial.shape == (
        1,
        nearest[0] // model.patch_size * (nearest[1] // model.patch_size),
        model.embed_dim,
    )
    assert clip_summary.shape == (1, 16) and all(torch.allclose(a, b) for a, b in zip(same, sparse, strict=True))
    assert len(inter) == 1 and torch.allclose(inter[0], (sparse[0] + sparse[1]) / 2, atol=1e-6)
    assert (
        model.window_size is None
        and model.num_cls_tokens == model.num_summary_tokens
        and len(model.blocks) == model.config.depth
    )
    assert model.summary_idxs.tolist() == [model.teacher_names.index(t) for t in model.config.summary_teachers]
    # PCA of the features, as RADIO's examples visualize them
    f = spatial[0] - spatial[0].mean(0)
    _, _, v = torch.pca_lowrank(f, q=3)
    assert (f @ v[:, :3]).shape == (spatial.shape[1], 3)
    windowed = torch.hub.load(REPO, "radio_model", version=version, vitdet_window_size=2, source="local")
    assert windowed.window_size == 2 and windowed.min_resolution_step == 2 * model.patch_size  # as RADIO's
    with pytest.raises(ValueError, match="multiple of min_resolution_step=16.*nearest supported: \\(32, 48\\)"):
        windowed(torch.rand(1, 3, 40, 48))
    for bad, words in ((dict(neck_name="encoder"), "has no necks"), (dict(torch_dtype="x"), "unsupported option")):
        with pytest.raises((ValueError, TypeError), match=words):
            torch.hub.load(REPO, "radio_model", version=version, source="local", **bad)
    with pytest.raises(ValueError, match="version= names the student to load"):
        torch.hub.load(REPO, "radio_model", source="local")


def test_transformers_automodel_loads_an_exported_student(student_dir):
    """After `import radio` (and only then: no remote code), AutoModel.from_pretrained(dir) is the student. In a
    fresh interpreter, so the registration that waits for transformers' Auto classes to load is what runs."""
    import subprocess
    import sys

    code = (
        "import json, radio, torch\nfrom transformers import AutoModel, AutoConfig\n"
        f"m = AutoModel.from_pretrained({str(student_dir)!r}, adaptor_names=['clip'])\n"
        f"ref = radio.load_student({str(student_dir)!r}, adaptor_names=['clip'])\n"
        "x = torch.rand(1, 3, 32, 32)\n"
        "print(json.dumps({'type': type(m).__name__, 'same': bool(torch.equal(m(x)['clip'].summary, "
        "ref(x)['clip'].summary)), 'model_type': AutoConfig.from_pretrained("
        f"{str(student_dir)!r}).model_type}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "type": "RadioModel",
        "same": True,
        "model_type": MODEL_TYPE,
    }
    assert json.loads((student_dir / "config.json").read_text())["model_type"] == MODEL_TYPE


HF_USER = """
import json, sys
import numpy as np, torch
from PIL import Image
import radio
from transformers import AutoConfig, AutoImageProcessor, AutoModel, pipeline

path = sys.argv[1]
image = Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype("uint8"))
processor = AutoImageProcessor.from_pretrained(path)
pixel_values = processor(images=image, return_tensors="pt").pixel_values
ref = radio.load_student(path, adaptor_names=["clip"])
# RADIO's Hugging Face pattern: adaptors chosen on the config, then from_pretrained(config=config)
config = AutoConfig.from_pretrained(path)
config.adaptor_names = ["clip"]
model = AutoModel.from_pretrained(path, config=config)
out = model(pixel_values=pixel_values)
pipe = pipeline("image-feature-extraction", model=path)
features = pipe(image, return_tensors=True)
plain = AutoModel.from_pretrained(path)
half = AutoModel.from_pretrained(path, dtype=torch.bfloat16)  # transformers' dtype= is honoured
try:
    plain(pixel_values)["clip"]
    hint = ""
except KeyError as e:
    hint = str(e)
print(json.dumps({
    "pixel_values": list(pixel_values.shape),
    "range": [float(pixel_values.min()), float(pixel_values.max())],
    "clip": bool(torch.equal(out["clip"].summary, ref(pixel_values)["clip"].summary)),
    "pipeline": bool(torch.allclose(features, ref(pixel_values)["backbone"].summary, atol=1e-6)),
    "hint": hint,
    "bf16": [str(half.dtype), str(half(pixel_values).summary.dtype)],
}))
"""


def test_transformers_users_calls_image_processor_pipeline_pixel_values_and_config(student_dir, tmp_path):
    """What a Hugging Face user does with an exported student, after `import radio`: AutoImageProcessor (the
    student's preprocessor_config.json), pipeline("image-feature-extraction"), model(pixel_values=...), RADIO's
    config.adaptor_names pattern; and without `import radio`, an error that says what to do (no remote code)."""
    import subprocess
    import sys

    script = tmp_path / "hf_user.py"
    script.write_text(HF_USER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, str(script), str(student_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["pixel_values"] == [1, 3, 32, 32] and 0 <= got["range"][0] <= got["range"][1] <= 1  # [0, 1], resized
    assert got["clip"] and got["pipeline"] and got["bf16"] == ["torch.bfloat16", "torch.bfloat16"]
    assert "adaptor_names=['clip']" in got["hint"] and "config.adaptor_names" in got["hint"]
    cold = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from transformers import pipeline; pipeline('image-feature-extraction', model={str(student_dir)!r})",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert cold.returncode != 0 and "pip install radio-distill, then import radio" in cold.stderr
    assert "trust_remote_code" not in cold.stderr


def test_the_readmes_using_a_student_snippet_runs_as_written(student_dir):
    """What a user copies first: the README's "Using a student" block, run verbatim but for the student's path."""
    text = (ROOT / "README.md").read_text()
    block = text.split("### Using a student", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "quickstart/runs/nano-d4/student" in block
    scope: dict = {}
    exec(block.replace("quickstart/runs/nano-d4/student", str(student_dir)), scope)  # noqa: S102
    assert scope["summary"].shape[0] == 1 and scope["clip_summary"].shape == (1, 16)
    assert len(scope["inter"]) == 2 and scope["out"]["clip"].summary.shape == (1, 16)
