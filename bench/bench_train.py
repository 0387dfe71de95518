"""Student training throughput, side by side in one run: all teachers cached, hybrid, all online.

    python bench/bench_train.py --cache caches/samples-train [--steps 30] [--batch-size 32] [--online tiny-clip] \
        [--compile]

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
    p.add_argument(
        "--workers", type=int, default=None, help="DataLoader worker processes (default: the trainer's default)"
    )
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

    from radio.cache import CacheReader

    reader = CacheReader(ns.cache)
    teachers = list(reader.teachers)
    sources = {t: reader.entry(t).spec["source"] for t in teachers} | dict(s.split("=", 1) for s in ns.source)
    hybrid = ns.online.split(",") if ns.online else [t for t in teachers if reader.entry(t).spec["family"] != "sam"]
    cuda = torch.cuda.is_available()

    def trainer(online: list[str]):
        return make_trainer(
            ns.cache,
            teachers,
            size=ns.size,
            patch=ns.patch,
            batch_size=ns.batch_size,
            compile=ns.compile,
            workers=ns.workers,
            online=online,
            sources=sources,
        )

    results = {}
    for mode, online in (("cached", []), ("hybrid", hybrid), ("online", teachers)):
        tr = trainer(online)
        it = loader_batches(tr)
        warm_up(tr, it, 3)  # (and compilation)
        runs, mem_runs = [], []
        for _ in range(ns.repeats if mode == "cached" else 1):
            t, held = timed_steps(tr, ns.steps, it)
            runs.append(t)
            if mode == "cached":  # the same batches again, already in memory (on the device with a GPU)
                dev = [to_device(b, tr.acc.device) for b in held]
                mem_runs.append(timed_steps(tr, ns.steps, held=dev)[0])
        results[mode] = statistics.median(runs)
        if mode == "cached":
            results["memory"] = statistics.median(mem_runs)
            flops = step_flops(tr, next(it))
        del tr
    device = (
        torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    )
    print(
        f"student {ns.size}/p{ns.patch} at {reader.manifest.student_resolution}px, batch {ns.batch_size}, "
        f"teachers {', '.join(teachers)}; hybrid online: {', '.join(hybrid)}; compile {ns.compile}; {device}"
    )
    for mode in ("memory", "cached", "hybrid", "online"):
        print(f"  {mode:<8} {results[mode] * 1000:8.1f} ms/step  {ns.batch_size / results[mode]:8.0f} images/s")
    print(
        f"(a) cached / memory steps/s: {results['memory'] / results['cached']:.3f}  (goal >= 0.95 on CPU, "
        ">= 0.9 on a GPU)"
    )
    print(
        f"(b) hybrid / cached steps/s: {results['cached'] / results['hybrid']:.3f};  (c) all online / cached: "
        f"{results['cached'] / results['online']:.3f}"
    )
    achieved = flops / results["memory"]
    peak = peak_flops()
    print(
        f"(d) student step {flops / 1e9:.1f} GFLOP (forward + backward, counted), {achieved / 1e12:.3f} "
        "TFLOP/s achieved"
        + (
            f", MFU {achieved / peak * 100:.1f}% of {peak / 1e12:.0f} TFLOP/s bf16"
            if peak
            else ", MFU: no GPU peak to compare with here"
        )
    )


def peak_flops() -> float | None:
    """The CUDA device's dense bf16 peak in FLOP/s when known (PEAK_BF16), else None (no GPU, or another GPU)."""
    if not torch.cuda.is_available():
        return None
    return next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)


def make_trainer(
    cache: str,
    teachers: list[str],
    *,
    size: str,
    patch: int,
    batch_size: int,
    compile: bool = False,
    workers: int | None = None,
    online: list[str] = (),
    sources: dict | None = None,
    output: str = "/tmp/bench-train",
    extra: list[str] = (),
):
    """The real ``Trainer`` on ``cache`` (MLflow off), ready for ``train_step``: ``online`` teachers run in the step,
    loaded from ``sources[t]``; ``workers`` None is the trainer's default; ``extra``: more ``key=value`` overrides."""
    from pipelines.config import load_config
    from pipelines.train import Trainer, TrainJobConfig

    args = [
        f"cache={cache}",
        f"output={output}",
        f"teachers=[{','.join(teachers)}]",
        f"student.size={size}",
        f"student.patch_size={patch}",
        f"loader.batch_size={batch_size}",
        "epochs=1000",
        "mlflow.enabled=false",
        f"compile={str(compile).lower()}",
    ]
    args += [f"loader.num_workers={workers}"] if workers is not None else []
    args += [f"online.{t}.source={(sources or {})[t]}" for t in online if (sources or {}).get(t)] + [
        f"online.{t}.stats_batches=2" for t in online
    ]
    tr = Trainer(load_config(TrainJobConfig, None, args + list(extra)), "")
    tr._sums, tr._count, tr._since = {}, 0, 0
    return tr


def loader_batches(tr):
    """What ``Trainer.fit`` iterates, epoch after epoch: worker processes, or the reader thread."""
    from radio.data import ThreadPrefetcher

    epoch = 0
    while True:
        tr.stream.set_epoch(epoch)
        yield from tr.loader if tr.workers > 0 else ThreadPrefetcher(tr.loader, 4)
        epoch += 1


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def warm_up(tr, it, steps: int = 3):
    for _ in range(steps):
        tr._accumulate(tr.train_step(next(it)))
    tr.read_metrics()
    _sync()


def timed_steps(tr, steps: int, it=None, held: list | None = None) -> tuple[float, list]:
    """(seconds per step over ``steps`` steps, the batches used), from the loader ``it`` or from ``held`` batches.
    Losses are read once at the end, as ``fit()`` reads them every ``log_every`` steps."""
    _sync()
    t0 = time.perf_counter()
    got = []
    for k in range(steps):
        b = next(it) if held is None else held[k]
        tr._accumulate(tr.train_step(b))
        got.append(b)
    tr.read_metrics()  # the step's one host sync, as in fit()
    _sync()
    return (time.perf_counter() - t0) / steps, got


def to_device(batch: dict, device) -> dict:
    """A loader batch moved to ``device``, except ``weight``: the step reads it on the host (no device sync)."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) and k != "weight" else v) for k, v in batch.items()}


def step_flops(tr, batch) -> int:
    """FLOPs of one real training step (forward + backward) on ``batch``, counted by FlopCounterMode; a compiled
    model runs eagerly for the count (a compiled graph's kernels would not be seen)."""
    import contextlib

    from torch.utils.flop_counter import FlopCounterMode

    eager = (
        torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else contextlib.nullcontext()
    )
    with eager, FlopCounterMode(display=False) as fc:
        tr.train_step(batch)
    return fc.get_total_flops()


if __name__ == "__main__":
    main()
