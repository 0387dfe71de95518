"""MLflow, behind one small handle. Only ``pipelines/`` talks to the tracking service.

The store is MLflow's default (``sqlite:///mlflow.db`` in the working directory) unless
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` names another. A remote server that does not answer
is reported at start, in one line, instead of after MLflow's minutes of retries.
"""

from __future__ import annotations

import contextlib
import math
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

__all__ = ["MlflowConfig", "TrackingUnavailable", "Run", "NullRun", "start_run", "check_tracking_uri", "EXPERIMENT_KIND", "log_cache_input"]

# The MLflow UI opens an experiment in the mode its kind names; without one it guesses GenAI (traces).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
MODEL_NAME = "radio-student"  # the LoggedModel of a training run (its checkpoint files are the run's `student/` artifacts)


@dataclass
class MlflowConfig:
    enabled: bool = True
    experiment: str = "radio"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else MLflow's default local store
    register: str | None = None  # training: also register the logged student model under this name (a new version per run)


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


@contextlib.contextmanager
def _fluent_store(uri: str):
    """MLflow's fluent API (``mlflow.pytorch.log_model``) pointed at ``uri`` for a block, then put back as it
    was: its global URI and the MLFLOW_TRACKING_URI variable (MLflow's own helper unsets the variable)."""
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_utils

    old_global, old_env = tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri = old_global
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env


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

    def log_dataset(self, uri: str, name: str, digest: str, schema: dict[str, str], context: str, profile: dict | None = None):
        """Record a cache as an MLflow dataset input of this run (source = its URI, digest = its cache id).

        ``schema``: column -> Arrow type name; ``context``: MLflow's input context (training, evaluation, output)."""
        import json

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.types.schema import ColSpec, Schema

        def col_type(arrow: str) -> str:  # Arrow -> MLflow's column types; tensors (fixed-size binary) are binary
            return {"string": "string", "large_string": "string", "bool": "boolean", "float": "float", "double": "double", "int32": "integer", "int64": "long"}.get(arrow, "binary")

        import warnings

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": local paths match two equal sources
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(uri)
        ds = MetaDataset(source, name=name, digest=digest[:36], schema=Schema([ColSpec(col_type(t), c) for c, t in schema.items()]))
        entity = ds._to_mlflow_entity()
        if profile:
            entity._profile = json.dumps(profile)
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])

    def log_student_model(self, model, student_dir: str, example, register: str | None = None) -> str | None:
        """Log a student as an MLflow model (pytorch flavour, torch.export's pickle-free pt2 format, with a
        signature and an input example) linked to this run as a LoggedModel; its safetensors checkpoint rides
        along as extra files. ``register``: also create a version of that registered model. Returns the model URI."""
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Schema, TensorSpec

        with torch.no_grad():
            outputs = model(example)
        signature = ModelSignature(inputs=Schema([TensorSpec(example.numpy().dtype, (-1, 3, -1, -1), "images")]),
                                   outputs=Schema([TensorSpec(v.numpy().dtype, (-1, -1, v.shape[-1]) if v.ndim == 3 else (-1, v.shape[-1]), k) for k, v in outputs.items()]))
        files = [os.path.join(student_dir, f) for f in ("config.json", "model.safetensors")]
        reqs = [f"torch=={torch.__version__.split('+')[0]}", "safetensors"]
        # the run's store for this call only: MLflow's process-wide URI is left as it was
        with _fluent_store(self.client.tracking_uri), mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None):
            # pyfunc serving cannot take a dict-returning tensor model's example as JSON: skip that check only
            info = mlflow.pytorch.log_model(model, name=MODEL_NAME, signature=signature, input_example=example.numpy(), extra_files=files, pip_requirements=reqs,
                                            registered_model_name=register, await_registration_for=0, serialization_format="pt2", validate_serving_input=False)
        self.client.update_run(self.run_id, status="RUNNING")  # leaving the fluent run ended it; end() decides
        return info.model_uri

    def set_description(self, markdown: str):
        """The run's description (shown at the top of its page in the MLflow UI)."""
        self.set_tags({"mlflow.note.content": markdown})

    def end(self, status: str = "FINISHED"):
        self.flush()
        self.client.set_terminated(self.run_id, status=status)


class NullRun:
    """Does nothing: used when tracking is disabled, and on non-zero ranks."""

    run_id = None
    experiment_id = None

    def __getattr__(self, name):
        return lambda *a, **k: None


def log_cache_input(run, uri: str, manifest, context: str, teachers: list[str] | None = None):
    """Record cache ``uri`` (its typed ``manifest``) as an MLflow dataset input of ``run``: digest = the cache
    id, schema = the views columns and each teacher's target columns, profile = images, views and layouts."""
    if isinstance(run, NullRun):
        return
    from radio.cache import CacheLocation, column_types

    names = list(manifest.teachers) if teachers is None else [t for t in teachers if t in manifest.teachers]
    profile = {"images": manifest.images, "views": manifest.views.rows, "student_resolution": manifest.student_resolution, "skipped": len(manifest.skipped),
               "teachers": {t: {"fingerprint": manifest.teachers[t].fingerprint, "grid": list(manifest.teachers[t].layout.grid), "dtype": manifest.teachers[t].layout.dtype} for t in names}}
    src = manifest.source
    name = f"radio-cache-{src.get('kind', 'source')}-{src.get('split') or 'all'}-{manifest.cache_id[:8]}"
    try:
        schema = column_types(CacheLocation(uri), manifest, names)  # the shards' own Arrow schemas
        run.log_dataset(uri if "://" in uri else os.path.abspath(uri), name, manifest.cache_id, schema, context, profile)
    except Exception as e:  # never fail a job over its lineage record
        import sys

        print(f"[radio] cache {uri} not recorded as an MLflow dataset: {type(e).__name__}: {e}", file=sys.stderr)


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
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(cfg.experiment, tags=dict([EXPERIMENT_KIND]))
    if exp is not None and EXPERIMENT_KIND[0] not in exp.tags:  # made by an older radio, or by hand: give it a kind
        client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
    return Run(client, run.info.run_id, exp_id)
