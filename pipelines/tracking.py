"""MLflow, behind one small handle. Only ``pipelines/`` talks to the tracking service.

The store is MLflow's default (``sqlite:///mlflow.db`` in the working directory) unless
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` names another. A remote server that does not answer
is reported at start, in one line, instead of after MLflow's minutes of retries.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MlflowConfig",
    "TrackingUnavailable",
    "Run",
    "NullRun",
    "start_run",
    "replay_pending",
    "PENDING",
    "check_tracking_uri",
    "EXPERIMENT_KIND",
    "log_cache_input",
]

# The MLflow UI opens an experiment in the mode its kind names; without one it guesses GenAI (traces).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
MODEL_NAME = "radio-student"  # a run without a name: its LoggedModel's radio.run_name tag
LOGGED_MODEL = "model"  # the LoggedModel of a training run (its checkpoint files are the run's `student/` artifacts)


@dataclass
class MlflowConfig:
    enabled: bool = True
    experiment: str = "radio"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else MLflow's default local store
    register: str | None = (
        None  # training: also register the logged student model under this name (a new version per run)
    )


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
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({e}). Start it (e.g. `mlflow server --host "
            "127.0.0.1 --port 5000`), fix MLFLOW_TRACKING_URI, or run with mlflow.enabled=false."
        ) from None


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


PENDING = "mlflow-pending.jsonl"  # what a run could not send, kept beside its outputs for `radio sync`


class Run:
    """An active MLflow run. Values are logged as Python numbers (MLflow drops tensors silently).

    The tracking store may go away mid-run (a server killed, a network gone). The first call that fails
    warns once and turns the run offline: that record and every later one is appended to ``pending`` (a
    JSON-lines file; ``radio sync`` or the next ``radio train ... resume=true`` sends them) and the job goes
    on. Without ``pending`` they are dropped, and the warning says so."""

    def __init__(self, client, run_id: str, experiment_id: str, pending: str | os.PathLike | None = None):
        import threading

        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.pending = Path(pending) if pending is not None else None
        self.offline, self.kept, self._warned = False, 0, False
        self.on_offline: list = []  # called once when the store stops answering (e.g. stop a metrics sampler)
        self._lock = threading.Lock()
        self._queue = None  # metric batches for the background sender (log_metrics(wait=False))

    # -- sending, or keeping what cannot be sent ---------------------------------------------------
    def _do(self, entry: dict, send):
        """``send()`` unless the store has failed; else keep ``entry`` (JSON) to be replayed."""
        if not self.offline:
            try:
                return send()
            except Exception as e:
                if self._answers():
                    raise  # the store is there: a real error of this call, for the caller
                self._go_offline(e)
        self.keep(entry)
        return None

    def _answers(self) -> bool:
        """Whether the store still answers (an HTTP server's /health); a local store is taken to."""
        try:
            check_tracking_uri(self.client.tracking_uri)
            return True
        except TrackingUnavailable:
            return False

    def _go_offline(self, e: BaseException):
        import sys

        with self._lock:
            if self.offline:
                return
            self.offline = True
        where = (
            f"kept in {self.pending}; send them with `radio sync {self.pending.parent}` "
            "(a resumed `radio train` also does)"
            if self.pending
            else "not kept (this job keeps no pending file)"
        )
        first = str(e).splitlines()[0][:300] if str(e) else ""
        print(
            f"[radio] MLflow at {self.client.tracking_uri} stopped answering ({type(e).__name__}: "
            f"{first}); the job goes on. This run's records from now on are {where}.",
            file=sys.stderr,
            flush=True,
        )
        for hook in self.on_offline:
            hook()

    def keep(self, entry: dict):
        """Append one record to the pending file (from the loop and the sender thread alike)."""
        import json

        if self.pending is None or entry.get("op") == "none":  # a read that could not be made: nothing to replay
            return
        line = json.dumps({"uri": self.client.tracking_uri, "run_id": self.run_id, **entry}) + "\n"
        with self._lock:
            self.pending.parent.mkdir(parents=True, exist_ok=True)
            with open(self.pending, "a") as f:
                f.write(line)
            self.kept += 1

    # -- the records -------------------------------------------------------------------------------
    def log_params(self, params: dict):
        items = {k: str(v)[:6000] for k, v in params.items()}
        self._do({"op": "params", "params": items}, lambda: _send_params(self.client, self.run_id, items))

    def log_metrics(
        self,
        metrics: dict,
        step: int | None = None,
        wait: bool = True,
        model_id: str | None = None,
        dataset: tuple[str, str] | None = None,
    ):
        """Log numbers at ``step``. ``wait=False``: hand them to a background thread and return at once (the
        training loop never waits on the tracking store); ``flush`` / ``end`` wait for what is queued.
        ``model_id`` / ``dataset`` (name, digest): the logged model and the dataset they measure, which
        MLflow's model page shows."""
        import time

        ts = int(time.time() * 1000)
        extra = [model_id, *(dataset or (None, None))] if model_id or dataset else []
        rows = [
            [k, float(v), ts, step or 0, *extra]
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        if wait:
            self._send_metrics(rows)
            return
        if self._queue is None:
            import queue
            import threading

            self._queue = queue.Queue()
            threading.Thread(target=self._sender, daemon=True, name="mlflow-metrics").start()
        self._queue.put(rows)

    def _send_metrics(self, rows):
        self._do({"op": "metrics", "metrics": rows}, lambda: _send_metrics(self.client, self.run_id, rows))

    def _sender(self):
        while True:
            rows = self._queue.get()
            try:
                self._send_metrics(rows)
            except Exception as e:  # the store answers but refused these: say so once, training goes on
                if not self._warned:
                    self._warned = True
                    print(
                        f"[radio] some metrics could not be logged to MLflow: {type(e).__name__}: {e}", file=sys.stderr
                    )
            finally:
                self._queue.task_done()

    def flush(self):
        """Wait until every queued metric batch is sent (or kept)."""
        if self._queue is not None:
            self._queue.join()

    def last_step(self, key: str) -> int | None:
        """The largest step logged for metric ``key`` (None if none, or if the store does not answer)."""
        history = self._do({"op": "none"}, lambda: self.client.get_metric_history(self.run_id, key)) or []
        return max((m.step for m in history), default=None)

    def model_id(self) -> str | None:
        """The id of the MLflow model this run logged (its ``radio.model_uri`` tag), if any."""
        run = self._do({"op": "none"}, lambda: self.client.get_run(self.run_id))
        return model_id_of(run.data.tags.get("radio.model_uri") if run is not None else None)

    def set_tags(self, tags: dict):
        items = {k: str(v) for k, v in tags.items()}
        self._do({"op": "tags", "tags": items}, lambda: _send_tags(self.client, self.run_id, items))

    def log_text(self, text: str, artifact_file: str):
        self._do(
            {"op": "text", "text": text, "artifact_file": artifact_file},
            lambda: self.client.log_text(self.run_id, text, artifact_file),
        )

    def log_artifact(self, path: str, artifact_path: str | None = None):
        path = os.path.abspath(path)
        self._do(
            {"op": "artifact", "path": path, "artifact_path": artifact_path},
            lambda: _send_artifact(self.client, self.run_id, path, artifact_path),
        )

    def log_dataset(
        self, uri: str, name: str, digest: str, schema: dict[str, str], context: str, profile: dict | None = None
    ):
        """Record a cache as an MLflow dataset input of this run (source = its URI, digest = its cache id).

        ``schema``: column -> Arrow type name; ``context``: MLflow's input context (training, evaluation, output)."""
        args = {"uri": uri, "name": name, "digest": digest, "schema": schema, "context": context, "profile": profile}
        self._do({"op": "dataset", "args": args}, lambda: _send_dataset(self.client, self.run_id, **args))

    def log_student_model(self, student_dir: str, resolution: int, register: str | None = None) -> str | None:
        """Log the exported student in ``student_dir`` as an MLflow model of this run (see :func:`_send_student`);
        returns its model URI (None when kept for later)."""
        return self._do(
            {
                "op": "student_model",
                "student_dir": os.path.abspath(student_dir),
                "resolution": resolution,
                "register": register,
            },
            lambda: _send_student(self.client, self.run_id, student_dir, resolution, register),
        )

    def set_description(self, markdown: str, model_id: str | None = None):
        """The run's description (shown at the top of its page in the MLflow UI); with ``model_id``, the logged
        model's too (the Description of its page)."""
        self.set_tags({"mlflow.note.content": markdown})
        if model_id:
            tags = {"mlflow.note.content": markdown}
            self._do(
                {"op": "model_tags", "model_id": model_id, "tags": tags},
                lambda: self.client.set_logged_model_tags(model_id, tags),
            )

    def end(self, status: str = "FINISHED"):
        import sys

        self.flush()
        self._do({"op": "terminated", "status": status}, lambda: self.client.set_terminated(self.run_id, status=status))
        if self.kept:
            print(
                f"[radio] {self.kept} MLflow record(s) of run {self.run_id} kept in {self.pending}: send "
                f"them with `radio sync {self.pending.parent}`",
                file=sys.stderr,
                flush=True,
            )


# -- what each record does (shared by a live run and `radio sync`) ------------------------------------
def _send_params(client, run_id: str, params: dict):
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=items[i : i + 100])


def _send_metrics(client, run_id: str, rows: list):
    from mlflow.entities import Metric

    items = [Metric(*row) for row in rows]  # key, value, timestamp, step[, model_id, dataset_name, dataset_digest]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def _send_tags(client, run_id: str, tags: dict):
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def _send_artifact(client, run_id: str, path: str, artifact_path: str | None):
    if os.path.isdir(path):
        client.log_artifacts(run_id, path, artifact_path)
    else:
        client.log_artifact(run_id, path, artifact_path)


def _send_dataset(
    client,
    run_id: str,
    uri: str,
    name: str,
    digest: str,
    schema: dict[str, str],
    context: str,
    profile: dict | None = None,
):
    import json
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types.schema import ColSpec, Schema

    def col_type(arrow: str) -> str:  # Arrow -> MLflow's column types; tensors (fixed-size binary) are binary
        return {
            "string": "string",
            "large_string": "string",
            "bool": "boolean",
            "float": "float",
            "double": "double",
            "int32": "integer",
            "int64": "long",
        }.get(arrow, "binary")

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": local paths match two equal sources
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(uri)
    ds = MetaDataset(
        source, name=name, digest=digest[:36], schema=Schema([ColSpec(col_type(t), c) for c, t in schema.items()])
    )
    entity = ds._to_mlflow_entity()
    if profile:
        entity._profile = json.dumps(profile)
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])


