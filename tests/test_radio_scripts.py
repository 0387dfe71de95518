"""Scripts written for NVlabs/RADIO, run against a radio student: copies of RADIO's own calls (its
`test_hubconf.py` and its examples' shared loader, `examples/common/model_loader.py`, with the calls its examples
make through it), changed only where each file's header says (the repository path, CUDA, what needs timm)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from radio.adapters import AdapterConfig
from radio.checkpoint import save_student
from radio.model import DistillModel
from radio.normalize import TargetStats
from radio.student import StudentConfig

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "radio_scripts"
CLIP = AdapterConfig("tiny-clip", 24, (4, 4), 16, hidden=32)
DINO = AdapterConfig("tiny-dinov2", 20, (4, 4), 20, hidden=32)


@pytest.fixture(scope="module")
def radio_student(tmp_path_factory):
    """An 8-block student (RADIO's test calls blocks up to 7) at patch 16 and 224 px, with a CLIP and a DINOv2
    teacher (RADIO's adaptor names `clip`, `dino_v2`). Its path contains "radio", as RADIO's loader expects of a
    RADIO version string."""
    torch.manual_seed(0)
    cfg = StudentConfig(
        size="nano", depth=8, patch_size=16, summary_teachers=["tiny-clip", "tiny-dinov2"], img_size=224
    )
    meta = {
        "teachers": {
            "tiny-clip": {"family": "clip", "source": "builtin:tiny-clip", "feature_dim": 24},
            "tiny-dinov2": {"family": "dinov2", "source": "builtin:tiny-dinov2", "feature_dim": 20},
        },
        "resolution": 224,
        "stats": {"tiny-clip": TargetStats([0.5] * 24, [2.0] * 24, [0.1] * 16, [3.0] * 16).to_dict()},
    }
    return save_student(tmp_path_factory.mktemp("s") / "radio-student", DistillModel(cfg, [CLIP, DINO]).eval(), meta)


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}  # RADIO's scripts run from its checkout
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))


def test_radios_test_hubconf_runs_as_written(radio_student):
    """RADIO's own hub test: intermediates sparse, dense, with prefix tokens, under each `norm_alpha_scheme`, and
    adaptors named as RADIO names them (`dino_v2`)."""
    got = _run("radio_test_hubconf_copy.py", str(radio_student)).split()
    # 3 intermediates in NCHW beside the final output; the dense ones with prefix tokens: (summary (B, T*D),
    # features NCHW), equal under every norm_alpha_scheme (a radio student has no intermediate normalizer). The
    # script prints the final output's distance to the last block's raw output, as RADIO's does (not zero: the
    # final output is normed, the intermediate is not, as in RADIO)
    assert got[1:12] == ["3", "(1,", "96,", "14,", "14)", "(1,", "192)", "(1,", "96,", "14,", "14)"]
    assert got[12] == "True" and float(got[13]) > 0


def test_radios_example_loader_and_its_calls_run_as_written(radio_student):
    """RADIO's examples load models through one function: `return_checkpoint=True`, `neck_name=None`,
    `return_spatial_features`, `vitdet_window_size`, the external preprocessor, then `forward_intermediates(...,
    norm_alpha_scheme="none")` under bfloat16 autocast and `model(x, feature_fmt='NCHW')`."""
    got = _run("model_loader_copy.py", str(radio_student), str(ROOT))
    assert "[(1, 96, 14, 14), (1, 96, 14, 14)]" in got and "[(1, 14, 14, 96), (1, 14, 14, 24)]" in got
    assert "(1, 16) 2 32 tiny-clip (1, 3, 224, 224) True SigLIP2WrappedTokenizer" in got


def test_radio_module_names_reexport_radios_equivalents(radio_student):
    import radio

    student = radio_student
    from radio.adaptor_base import RadioOutput
    from radio.input_conditioner import InputConditioner, get_default_conditioner
    from radio.model import RadioModel
    from radio.model import RadioOutput as Ours
    from radio.radio_model import RADIOModel, create_model_from_args

    assert RadioOutput is Ours and RADIOModel is RadioModel
    x = torch.rand(2, 3, 4, 4)
    c = InputConditioner(255.0, (100.0, 110.0, 120.0), (50.0, 60.0, 70.0), dtype=torch.float16)
    want = (x - torch.tensor([100.0, 110.0, 120.0]).view(3, 1, 1) / 255) / (
        torch.tensor([50.0, 60.0, 70.0]).view(3, 1, 1) / 255
    )
    torch.testing.assert_close(c(x), want.half())
    assert get_default_conditioner().norm_mean.shape == (3, 1, 1)
    # RADIO's visualize example checks isinstance(preprocessor, InputConditioner) on what the model hands out
    model = radio.load_student(student)
    assert isinstance(model.make_preprocessor_external(), InputConditioner)
    from radio.utils import barrier, get_rank, get_world_size, rank_gate  # its examples' rank helpers

    assert get_rank() == 0 and get_world_size() == 1 and barrier() is None
    assert rank_gate(lambda v: v + 1)(1) == 2
    out = RadioOutput(None, torch.zeros(1, 2, 3)).to(torch.float16)
    assert out.summary is None and out.features.dtype == torch.float16
    with pytest.raises(NotImplementedError, match="radio.load_student"):
        create_model_from_args(None)


def test_cpe_video_mode_shares_one_window_per_clip(tmp_path):
    """RADIO's `with model.cpe_video_mode(t=T)`: frames of a clip get one CPE window in training (in eval every
    image gets the centred grid already); a batch that is not whole clips is refused."""
    import radio

    torch.manual_seed(0)
    cfg = StudentConfig(
        size="nano", depth=2, patch_size=8, img_size=32, cpe_max_img_size=64, summary_teachers=["tiny-clip"]
    )
    d = save_student(tmp_path / "s", DistillModel(cfg, [CLIP]), {})
    model = radio.load_student(d)
    trunk = model.model.trunk.train()
    frame = torch.rand(1, 3, 32, 32).expand(4, -1, -1, -1)  # two clips of two identical frames
    with torch.no_grad(), model.cpe_video_mode(t=2):
        f = trunk(frame).features_BLC
        with pytest.raises(ValueError, match=r"cpe_video_mode\(t=2\): the batch of 3"):
            trunk(frame[:3])
    assert torch.allclose(f[0], f[1]) and torch.allclose(f[2], f[3]) and not torch.allclose(f[0], f[2])
    with torch.no_grad():
        g = trunk(frame).features_BLC  # outside the context: a window per image again
    assert not torch.allclose(g[0], g[1]) and trunk.video_frames == 1
    with pytest.raises(ValueError, match="t is the number of frames"):
        with model.cpe_video_mode(t=0):
            pass
