"""``radio compare``: student runs side by side in the terminal, and the ``mlflow ui`` command for the same view."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse

from .tracking import MlflowConfig, tracking_uri

__all__ = [
    "main",
    "compare_runs",
    "compare_links",
    "model_page",
    "format_table",
    "headline_metrics",
    "save_compare_view",
    "ui_command",
]

KEY_METRICS = ("eval/knn_top1", "eval/linear_top1", "eval/dense_miou")


def metric_order(name: str) -> tuple:
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


def metric_key(name: str, columns: list[str]) -> str:
    """A metric as ``--sort`` / ``--columns`` take it: its full name, or the part after ``eval/``."""
    return f"eval/{name}" if name not in columns and f"eval/{name}" in columns else name


def compare_runs(
    experiment: str = "radio-students", sort: str = "eval/knn_top1", tracking: str | None = None
) -> tuple[list[dict], list[str], str]:
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
    columns = sorted(found | {k for k in KEY_METRICS[:2]}, key=metric_order)
    rows = []
    for r in runs:
        m, t = r.data.metrics, r.data.tags
        rows.append(
            {
                "run": t.get("mlflow.runName", r.info.run_id[:8]),
                "run_id": r.info.run_id,
                "size": t.get("radio.student_size", "?"),
                "teachers": t.get("radio.teachers", ""),
                "steps": t.get("radio.steps", "?"),
                "cache": t.get("radio.cache_id", "")[:12],
                "status": r.info.status,
                **{c: m.get(c) for c in columns},
            }
        )
    sort = metric_key(sort, columns)
    if sort not in columns and rows and all(sort not in r for r in rows):
        raise CompareError(f"cannot sort by {sort!r}; metrics available: {columns}")
    rows.sort(key=lambda r: (r.get(sort) is None, -(r.get(sort) or 0.0)))
    return rows, columns, exp.experiment_id


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _lines(head: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    return lines + ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in body]


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "~"


def _wide(rows: list[dict], columns: list[str]) -> list[str]:
    """One row per student, one column per metric (the names --sort takes)."""
    head = ["run", "size", "teachers", "steps", "cache"] + list(columns)
    body = [
        [str(r["run"]), str(r["size"]), str(r["teachers"]), str(r["steps"]), str(r["cache"])]
        + [_fmt(r.get(c)) for c in columns]
        for r in rows
    ]
    return _lines(head, body)


def _tall(rows: list[dict], columns: list[str], name_width: int = 16) -> list[str]:
    """Students as columns, one metric per row: what fits a terminal when the students are few."""
    head = ["metric"] + [_short(str(r["run"]), name_width) for r in rows]
    body = [["size"] + [str(r["size"]) for r in rows], ["steps"] + [str(r["steps"]) for r in rows]]
    body += [[c] + [_fmt(r.get(c)) for r in rows] for c in columns]
    return _lines(head, body)


def format_table(rows: list[dict], columns: list[str], width: int | None = None, layout: str = "auto") -> str:
    """The comparison, fitted to ``width`` columns (default: the terminal's).

    ``layout``: ``wide`` (a row per student, every column, however wide), ``tall`` (a column per student),
    or ``auto``: wide if it fits, else tall if it fits (few students), else wide with the metrics that fit,
    in headline order, and a line saying how to see the rest."""
    import shutil

    width = width or shutil.get_terminal_size((120, 24)).columns
    fits = lambda lines: max(len(x) for x in lines) <= width  # noqa: E731
    if layout == "wide":
        return "\n".join(_wide(rows, columns))
    if layout == "tall":
        return "\n".join(_tall(rows, columns))
    wide = _wide(rows, columns)
    if fits(wide):
        return "\n".join(wide)
    tall = _tall(rows, columns)
    if fits(tall):
        teachers = sorted({r["teachers"] for r in rows})
        note = f"teachers: {teachers[0]}" if len(teachers) == 1 else "teachers differ: radio compare --wide lists them"
        return "\n".join(tall + [_short(f"({note})", width)])
    for n in range(len(columns), -1, -1):
        lines = _compact(rows, columns[:n])
        if fits(lines) or n == 0:
            break
    hidden = len(columns) - n
    more = f"({hidden} more metrics: radio compare --all, --tall, or --columns a,b)" if hidden else ""
    return "\n".join(lines + ([_short(more, width)] if more else []))


def _compact(rows: list[dict], columns: list[str]) -> list[str]:
    """Many students on a narrow terminal: run, size, steps and the metrics (without the eval/ prefix)."""
    head = ["run", "size", "steps"] + [c.removeprefix("eval/") for c in columns]
    body = [
        [_short(str(r["run"]), 20), str(r["size"]), str(r["steps"])] + [_fmt(r.get(c)) for c in columns] for r in rows
    ]
    return _lines(head, body)


VIEW_KEY = "radio-students"  # the saved view radio writes: experiment tag mlflow.sharedViewState.radio-students
TABLE_VIEW_KEY = "radio-students-table"  # the same runs as a table, the eval metrics as its columns


def headline_metrics(columns: list[str], n: int = 6) -> list[str]:
    """The metrics a comparison opens with: knn, linear, dense, then zero-shot (what the first screen shows)."""
    return [c for c in sorted(columns, key=metric_order) if metric_order(c)[0] <= 1][:n]


def table_metrics(columns: list[str]) -> list[str]:
    """The eval metrics in the table view, headline ones first."""
    return [c for c in sorted(columns, key=metric_order) if c.startswith("eval/")]


def save_compare_view(
    uri: str, experiment_id: str, columns: list[str], n_runs: int, sort: str = "eval/knn_top1"
) -> str | None:
    """Save (or update) the experiment's "radio: students compared" view and return its key, or None if the store
    refused it (the caller then links the plain compare page).

    MLflow 3.17 cannot be told what its compare-runs page shows first (a parallel-coordinates plot of three
    parameters against the first metric, then run details and parameters; the metrics come ~1.6 screens down).
    What a client can decide is a saved view of the experiment's runs page: an experiment tag
    ``mlflow.sharedViewState.<key>`` holding the page's search facets and chart layout, opened by the URL
    parameter ``viewStateShareKey``. radio's view filters to the student runs, sorts them by ``sort``, hides
    the run list so the charts get the width, and opens with one section of bar charts, one per headline eval
    metric; MLflow appends its own sections (every other metric) below."""
    from mlflow.tracking import MlflowClient

    section = "radio-headline"
    charts = [
        {
            "uuid": f"radio-{i}",
            "type": "BAR",
            "metricKey": m,
            "metricSectionId": section,
            "deleted": False,
            "isGenerated": False,
            "runsCountToCompare": max(10, n_runs),
        }
        for i, m in enumerate(headline_metrics(columns))
    ]
    state = {
        "searchFilter": "tags.`radio.kind` = 'student'",
        "orderByKey": f"metrics.`{sort}`",
        "orderByAsc": False,
        "lifecycleFilter": "Active",
        "compareRunCharts": charts,
        "compareRunSections": [
            {
                "uuid": section,
                "name": "Students compared: headline eval metrics (radio)",
                "display": True,
                # two charts a row keeps each title whole beside MLflow's Assistant panel at 1440 px; a third row
                # would fall below a 1280 x 720 screen, so five or more charts go three a row; 200 px tall: two
                # rows on the first screen
                "columns": 2 if len(charts) <= 4 else 3,
                "cardHeight": 200,
                "isReordered": True,
                "deleted": False,
                "isGenerated": False,
            }
        ],
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
        "runListHidden": True,
        "runsHiddenMode": "SHOW_ALL",
    }
    # the table: one row per student, the headline metrics as its first columns (MLflow's compare-runs page
    # opens on a parallel-coordinates plot of parameters instead, its metrics a screen and a half down)
    table = {
        **{k: v for k, v in state.items() if k not in ("compareRunCharts", "compareRunSections")},
        "runListHidden": False,
        "selectedColumns": [f"metrics.`{m}`" for m in table_metrics(columns)],
        # in this order (MLflow orders shown columns by name otherwise), each wide enough for its whole name
        "columnOrder": [f"metrics.`{m}`" for m in table_metrics(columns)],
        "columnWidths": {f"metrics.`{m}`": 8 * len(m) + 40 for m in table_metrics(columns)},
    }
    now = int(time.time() * 1000)
    views = {
        VIEW_KEY: ("radio: students compared", state),
        TABLE_VIEW_KEY: ("radio: students, every eval metric", table),
    }
    try:
        client = MlflowClient(tracking_uri=uri)
        for key, (name, st) in views.items():
            envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(st)}
            client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{key}", json.dumps(envelope))
    except Exception as e:  # a read-only or unreachable store: the plain compare page still works
        print(
            f"radio compare: could not save the comparison view in {uri} ({type(e).__name__}: "
            f"{str(e)[:200]}); linking MLflow's compare page instead",
            file=sys.stderr,
        )
        return None
    return VIEW_KEY


def ui_command(
    uri: str, experiment_id: str, run_ids: list[str], port: int = 5000, view: str | None = None, mode: str = "CHART"
) -> tuple[str, str]:
    """The ``mlflow ui`` command for store ``uri`` (loopback only) and the URL of the comparison: the saved
    ``view`` of the experiment's runs page in ``mode`` (``CHART`` or ``TABLE``) when given, else MLflow's
    compare-runs page."""
    cmd = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {port}"
    # workflowType: MLflow 3.17 keeps its GenAI / model-training toggle in the browser's local storage (GenAI for a
    # fresh browser) and ignores the experiment's kind tag; the URL's parameter wins over both
    if view:
        query = urllib.parse.urlencode(
            {"viewStateShareKey": view, "compareRunsMode": mode, "workflowType": "machine_learning"}
        )
        return cmd, f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?{query}"
    query = urllib.parse.urlencode(
        {"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id]), "workflowType": "machine_learning"}
    )
    return cmd, f"http://127.0.0.1:{port}/#/compare-runs?{query}"


def model_page(experiment_id: str, model_id: str, port: int = 5000) -> str:
    """The page of a logged model in ``mlflow ui`` on loopback, in the model-training view (MLflow 3.17 opens a
    fresh browser's pages in its GenAI view otherwise)."""
    query = urllib.parse.urlencode({"workflowType": "machine_learning"})
    return f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/models/{model_id}?{query}"


def compare_links(
    uri: str, experiment_id: str, rows: list[dict], columns: list[str], sort: str = "eval/knn_top1"
) -> tuple[str, str, str, str | None]:
    """``(mlflow ui command, the comparison's URL, the table's URL, view key)``; saves radio's views first
    (``columns``: every metric of the runs; the charts show their headline ones, the table all of them, headline
    first). Without the views (a store that refuses the tag), the table's URL is MLflow's compare-runs page."""
    ids = [r["run_id"] for r in rows]
    view = save_compare_view(uri, experiment_id, columns, len(rows), sort)
    cmd, url = ui_command(uri, experiment_id, ids, view=view)
    table = ui_command(uri, experiment_id, ids, view=TABLE_VIEW_KEY if view else None, mode="TABLE")[1]
    return cmd, url, table, view


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="radio compare", description="Compare student runs of an MLflow experiment.")
    p.add_argument("--experiment", default="radio-students")
    p.add_argument("--sort", default="eval/knn_top1", help="metric to sort by, descending (default eval/knn_top1)")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or MLflow's default store")
    p.add_argument(
        "--screenshot",
        metavar="PNG",
        default=None,
        help="also open the compare view in headless Chromium and save a screenshot",
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument(
        "--all", dest="layout", action="store_const", const="wide", help="every metric, a row per student, however wide"
    )
    shape.add_argument("--wide", dest="layout", action="store_const", const="wide", help="the same as --all")
    shape.add_argument(
        "--tall", dest="layout", action="store_const", const="tall", help="a column per student, a row per metric"
    )
    p.add_argument(
        "--columns",
        default=None,
        help="comma-separated metrics to show (e.g. knn_top1,dense_miou); the default fits the terminal",
    )
    ns = p.parse_args(argv)
    rows, columns, exp_id = compare_runs(ns.experiment, ns.sort, ns.tracking_uri)
    every = list(columns)  # the MLflow view shows the headline metrics of all of them, whatever --columns picks
    sort = metric_key(ns.sort, every)
    if ns.columns:
        want = [metric_key(c, columns) for c in ns.columns.split(",") if c]
        unknown = [c if c.startswith("eval/") else f"eval/{c}" for c in want if c not in columns]
        if unknown:
            raise CompareError(
                f"--columns: no metric {unknown} in experiment {ns.experiment!r}; metrics available: {columns}"
            )
        columns = want
    print(format_table(rows, columns, layout=ns.layout or "auto"))
    uri = ns.tracking_uri or tracking_uri(MlflowConfig())
    cmd, url, table_url, view = compare_links(uri, exp_id, rows, every, sort)
    print(f"\n{len(rows)} student run(s) in experiment {ns.experiment!r}, sorted by {sort}.")
    print(
        "Open the comparison in MLflow (the headline eval metrics as charts on the first screen, "
        f"sorted by {sort}):\n  {cmd}\n  then browse {url}\n"
        f"  the students as a table, every eval metric a column: {table_url}"
    )
    if ns.screenshot:
        from .screenshot import screenshot_compare

        png, seen = screenshot_compare(
            uri,
            lambda port: ui_command(uri, exp_id, [r["run_id"] for r in rows], port, view)[1],
            ns.screenshot,
            texts=tuple(headline_metrics(every)[:3]),
        )
        if seen.get("ready"):
            print(f"screenshot of the comparison's first screen: {png}")
        else:
            print(
                f"radio compare: the page did not show the headline charts within 120 s; the screenshot {png} "
                "is what it showed",
                file=sys.stderr,
            )
    return 0