def _send_student(client, run_id: str, student_dir: str, resolution: int, register: str | None = None) -> str:
    """Log a student as an MLflow model of the run (``pipelines.mlflow_student``: torch.export's pickle-free pt2
    with dynamic batch, H and W, and a servable pyfunc) named ``model`` (``runs:/<run_id>/model``; the run's name is
    its ``radio.run_name`` tag) and linked to the run as a LoggedModel, with the run's eval metrics once
    ``radio eval`` logged them. ``register``: also create a version of that registered model. Returns the model
    URI."""
    import mlflow
    import torch
    from mlflow.models import Model

    from . import mlflow_student

    run = client.get_run(run_id)
    name = run.info.run_name or MODEL_NAME
    reqs = [
        f"torch=={torch.__version__.split('+')[0]}",
        "safetensors",
    ]  # and radio itself: serve with --env-manager local
    # the run's store for this call only: MLflow's process-wide URI is left as it was
    with _fluent_store(client.tracking_uri), mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = Model.log(
            artifact_path=None,
            name=LOGGED_MODEL,  # runs:/<run_id>/model, as MLflow's examples load it
            tags={"radio.run_name": name},
            flavor=mlflow_student,
            registered_model_name=register,
            await_registration_for=0,
            student_dir=str(student_dir),
            resolution=resolution,
            pip_requirements=reqs,
        )
    client.update_run(run_id, status="RUNNING")  # leaving the fluent run ended it; end() decides
    _send_tags(client, run_id, {"radio.model_uri": info.model_uri})
    return info.model_uri


