"""Helper for tests/test_multinode.py, run in a process of its own::

    python -m tests.multinode_cache_job OUTPUT MODE      # MODE: reference | graceful | kill

``reference``: builds the cache at OUTPUT on a fresh one-node local Ray.

``graceful`` / ``kill``: starts a 3-node Ray cluster in this process (``ray.cluster_utils.Cluster``: a head
and two workers, 2 CPUs each, every node a raylet of its own on this machine), points ``RAY_ADDRESS`` at it
so that ``run_cache_job`` joins it through its normal path (``init_ray``), and runs the job. A monitor
thread waits until a few shards are committed, then removes the worker node that hosts the most teacher
actors while the job is mid-flight: ``graceful`` SIGTERMs its raylet first (which tells the GCS it is going)
then kills what is left; ``kill`` SIGKILLs every process of the node at once, unannounced, as a crash would.

``MULTINODE_DRIVER_ENV`` (a JSON object) is added to the driver's environment only, once the cluster is up.

Either way OUTPUT.json gets a report of what happened (what was removed and when, where its actors went,
timings, the job's error if it failed) for the test to check; the test compares the caches itself.

Isolation from any other Ray on the machine: an inherited ``RAY_ADDRESS`` is dropped, and ``RAY_TMPDIR`` is
a private directory (the caller's, or one made here), so the ``ray_current_cluster`` file that ``Cluster``
writes, which a plain ``ray.init()`` anywhere would read and join, lives there and not in /tmp/ray. The
one-node reference starts with ``address="local"``, which never joins anything.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

# Before ray is imported (and inherited by every raylet and worker this process starts).
os.environ.pop("RAY_ADDRESS", None)
_OWN_TMP = None
if not os.environ.get("RAY_TMPDIR"):
    _OWN_TMP = tempfile.mkdtemp(prefix="rmn-", dir="/tmp")  # short: Ray's socket paths live below it
    os.environ["RAY_TMPDIR"] = _OWN_TMP
for _k, _v in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cache-samples.yaml"  # tiny-clip, tiny-dinov2, tiny-sam on the built-in samples

LIMIT, PER_SHARD = 48, 3  # 16 units: 64 Parquet shards (views + 3 teachers)
HEAD_CPUS, WORKER_CPUS, WORKERS = (
    2,
    2,
    2,
)  # 6 CPUs; after losing a worker 4: the 3 teacher actors + 1 for prepare/write tasks
REMOVE_AFTER = 3  # committed teacher shards before the node is removed


def overrides(output: Path) -> list[str]:
    return [
        f"output={output}",
        "source.kind=samples",
        "source.split=train",
        f"source.limit={LIMIT}",
        f"images_per_shard={PER_SHARD}",
        "student_resolution=32",
        "target_patch=8",
        "mlflow.enabled=false",
        "progress=false",
    ]


def shards(root: Path) -> int:
    """Parquet shards written so far (views and every teacher)."""
    return sum(1 for p in root.rglob("unit-*.parquet") if not p.name.startswith(".")) if root.exists() else 0


def teacher_shards(root: Path) -> int:
    return shards(root / "teachers")


def teacher_actors() -> list[dict]:
    from ray._private import state  # the GCS actor table (no dashboard needed, unlike ray.util.state)

    return [a for a in state.actors().values() if a["ActorClassName"] == "TeacherWorker"]


def monitor(cluster, out: Path, job_done: threading.Event, info: dict, graceful: bool):
    """Remove the worker node holding the most live teacher actors once REMOVE_AFTER teacher shards are committed."""
    import ray

    try:
        deadline = time.time() + 300
        while time.time() < deadline and not job_done.is_set():
            if ray.is_initialized() and teacher_shards(out) >= REMOVE_AFTER:
                break
            time.sleep(0.01)
        else:
            info["error"] = "the job ended (or timed out) before enough shards were committed"
            return
        driver_node = ray.get_runtime_context().get_node_id()
        by_node: dict[str, list[str]] = {}
        for a in teacher_actors():
            if a["State"] == "ALIVE":
                by_node.setdefault(a["Address"]["NodeID"], []).append(a["ActorID"])
        info.update(driver_node=driver_node, actors_by_node=by_node)
        candidates = [n for n in cluster.worker_nodes if n.node_id != driver_node and by_node.get(n.node_id)]
        if not candidates:
            info["error"] = f"no worker node other than the driver's hosts a live teacher actor: {by_node}"
            return
        victim = max(candidates, key=lambda n: len(by_node[n.node_id]))
        info.update(
            node_id=victim.node_id,
            actors=by_node[victim.node_id],
            shards_before=shards(out),
            job_running_before=not job_done.is_set(),
        )
        t0 = time.time()
        cluster.remove_node(victim, allow_graceful=graceful)
        info.update(
            removed=True, remove_s=time.time() - t0, shards_after=shards(out), job_running_after=not job_done.is_set()
        )
        # Until the job ends: when the GCS declares the node dead, and where its actors went.
        seen: dict[str, dict] = {}
        while not job_done.is_set():
            if "node_dead_after_s" not in info and not any(
                n["Alive"] for n in ray.nodes() if n["NodeID"] == victim.node_id
            ):
                info["node_dead_after_s"] = time.time() - t0
            for a in teacher_actors():
                if a["ActorID"] in info["actors"] and a["State"] != "DEAD":  # the job kills its actors when it is done
                    seen[a["ActorID"]] = {
                        "state": a["State"],
                        "node": a["Address"]["NodeID"],
                        "num_restarts": a["NumRestarts"],
                    }
            time.sleep(0.1)
        info["actors_after"] = seen
    except BaseException:
        info["error"] = traceback.format_exc()


def run_cluster(output: Path, graceful: bool) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.cache import CacheJobConfig, run_cache_job
    from pipelines.config import load_config

    t0 = time.time()
    report: dict = {"mode": "graceful" if graceful else "kill", "removal": {}}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": HEAD_CPUS, "include_dashboard": False})
    try:
        for _ in range(WORKERS):
            cluster.add_node(num_cpus=WORKER_CPUS)
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address  # the job's init_ray joins it
        # Settings for the driver alone (its core worker reads RAY_* when the job connects; the cluster's
        # processes, started above, never see them).
        os.environ.update(json.loads(os.environ.pop("MULTINODE_DRIVER_ENV", "{}")))
        report["cluster_start_s"] = time.time() - t0
        cfg = load_config(CacheJobConfig, str(CONFIG), overrides(output))
        done = threading.Event()
        mon = threading.Thread(target=monitor, args=(cluster, output, done, report["removal"], graceful), daemon=True)
        mon.start()
        t1 = time.time()
        try:
            summary = run_cache_job(cfg)
            report["computed"] = summary.computed
        except Exception as e:  # reported, not raised: the report shows what the removal did before the job failed
            report["job_error"] = f"{type(e).__name__}: {e}"[-4000:]
            traceback.print_exc()
        finally:
            done.set()
            report["job_s"] = time.time() - t1
        mon.join(30)
        report["joined_cluster"] = ray.is_initialized() and ray.get_runtime_context().gcs_address == cluster.address
        report["nodes"] = [
            {"node_id": n["NodeID"], "alive": n["Alive"], "cpus": n["Resources"].get("CPU")} for n in ray.nodes()
        ]
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
    report["total_s"] = time.time() - t0
    return report


def run_reference(output: Path) -> dict:
    import ray

    from pipelines.cache import CacheJobConfig, local_ray_cpus, run_cache_job
    from pipelines.config import load_config

    t0 = time.time()
    cfg = load_config(CacheJobConfig, str(CONFIG), overrides(output))
    ray.init(address="local", num_cpus=local_ray_cpus(cfg), include_dashboard=False, configure_logging=False)
    try:
        t1 = time.time()
        summary = run_cache_job(cfg)
        report = {
            "mode": "reference",
            "computed": summary.computed,
            "job_s": time.time() - t1,
            "nodes": len(ray.nodes()),
        }
    finally:
        ray.shutdown()
    report["total_s"] = time.time() - t0
    return report


def main(argv: list[str]) -> int:
    output, mode = Path(argv[0]).resolve(), argv[1]
    if mode not in ("reference", "graceful", "kill"):
        raise SystemExit(f"MODE must be reference, graceful or kill, not {mode!r}")
    try:
        report = run_reference(output) if mode == "reference" else run_cluster(output, graceful=mode == "graceful")
    finally:
        if _OWN_TMP:
            shutil.rmtree(_OWN_TMP, ignore_errors=True)
    Path(str(output) + ".json").write_text(json.dumps(report, indent=1, sort_keys=True))
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
