"""Peak host memory of loading a large teacher, against its weights' bytes.

A registry teacher's real width and heads (default DINOv3 ViT-7B/16: hidden 4096, 32 heads, SwiGLU 8192) at a few
blocks, random weights saved as sharded safetensors in the compute dtype (``save_pretrained(max_shard_size=...)``),
then loaded by ``create_teacher`` in a fresh process. Printed: the weights' bytes, the peak RSS increase (VmHWM)
over the process before the load, and their ratio, for

- ``load``: ``create_teacher`` alone (transformers maps the safetensors files; pages are resident once touched);
- ``touched``: then every weight byte read once (what moving to a GPU or the first forward does), the honest figure.

``--legacy`` measures the path before loading in dtype (fp32 load, hash of the loaded tensors, then a cast), for
comparison. Example::

    python bench/bench_teacher_load.py --teacher dinov3-vit7b16 --depth 4 --shard 200MB
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, sys, time
import torch

def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

name, src, dtype, legacy = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
from teachers import create_teacher  # imports first: they are not the teacher's memory
import transformers  # noqa: F401

base = hwm_kib()
t0 = time.perf_counter()
if legacy:
    import hashlib
    from teachers.families import FAMILIES
    from teachers.registry import get_spec_template

    model = FAMILIES[get_spec_template(name).family].load(src, None, torch.float32)
    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    model = model.to(torch.bfloat16 if dtype == "bf16" else torch.float16 if dtype == "fp16" else torch.float32)
    params = list(model.parameters())
else:
    teacher = create_teacher(name, source=src, dtype=dtype)
    params = list(teacher.model.parameters())
load_s = time.perf_counter() - t0
load_kib = hwm_kib() - base
for p in params:  # read every byte once (a reduction: no copy)
    p.detach().reshape(-1).view(torch.uint8).max()
touched_kib = hwm_kib() - base
weights = sum(p.numel() * p.element_size() for p in params)
print(json.dumps(dict(
    weights_bytes=weights, load_peak_bytes=load_kib * 1024, touched_peak_bytes=touched_kib * 1024,
    load_s=load_s, dtypes=sorted({str(p.dtype) for p in params}),
)))
"""


def measure(name: str, src: str, dtype: str, legacy: bool = False) -> dict:
    """Load teacher ``name`` from ``src`` in a fresh interpreter; -> its weights' bytes and peak RSS increases."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name, src, dtype, "1" if legacy else "0"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Peak host memory of loading a large teacher, against its weights' bytes.")
    ap.add_argument("--teacher", default="dinov3-vit7b16")
    ap.add_argument("--depth", type=int, default=4, help="blocks (the real width and heads are kept)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument(
        "--stored", default=None, choices=["bf16", "fp16", "fp32"], help="checkpoint dtype (default --dtype)"
    )
    ap.add_argument("--shard", default="200MB", help="save_pretrained max_shard_size")
    ap.add_argument("--legacy", action="store_true", help="also measure the fp32-load-then-cast path")
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temporary directory)")
    args = ap.parse_args(argv)

    from teachers.tiny import save_random_teacher

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src = os.path.join(tmp, args.teacher)
        stored = args.stored or args.dtype
        save_random_teacher(args.teacher, src, depth=args.depth, dtype=stored, max_shard_size=args.shard)
        shards = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
        print(f"{args.teacher}: depth {args.depth}, stored {stored}, run in {args.dtype}, {len(shards)} shard(s)")
        runs = [("create_teacher", False)] + ([("legacy fp32 load + tensor hash + cast", True)] if args.legacy else [])
        for label, legacy in runs:
            r = measure(args.teacher, src, args.dtype, legacy)
            w = r["weights_bytes"]
            print(
                f"  {label}: weights {w / 2**20:.0f} MiB {','.join(r['dtypes'])}; peak RSS increase: load "
                f"{r['load_peak_bytes'] / 2**20:.0f} MiB ({r['load_peak_bytes'] / w:.2f}x), every weight touched "
                f"{r['touched_peak_bytes'] / 2**20:.0f} MiB ({r['touched_peak_bytes'] / w:.2f}x); "
                f"load {r['load_s']:.1f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