_SENDERS = {
    "params": lambda c, r, e: _send_params(c, r, e["params"]),
    "metrics": lambda c, r, e: _send_metrics(c, r, e["metrics"]),
    "tags": lambda c, r, e: _send_tags(c, r, e["tags"]),
    "text": lambda c, r, e: c.log_text(r, e["text"], e["artifact_file"]),
    "artifact": lambda c, r, e: _send_artifact(c, r, e["path"], e["artifact_path"]),
    "dataset": lambda c, r, e: _send_dataset(c, r, **e["args"]),
    "student_model": lambda c, r, e: _send_student(c, r, e["student_dir"], e["resolution"], e["register"]),
    "terminated": lambda c, r, e: c.set_terminated(r, status=e["status"]),
    "model_tags": lambda c, r, e: c.set_logged_model_tags(e["model_id"], e["tags"]),
}


def replay_pending(path: str | os.PathLike, tracking_uri: str | None = None) -> int:
    """Send the records a run kept in ``path`` (a pending file, or the folder holding one) to the store they
    were meant for (or ``tracking_uri``), in order. Returns how many were sent; the file is removed once all
    are. A failure leaves exactly the unsent records in the file and raises TrackingUnavailable."""
    import json

    from mlflow.tracking import MlflowClient

    p = Path(path)
    if p.is_dir():
        p = p / PENDING
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: no pending MLflow records here (a run writes {PENDING} beside its outputs only when "
            "the tracking store stopped answering)"
        )
    entries = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except ValueError:  # a line cut by a kill mid-append: the only record that can be lost
                print(f"[radio] {p}:{n}: unreadable record skipped", file=sys.stderr)
    clients: dict = {}
    for i, e in enumerate(entries):
        uri = tracking_uri or e["uri"]
        try:
            check_tracking_uri(uri)
            client = clients.get(uri) or clients.setdefault(uri, MlflowClient(tracking_uri=uri))
            if e["op"] != "none":
                _SENDERS[e["op"]](client, e["run_id"], e)
        except Exception as err:
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text("".join(json.dumps(x) + "\n" for x in entries[i:]))
            os.replace(tmp, p)
            raise TrackingUnavailable(
                f"{i} of {len(entries)} MLflow records sent to {uri}; the other {len(entries) - i} stay "
                f"in {p} ({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}). "
                "Run `radio sync` again once the store answers"
            ) from None
    p.unlink()
    return len(entries)


