"""`radio train` end to end on a small cache: MLflow contents, resume exactness, NaN guard, errors, DDP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from pipelines.cli import main
from pipelines.config import load_config
from pipelines.synthetic import make_synthetic_cache
from pipelines.train import TrainingDiverged, TrainJobConfig, train
from radio.cache import CacheMismatch
from radio.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
TEACHERS = "teachers=[syn-clip,syn-sam]"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn-train") / "c"
    make_synthetic_cache(out, limit=24, views=2, per_shard=6)
    return str(out)


def _args(cache, out, *extra):
    return [
        f"cache={cache}",
        f"output={out}",
        TEACHERS,
        "student.patch_size=8",
        "student.depth=2",
        "loader.batch_size=8",
        "loader.num_workers=0",
        "mlflow.experiment=test-train",
        *extra,
    ]


def test_train_logs_params_metrics_artifacts(cache, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = load_config(
        TrainJobConfig,
        None,
        _args(cache, tmp_path / "run", "epochs=2", "checkpoint_every=4", "mlflow.register=radio-nano-test"),
    )
    result = train(cfg)
    client = MlflowClient()
    run = client.get_run(result["run_id"])
    p, m, tags = run.data.params, run.data.metrics, run.data.tags
    assert (
        p["student.size"] == "nano"
        and p["optim.lr"] == str(cfg.optim.lr)
        and p["cache.fingerprint.syn-clip"] == "fp-syn-clip"
    )
    for key in (
        "train/loss",
        "train/loss/syn-clip/summary",
        "train/loss/syn-clip/features",
        "train/loss/syn-sam/features",
        "train/lr",
        "train/grad_norm",
        "system/images_per_s",
        "system/data_wait_fraction",
        "train/fidelity/syn-clip/summary",
        "train/epoch",
    ):
        assert key in m, key
    assert all(k.split("/")[0] in ("train", "system") for k in m), sorted(m)  # one naming scheme
    # read (one host sync) every log_every=10 steps, at every checkpoint (4) and at the end
    assert result["step"] == 12
    assert [h.step for h in client.get_metric_history(run.info.run_id, "train/loss")] == [4, 8, 10, 12]
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens in its model-training view
    [inp] = run.inputs.dataset_inputs
    assert (
        inp.dataset.digest == tags["radio.cache_id"][:36]
        and inp.dataset.source_type == "local"
        and {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    )
    assert (
        json.loads(inp.dataset.schema)["mlflow_colspec"][0]["name"] == "image_id"
        and json.loads(inp.dataset.profile)["teachers"]["syn-clip"]["fingerprint"] == "fp-syn-clip"
    )
    # the student as an MLflow model: pickle-free pt2, same outputs as radio.load_student
    import mlflow.pytorch

    import radio

    # the run's model is runs:/<run>/model, as MLflow's own examples load a run's model
    model_uri = f"runs:/{run.info.run_id}/model"
    logged = mlflow.pytorch.load_model(model_uri)
    mine = radio.load_student(result["student"], adaptor_names=["syn-clip", "syn-sam"])
    # every batch size (1 included: torch.export must not specialize it) and every resolution the student takes,
    # not only the one it was logged at
    for b, hw in ((1, (32, 32)), (3, (32, 32)), (1, (16, 48)), (2, (64, 40))):
        x = torch.rand(b, 3, *hw)
        with torch.no_grad():
            got, ref = logged(x), mine(x)
        torch.testing.assert_close(got["features"], ref["backbone"].features)
        torch.testing.assert_close(got["syn-clip.summary"], ref["syn-clip"].summary)
        torch.testing.assert_close(got["syn-sam.features"], ref["syn-sam"].features)
    with pytest.raises(Exception, match=r"Guard failed"):  # not a multiple of the patch: refused, as by the student
        logged(torch.rand(1, 3, 33, 32))
    # a graph is traced for float32 in [0, 1]: uint8 or 0-255 pixels are refused, never run at the wrong scale
    for bad in (torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8), torch.rand(1, 3, 32, 32) * 255):
        with pytest.raises(RuntimeError, match="divide 0-255 images, uint8 included, by 255"):
            logged(bad)
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        logged(torch.full((1, 3, 32, 32), float("nan")))
    # the same model through pyfunc (numpy in, named arrays out), at two resolutions, named after its run
    import mlflow.pyfunc
    import numpy as np

    lm = client.get_logged_model(tags["radio.model_uri"].split("/")[-1])
    assert lm.name == "model" and lm.tags["radio.run_name"] == run.info.run_name
    served = mlflow.pyfunc.load_model(model_uri)
    meta = served.metadata
    assert meta.signature.inputs is None and "summary" in meta.signature.outputs.input_names()
    assert "uint8" in meta.metadata["radio.input"]
    u8 = np.random.randint(0, 256, (1, 3, 16, 48), dtype=np.uint8)
    f64 = np.random.rand(1, 3, 32, 32)  # numpy's default dtype
    f32 = np.random.rand(2, 3, 32, 32).astype(np.float32)
    for x, sent in (  # every input the README lists: float32, float64, uint8, {"images": x}; batch 1 and 2
        (f32, f32),
        (f64, f64),
        (u8, u8),
        (f32[:1], {"images": f32[:1]}),
        (u8, u8.astype(np.int64)),  # the integers a JSON request becomes
    ):
        got = served.predict(sent)
        with torch.no_grad():
            ref = mine(torch.from_numpy(x))
        np.testing.assert_allclose(got["syn-clip.summary"], ref["syn-clip"].summary.numpy(), atol=1e-5)
        np.testing.assert_allclose(got["features"], ref["backbone"].features.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="divide by 255"):
        served.predict(np.random.rand(1, 3, 32, 32).astype(np.float32) * 255)
    with pytest.raises(ValueError, match=r"integer images must lie in \[0, 255\]"):
        served.predict(np.full((1, 3, 32, 32), 300))
    with pytest.raises(ValueError, match="multiple of min_resolution_step"):
        served.predict(np.random.rand(1, 3, 33, 32))
    # and `mlflow models serve` on loopback answers a request with those numbers
    import urllib.request

    port = _free_port()
    srv = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            tags["radio.model_uri"],
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=ROOT,
    )
    try:

        def ask(body: dict) -> dict | None:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            return json.loads(urllib.request.urlopen(req, timeout=60).read())

        x = np.random.rand(1, 3, 32, 32).astype(np.float32)
        deadline, answer = time.time() + 180, None
        while time.time() < deadline and srv.poll() is None and answer is None:
            try:
                answer = ask({"inputs": x.tolist()})
            except OSError:
                time.sleep(0.5)
        assert answer is not None, srv.stderr.read().decode()[-3000:] if srv.poll() is not None else "no answer"
        with torch.no_grad():
            ref = mine(torch.from_numpy(x))
        np.testing.assert_allclose(
            np.asarray(answer["predictions"]["syn-sam.features"]), ref["syn-sam"].features.numpy(), atol=1e-4
        )
        # a uint8 image as JSON integers, named as the README names it
        u8 = np.random.randint(0, 256, (1, 3, 16, 16), dtype=np.uint8)
        answer = ask({"inputs": {"images": u8.tolist()}})
        with torch.no_grad():
            ref = mine(torch.from_numpy(u8))
        np.testing.assert_allclose(
            np.asarray(answer["predictions"]["syn-clip.summary"]), ref["syn-clip"].summary.numpy(), atol=1e-4
        )
    finally:
        _kill(srv)
    assert radio.load_student(tags["radio.model_uri"]).teacher_names == [
        "syn-clip",
        "syn-sam",
    ]  # the MLflow URI loads too
    assert radio.load_student(model_uri).teacher_names == ["syn-clip", "syn-sam"]
    [lm] = client.search_logged_models([run.info.experiment_id])
    assert lm.source_run_id == run.info.run_id and lm.name == "model" and lm.tags["radio.run_name"] == "run"
    [version] = client.search_model_versions(f"run_id = '{run.info.run_id}'")  # mlflow.register=NAME
    assert version.name == "radio-nano-test"
    assert (
        tags["radio.teachers"] == "syn-clip,syn-sam" and tags["radio.student_size"] == "nano" and tags["radio.cache_id"]
    )
    assert any(k.startswith("system/") for k in m)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "loss_curve.png", "student"} <= arts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "student")} == {
        "student/config.json",
        "student/model.safetensors",
        "student/preprocessor_config.json",
    }
    assert run.info.status == "FINISHED"


def test_vitdet_student_trains_and_loads_as_trained(cache, tmp_path, capsys):
    """ViTDet mode in training: `student.vitdet_window_size` windows all but the global blocks; the exported
    student records it and loads as trained; a window that does not divide the grid is refused before any step."""
    import radio

    result = train(
        load_config(TrainJobConfig, None, _args(cache, tmp_path / "w", "epochs=1", "student.vitdet_window_size=2"))
    )
    model = radio.load_student(result["student"])
    assert model.window_size == 2 and model.config.vitdet_window_size == 2
    x = torch.rand(1, 3, 32, 32)
    assert radio.load_student(result["student"], vitdet_window_size=None)(x).features.shape == model(x).features.shape
    assert main(["train", *_args(cache, tmp_path / "v", "student.vitdet_window_size=3")]) == 2
    err = capsys.readouterr().err
    assert "'student.vitdet_window_size' must be a divisor of the patch grid" in err and "[4] patches" in err
    assert not (tmp_path / "v" / "checkpoints").exists()


def test_missing_teacher_fails_at_start(cache, tmp_path, capsys):
    with pytest.raises(CacheMismatch, match="syn-dino"):
        train(load_config(TrainJobConfig, None, _args(cache, tmp_path / "x", "teachers=[syn-clip,syn-dino]")))
    assert main(["train", *_args(cache, tmp_path / "y", "teachers=[syn-clip,syn-dino]")]) == 2
    assert "syn-dino" in capsys.readouterr().err
    assert not (tmp_path / "x" / "checkpoints").exists()
    # settings that only the cache can refute, refused once its manifest is read, before any step
    assert main(["train", *_args(cache, tmp_path / "p", "student.patch_size=7")]) == 2
    assert "'student.patch_size' 7 does not divide the 32px views cache" in capsys.readouterr().err
    assert main(["train", *_args(cache, tmp_path / "b", "loader.batch_size=49")]) == 2  # 24 images x 2 views
    assert (
        "'loader.batch_size' 49 is larger than the 48 views each of the 1 process(es) reads per epoch"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "p" / "checkpoints").exists() and not (tmp_path / "b" / "checkpoints").exists()


def test_nan_guard_stops_and_keeps_last_good_checkpoint(cache, tmp_path, monkeypatch):
    import pipelines.train as T

    real = T.distill_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(T, "distill_loss", poisoned)
    # the 5th step goes NaN; losses are read at the next checkpoint (step 6), which is therefore not written
    with pytest.raises(TrainingDiverged, match="steps 5-6.*step-00000004"):
        train(load_config(TrainJobConfig, None, _args(cache, tmp_path / "nan", "epochs=2", "checkpoint_every=2")))
    ckpts = sorted(p.name for p in (tmp_path / "nan" / "checkpoints").glob("step-*"))
    assert ckpts[-1] == "step-00000004"
    assert not (tmp_path / "nan" / "student").exists()


def test_kill_and_resume_matches_uninterrupted(cache, tmp_path):
    ref = train(
        load_config(
            TrainJobConfig,
            None,
            _args(cache, tmp_path / "ref", "epochs=3", "checkpoint_every=2", "mlflow.enabled=false"),
        )
    )
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "train",
        *_args(cache, out, "epochs=3", "checkpoint_every=2", "mlflow.enabled=false"),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        latest = out / "checkpoints" / "latest"
        if latest.exists() and latest.read_text().strip() >= "step-00000004":
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    assert not (out / "student").exists()
    resumed = train(
        load_config(
            TrainJobConfig,
            None,
            _args(cache, out, "epochs=3", "checkpoint_every=2", "mlflow.enabled=false", "resume=true"),
        )
    )
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in ref["history"]]
    for a, b in zip(resumed["history"], ref["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a, b)


def test_existing_output_without_resume_is_refused(cache, tmp_path, capsys):
    args = _args(cache, tmp_path / "twice", "epochs=1", "mlflow.enabled=false")
    assert main(["train", *args]) == 0
    assert main(["train", *args]) == 2
    assert "resume=true" in capsys.readouterr().err


def _flip(path: Path, n: int = 16):
    b = bytearray(path.read_bytes())
    for i in range(n):
        b[len(b) // 2 + i] ^= 0xFF
    path.write_bytes(bytes(b))


def test_damaged_checkpoint_is_refused_naming_the_file_and_the_choices(cache, tmp_path, capsys):
    import shutil

    args = _args(cache, tmp_path / "run", "epochs=1", "checkpoint_every=2", "mlflow.enabled=false")
    assert main(["train", *args]) == 0  # 6 steps: checkpoints 4 and 6 kept
    capsys.readouterr()
    step6 = "checkpoints/step-00000006"
    damages = {
        "model.safetensors": lambda p: _flip(p),  # same size, other bytes
        "optimizer.bin": lambda p: p.write_bytes(p.read_bytes()[:100]),  # truncated
        "trainer_state.json": lambda p: p.write_text(p.read_text().replace('"step": 6', '"step": 7')),
    }
    for name, damage in damages.items():
        out = tmp_path / f"bad-{name}"
        shutil.copytree(tmp_path / "run", out)
        damage(out / step6 / name)
        assert (
            main(["train", *_args(cache, out, "epochs=1", "checkpoint_every=2", "mlflow.enabled=false", "resume=true")])
            == 2
        )
        err = capsys.readouterr().err
        assert f"checkpoint {out / step6} is damaged: {out / step6 / name}" in err, err
        assert (
            "resume=true resume_from=<one of step-00000004>" in err and "resume=false" in err and "Traceback" not in err
        )
    # the choice the message offers works: the older checkpoint, checked, resumed and trained on to the end
    r = train(
        load_config(
            TrainJobConfig,
            None,
            _args(
                cache,
                out,
                "epochs=1",
                "checkpoint_every=2",
                "mlflow.enabled=false",
                "resume=true",
                "resume_from=step-00000004",
            ),
        )
    )
    assert r["step"] == 6 and [h["step"] for h in r["history"]][-1] == 6
    assert main(["train", *_args(cache, out, "resume_from=step-00000004")]) == 2
    assert "'resume_from' must be set only with resume=true" in capsys.readouterr().err


def test_disk_full_is_one_line_keeps_the_last_checkpoint_and_resumes(cache, tmp_path, small_disk, capsys):
    """A real full disk (a 6 MB tmpfs; a checkpoint of this student is ~3.9 MB): the second checkpoint cannot be
    written. One line names it and what is kept; the partial checkpoint is removed; after space is freed the
    run resumes from the kept one and ends as an uninterrupted run does."""
    disk = small_disk(6 * 2**20)
    out = disk / "run"
    args = _args(cache, out, "epochs=1", "checkpoint_every=2", "keep_checkpoints=1", "mlflow.enabled=false")
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("radio: error:")]
    assert line and f"no space left writing checkpoint {out / 'checkpoints' / 'step-00000004'}" in line[0], err
    assert (
        f"the last complete checkpoint, {out / 'checkpoints' / 'step-00000002'}, is kept" in line[0]
        and "resume=true" in line[0]
        and "Traceback" not in err
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-00000002"]
    small_disk.resize(disk, 64 * 2**20)
    resumed = train(load_config(TrainJobConfig, None, [*args, "resume=true"]))
    ref = train(
        load_config(
            TrainJobConfig,
            None,
            _args(cache, tmp_path / "ref", "epochs=1", "checkpoint_every=2", "mlflow.enabled=false"),
        )
    )
    assert resumed["step"] == 6 and [h["loss"] for h in resumed["history"]] == pytest.approx(
        [h["loss"] for h in ref["history"]], rel=1e-5, abs=1e-6
    )


def test_two_process_accelerate_launch_sees_every_key_once(cache, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--multi_gpu",
        "-m",
        "pipelines.cli",
        "train",
        *_args(cache, out, "epochs=2", "audit_keys=true", "loader.num_workers=1", "mlflow.enabled=false"),
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    for epoch in range(2):
        seen = []
        for rank in range(2):
            seen += json.loads((out / "audit" / f"epoch{epoch}-rank{rank}.json").read_text())
        c = Counter(map(tuple, seen))
        assert len(c) == 24 * 2 and max(c.values()) == 1, f"epoch {epoch}: {c.most_common(3)}"
    assert (out / "student" / "model.safetensors").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_server(port: int, root: Path) -> subprocess.Popen:
    """`mlflow server` on loopback in its own process group (its workers die with it), once /health answers.
    Artifacts go through the server (mlflow-artifacts:/), as with a remote server."""
    import urllib.request

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root}/srv.db",
            "--artifacts-destination",
            str(root / "srv-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except OSError:
            time.sleep(0.5)
    _kill(server)
    raise RuntimeError("mlflow server did not start")


def _kill(server: subprocess.Popen):
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait(timeout=60)


def test_real_mlflow_server_lost_mid_run_and_fail_fast_when_unreachable(cache, tmp_path, monkeypatch, capsys):
    """Against a real `mlflow server` on loopback, SIGKILLed mid-training: the run
    goes on, warns once, keeps what it could not send, exits 0 with the student; `radio sync` sends it all once
    the server is back. And a server that is not there at start fails in one line."""
    from mlflow.tracking import MlflowClient

    import pipelines.train as T

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    for k, v in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
    ):
        monkeypatch.setenv(
            k, v
        )  # fewer retries than start_run's default (3), to keep the test short; restored after it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    server = _mlflow_server(port, tmp_path)
    try:
        # the server dies right after the checkpoint at step 2 (of 12); metrics are next sent at step 5
        save = T.Trainer.save_checkpoint

        def save_then_kill(self):
            save(self)
            if self.state.step == 2:
                _kill(server)

        monkeypatch.setattr(T.Trainer, "save_checkpoint", save_then_kill)
        out = tmp_path / "lost"
        capsys.readouterr()
        assert main(["train", *_args(cache, out, "epochs=2", "checkpoint_every=2", "log_every=5")]) == 0
        err = capsys.readouterr().err
        assert err.count("stopped answering") == 1 and "the job goes on" in err and "Traceback" not in err, err
        assert f"kept in {out / 'mlflow-pending.jsonl'}" in err and f"radio sync {out}" in err
        assert (out / "student" / "model.safetensors").is_file() and (out / "mlflow-pending.jsonl").is_file()
        kept = [json.loads(line)["op"] for line in (out / "mlflow-pending.jsonl").read_text().splitlines()]
        assert {"metrics", "artifact", "student_model", "tags", "terminated"} <= set(kept) and kept[
            -1
        ] == "terminated", kept
        run_id = json.loads((out / "mlflow-pending.jsonl").read_text().splitlines()[0])["run_id"]
        assert main(["sync", str(out)]) == 2  # still down: one line, and every record stays
        assert "stay in" in capsys.readouterr().err and len(
            (out / "mlflow-pending.jsonl").read_text().splitlines()
        ) == len(kept)
        server = _mlflow_server(port, tmp_path)  # back, on the same store
        assert main(["sync", str(out)]) == 0
        assert (
            f"sent {len(kept)} MLflow record(s)" in capsys.readouterr().out
            and not (out / "mlflow-pending.jsonl").exists()
        )
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags.get("radio.model_uri", "").startswith("models:/")
        assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [
            2,
            4,
            5,
            6,
            8,
            10,
            12,
        ]  # each once, sent live or replayed
        assert {a.path for a in client.list_artifacts(run_id)} >= {"student", "loss_curve.png", "config.yaml"}
    finally:
        _kill(server)
    dead = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    t0 = time.time()
    assert main(["train", *_args(cache, tmp_path / "dead-run", "epochs=1")]) == 2
    assert time.time() - t0 < 60
    assert "unreachable" in capsys.readouterr().err


def test_gradient_accumulation_halves_optimizer_steps(cache, tmp_path):
    one = train(load_config(TrainJobConfig, None, _args(cache, tmp_path / "acc1", "epochs=1", "mlflow.enabled=false")))
    two = train(
        load_config(
            TrainJobConfig,
            None,
            _args(cache, tmp_path / "acc2", "epochs=1", "optim.grad_accum=2", "mlflow.enabled=false"),
        )
    )
    assert one["step"] == 6 and two["step"] == 3


def test_help_texts(capsys):
    r = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and all(
        c in r.stdout for c in ("teachers", "config", "cache", "train", "eval", "compare", "quickstart")
    )
    for cmd in (["cache", "--help"], ["train", "--help"], ["eval", "--help"], ["quickstart", "--help"]):
        assert main(cmd) == 0, cmd
        assert "usage: radio" in capsys.readouterr().out


# ---- online (hybrid) teachers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exact_cache(ray_session, tmp_path_factory):
    """Square 32 px images cached whole at 32 px: the stored student view is exactly the crop the teacher saw,
    so a teacher run online on the student views must give the cached targets."""
    import numpy as np
    from PIL import Image

    from pipelines.cache import CacheJobConfig, run_cache_job

    root = tmp_path_factory.mktemp("exact")
    src = root / "imgs"
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(
                np.random.default_rng(i + (c == "b") * 99).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            ).save(src / c / f"{i}.png")
    out = root / "c"
    run_cache_job(
        load_config(
            CacheJobConfig,
            None,
            [
                f"output={out}",
                "source.kind=folder",
                f"source.path={src}",
                "teachers=[tiny-clip,tiny-dinov2]",
                "views.num_views=1",
                "student_resolution=32",
                "target_patch=8",
                "progress=false",
                "mlflow.enabled=false",
            ],
        )
    )
    return str(out)


def _online_args(cache, out, *extra):
    return [
        f"cache={cache}",
        f"output={out}",
        "teachers=[tiny-clip,tiny-dinov2]",
        "student.patch_size=8",
        "student.depth=2",
        "loader.batch_size=6",
        "loader.num_workers=0",
        "mlflow.enabled=false",
        "seed=3",
        *extra,
    ]


def test_online_teacher_gives_the_cached_loss(exact_cache, tmp_path):
    import torch

    from pipelines.train import Trainer, prepare_targets
    from radio.losses import distill_loss

    cached = Trainer(load_config(TrainJobConfig, None, _online_args(exact_cache, tmp_path / "a")), "")
    online = Trainer(
        load_config(TrainJobConfig, None, _online_args(exact_cache, tmp_path / "b", "online={tiny-clip: {}}")), ""
    )
    assert online.online_origin == {"tiny-clip": "cache"} and online.cached == ["tiny-dinov2"]
    assert online.fingerprints == cached.fingerprints  # fp32 on CPU, as cached
    cached.stream.set_epoch(0)
    batch = next(iter(cached.stream))
    images = batch["image"]
    targets_c = prepare_targets(batch, ["tiny-clip", "tiny-dinov2"], cached.stats, "cpu")
    targets_o = prepare_targets(batch, ["tiny-dinov2"], online.stats, "cpu")
    for t, raw in online.online.targets(images, (4, 4)).items():
        targets_o[t] = online.stats[t].normalize(raw)
    for k in ("summary", "features"):
        torch.testing.assert_close(
            targets_o["tiny-clip"][k], targets_c["tiny-clip"][k], atol=2e-2, rtol=1e-2
        )  # float16 storage
    online.model.load_state_dict(cached.model.state_dict())
    with torch.no_grad():
        lc = distill_loss(cached.model(images), targets_c, cached.cfg.loss)
        lo = distill_loss(online.model(images), targets_o, online.cfg.loss)
    for k in lc:
        torch.testing.assert_close(lo[k], lc[k], atol=2e-3, rtol=2e-3)


def test_online_teacher_without_cache_stats_warms_up_and_resume_reuses_them(cache, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "hyb"
    args = _args(
        cache,
        out,
        "teachers=[syn-clip,syn-sam,tiny-dinov2]",
        "online={tiny-dinov2: {stats_batches: 2}}",
        "epochs=2",
        "checkpoint_every=3",
    )
    first = train(load_config(TrainJobConfig, None, args[:-2] + ["max_steps=3", "epochs=2", "checkpoint_every=3"]))
    saved = json.loads((out / "online_stats.json").read_text())
    assert set(saved) == {"tiny-dinov2"} and len(saved["tiny-dinov2"]["features"]["mean"]) == 32
    run = MlflowClient().get_run(first["run_id"])
    assert (
        run.data.params["online.stats.tiny-dinov2"] == "warm-up (16 views)"
        and run.data.tags["radio.online_teachers"] == "tiny-dinov2"
    )
    # edited statistics (same size) are refused by the checkpoint's record of them; the untouched run resumes
    import shutil

    edited = tmp_path / "hyb-edited"
    shutil.copytree(out, edited)
    text = (edited / "online_stats.json").read_text()
    i = next(i for i, c in enumerate(text) if c.isdigit() and c != "9")
    (edited / "online_stats.json").write_text(text[:i] + str(int(text[i]) + 1) + text[i + 1 :])
    with pytest.raises(CheckpointError, match=r"online_stats.json does not match its recorded sha256"):
        train(load_config(TrainJobConfig, None, _args(cache, edited, *args[2:], "resume=true")))
    resumed = train(load_config(TrainJobConfig, None, args + ["resume=true"]))
    assert resumed["step"] == 12 and json.loads((out / "online_stats.json").read_text()) == saved
    student = json.loads((out / "student" / "config.json").read_text())
    assert "tiny-dinov2" in student["meta"]["teachers"] and "tiny-dinov2" in student["meta"]["stats"]


def test_online_teacher_must_be_listed(cache, tmp_path, capsys):
    assert main(["train", *_args(cache, tmp_path / "x", "online={tiny-clip: {}}")]) == 2
    err = capsys.readouterr().err
    assert "override 'online={tiny-clip: {}}': 'online' must be a subset of teachers=" in err and "Traceback" not in err


def test_weight_decay_exclusions_come_from_the_model(cache, tmp_path):
    from pipelines.train import Trainer

    tr = Trainer(load_config(TrainJobConfig, None, _args(cache, tmp_path / "wd")), "")
    named = dict(tr.model.named_parameters())
    no_decay = {id(p) for p in tr.opt.param_groups[1]["params"]}
    assert tr.model.no_weight_decay() == {"trunk.pos_embed", "trunk.summary_tokens", "trunk.register_tokens"}
    for n, p in named.items():
        assert (id(p) in no_decay) == (p.ndim < 2 or n in tr.model.no_weight_decay()), n


def test_ctrl_c_writes_a_checkpoint_and_resume_logs_no_step_twice(cache, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "int"
    args = _args(cache, out, "epochs=60", "checkpoint_every=1000", "log_every=2")
    import threading

    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "train", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not any("[radio train] starting" in x for x in lines):
        time.sleep(0.1)  # the loop (and its Ctrl-C handler) starts right after this line, however loaded the machine
    assert proc.poll() is None, "".join(lines)[-3000:]
    time.sleep(3.0)  # some steps into the run
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=30)
    err = "".join(lines)
    assert proc.returncode == 130, err[-3000:]
    assert (
        "Ctrl-C: finishing this step" in err
        and "Resume with:" in err
        and "resume=true" in err
        and "Traceback" not in err
    )
    assert " INFO mlflow" not in err and "Token authentication" not in err, err  # quiet unless --verbose
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{step:08d}"  # written at the interrupt
    resume_line = err.split("Resume with:\n")[1].strip().splitlines()[0]
    assert resume_line.startswith("radio train ") and resume_line.endswith("resume=true")
    import shlex

    resumed = main(shlex.split(resume_line)[1:])  # the printed command, as is
    assert resumed == 0
    state = json.loads(
        (out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip() / "trainer_state.json").read_text()
    )
    steps = [m.step for m in MlflowClient().get_metric_history(state["run_id"], "train/loss")]
    assert len(steps) == len(set(steps)) and max(steps) == state["step"] > step


def test_offline_run_keeps_every_record_and_sync_replays_them_in_order(tmp_path, capsys, monkeypatch):
    """The pending-file machinery without a server: a Run whose store refuses connections keeps params, metrics,
    tags, text and the end status (warning once), and `radio sync --tracking-uri` sends them to a store that has
    the run, exactly once; a kept record that cannot be sent stays for the next try."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import PENDING, Run

    monkeypatch.setenv(
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"
    )  # refused at once (start_run's default would retry 3 times)
    store = f"sqlite:///{tmp_path}/store.db"
    live = MlflowClient(store)
    run_id = live.create_run(live.create_experiment("offline")).info.run_id
    dead = MlflowClient(f"http://127.0.0.1:{_free_port()}")
    r = Run(dead, run_id, "0", pending=tmp_path / "out" / PENDING)
    r.log_params({"a": 1})
    r.log_metrics({"train/loss": 0.5}, step=3)
    r.log_metrics({"train/loss": 0.25}, step=4, wait=False)
    r.set_tags({"radio.steps": 4})
    assert r.last_step("train/loss") is None  # a read while offline: nothing, and nothing kept for it
    r.end()
    err = capsys.readouterr().err
    assert err.count("stopped answering") == 1 and "5 MLflow record(s)" in err
    ops = [json.loads(x)["op"] for x in (tmp_path / "out" / PENDING).read_text().splitlines()]
    assert (
        ops[0] == "params" and sorted(ops[1:4]) == ["metrics", "metrics", "tags"] and ops[4] == "terminated"
    )  # the background sender's batch may land after the tags
    assert main(["sync", str(tmp_path / "out"), "--tracking-uri", store]) == 0
    got = live.get_run(run_id)
    assert got.data.params == {"a": "1"} and got.data.tags["radio.steps"] == "4" and got.info.status == "FINISHED"
    assert [(m.step, m.value) for m in live.get_metric_history(run_id, "train/loss")] == [(3, 0.5), (4, 0.25)]
    assert not (tmp_path / "out" / PENDING).exists()
    assert main(["sync", str(tmp_path / "out")]) == 2 and "no pending MLflow records here" in capsys.readouterr().err
