"""MLflow, behind one small handle. Only ``pipelines/`` talks to the tracking service.

The store is MLflow's default (``sqlite:///mlflow.db`` in the working directory) unless
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` names another. A remote server that does not answer
is reported at start, in one line, instead of after MLflow's minutes of retries.
"""

from __future__ import annotations

import math
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

__all__ = ["MlflowConfig", "TrackingUnavailable", "Run", "NullRun", "start_run", "check_tracking_uri"]


@dataclass
class MlflowConfig:
    enabled: bool = True
    experiment: str = "radio"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else MLflow's default local store


class TrackingUnavailable(RuntimeError):
    pass


def check_tracking_uri(uri: str, timeout_s: float = 5.0):
    """Fail fast when an HTTP tracking server is unreachable."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            if r.status >= 500:
                raise TrackingUnavailable(f"MLflow tracking server {uri} answered {r.status} on /health")
    except (urllib.error.URLError, OSError) as e:
        raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable ({e}). Start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), fix MLFLOW_TRACKING_URI, or run with mlflow.enabled=false.") from None


class Run:
    """An active MLflow run. Values are logged as Python numbers (MLflow drops tensors silently)."""

    def __init__(self, client, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self._queue = None  # metric batches for the background sender (log_metrics(wait=False))
        self._error: BaseException | None = None

    def log_params(self, params: dict):
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict, step: int | None = None, wait: bool = True):
        """Log numbers at ``step``. ``wait=False``: hand them to a background thread and return at once (the
        training loop never waits on the tracking store); ``flush`` / ``end`` wait for what is queued."""
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        if wait:
            self._send(items)
            return
        if self._queue is None:
            import queue
            import threading

            self._queue = queue.Queue()
            threading.Thread(target=self._sender, daemon=True, name="mlflow-metrics").start()
        self._queue.put(items)

    def _send(self, items):
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def _sender(self):
        while True:
            items = self._queue.get()
            try:
                self._send(items)
            except BaseException as e:  # reported by flush(); training goes on
                self._error = e
            finally:
                self._queue.task_done()

    def flush(self):
        """Wait until every queued metric batch is sent; warn (once) if one could not be."""
        if self._queue is not None:
            self._queue.join()
        if self._error is not None:
            import sys

            print(f"[radio] some metrics could not be logged to MLflow: {type(self._error).__name__}: {self._error}", file=sys.stderr)
            self._error = None

    def last_step(self, key: str) -> int | None:
        """The largest step logged for metric ``key`` (None if none)."""
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=None)

    def set_tags(self, tags: dict):
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str):
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str, artifact_path: str | None = None):
        if os.path.isdir(path):
            self.client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path)

    def log_figure(self, figure, artifact_file: str):
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_image(self, image, artifact_file: str):
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def end(self, status: str = "FINISHED"):
        self.flush()
        self.client.set_terminated(self.run_id, status=status)


class NullRun:
    """Does nothing: used when tracking is disabled, and on non-zero ranks."""

    run_id = None
    experiment_id = None

    def __getattr__(self, name):
        return lambda *a, **k: None


def tracking_uri(cfg: MlflowConfig) -> str:
    import mlflow

    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def start_run(cfg: MlflowConfig, run_name: str, tags: dict | None = None, run_id: str | None = None) -> Run | NullRun:
    """Create (or, with ``run_id``, reopen) a run in ``cfg.experiment``."""
    if not cfg.enabled:
        return NullRun()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    check_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    if run_id is not None:
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return Run(client, run_id, run.info.experiment_id)
    exp = client.get_experiment_by_name(cfg.experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(cfg.experiment)
    run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
    return Run(client, run.info.run_id, exp_id)