class NullRun:
    """Does nothing: used when tracking is disabled, and on non-zero ranks."""

    run_id = None
    experiment_id = None

    def __getattr__(self, name):
        return lambda *a, **k: None


def model_id_of(model_uri: str | None) -> str | None:
    """``models:/m-<id>`` -> ``m-<id>`` (a logged model's id); None for anything else."""
    return model_uri.split("/", 1)[1] if model_uri and model_uri.startswith("models:/m-") else None


def cache_dataset(manifest) -> tuple[str, str]:
    """(name, digest) under which a cache is an MLflow dataset."""
    src = manifest.source
    return (
        f"radio-cache-{src.get('kind', 'source')}-{src.get('split') or 'all'}-{manifest.cache_id[:8]}",
        manifest.cache_id[:36],
    )


def log_cache_input(run, uri: str, manifest, context: str, teachers: list[str] | None = None):
    """Record cache ``uri`` (its typed ``manifest``) as an MLflow dataset input of ``run``: digest = the cache
    id, schema = the views columns and each teacher's target columns, profile = images, views and layouts."""
    if isinstance(run, NullRun):
        return
    from radio.cache import CacheLocation, column_types

    names = list(manifest.teachers) if teachers is None else [t for t in teachers if t in manifest.teachers]
    profile = {
        "images": manifest.images,
        "views": manifest.views.rows,
        "student_resolution": manifest.student_resolution,
        "skipped": len(manifest.skipped),
        "teachers": {
            t: {
                "fingerprint": manifest.teachers[t].fingerprint,
                "grid": list(manifest.teachers[t].layout.grid),
                "dtype": manifest.teachers[t].layout.dtype,
            }
            for t in names
        },
    }
    name = cache_dataset(manifest)[0]
    try:
        schema = column_types(CacheLocation(uri), manifest, names)  # the shards' own Arrow schemas
        run.log_dataset(
            uri if "://" in uri else os.path.abspath(uri), name, manifest.cache_id, schema, context, profile
        )
    except Exception as e:  # never fail a job over its lineage record
        import sys

        print(f"[radio] cache {uri} not recorded as an MLflow dataset: {type(e).__name__}: {e}", file=sys.stderr)


def tracking_uri(cfg: MlflowConfig) -> str:
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    try:
        import mlflow
    except ImportError:
        raise TrackingUnavailable(
            f"MLflow is not installed here{f' (tracking store {uri})' if uri else ''}: pip install mlflow, "
            "or run with mlflow.enabled=false"
        ) from None
    return uri or mlflow.get_tracking_uri()


def start_run(
    cfg: MlflowConfig,
    run_name: str,
    tags: dict | None = None,
    run_id: str | None = None,
    pending: str | os.PathLike | None = None,
) -> Run | NullRun:
    """Create (or, with ``run_id``, reopen) a run in ``cfg.experiment``. ``pending``: where the run keeps
    what it cannot send if the store stops answering (see :class:`Run`)."""
    if not cfg.enabled:
        return NullRun()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    check_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        # MLflow retries a failed request for ~4 minutes by default; a run keeps what it cannot send
        # instead, so a few seconds of retries are enough (the user's own settings win)
        for k, v in (
            ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"),
            ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
            ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
        ):
            os.environ.setdefault(k, v)
    client = MlflowClient(tracking_uri=uri)
    if run_id is not None:
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return Run(client, run_id, run.info.experiment_id, pending)
    exp = client.get_experiment_by_name(cfg.experiment)
    exp_id = (
        exp.experiment_id if exp is not None else client.create_experiment(cfg.experiment, tags=dict([EXPERIMENT_KIND]))
    )
    if exp is not None and EXPERIMENT_KIND[0] not in exp.tags:  # made by an older radio, or by hand: give it a kind
        client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
    return Run(client, run.info.run_id, exp_id, pending)
