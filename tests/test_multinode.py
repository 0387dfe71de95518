"""`radio cache` on a multi-node Ray cluster that loses a node holding a teacher actor mid-job: the job
completes, and the cache is byte-identical to one built on a one-node Ray.

Each job runs in a subprocess of its own (``tests/multinode_cache_job.py``): the cluster is a
``ray.cluster_utils.Cluster`` (a head and two workers, each a raylet with its own CPUs) started inside it,
and the job joins it through ``RAY_ADDRESS`` like any cluster. The subprocess gets neither the session's
``RAY_ADDRESS`` (tests/conftest.py exports it) nor the shared /tmp/ray: ``RAY_TMPDIR`` is private to it, so
the cluster's address file cannot draw in a ``ray.init()`` elsewhere on the machine.

About 2 minutes on 2 cores, most of it processes starting and importing torch (the reference: ~50-70 s
with its Ray; the cluster run: ~55-65 s with its start, the actor's restart and the lost work redone).

A crash (every process of the node SIGKILLed) is the harder case: Ray declares the node dead only after
~15 s of missed health checks, while calls queued on its actor fail at once; the job's actors retry their
calls until the actor is back (``max_task_retries=-1``, restarts bounded by ``max_restarts``), so a crash
too ends in the one-node cache (``test_node_crash_mid_job_gives_the_one_node_cache``).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 420  # per subprocess; a healthy run takes 1-1.5 min
EXCLUDED = {"manifest.json"}  # timestamps and provenance; every other file of the cache must match byte for byte
TABLES = 4  # views + tiny-clip, tiny-dinov2, tiny-sam
UNITS = 16  # LIMIT 48 / PER_SHARD 3 in the helper


def _tail(text, n=6000) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else (text or "")
    return text[-n:]


def _ours(ray_tmp: str) -> list[int]:
    """Processes this test started (directly or through Ray): the private RAY_TMPDIR is in their environment."""
    needle = f"RAY_TMPDIR={ray_tmp}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if needle in (p / "environ").read_bytes().split(b"\0"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def _run_job(output: Path, mode: str, extra_env: dict | None = None) -> dict:
    """Run the helper in a new session (so a hang is killed with everything it started); return its report."""
    ray_tmp = tempfile.mkdtemp(prefix="rmn-", dir="/tmp")  # short: Ray's socket paths live below it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        {
            "RAY_TMPDIR": ray_tmp,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DISABLE_USAGE_STATS": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
            **(extra_env or {}),
        }
    )
    cmd = [sys.executable, "-m", "tests.multinode_cache_job", str(output), mode]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(
                f"{mode} job hung: killed after {TIMEOUT_S}s\n--- stdout\n{_tail(out)}\n--- stderr\n{_tail(err)}"
            )
        report_file = Path(str(output) + ".json")
        if proc.returncode != 0 or not report_file.exists():
            pytest.fail(f"{mode} job exited with {proc.returncode}\n--- stdout\n{_tail(out)}\n--- stderr\n{_tail(err)}")
        report = json.loads(report_file.read_text())
        report["_log"] = f"--- stdout\n{_tail(out)}\n--- stderr\n{_tail(err)}"
        return report
    finally:
        deadline = time.time() + 15
        while (left := _ours(ray_tmp)) and time.time() < deadline:
            time.sleep(0.5)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if left:
            warnings.warn(f"{mode} job left {len(left)} processes running after it exited; killed them", stacklevel=2)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _cache_files(root: Path) -> dict[str, bytes]:
    """Every file of the cache, whatever the format keeps (shards, commit records, statistics...), except
    EXCLUDED and hidden files (.tmp-* left by a killed writer, .damaged-*: not part of the cache)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in EXCLUDED and not any(part.startswith(".") for part in rel.split("/")):
            out[rel] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("multinode") / "reference"
    report = _run_job(out, "reference")
    assert report["nodes"] == 1 and report["computed"] == {
        "views": UNITS,
        "tiny-clip": UNITS,
        "tiny-dinov2": UNITS,
        "tiny-sam": UNITS,
    }
    print(f"\n[multinode] reference (one node): job {report['job_s']:.0f}s, subprocess {report['total_s']:.0f}s")
    return out


def _check_node_loss(reference: Path, out: Path, report: dict):
    log = report.pop("_log")
    rm = report["removal"]
    assert "error" not in rm, f"{rm['error']}\n{log}"
    assert "job_error" not in report, (
        f"the job failed after the node was removed: {report['job_error']}\nremoval: {rm}\n{log}"
    )
    assert report["joined_cluster"], "the job did not run on the cluster given by RAY_ADDRESS"
    # a 3-node cluster, of which the removed node is dead at the end
    assert len(report["nodes"]) == 3 and [n["node_id"] for n in report["nodes"] if not n["alive"]] == [rm["node_id"]], (
        report["nodes"]
    )
    # removed mid-job: after some shards were committed, before most were, and with the job still running when it was
    # gone
    total = UNITS * TABLES
    assert rm["removed"] and rm["job_running_before"] and rm["job_running_after"], rm
    assert 0 < rm["shards_before"] and rm["shards_after"] < total, rm
    assert rm["node_id"] != rm["driver_node"] and rm["actors"], rm
    # the node held a teacher actor; Ray restarted it on a surviving node
    for actor in rm["actors"]:
        after = rm["actors_after"].get(actor)
        assert after and after["num_restarts"] >= 1 and after["node"] != rm["node_id"], (actor, rm)
    # every unit of every table written by this run, and the cache equals the one-node one, file by file
    assert report["computed"] == {"views": UNITS, "tiny-clip": UNITS, "tiny-dinov2": UNITS, "tiny-sam": UNITS}, report[
        "computed"
    ]
    want, got = _cache_files(reference), _cache_files(out)
    assert sum(p.endswith(".parquet") for p in want) == total
    assert sorted(got) == sorted(want), f"missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}"
    differing = [p for p in want if got[p] != want[p]]
    assert not differing, f"{len(differing)} of {len(want)} files differ from the one-node cache: {differing}"
    assert (out / "manifest.json").exists()
    print(
        f"\n[multinode] {report['mode']}: {len(want)} files byte-identical; "
        f"node removed after {rm['shards_before']}/{total} shards "
        f"({rm['remove_s']:.1f}s to remove, GCS saw it "
        f"dead after {rm.get('node_dead_after_s', float('nan')):.1f}s); cluster start "
        f"{report['cluster_start_s']:.0f}s, job {report['job_s']:.0f}s, subprocess {report['total_s']:.0f}s"
    )


def test_node_removed_mid_job_gives_the_one_node_cache(reference, tmp_path):
    """A worker node holding a teacher actor leaves mid-job (its raylet is SIGTERMed, then everything on it
    killed): its actor restarts elsewhere, the lost prepare/teacher/write work is redone, and the cache is
    the one-node cache, byte for byte."""
    out = tmp_path / "cluster"
    _check_node_loss(reference, out, _run_job(out, "graceful"))


def test_node_crash_mid_job_gives_the_one_node_cache(reference, tmp_path):
    """The same with a crash: every process of the node SIGKILLed, nothing announced, Ray's default settings."""
    out = tmp_path / "cluster"
    _check_node_loss(reference, out, _run_job(out, "kill"))
