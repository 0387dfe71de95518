"""Local Ray start-up: the old fixed size (8 logical CPUs) against the job-sized one (``local_ray_cpus``).

Each setting starts a fresh local Ray in a subprocess, runs one task per teacher actor the quickstart
needs, and reports the seconds to that point, the worker processes Ray started, and their resident memory.

    python bench/bench_ray_start.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
import psutil, ray
t0 = time.perf_counter()
ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, configure_logging=False, log_to_driver=False)
@ray.remote(num_cpus=1)
class A:
    def ping(self): return os.getpid()
actors = [A.remote() for _ in range(3)]
ray.get([a.ping.remote() for a in actors])
ready = time.perf_counter() - t0
time.sleep(2.0)  # let prestarted workers appear
def is_ray_worker(p) -> bool:
    return "ray::" in (p.info["name"] or "") or any("default_worker.py" in c for c in (p.info["cmdline"] or []))


workers = [p for p in psutil.process_iter(["name", "cmdline"]) if is_ray_worker(p)]
rss = sum(p.memory_info().rss for p in workers if p.is_running()) / 2**20
print(json.dumps({"ready_s": ready, "workers": len(workers), "workers_rss_mib": rss}))
ray.shutdown()
"""


def run(num_cpus: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(num_cpus)], capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=2)
    ns = p.parse_args()
    from pipelines.cache import CacheJobConfig, local_ray_cpus

    sized = local_ray_cpus(CacheJobConfig())  # the quickstart's three tiny teachers
    res = {}
    for label, n in (("fixed 8", 8), (f"job-sized {sized}", sized)):
        runs = [run(n) for _ in range(ns.repeats)]
        res[label] = {k: min(r[k] for r in runs) for k in runs[0]}
        print(
            f"{label:>14} logical CPUs: ready {res[label]['ready_s']:.2f}s "
            f" worker processes {res[label]['workers']}  workers RSS {res[label]['workers_rss_mib']:.0f} MiB"
        )
    a, b = res["fixed 8"], res[f"job-sized {sized}"]
    print(
        f"ratio job-sized / fixed: start {b['ready_s'] / a['ready_s']:.2f} "
        f" worker memory {b['workers_rss_mib'] / max(a['workers_rss_mib'], 1e-9):.2f}"
    )


if __name__ == "__main__":
    main()
