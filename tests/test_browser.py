"""The compare view in a real browser: `mlflow ui` on loopback, headless Chromium, a screenshot.

Skipped only when Chromium is not installed (Debian: `apt-get install chromium`).
"""

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.compare import compare_runs, ui_command
from pipelines.screenshot import find_chromium, screenshot_compare
from pipelines.tracking import MlflowConfig, tracking_uri


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_compare_view_screenshot_shows_both_students(ray_session, tmp_path):
    exp = "test-browser"
    assert main(["quickstart", f"workdir={tmp_path / 'qs'}", "limit=16", "students.nano-d4.epochs=1", "students.nano-d2-wide.epochs=1", f"experiment={exp}"]) == 0
    rows, _, exp_id = compare_runs(exp)
    ids = [r["run_id"] for r in rows]
    uri = tracking_uri(MlflowConfig())
    png = screenshot_compare(uri, lambda port: ui_command(uri, exp_id, ids, port)[1], tmp_path / "compare.png", dom_out=tmp_path / "compare.html")
    img = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert img.shape[1] == 1600 and img.std() > 10  # a rendered page, not a blank one
    dom = (tmp_path / "compare.html").read_text()
    assert "Comparing 2 Runs" in dom
    for name in ("nano-d4", "nano-d2-wide", "eval/knn_top1"):
        assert name in dom, name
