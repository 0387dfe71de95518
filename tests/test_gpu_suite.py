"""bench/gpu_suite.py cannot rot (issue 20): its --smoke mode runs the same code paths on CPU with tiny teachers, and
its JSON holds every figure the GPU run reports, numeric where a CPU can measure it, null with the reason where it
needs CUDA."""

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_suite():
    sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module("gpu_suite")


def test_smoke_reports_every_figure(gpu_suite, ray_session, tmp_path):
    # In process, on the session's Ray (a subprocess would pay another ~5 s of imports; the CLI is the same main()).
    out = tmp_path / "out"
    assert gpu_suite.main(["--smoke", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    doc = json.loads((out / "gpu_suite.json").read_text())
    specs = gpu_suite.figure_specs(gpu_suite.SMOKE)
    figures = doc["figures"]
    assert set(figures) == set(specs)
    assert set(specs) >= {
        "cache/job_over_tuned",
        "cache/mfu_in_job/sam",
        "cache/busy_fraction/sam",
        "cache/resize_device_over_prepare/sam",
        "cache/peak_host_mib_2n",
        "cache/sam_device_over_prepare_job",
        "train/cached_over_resident",
        "train/mfu",
        "train/data_wait_fraction",
        "train/hybrid_steps_per_s",
        "train/online_steps_per_s",
        "reader/views_per_s",
        "reader/checked_over_unchecked",
    }
    import torch

    cpu = not torch.cuda.is_available()
    for name, f in figures.items():
        assert f["name"] == name and f["unit"] == specs[name]["unit"] and f["goal"] == specs[name]["goal"]
        if specs[name]["cuda"] and cpu:
            assert f["value"] is None and "CUDA" in f["reason"], f
        elif specs[name]["cuda"]:  # a GPU without a known peak has no MFU either
            assert isinstance(f["value"], float) or "peak" in f["reason"], f
        else:
            assert isinstance(f["value"], (int, float)) and "error" not in f and "reason" not in f, f
        if f["goal"] is not None and f["value"] is not None:
            assert isinstance(f["met"], bool), f
    meta = doc["meta"]
    assert (
        meta["complete"]
        and meta["smoke"]
        and meta["commit"]
        and meta["machine"].startswith("cpu") == cpu
        and meta["date"]
    )
    assert meta["teachers"] == {"clip": "tiny-clip", "dinov2": "tiny-dinov2", "sam": "tiny-sam"}
    # The same figures, one JSON line each as they came (what a run cut short leaves)
    lines = [json.loads(x) for x in (out / "gpu_suite.jsonl").read_text().splitlines()]
    assert "meta" in lines[0] and {x["name"] for x in lines[1:]} == set(specs)
    assert (
        tmp_path / "work" / "train-cache" / "manifest.json"
    ).is_file()  # --work is kept (a rerun reuses what it built)


def test_budget_and_failures_become_null_with_the_reason(gpu_suite, tmp_path):
    specs = gpu_suite.figure_specs(gpu_suite.SMOKE)
    suite = gpu_suite.Suite(tmp_path, specs, {"smoke": True}, budget_s=1000)

    def fails():
        suite.put("reader/workers", 3)
        raise OSError("disk full")

    suite.measure("reader", ["reader/workers", "reader/views_per_s"], fails)
    suite.measure("train", ["train/mfu"], lambda: None, min_s=2000)  # would overrun the budget: not started
    suite.finish(complete=False)
    figures = json.loads((tmp_path / "gpu_suite.json").read_text())["figures"]
    assert figures["reader/workers"]["value"] == 3
    assert figures["reader/views_per_s"] == {
        **figures["reader/views_per_s"],
        "value": None,
        "error": "reader: OSError: disk full",
    }
    assert figures["train/mfu"]["value"] is None and figures["train/mfu"]["reason"].startswith("budget")
    assert (
        figures["train/data_wait_fraction"]["reason"] == "not reached"
        and figures["train/data_wait_fraction"]["met"] is None
    )
