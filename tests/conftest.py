"""Shared test setup: offline hub, a private RADIO_HOME and MLflow store, one Ray instance per session."""

import os
import tempfile

# Set before anything imports transformers, mlflow or ray.
_SESSION_DIR = tempfile.mkdtemp(prefix="radio-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("RADIO_HOME", os.path.join(_SESSION_DIR, "radio-home"))
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + os.path.join(_SESSION_DIR, "mlflow.db")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def session_dir():
    return _SESSION_DIR


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (starting Ray costs ~5 s and 700 MiB).

    Its address is exported as RAY_ADDRESS so subprocesses (`radio ...` CLI runs) join it too.
    """
    import ray

    if not ray.is_initialized():
        ctx = ray.init(num_cpus=8, include_dashboard=False, configure_logging=False, log_to_driver=False)
        os.environ["RAY_ADDRESS"] = ctx.address_info["address"]
    yield ray
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size (``small_disk(bytes)`` -> its path), to fill up for real: the kernel's own
    ENOSPC, through every writer (Python, safetensors' Rust, torch's C++, Arrow). Needs root (as the
    project's machines and CI run); ``resize(bytes)`` frees space as a user would."""
    import subprocess

    mounts = []

    class Disk:
        def __call__(self, size: int, read_only: bool = False):
            d = tmp_path / f"disk{len(mounts)}"
            d.mkdir()
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs", str(d)],
                check=True,
                capture_output=True,
            )
            mounts.append(d)
            return d

        def resize(self, d, size: int):
            subprocess.run(["mount", "-o", f"remount,size={size}", str(d)], check=True, capture_output=True)

    yield Disk()
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
