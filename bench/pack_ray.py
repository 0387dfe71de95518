"""Pack a stripped Ray for a GPU machine that has no Ray: a cp312 tree to put on PYTHONPATH, as one tar.xz.

    python bench/pack_ray.py [--python 3.12] [--out .whl/ray312.tar.xz] [--ray-version 2.60.0]

Downloads (``pip download --only-binary=:all: --no-deps`` for the target Python and manylinux x86_64) the Ray
wheel of the version installed here and the few wheels Ray needs that a torch + transformers + accelerate +
onnxruntime machine lacks (jsonschema and its dependencies, msgpack, click, requests and its dependencies), unzips them
into one tree, drops
what ``radio cache`` never loads (Java jars, the dashboard's web client, RLlib, Serve, Tune, Train, ray.llm) and
writes ``--out`` (tar.xz: the device tool carries at most 64 MiB). ``.whl/`` is ignored by git.

On the GPU machine (see BENCHMARKS.md, "Every GPU figure in one call")::

    mkdir -p /tmp/ray312 && tar -xJf .whl/ray312.tar.xz -C /tmp/ray312 && PYTHONPATH=/tmp/ray312:$PWD python
    bench/gpu_suite.py --out $OUT
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

# Ray's own requirements (its METADATA: click, filelock, jsonschema, msgpack, packaging, protobuf, pyyaml, requests)
# minus what torch (filelock), transformers and accelerate (packaging, pyyaml) and onnxruntime (protobuf) bring.
# transformers 5 no longer pulls requests in (huggingface_hub uses httpx), and Ray imports it at start-up. The host must
# still have protobuf, pyyaml, filelock, packaging and typing_extensions (checked: a Python 3.12 with only those runs
# Ray).
EXTRA = [
    "jsonschema",
    "jsonschema-specifications",
    "referencing",
    "rpds-py",
    "attrs",
    "msgpack",
    "click",
    "requests",
    "urllib3",
    "idna",
    "charset-normalizer",
    "certifi",
]
DROP = ["ray/jars", "ray/dashboard/client/build", "ray/rllib", "ray/serve", "ray/tune", "ray/train", "ray/llm"]


def local_ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


def download(names: list[str], python: str, dest: str):
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        "--platform",
        "manylinux2014_x86_64",
        "--platform",
        "manylinux_2_17_x86_64",
        "--platform",
        "manylinux_2_28_x86_64",
        "-d",
        dest,
        *names,
    ]
    subprocess.run(cmd, check=True)


def _unzip(whl: str, dest: str):
    """Extract keeping each member's Unix mode (zipfile drops it): Ray starts raylet and gcs_server as programs."""
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            path = z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(path, mode)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (major.minor)")
    p.add_argument("--ray-version", default=None, help="default: the Ray installed here")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", ".whl", "ray312.tar.xz"))
    p.add_argument(
        "--keep-tree", default=None, metavar="DIR", help="also leave the unpacked tree at DIR (to test it here)"
    )
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="REQ",
        help="another wheel to pack (e.g. protobuf, for a machine without onnxruntime)",
    )
    ns = p.parse_args(argv)
    version = ns.ray_version or local_ray_version()
    work = tempfile.mkdtemp(prefix="pack-ray-")
    try:
        wheels, tree = os.path.join(work, "wheels"), os.path.join(work, "tree")
        download([f"ray=={version}", *EXTRA, *ns.also], ns.python, wheels)
        for whl in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
            print(f"  {os.path.basename(whl)}  {os.path.getsize(whl) / 2**20:.1f} MiB")
            _unzip(whl, tree)
        for d in DROP:
            shutil.rmtree(os.path.join(tree, d), ignore_errors=True)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tree) for f in fs)
        out = os.path.abspath(ns.out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with tarfile.open(out, "w:xz", preset=6) as tar:
            for name in sorted(os.listdir(tree)):
                tar.add(os.path.join(tree, name), arcname=name)
        print(
            f"ray {version} for cp{ns.python.replace('.', '')}: {size / 2**20:.0f} MiB "
            f"unpacked (without {', '.join(DROP)}), {out}: {os.path.getsize(out) / 2**20:.1f} MiB"
        )
        if ns.keep_tree:
            shutil.rmtree(ns.keep_tree, ignore_errors=True)
            shutil.copytree(tree, ns.keep_tree, symlinks=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
