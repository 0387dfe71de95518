"""`radio eval`, `radio compare`, `radio.load_student` and `radio quickstart`, on tiny teachers."""

import os
from pathlib import Path

import pytest
import torch

import radio
from pipelines.cache import CacheJobConfig, run_cache_job
from pipelines.cli import main
from pipelines.compare import compare_runs
from pipelines.config import load_config
from pipelines.evaluate import EvalJobConfig, evaluate
from pipelines.screenshot import find_chromium
from pipelines.tracking import NullRun
from pipelines.train import Trainer, TrainJobConfig, train
from radio.cache import CacheReader
from radio.normalize import TargetStats

TEACHERS = ["tiny-clip", "tiny-dinov2", "tiny-sam"]
EXP = "test-eval"


@pytest.fixture(scope="module")
def caches(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-caches")
    out = {}
    for split, views, limit in (("train", 2, 120), ("val", 1, 40)):
        cfg = load_config(
            CacheJobConfig,
            None,
            [
                f"output={root / split}",
                f"source.split={split}",
                f"source.limit={limit}",
                f"views.num_views={views}",
                "student_resolution=32",
                f"teachers=[{','.join(TEACHERS)}]",
                "progress=false",
                "mlflow.enabled=false",
            ],
        )
        run_cache_job(cfg)
        out[split] = str(root / split)
    return out


def _train_args(caches, out, *extra):
    return [
        f"cache={caches['train']}",
        f"output={out}",
        f"teachers=[{','.join(TEACHERS)}]",
        "student.patch_size=8",
        "student.depth=2",
        "loader.batch_size=16",
        "loader.num_workers=0",
        f"mlflow.experiment={EXP}",
        *extra,
    ]


@pytest.fixture(scope="module")
def students(caches, tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    trained = train(
        load_config(TrainJobConfig, None, _train_args(caches, root / "trained", "epochs=8", "run_name=trained"))
    )
    untrained = train(
        load_config(
            TrainJobConfig,
            None,
            _train_args(caches, root / "untrained", "epochs=8", "max_steps=0", "run_name=untrained"),
        )
    )
    return {"trained": trained, "untrained": untrained}


def _eval(caches, student, *extra):
    return evaluate(
        load_config(
            EvalJobConfig,
            None,
            [
                f"student={student['student']}",
                f"val_cache={caches['val']}",
                f"train_cache={caches['train']}",
                f"mlflow.experiment={EXP}",
                "pictures=2",
                *extra,
            ],
        )
    )


def test_eval_metrics_and_trained_beats_untrained(caches, students):
    good, bad = _eval(caches, students["trained"]), _eval(caches, students["untrained"])
    for t in TEACHERS:
        assert good[f"eval/{t}/features_cos"] > bad[f"eval/{t}/features_cos"] + 0.1, t
        if t != "tiny-sam":
            assert good[f"eval/{t}/summary_cos"] > bad[f"eval/{t}/summary_cos"] + 0.1, t
    assert "eval/tiny-sam/summary_cos" not in good
    for key in (
        "eval/knn_top1",
        "eval/linear_top1",
        "eval/teacher/tiny-clip/knn_top1",
        "eval/teacher/tiny-dinov2/knn_top1",
        "eval/teacher/tiny-clip/linear_top1",
    ):
        assert 0.0 <= good[key] <= 1.0, key
    assert good["eval/knn_top1"] > 1.5 / 10  # well above chance on 10 classes


def test_eval_logs_into_the_training_run(caches, students):
    from mlflow.tracking import MlflowClient

    _eval(caches, students["trained"])
    client = MlflowClient()
    run = client.get_run(students["trained"]["run_id"])
    assert "eval/knn_top1" in run.data.metrics and "eval/teacher/tiny-dinov2/knn_top1" in run.data.metrics
    contexts = {{t.key: t.value for t in i.tags}["mlflow.data.context"] for i in run.inputs.dataset_inputs}
    assert {
        "training",
        "evaluation",
    } <= contexts  # the caches it trained and was evaluated on (the kNN database is the training cache here)
    # the logged model carries the eval numbers, measured on the val cache (MLflow's model page shows both)
    model = client.get_logged_model(run.data.tags["radio.model_uri"].split("/")[-1])
    by_key = {m.key: m for m in model.metrics or []}
    assert "eval/knn_top1" in by_key and by_key["eval/knn_top1"].value == run.data.metrics["eval/knn_top1"]
    assert by_key["eval/knn_top1"].dataset_name.startswith("radio-cache-") and by_key["eval/knn_top1"].dataset_digest
    # ... and its training cache (the final losses, measured on it): the page's "Datasets used" names both
    datasets = {(m.dataset_name, m.dataset_digest) for m in model.metrics if m.dataset_name}
    train_id, val_id = (CacheReader(caches[s]).manifest.cache_id for s in ("train", "val"))
    assert {d for _, d in datasets} == {train_id, val_id}, datasets
    assert by_key["train/final_loss"].dataset_digest == train_id and by_key["train/final_loss"].value == pytest.approx(
        run.data.metrics["train/loss"]
    )
    evals = [m.key for m in model.metrics if m.key.startswith("eval/")]
    assert evals[:3] == ["eval/knn_top1", "eval/linear_top1", "eval/dense_miou"] or evals[:2] == [
        "eval/knn_top1",
        "eval/linear_top1",
    ], evals[:5]  # headline first
    assert model.tags["mlflow.note.content"] == run.data.tags["mlflow.note.content"]  # the model page's Description
    assert (
        run.data.tags["mlflow.note.content"].startswith("**radio eval**")
        and "`eval/knn_top1`" in run.data.tags["mlflow.note.content"]
    )
    pics = [a.path for a in client.list_artifacts(run.info.run_id, "eval/pictures")]
    assert len(pics) == 2 and all(p.endswith(".png") for p in pics)
    from PIL import Image

    from pipelines.evaluate import PANEL

    local = sorted((Path(students["trained"]["student"]) / "eval").glob("pca_*.png"))
    panels = 3 + 2 * len(TEACHERS)  # input, student, student at 4x, then adapter and target per teacher
    assert Image.open(local[0]).size == (panels * (PANEL + 4) - 4, PANEL + 16)  # titled panels in one row
    # by run id, through the CLI
    assert (
        main(
            [
                "eval",
                students["trained"]["run_id"],
                f"val_cache={caches['val']}",
                f"train_cache={caches['train']}",
                f"mlflow.experiment={EXP}",
                "pictures=1",
            ]
        )
        == 0
    )


def test_load_student_equals_trainer_model(caches, tmp_path):
    cfg = load_config(TrainJobConfig, None, _train_args(caches, tmp_path / "rt", "epochs=1", "mlflow.enabled=false"))
    trainer = Trainer(cfg, "")
    trainer.fit(NullRun())
    d = trainer.export()
    model = radio.load_student(str(d))
    x = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    trainer.model.eval()
    with torch.no_grad():
        ref = trainer.acc.unwrap_model(trainer.model)(x)
        out = model.predict(x)
        out_float = model.predict(x.float() / 255)
    for t in TEACHERS:
        st: TargetStats = trainer.stats[t]
        torch.testing.assert_close(out.adapters[t]["features"], st.denormalize_features(ref[t]["features"]))
        if "summary" in ref[t]:
            torch.testing.assert_close(out.adapters[t]["summary"], st.denormalize_summary(ref[t]["summary"]))
    torch.testing.assert_close(out_float.features, out.features)
    assert out.features.shape[1:3] == (4, 6) and out.summary.ndim == 2
    with pytest.raises(
        ValueError, match=r"multiple of min_resolution_step=8; got \(30, 32\), nearest supported: \(32, 32\)"
    ):
        model(torch.zeros(1, 3, 30, 32, dtype=torch.uint8))


def test_compare_lists_runs_sorted(caches, students, capsys, monkeypatch):
    for s in students.values():
        _eval(caches, s)
    rows, columns, _ = compare_runs(EXP, "eval/tiny-clip/features_cos")
    names = [r["run"] for r in rows]
    assert set(names) >= {"trained", "untrained"}
    vals = [r["eval/tiny-clip/features_cos"] for r in rows if r.get("eval/tiny-clip/features_cos") is not None]
    assert vals == sorted(vals, reverse=True) and names.index("trained") < names.index("untrained")
    assert main(["compare", "--experiment", EXP, "--sort", "eval/knn_top1", "--all"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert "eval/knn_top1" in header and "eval/tiny-clip/features_cos" in header  # printed as --sort takes them
    assert main(["compare", "--experiment", EXP, "--sort", "knn_top1"]) == 0  # the short form too
    assert main(["compare", "--experiment", EXP, "--sort", header[-1]]) == 0
    capsys.readouterr()
    assert "trained" in out and "mlflow ui --backend-store-uri" in out and "127.0.0.1" in out
    assert "viewStateShareKey=radio-students-table&compareRunsMode=TABLE" in out  # the table, not compare-runs
    assert "workflowType=machine_learning" in out  # the model-training view, whatever a browser's local storage says
    assert main(["compare", "--experiment", "no-such-experiment"]) == 2
    # the table fits the terminal: at 80 and 120 columns every line of it does, with each run's headline numbers
    by_run = {r["run"]: r for r in rows}
    for cols in (80, 120):
        monkeypatch.setenv("COLUMNS", str(cols))
        capsys.readouterr()
        assert main(["compare", "--experiment", EXP]) == 0
        table = capsys.readouterr().out.split("\n\n")[0].splitlines()
        assert max(len(x) for x in table) <= cols, (cols, table)
        text = "\n".join(table)
        for name in ("trained", "untrained"):
            assert (
                name in text
                and f"{by_run[name]['eval/knn_top1']:.4f}" in text
                and f"{by_run[name]['eval/linear_top1']:.4f}" in text
            )
    assert main(["compare", "--experiment", EXP, "--columns", "knn_top1,dense_miou", "--sort", "linear_top1"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[-2:] == ["eval/knn_top1", "eval/dense_miou"]
    # the MLflow view it links keeps every headline chart (--columns shapes the table only) and takes --sort
    import json

    from mlflow.tracking import MlflowClient

    from pipelines.compare import VIEW_KEY, headline_metrics

    exp = MlflowClient().get_experiment_by_name(EXP)
    state = json.loads(json.loads(exp.tags[f"mlflow.sharedViewState.{VIEW_KEY}"])["state"])
    assert [c["metricKey"] for c in state["compareRunCharts"]] == headline_metrics(columns) and len(
        state["compareRunCharts"]
    ) >= 3
    assert state["orderByKey"] == "metrics.`eval/linear_top1`"
    assert main(["compare", "--experiment", EXP, "--columns", "knn_top2"]) == 2
    assert "--columns: no metric ['eval/knn_top2']" in capsys.readouterr().err


QS_ARGS = ["limit=24", "students.nano-d4.epochs=2", "students.nano-d2-wide.epochs=2", "experiment=test-quickstart"]


@pytest.fixture(scope="module")
def quickstart(ray_session, tmp_path_factory):
    """One reduced quickstart, its stdout kept: the end-to-end test and the browser test share it."""
    import contextlib
    import io

    work, out = tmp_path_factory.mktemp("qs") / "qs", io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["quickstart", f"workdir={work}", *QS_ARGS]) == 0
    return {"workdir": work, "stdout": out.getvalue()}


def test_quickstart_end_to_end_reduced(quickstart, capsys):
    out = quickstart["stdout"]
    assert "nano-d4" in out and "nano-d2-wide" in out and "mlflow ui" in out
    rows, _, _ = compare_runs("test-quickstart")
    assert {r["run"] for r in rows} == {"nano-d4", "nano-d2-wide"} and all(r["eval/knn_top1"] is not None for r in rows)
    # two resolutions and one dense metric: the new pieces at laptop scale
    assert all(
        r.get(k) is not None
        for r in rows
        for k in (
            "eval/dense_miou",
            "eval/res32/summary_consistency",
            "eval/res64/knn_top1",
            "eval/tiny-clip/zeroshot_top1",
        )
    )
    # a rerun resumes: nothing is recomputed or retrained
    assert main(["quickstart", f"workdir={quickstart['workdir']}", *QS_ARGS]) == 0
    assert len(compare_runs("test-quickstart")[0]) == 2


@pytest.mark.skipif(
    find_chromium() is None and not os.environ.get("RADIO_REQUIRE_CHROMIUM"),
    reason="Chromium is not installed (apt-get install chromium); .ci/run installs it",
)
def test_every_printed_link_opens_on_what_a_user_came_for(quickstart, tmp_path):
    """Follow every link the quickstart printed (the comparison's charts, the students' table, each student's
    model page) in headless Chromium at 1440 x 900 (a fresh profile: MLflow opens its Assistant panel beside the
    page) and at 1280 x 720 (the Assistant closed, as a user closes it once), reading what `mlflow ui` renders:
    - the charts: every headline eval metric's chart on the first screen, its title whole (not cut by its box),
      naming both students with their values;
    - the table: both students, and eval metric columns, on the first screen;
    - a model page: its datasets (the training cache among them), its eval numbers, its run."""
    import re

    from mlflow.tracking import MlflowClient

    from pipelines.compare import headline_metrics
    from pipelines.screenshot import open_page, serve_mlflow_ui

    out = quickstart["stdout"]
    link = re.search(r"then open (http://127\.0\.0\.1:5000/\S+)", out).group(1)
    table = re.search(r"every eval metric a column: (http://127\.0\.0\.1:5000/\S+)", out).group(1)
    models = re.findall(r"'s MLflow model \(runs:/\w+/model\): (http://127\.0\.0\.1:5000/\S+)", out)
    assert "viewStateShareKey=" in link and "compareRunsMode=CHART" in link and "compareRunsMode=TABLE" in table
    assert all("workflowType=machine_learning" in u for u in (link, table, *models)), out
    rows, columns, _ = compare_runs("test-quickstart")
    names, metrics = [r["run"] for r in rows], headline_metrics(columns)
    assert metrics == ["eval/knn_top1", "eval/linear_top1", "eval/dense_miou", "eval/tiny-clip/zeroshot_top1"]
    assert len(models) == len(rows) == 2
    client = MlflowClient()
    datasets = {}
    for r in rows:
        model_id = client.get_run(r["run_id"]).data.tags["radio.model_uri"].split("/")[-1]
        assert any(model_id in u for u in models)
        datasets[r["run"]] = next(
            m.dataset_name for m in client.get_logged_model(model_id).metrics if m.key == "train/final_loss"
        )

    def charts_drawn(probe: dict) -> bool:
        """Every headline chart's card names both students with their values."""
        return all(
            any(
                all(r["run"] in t.get("box_text", "") and f"{r[m]:.2f}" in t.get("box_text", "") for r in rows)
                for t in probe["texts"].get(m, [])
            )
            for m in metrics
        )

    with serve_mlflow_ui(os.environ["MLFLOW_TRACKING_URI"]) as port:
        here = lambda u: u.replace(":5000/", f":{port}/")  # noqa: E731
        for (w, h), closed in (((1440, 900), False), ((1280, 720), True)):
            inside = lambda r: r[0] >= 0 and r[1] >= 0 and r[2] <= w and r[3] <= h and r[2] > r[0]  # noqa: B023, E731
            seen = open_page(
                here(link),
                tmp_path / f"charts-{w}.png",
                size=(w, h),
                texts=(*metrics, *names),
                together=tuple(names),
                close_assistant=closed,
                ready=charts_drawn,  # bar labels come after the titles: wait for them (a loaded machine is slow)
            )
            assert seen["ready"] and seen["viewport"] == [w, h]
            for m in metrics:
                titles = [t for t in seen["texts"].get(m, []) if "box" in t and inside(t["rect"])]
                assert titles, f"{w}x{h}: no chart of {m} on the first screen: {seen['texts'].get(m)}"
                assert not titles[0]["clipped"], f"{w}x{h}: the title {m} is cut by its box"
                assert titles[0]["box"][1] < h
                text = titles[0]["box_text"].split("\n")
                for r in rows:
                    assert r["run"] in text and f"{r[m]:.2f}" in text, (w, m, r["run"], r[m], text)
            tab = open_page(
                here(table),
                tmp_path / f"table-{w}.png",
                size=(w, h),
                texts=(*names, *metrics),
                close_assistant=closed,
                ready=lambda p: all(p["texts"].get(n) for n in names) and any(p["texts"].get(m) for m in metrics),
            )
            assert all(any(inside(t["rect"]) for t in tab["texts"][n]) for n in names), tab["texts"]
            # the headline columns first, in radio's order, each header whole (MLflow would sort them by name)
            heads = {m: [t for t in tab["texts"].get(m, []) if inside(t["rect"])] for m in metrics}
            assert heads[metrics[0]] and heads[metrics[1]], tab["texts"]
            # the first two whole; the others may lie under the table's right edge, a sideways scroll away
            assert all(not t["clipped"] for m in metrics[:2] for t in heads[m]), repr(heads)
            assert heads[metrics[0]][0]["rect"][0] < heads[metrics[1]][0]["rect"][0]  # knn before linear
            for u in models:
                run = next(
                    r for r in rows if client.get_run(r["run_id"]).data.tags["radio.model_uri"].split("/")[-1] in u
                )
                mp = open_page(
                    here(u),
                    tmp_path / f"model-{run['run']}-{w}.png",
                    size=(w, h),
                    texts=("Datasets used", "eval/knn_top1", run["run"]),
                    together=(datasets[run["run"]],),
                    close_assistant=closed,
                )
                on_screen = lambda t: [x for x in mp["texts"].get(t, []) if inside(x["rect"])]  # noqa: B023, E731
                assert on_screen("Datasets used") and on_screen("eval/knn_top1") and on_screen(run["run"]), mp["texts"]
                assert datasets[run["run"]].startswith("radio-cache-") and any(
                    datasets[run["run"]] in x.get("box_text", "") for x in mp["texts"]["Datasets used"]
                ), mp["texts"]["Datasets used"]
    assert (tmp_path / "charts-1440.png").stat().st_size > 10_000


def test_picture_names_are_safe_and_bounded():
    from pipelines.evaluate import _file_stem

    long_id = "a/very/" + "deep/" * 100 + "photo name (1).jpg"
    stem = _file_stem(long_id)
    assert len(stem) <= 80 and "/" not in stem and " " not in stem
    assert _file_stem(long_id) == stem and _file_stem(long_id + "x") != stem  # stable and distinct
    assert _file_stem("cat/001.jpg") == "cat_001.jpg" and _file_stem("///") == "image"


def test_resolution_sweep_dense_probe_and_zero_shot_are_logged_and_compared(caches, students, capsys):
    from mlflow.tracking import MlflowClient

    from pipelines.config import ConfigError

    m = _eval(caches, students["trained"], "resolutions=[16,32,64]", "dense_epochs=50")
    for r in (16, 32, 64):
        for key in (
            "knn_top1",
            "summary_consistency",
            "dense_miou",
            "tiny-clip/summary_cos",
            "tiny-sam/features_cos",
            "tiny-clip/zeroshot_top1",
        ):
            assert 0.0 <= m[f"eval/res{r}/{key}"] <= 1.0 + 1e-6, (r, key)
    assert m["eval/res32/summary_consistency"] == pytest.approx(1.0)  # 32 px is the evaluation cache's own resolution
    assert m["eval/res32/knn_top1"] == m["eval/knn_top1"] and m["eval/res32/dense_miou"] == m["eval/dense_miou"]
    assert m["eval/res16/summary_consistency"] < 1.0
    assert 0.0 <= m["eval/tiny-clip/zeroshot_top1"] <= 1.0 and "eval/teacher/tiny-clip/zeroshot_top1" in m
    assert "eval/tiny-dinov2/zeroshot_top1" not in m  # no text tower
    logged = MlflowClient().get_run(students["trained"]["run_id"]).data.metrics
    assert {"eval/dense_miou", "eval/res64/knn_top1", "eval/tiny-clip/zeroshot_top1"} <= set(logged)
    assert main(["compare", "--experiment", EXP, "--sort", "dense_miou", "--all"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert (
        header.index("eval/dense_miou")
        < header.index("eval/tiny-clip/zeroshot_top1")
        < header.index("eval/res16/knn_top1")
        < header.index("eval/res64/knn_top1")
    )
    with pytest.raises(ConfigError, match=r"\[20\] not multiples of this student's min_resolution_step 8"):
        _eval(caches, students["trained"], "resolutions=[20]")


def test_adaptor_text_side_as_radio_users_call_it(students):
    """RADIO's zero-shot path: model.adaptors[name].tokenizer / encode_text, loaded from the source the student
    recorded for its teacher; the text lands in the space of the adaptor's summary, as eval's zero-shot uses it."""
    import torch.nn.functional as F

    import radio
    from teachers import text_embeddings

    model = radio.load_student(students["trained"]["student"], adaptor_names=["tiny-clip", "tiny-dinov2"])
    clip = model.adaptors["tiny-clip"]
    prompts = ["a photo of a circle", "a photo of stripes"]
    z = clip.encode_text(clip.tokenizer(prompts), normalize=True)
    with torch.no_grad():
        summary = model(torch.rand(1, 3, 32, 32))["tiny-clip"].summary
    assert z.shape == (2, summary.shape[-1]) and torch.allclose(z.norm(dim=-1), torch.ones(2))
    assert torch.allclose(z, F.normalize(text_embeddings("tiny-clip", prompts), dim=-1), atol=1e-5)
    with pytest.raises(
        ValueError, match=r"adaptor 'tiny-dinov2' \(teacher tiny-dinov2\): no text encoder.*has no text tower"
    ):
        model.adaptors["tiny-dinov2"].encode_text(torch.zeros(1, 4, dtype=torch.long))


def test_compare_view_is_saved_and_a_refusing_store_falls_back_to_the_compare_page(monkeypatch, capsys):
    import json

    from mlflow.tracking import MlflowClient

    from pipelines.compare import TABLE_VIEW_KEY, VIEW_KEY, compare_links, headline_metrics

    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    exp_id = client.create_experiment("test-compare-view")
    cols = [
        "eval/res32/knn_top1",
        "eval/tiny-clip/zeroshot_top1",
        "eval/dense_miou",
        "eval/knn_top1",
        "eval/linear_top1",
        "eval/tiny-clip/summary_cos",
    ]
    assert headline_metrics(cols) == [
        "eval/knn_top1",
        "eval/linear_top1",
        "eval/dense_miou",
        "eval/tiny-clip/zeroshot_top1",
    ]
    rows = [{"run_id": "a" * 32}, {"run_id": "b" * 32}]
    cmd, url, table, view = compare_links(uri, exp_id, rows, cols)
    runs_page = f"#/experiments/{exp_id}/runs?viewStateShareKey={VIEW_KEY}"
    assert view == VIEW_KEY and f"{runs_page}&compareRunsMode=CHART&workflowType=machine_learning" in url
    assert f"viewStateShareKey={TABLE_VIEW_KEY}&compareRunsMode=TABLE&workflowType=machine_learning" in table
    assert "127.0.0.1" in cmd
    tabled = json.loads(
        json.loads(client.get_experiment(exp_id).tags[f"mlflow.sharedViewState.{TABLE_VIEW_KEY}"])["state"]
    )
    assert tabled["runListHidden"] is False and tabled["selectedColumns"][:4] == [
        f"metrics.`{m}`" for m in headline_metrics(cols)
    ]  # every eval metric a column, headline ones first
    assert tabled["columnOrder"] == tabled["selectedColumns"] and len(tabled["columnWidths"]) == len(cols)
    assert len(tabled["selectedColumns"]) == len(cols) and tabled["searchFilter"] == "tags.`radio.kind` = 'student'"
    envelope = json.loads(client.get_experiment(exp_id).tags[f"mlflow.sharedViewState.{VIEW_KEY}"])
    state = json.loads(envelope["state"])  # what MLflow 3.17's runs page reads: search facets and chart layout
    assert envelope["name"] and isinstance(envelope["createdAt"], int)
    assert [c["metricKey"] for c in state["compareRunCharts"]] == headline_metrics(cols)
    assert {c["metricSectionId"] for c in state["compareRunCharts"]} == {state["compareRunSections"][0]["uuid"]}
    assert state["searchFilter"] == "tags.`radio.kind` = 'student'" and state["runListHidden"] is True
    assert state["compareRunSections"][0]["columns"] == 2  # four headline charts: two a row, whole titles
    # a store that refuses the tag: one line, and the link is MLflow's compare page
    monkeypatch.setattr(
        MlflowClient, "set_experiment_tag", lambda *a, **k: (_ for _ in ()).throw(PermissionError("read-only store"))
    )
    cmd, url, table, view = compare_links(uri, exp_id, rows, cols)
    assert view is None and url == table and "#/compare-runs?" in url
    assert "could not save the comparison view" in capsys.readouterr().err
