"""A real browser on the MLflow compare view: ``radio compare --screenshot compare.png``.

Starts ``mlflow ui`` on 127.0.0.1 against the given store, opens the experiment's compare-runs page in
headless Chromium, saves a screenshot, and stops the server. Needs Debian's ``chromium`` package.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["find_chromium", "screenshot_compare"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot_compare(tracking_uri: str, url_for_port, out_png: str | Path, wait_s: float = 120.0, budget_ms: int = 20000, dom_out: str | Path | None = None) -> Path:
    """Serve ``tracking_uri`` with ``mlflow ui`` on loopback and screenshot ``url_for_port(port)``.

    With ``dom_out``, the rendered page's DOM is saved too (what a test can read without OCR).
    """
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("Chromium is not installed (Debian: apt-get install chromium)")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out_png = Path(out_png).resolve()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    try:
        deadline = time.time() + wait_s
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mlflow ui did not start on 127.0.0.1:{port}: {server.stderr.read().decode()[-2000:] if server.stderr else ''}") from None
                time.sleep(0.5)
        with tempfile.TemporaryDirectory() as profile:
            base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1600,3400", f"--virtual-time-budget={budget_ms}"]
            subprocess.run([*base, f"--screenshot={out_png}", url_for_port(port)], capture_output=True, timeout=180, check=False)
            if dom_out is not None:
                dom = subprocess.run([*base, "--dump-dom", url_for_port(port)], capture_output=True, timeout=180, check=False, text=True).stdout
                Path(dom_out).write_text(dom)
        if not out_png.exists():
            raise RuntimeError("chromium did not write a screenshot")
        return out_png
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
