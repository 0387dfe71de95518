"""Student training throughput, side by side in one run: all teachers cached, hybrid, all online.

    python bench/bench_train.py --cache caches/samples-train [--steps 30] [--batch-size 32] [--online tiny-clip] [--compile]

(a) cached: steps/s reading the cache through the real loader (the reader thread, or ``--workers N``
    DataLoader processes) divided by steps/s on the same batches already in memory (on the training
    device when there is a GPU). Goal: >= 0.95 on this CPU, >= 0.9 on a GPU (the step never waits on data).
(b) hybrid: the ``--online`` teachers run inside the step on the student views, the rest read from the
    cache (default: every teacher but SAM online). (c) all online: every teacher runs in the step.
(d) FLOPs of the real student step (forward + backward, counted by torch's FlopCounterMode on a real
    batch), the achieved FLOP/s, and on a GPU the MFU against the device's dense bf16 peak.

Online teachers load from the directory the cache recorded for them (``--source name=/path`` overrides),
the same checkpoints the cache job used, so real teachers from local directories work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cache", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default: the trainer's default)")
    p.add_argument("--size", default="nano")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--online", default=None, help="teachers run in the step for the hybrid run (default: all but SAM)")
    p.add_argument("--source", action="append", default=[], help="name=/local/checkpoint for an online teacher")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    ns = p.parse_args()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from pipelines.config import load_config
    from pipelines.train import Trainer, TrainJobConfig
    from radio.cache import CacheReader
    from radio.data import ThreadPrefetcher

    reader = CacheReader(ns.cache)
    teachers = list(reader.teachers)
    sources = {t: reader.entry(t).spec["source"] for t in teachers} | dict(s.split("=", 1) for s in ns.source)
    hybrid = ns.online.split(",") if ns.online else [t for t in teachers if reader.entry(t).spec["family"] != "sam"]
    cuda = torch.cuda.is_available()

    def trainer(online: list[str]) -> Trainer:
        args = [f"cache={ns.cache}", "output=/tmp/bench-train", f"teachers=[{','.join(teachers)}]", f"student.size={ns.size}", f"student.patch_size={ns.patch}", f"loader.batch_size={ns.batch_size}", "epochs=1000", "mlflow.enabled=false", f"compile={str(ns.compile).lower()}"]
        args += [f"loader.num_workers={ns.workers}"] if ns.workers is not None else []
        args += [f"online.{t}.source={sources[t]}" for t in online] + [f"online.{t}.stats_batches=2" for t in online]
        return Trainer(load_config(TrainJobConfig, None, args), "")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def batches(tr):  # what Trainer.fit iterates: worker processes, or the reader thread
        epoch = 0
        while True:
            tr.stream.set_epoch(epoch)
            yield from tr.loader if tr.workers > 0 else ThreadPrefetcher(tr.loader, 4)
            epoch += 1

    def timed(tr, it, held=None) -> tuple[float, list]:
        """Seconds per step over ns.steps steps, from the loader (held=None) or from held batches."""
        sync()
        t0 = time.perf_counter()
        got = []
        for k in range(ns.steps):
            b = next(it) if held is None else held[k]
            tr._accumulate(tr.train_step(b))
            got.append(b)
        tr.read_metrics()  # the step's one host sync, as in fit()
        sync()
        return (time.perf_counter() - t0) / ns.steps, got

    results = {}
    for mode, online in (("cached", []), ("hybrid", hybrid), ("online", teachers)):
        tr = trainer(online)
        tr._sums, tr._count, tr._since = {}, 0, 0
        it = batches(tr)
        for _ in range(3):  # warm-up (and compilation)
            tr._accumulate(tr.train_step(next(it)))
        tr.read_metrics()
        runs, mem_runs = [], []
        for _ in range(ns.repeats if mode == "cached" else 1):
            t, held = timed(tr, it)
            runs.append(t)
            if mode == "cached":  # the same batches again, already in memory (on the device with a GPU)
                dev = [{k: (v.to(tr.acc.device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in held]
                mem_runs.append(timed(tr, None, dev)[0])
        results[mode] = statistics.median(runs)
        if mode == "cached":
            results["memory"] = statistics.median(mem_runs)
            from torch.utils.flop_counter import FlopCounterMode

            b = next(it)
            with FlopCounterMode(display=False) as fc:
                tr.train_step(b)
            flops = fc.get_total_flops()
        del tr
    device = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"student {ns.size}/p{ns.patch} at {reader.manifest.student_resolution}px, batch {ns.batch_size}, teachers {', '.join(teachers)}; hybrid online: {', '.join(hybrid)}; compile {ns.compile}; {device}")
    for mode in ("memory", "cached", "hybrid", "online"):
        print(f"  {mode:<8} {results[mode] * 1000:8.1f} ms/step  {ns.batch_size / results[mode]:8.0f} images/s")
    print(f"(a) cached / memory steps/s: {results['memory'] / results['cached']:.3f}  (goal >= 0.95 on CPU, >= 0.9 on a GPU)")
    print(f"(b) hybrid / cached steps/s: {results['cached'] / results['hybrid']:.3f};  (c) all online / cached: {results['cached'] / results['online']:.3f}")
    achieved = flops / results["memory"]
    peak = next((v for k, v in PEAK_BF16.items() if cuda and k in torch.cuda.get_device_name()), None)
    print(f"(d) student step {flops / 1e9:.1f} GFLOP (forward + backward, counted), {achieved / 1e12:.3f} TFLOP/s achieved" + (f", MFU {achieved / peak * 100:.1f}% of {peak / 1e12:.0f} TFLOP/s bf16" if peak else ", MFU: no GPU peak to compare with here"))


if __name__ == "__main__":
    main()
