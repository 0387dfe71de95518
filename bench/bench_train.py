"""Student training throughput: from the cache vs. from memory vs. online distillation, side by side.

    python bench/bench_train.py --cache caches/samples-train [--steps 40] [--batch-size 32]

(a) steps/s reading the cache through the real loader (CacheStream + DataLoader workers) divided by
    steps/s on the same batches already held in memory. Goal: >= 0.95 (the step never waits on data).
(b) steps/s from the cache divided by steps/s of online distillation, where the same teachers run inside
    every step on the same views; printed next to the ideal (T_student + T_teachers) / T_student.
(c) On a GPU: images/s and MFU of the student step (skipped without CUDA).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cache", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: the reader thread)")
    p.add_argument("--size", default="nano")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads of the training process (default: torch's)")
    ns = p.parse_args()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from pipelines.config import load_config
    from pipelines.train import Trainer, TrainJobConfig
    from radio.cache import CacheReader

    teachers = list(CacheReader(ns.cache).teachers)
    cfg = load_config(TrainJobConfig, None, [f"cache={ns.cache}", "output=/tmp/bench-train", f"teachers=[{','.join(teachers)}]", f"student.size={ns.size}", f"student.patch_size={ns.patch}", f"loader.batch_size={ns.batch_size}", f"loader.num_workers={ns.workers}", "epochs=1000", "mlflow.enabled=false"])
    trainer = Trainer(cfg, "")
    device = trainer.acc.device

    from radio.data import ThreadPrefetcher

    def batches():  # what Trainer.fit iterates: worker processes, or the reader thread
        epoch = 0
        while True:
            trainer.stream.set_epoch(epoch)
            yield from trainer.loader if ns.workers > 0 else ThreadPrefetcher(trainer.loader, 4)
            epoch += 1

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    warm = 5
    it = batches()
    for _ in range(warm):
        trainer.train_step(next(it))
    # (a) alternate: a stretch of steps from the cache (through the loader), then the same batches from
    # memory, three times; medians, so a slow moment of the machine does not land on one side only.
    import statistics

    t_cache_runs, t_mem_runs = [], []
    for _ in range(ns.repeats):
        sync()
        t0 = time.perf_counter()
        held = []
        for _ in range(ns.steps):
            b = next(it)
            trainer.train_step(b)
            held.append(b)
        sync()
        t_cache_runs.append((time.perf_counter() - t0) / ns.steps)
        t0 = time.perf_counter()
        for b in held:
            trainer.train_step(b)
        sync()
        t_mem_runs.append((time.perf_counter() - t0) / ns.steps)
    t_cache, t_mem = statistics.median(t_cache_runs), statistics.median(t_mem_runs)
    print(f"student {ns.size}/p{ns.patch}, batch {ns.batch_size}, {ns.workers} loader worker(s), device {device}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    print(f"(a) step from cache {t_cache * 1000:.1f} ms, from memory {t_mem * 1000:.1f} ms  ->  ratio {t_mem / t_cache:.3f}  (goal >= 0.95)")

    # (b) online distillation: the teachers run inside the step on the same views.

    from teachers import create_teacher

    from radio.targets import resample_targets

    tmods = {t: create_teacher(t, device=str(device)) for t in teachers}
    grids = trainer.reader.grids

    def teacher_forward(b):
        imgs = list(b["image"])  # the stored views; teachers resize them with their own preprocessing
        return {t: m(imgs) for t, m in tmods.items()}

    for b in held[:2]:
        teacher_forward(b)
    sync()
    t0 = time.perf_counter()
    for b in held:
        outs = teacher_forward(b)
        for t, o in outs.items():  # online targets replace the cached ones, at the grid they were stored at
            if o.summary_BD is not None:
                b[f"{t}/summary"] = o.summary_BD
            b[f"{t}/features"] = resample_targets(o.features_BHWC, grids[t], o.valid_hw_B2)
            b.pop(f"{t}/features_scale", None), b.pop(f"{t}/features_offset", None)
        trainer.train_step(b)
    sync()
    t_online = (time.perf_counter() - t0) / ns.steps
    t0 = time.perf_counter()
    for b in held:
        teacher_forward(b)
    sync()
    t_teachers = (time.perf_counter() - t0) / ns.steps
    print(f"(b) online step {t_online * 1000:.1f} ms (teachers alone {t_teachers * 1000:.1f} ms)  ->  cache/online speed-up {t_online / t_cache:.2f}x, ideal (T_student + T_teachers) / T_student = {(t_mem + t_teachers) / t_mem:.2f}x")

    if torch.cuda.is_available():
        n_params = sum(p.numel() for p in trainer.model.parameters())
        tokens = ns.batch_size * (64 // ns.patch) ** 2
        flops = 6 * n_params * tokens
        peak = 989e12  # H100 SXM dense bf16
        print(f"(c) {ns.batch_size / t_mem:.0f} images/s, MFU {flops / t_mem / peak * 100:.1f}% (6*N*tokens estimate)")
    else:
        print("(c) no CUDA device: images/s and MFU on a GPU not measured here")


if __name__ == "__main__":
    main()
