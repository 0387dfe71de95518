"""The layered config: defaults <- file <- overrides, and the errors that name the bad key."""

from dataclasses import dataclass, field

import pytest
import yaml

from pipelines.cache import CacheJobConfig
from pipelines.cli import main
from pipelines.config import ConfigError, config_to_yaml, dump_config, flatten_config, load_config


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    name: str | None = None


@dataclass
class Entry:
    actors: int = 1
    dtype: str = "fp32"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    entries: dict[str, Entry] = field(default_factory=lambda: {"a": Entry()})
    sizes: tuple[int, int] = (1, 2)
    tags: list[str] = field(default_factory=list)


@dataclass
class NeedsValue:
    path: str
    n: int = 1


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  lr: 0.5\n  steps: 3\n")
    cfg = load_config(Outer, f, ["inner.steps=7", "sizes=[3,4]"])
    assert cfg.inner.lr == 0.5 and cfg.inner.steps == 7 and cfg.sizes == (3, 4)
    assert cfg.entries == {"a": Entry()}


def test_unknown_key_in_file_names_key_file_and_nearest(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("inner:\n  stesp: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, f)
    msg = str(e.value)
    assert "inner.stesp" in msg and str(f) in msg and "'steps'" in msg


def test_unknown_key_in_override_names_it():
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, ["inner.lrr=3"])
    assert "inner.lrr" in str(e.value) and "'lr'" in str(e.value) and "override" in str(e.value)


def test_wrong_type_names_key_and_source(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("inner:\n  steps: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, f)
    assert "inner.steps" in str(e.value) and "integer" in str(e.value) and str(f) in str(e.value)
    with pytest.raises(ConfigError, match="inner.lr"):
        load_config(Outer, None, ["inner.lr=true"])


def test_missing_required_value():
    with pytest.raises(ConfigError, match="missing required value 'path'"):
        load_config(NeedsValue)
    assert load_config(NeedsValue, None, ["path=/x"]).path == "/x"


def test_dict_entries_by_override_and_list_shorthand():
    cfg = load_config(Outer, None, ["entries.b.actors=3"])
    assert cfg.entries == {"a": Entry(), "b": Entry(actors=3)}
    cfg = load_config(Outer, None, ["entries=[x,y]", "entries.y.dtype=bf16"])
    assert cfg.entries == {"x": Entry(), "y": Entry(dtype="bf16")}
    with pytest.raises(ConfigError, match="entries.b.actorz"):
        load_config(Outer, None, ["entries.b.actorz=3"])


def test_file_replaces_dict_entries(tmp_path):
    f = tmp_path / "e.yaml"
    f.write_text("entries:\n  z: {actors: 2}\n")
    assert load_config(Outer, f).entries == {"z": Entry(actors=2)}


def test_dump_and_reload_roundtrip(tmp_path):
    cfg = load_config(CacheJobConfig, None, ["views.num_views=3", "teachers.tiny-sam.actors=2", "source.limit=5"])
    f = tmp_path / "resolved.yaml"
    f.write_text(config_to_yaml(cfg))
    again = load_config(CacheJobConfig, f)
    assert again == cfg
    assert dump_config(again) == yaml.safe_load(f.read_text())
    flat = flatten_config(cfg)
    assert flat["views.num_views"] == 3 and flat["teachers.tiny-sam.actors"] == 2


def test_shipped_configs_resolve():
    from pathlib import Path

    files = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert files, "configs/ should ship example configs"
    from teachers import REGISTRY

    for f in files:
        assert main(["config", "show", str(f)]) == 0
        d = yaml.safe_load(f.read_text())
        named = d.get("teachers") or []
        assert set(named) <= set(REGISTRY), (f.name, sorted(set(named) - set(REGISTRY)))


def test_cli_config_show_errors(capsys):
    assert main(["config", "show", "cache", "views.num_view=3"]) == 2
    err = capsys.readouterr().err
    assert "views.num_view" in err and "num_views" in err
    assert main(["config", "show", "cache", "views.num_views=3"]) == 0
    assert "num_views: 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad, key",
    [
        ("max_inflight_units=0", "max_inflight_units"),
        ("images_per_shard=-5", "images_per_shard"),
        ("row_group_rows=0", "row_group_rows"),
        ("teachers.tiny-clip.batch_size=0", "teachers.tiny-clip.batch_size"),
        ("student_resolution=-1", "student_resolution"),
        ("teachers.tiny-clip.actors=0", "teachers.tiny-clip.actors"),
        ("student_resolution=1000000000", "student_resolution"),
        ("rebuild=[tiny-nope]", "rebuild[0]"),
        ("rebuild=[views,tiny-dinov2]", "rebuild[1]"),
    ],
)
def test_bad_cache_settings_fail_before_any_work(tmp_path, capsys, bad, key):
    from pipelines.cli import main

    assert main(["cache", f"output={tmp_path / 'c'}", "teachers=[tiny-clip]", "mlflow.enabled=false", bad]) == 2
    err = capsys.readouterr().err
    assert key in err and "must be" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"override '{bad}'" in err  # where the value came from
    assert not (tmp_path / "c").exists()


def test_a_union_setting_names_what_it_takes(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["cache", f"output={tmp_path / 'c'}", "teachers=[tiny-clip]", "target_grid=nativ"]) == 2
    err = capsys.readouterr().err
    assert "'target_grid' must be an integer or 'native'" in err and "Union" not in err, err


def test_a_binary_config_file_is_one_line(tmp_path, capsys):
    from pipelines.cli import main

    bad = tmp_path / "cache-x.yaml"
    bad.write_bytes(bytes(range(256)) * 4)
    assert main(["cache", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a text file" in err and "Traceback" not in err


def test_verify_sample_below_zero_is_refused(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["cache", "verify", str(tmp_path), "--sample", "-1"]) == 2
    assert "--sample must be >= 0" in capsys.readouterr().err


def test_a_folder_of_empty_files_is_refused_before_any_work(tmp_path, capsys):
    from pipelines.cli import main

    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(5):
        (src / f"{i}.jpg").write_bytes(b"")
    out = tmp_path / "c"
    assert main(["cache", f"output={out}", "source.kind=folder", f"source.path={src}", "teachers=[tiny-clip]"]) == 2
    err = capsys.readouterr().err
    assert "all 5 file(s) are empty" in err and "Traceback" not in err and not out.exists()


def test_setting_errors_name_their_origin(tmp_path, capsys):
    from pipelines.cli import main

    f = tmp_path / "cache-x.yaml"
    f.write_text("images_per_shard: -5\nviews:\n  num_views: 2\n")
    assert main(["cache", str(f), f"output={tmp_path / 'c'}", "mlflow.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"radio: config error: {f}: 'images_per_shard' must be >= 1, got -5")
    # the file sets views.num_views, an override sets a bad views.ratio: the override is named
    assert (
        main(
            [
                "cache",
                str(f),
                "images_per_shard=4",
                "views.ratio=[2,1]",
                f"output={tmp_path / 'c'}",
                "mlflow.enabled=false",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "override 'views.ratio=[2,1]'" in err and "views.ratio must satisfy" in err and str(f) not in err
    f.write_text("views:\n  flip_prob: 2\n")
    assert main(["cache", str(f), f"output={tmp_path / 'c'}", "mlflow.enabled=false"]) == 2
    assert f"{f}: views.flip_prob must be in [0, 1]" in capsys.readouterr().err
    assert main(["quickstart", "students.nano-d4.patch_size=5"]) == 2
    assert (
        "override 'students.nano-d4.patch_size=5': 'students.nano-d4.patch_size' must be a divisor of "
        "student_resolution (64)" in capsys.readouterr().err
    )
    assert (
        main(["train", f"cache={tmp_path}", "student.size=huge"]) == 2
    )  # the message also names other fields (dim/depth/heads)
    assert "override 'student.size=huge': unknown student size 'huge'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "knn_k=0"]) == 2
    assert "override 'knn_k=0': 'knn_k' must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_unwritable_outputs_fail_before_any_work(tmp_path, capsys, monkeypatch):
    import os

    from pipelines.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    assert main(["cache", f"output={f / 'sub' / 'cache'}", "teachers=[tiny-clip]", "mlflow.enabled=false"]) == 2
    assert f"{f} is a file, not a folder" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **k: False if str(p) == str(ro) else real(p, mode, **k)
    )  # root ignores chmod
    for argv in (["cache", "teachers=[tiny-clip]"], ["train", f"cache={tmp_path}"], ["quickstart"]):
        key = "workdir" if argv[0] == "quickstart" else "output"
        assert (
            main(
                [*argv, f"{key}={ro / 'out'}", "mlflow.enabled=false"]
                if argv[0] != "quickstart"
                else [*argv, f"workdir={ro / 'out'}"]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert f"{ro} is not writable" in err and f"override '{key}=" in err, err
    assert not (ro / "out").exists()


def test_cache_output_that_is_a_file_fails_first(tmp_path, capsys):
    from pipelines.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    assert main(["cache", f"output={f}", "teachers=[tiny-clip]", "mlflow.enabled=false"]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad, key",
    [
        ("epochs=0", "epochs"),
        ("loader.batch_size=0", "loader.batch_size"),
        ("checkpoint_every=0", "checkpoint_every"),
        ("log_every=-1", "log_every"),
        ("max_steps=-1", "max_steps"),
        ("optim.lr=0", "optim.lr"),
        ("loader.num_workers=-2", "loader.num_workers"),
        ("loader.fetch_ahead=0", "loader.fetch_ahead"),
        ("teachers=[]", "teachers"),
        # the student: every number in range, every name known (issue 27's list and the classes they stand for)
        ("student.drop_path=5", "student.drop_path"),
        ("student.drop_path=-0.1", "student.drop_path"),
        ("student.summary_teachers=[nope]", "student.summary_teachers"),
        ("student.std=[0,0,0]", "student.std"),
        ("student.std=[1,1]", "student.std"),
        ("student.mean=[.nan,0,0]", "student.mean"),
        ("student.num_registers=-1", "student.num_registers"),
        ("student.dim=34", "student.dim"),  # nano has 3 heads
        ("student.depth=0", "student.depth"),
        ("student.heads=0", "student.heads"),
        ("student.mlp_ratio=0", "student.mlp_ratio"),
        ("student.patch_size=0", "student.patch_size"),
        ("student.img_size=1000000000", "student.img_size"),
        ("resolution.resolutions=[1000000000]", "resolution.resolutions[0]"),
    ],
)
def test_bad_train_settings_fail_before_any_work(tmp_path, capsys, bad, key):
    from pipelines.cli import main

    assert main(["train", f"cache={tmp_path / 'none'}", f"output={tmp_path / 'o'}", "mlflow.enabled=false", bad]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err and f"override '{bad}'" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "job, bad, expect",
    [
        ("train", ["loss.weights={tiny-clip: -1}"], "'loss.weights.tiny-clip' must be >= 0"),
        (
            "train",
            ["loss.weights={tiny-clp: 1}"],
            "must be the weight of one of teachers=['tiny-clip', 'tiny-dinov2', 'tiny-sam'], "
            "got 1.0. Did you mean 'tiny-clip'?",
        ),
        (
            "train",
            ["loss.weights={tiny-clip: 0, tiny-dinov2: 0, tiny-sam: 0}"],
            "'loss.weights' must be > 0 for at least one teacher",
        ),
        ("train", ["loss.summary_weight=0", "loss.feature_weight=0"], "nothing would be learned"),
        ("train", ["loss.smooth_l1_beta=-1"], "'loss.smooth_l1_beta' must be >= 0"),
        (
            "train",
            ["resolution.mode=cycle", "resolution.resolutions=[32,32]"],
            "'resolution.resolutions' must be distinct resolutions ([32] repeated)",
        ),
        ("train", ["resolution.resolutions=[32,64]"], "resolution.mode is fixed: use mode=cycle or mode=sample"),
        (
            "train",
            ["student.patch_size=7", "resolution.resolutions=[32]"],
            "'resolution.resolutions[0]' must be a positive multiple of student.patch_size (7)",
        ),
        ("train", ["online={tiny-dinov2: {stats_batches: 0}}"], "'online.tiny-dinov2.stats_batches' must be >= 1"),
        ("train", ["optim.grad_clip=0"], "'optim.grad_clip' must be > 0"),
        ("train", ["optim.betas=[0.9,1.0]"], "'optim.betas[1]' must be in [0, 1)"),
        ("train", ["resume_from=step-00000010"], "'resume_from' must be set only with resume=true"),
        (
            "cache",
            ["lower_resolutions=[30]", "target_patch=8", "student_resolution=64"],
            "'lower_resolutions[0]' must be a multiple of target_patch (8)",
        ),
        (
            "cache",
            ["lower_resolutions=[32,32]", "target_patch=8", "student_resolution=64"],
            "'lower_resolutions' must be distinct resolutions ([32] repeated)",
        ),
        (
            "cache",
            ["student_resolution=60", "target_patch=8"],
            "'student_resolution' must be a multiple of target_patch (8)",
        ),
    ],
)
def test_cross_key_settings_fail_before_any_work_naming_every_origin(tmp_path, capsys, job, bad, expect):
    """Rules over several keys (patch multiples, duplicates, modes against their lists, weights against teachers)
    refuse before any work, and the error names each override that set one of the keys, not the defaults."""
    from pipelines.cli import main

    base = ["teachers=[tiny-clip]"] if job == "cache" else [f"cache={tmp_path / 'none'}"]
    assert main([job, *base, f"output={tmp_path / 'o'}", "mlflow.enabled=false", *bad]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err, err
    assert err.startswith("radio: config error: override '") and "defaults" not in err.split(": ")[2], err
    assert not (tmp_path / "o").exists()
