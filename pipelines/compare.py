"""``radio compare``: student runs side by side in the terminal, and the ``mlflow ui`` command for the same view."""

from __future__ import annotations

import argparse
import json
import urllib.parse

from .tracking import MlflowConfig, tracking_uri

__all__ = ["main", "compare_runs", "format_table", "ui_command"]

KEY_METRICS = ("eval/knn_top1", "eval/linear_top1", "eval/dense_miou")


def _column_order(name: str) -> tuple:
    """Headline numbers, then zero-shot, then the resolution sweep (by resolution), then fidelity."""
    if name in KEY_METRICS:
        return (0, KEY_METRICS.index(name), "")
    if name.endswith("zeroshot_top1") and "/res" not in name:
        return (1, 0, name)
    if name.startswith("eval/res"):
        r = name.split("/")[1][3:]
        return (2, int(r) if r.isdigit() else 0, name)
    return (3, 0, name)


class CompareError(ValueError):
    pass


def compare_runs(experiment: str = "radio-students", sort: str = "eval/knn_top1", tracking: str | None = None) -> tuple[list[dict], list[str], str]:
    """Student runs of ``experiment`` as rows, sorted by ``sort`` (descending; runs without it last)."""
    from mlflow.tracking import MlflowClient

    uri = tracking or tracking_uri(MlflowConfig())
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise CompareError(f"no MLflow experiment {experiment!r} at {uri}; experiments there: {names}")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`radio.kind` = 'student'", max_results=1000)
    found = {k for r in runs for k in r.data.metrics if k.startswith("eval/") and "/teacher/" not in k}
    columns = sorted(found | {k for k in KEY_METRICS[:2]}, key=_column_order)
    rows = []
    for r in runs:
        m, t = r.data.metrics, r.data.tags
        rows.append({
            "run": t.get("mlflow.runName", r.info.run_id[:8]), "run_id": r.info.run_id, "size": t.get("radio.student_size", "?"),
            "teachers": t.get("radio.teachers", ""), "steps": t.get("radio.steps", "?"), "cache": t.get("radio.cache_id", "")[:12],
            "status": r.info.status, **{c: m.get(c) for c in columns},
        })
    if sort not in columns and f"eval/{sort}" in columns:
        sort = f"eval/{sort}"  # the short form is accepted too
    if sort not in columns and rows and all(sort not in r for r in rows):
        raise CompareError(f"cannot sort by {sort!r}; metrics available: {columns}")
    rows.sort(key=lambda r: (r.get(sort) is None, -(r.get(sort) or 0.0)))
    return rows, columns, exp.experiment_id


def format_table(rows: list[dict], columns: list[str]) -> str:
    head = ["run", "size", "teachers", "steps", "cache"] + list(columns)  # the names --sort takes
    body = [[str(r["run"]), str(r["size"]), str(r["teachers"]), str(r["steps"]), str(r["cache"])] + ["-" if r.get(c) is None else f"{r[c]:.4f}" for c in columns] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def ui_command(uri: str, experiment_id: str, run_ids: list[str], port: int = 5000) -> tuple[str, str]:
    """The ``mlflow ui`` command for store ``uri`` (loopback only) and the URL of the compare view."""
    cmd = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {port}"
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])})
    return cmd, f"http://127.0.0.1:{port}/#/compare-runs?{query}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="radio compare", description="Compare student runs of an MLflow experiment.")
    p.add_argument("--experiment", default="radio-students")
    p.add_argument("--sort", default="eval/knn_top1", help="metric to sort by, descending (default eval/knn_top1)")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or MLflow's default store")
    p.add_argument("--screenshot", metavar="PNG", default=None, help="also open the compare view in headless Chromium and save a screenshot")
    ns = p.parse_args(argv)
    rows, columns, exp_id = compare_runs(ns.experiment, ns.sort, ns.tracking_uri)
    print(format_table(rows, columns))
    uri = ns.tracking_uri or tracking_uri(MlflowConfig())
    cmd, url = ui_command(uri, exp_id, [r["run_id"] for r in rows])
    print(f"\n{len(rows)} student run(s) in experiment {ns.experiment!r}, sorted by {ns.sort}.")
    print(f"Open the same comparison in MLflow:\n  {cmd}\n  then browse {url}")
    if ns.screenshot:
        from .screenshot import screenshot_compare

        ids = [r["run_id"] for r in rows]
        png = screenshot_compare(uri, lambda port: ui_command(uri, exp_id, ids, port)[1], ns.screenshot)
        print(f"screenshot of the compare view: {png}")
    return 0
