"""A real browser on the MLflow view radio links to: ``radio compare --screenshot compare.png``.

Starts ``mlflow ui`` on 127.0.0.1 against the given store, opens the page in headless Chromium at a laptop's
first screen (1440 x 900 by default), waits until the page shows what it was asked to look for, saves a
screenshot of that first screen, and reports where each looked-for text lies on it. The browser is driven over
the Chrome DevTools Protocol on loopback (aiohttp's websocket client, which MLflow already depends on). Needs
Debian's ``chromium`` package.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["find_chromium", "open_page", "screenshot_compare", "serve_mlflow_ui"]

# Where each looked-for text lies: for every text, the rectangles of the elements whose own text it is, and the
# rectangle and text of the nearest ancestor that holds every text in `together` (a chart card: its title, the
# students' names and the values).
_PROBE_JS = r"""
((texts, together) => {
  const own = (e) => [...e.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
  const rect = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  // cut by a box: the text's own extent (a Range over it) passes the edge of the element or of an ancestor that
  // clips (overflow other than visible, or an ellipsis); a scrolled-away part of a wide table is not a cut title
  const clipped = (e) => {
    const range = document.createRange();
    range.selectNodeContents(e);
    const t = range.getBoundingClientRect();
    for (let b = e; b && b !== document.body; b = b.parentElement) {
      const st = getComputedStyle(b);
      if (st.overflowX !== 'visible' || st.textOverflow === 'ellipsis') {
        const c = b.getBoundingClientRect();
        if (t.right > c.right + 1 || t.left < c.left - 1) return true;
      }
    }
    return false;
  };
  const els = [...document.querySelectorAll('body *')];
  const out = {viewport: [window.innerWidth, window.innerHeight], texts: {}};
  for (const t of texts) {
    out.texts[t] = els.filter(e => own(e) === t).map(e => {
      let box = e;
      const holds = (b) => together.every(s => b.innerText && b.innerText.includes(s));
      while (together.length && box.parentElement && !holds(box)) box = box.parentElement;
      const hit = {rect: rect(e), clipped: clipped(e)};
      if (together.length && box !== document.body) { hit.box = rect(box); hit.box_text = box.innerText; }
      return hit;
    });
  }
  return out;
})(%s, %s)
"""


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


class serve_mlflow_ui:
    """``with serve_mlflow_ui(uri) as port:`` -- ``mlflow ui`` for the store ``uri`` on 127.0.0.1, stopped on exit."""

    def __init__(self, tracking_uri: str, wait_s: float = 120.0):
        self.uri, self.wait_s = tracking_uri, wait_s

    def __enter__(self) -> int:
        self.port = _free_port()
        self.log = tempfile.TemporaryFile()  # not a pipe: nobody drains it while the server runs
        # its own session: `mlflow ui` runs the server in a child process, stopped with it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "ui",
                "--backend-store-uri",
                self.uri,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )
        deadline = time.time() + self.wait_s
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return self.port
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.__exit__()
                    raise RuntimeError(
                        f"mlflow ui did not start on 127.0.0.1:{self.port} within {self.wait_s:.0f}s: "
                        f"{self._log_tail()}"
                    ) from None
                time.sleep(0.5)

    def _log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def __exit__(self, *exc) -> None:
        _stop_group(self.proc)
        self.log.close()


# MLflow 3.17 opens its Assistant panel (a third of a 1280 px screen) on a browser's first visit to a local server;
# a user closes it once and the browser remembers. ``open_page(..., close_assistant=True)`` does that click.
CLOSE_ASSISTANT_JS = "document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')?.click()"


async def _drive(
    ws_url: str,
    url: str,
    size: tuple[int, int],
    texts: list[str],
    together: list[str],
    ready,
    timeout_s: float,
    before_probe: str | None = None,
) -> tuple[bytes, dict]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        ids = iter(range(1, 1 << 30))

        async def call(method: str, **params):
            i = next(ids)
            await ws.send_json({"id": i, "method": method, "params": params})
            while True:
                raw = await ws.receive()
                if raw.type != aiohttp.WSMsgType.TEXT:  # closed, closing or an error: the browser went away
                    raise RuntimeError(
                        f"chromium closed its DevTools connection during {method} ({raw.type.name}); "
                        "it may have crashed"
                    )
                msg = json.loads(raw.data)
                if msg.get("id") == i:
                    if "error" in msg:
                        raise RuntimeError(f"chromium: {method}: {msg['error']}")
                    return msg["result"]

        await call(
            "Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False
        )
        await call("Page.enable")
        await call("Page.navigate", url=url)
        expr = _PROBE_JS % (json.dumps(texts), json.dumps(together))

        async def probe() -> dict:
            if before_probe:
                await call("Runtime.evaluate", expression=before_probe)
            res = await call("Runtime.evaluate", expression=expr, returnByValue=True)
            return res.get("result", {}).get("value") or {}

        deadline = time.time() + timeout_s
        while True:
            seen = await probe()
            if seen and ready(seen):
                await asyncio.sleep(1.0)  # let the charts finish their transitions, then look again
                seen = await probe() or seen
                seen["ready"] = True
                break
            if time.time() > deadline:
                seen = {"viewport": list(size), "texts": {}, **seen, "ready": False}
                break
            await asyncio.sleep(0.5)
        shot = await call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"]), seen


def open_page(
    url: str,
    out_png: str | Path,
    size: tuple[int, int] = (1440, 900),
    texts: tuple[str, ...] = (),
    together: tuple[str, ...] = (),
    ready=None,
    timeout_s: float = 120.0,
    close_assistant: bool = False,
) -> dict:
    """Open ``url`` in headless Chromium with a ``size`` viewport, wait until ``ready(probe)`` (default: every
    text in ``texts`` is on the page) or ``timeout_s``, save the first screen to ``out_png``, and return the
    probe: ``{"viewport": [w, h], "ready": bool, "texts": {text: [{"rect": [l, t, r, b], "box": [...],
    "box_text": ...}]}}`` (``ready`` False: the page never showed what was asked for; the screenshot is what it
    showed at ``timeout_s``). Each hit says whether its box cuts it (``clipped``: an ellipsis or hidden overflow).
    ``close_assistant``: close MLflow's Assistant panel first, as a user does once (see ``CLOSE_ASSISTANT_JS``)."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("Chromium is not installed (Debian: apt-get install chromium)")
    texts, together = list(texts), list(together)
    ready = ready or (lambda seen: all(seen["texts"].get(t) for t in texts))
    out_png = Path(out_png).resolve()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # the profile is removed after the browser: its helper processes may still be writing to it as it exits
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--window-size={size[0]},{size[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            port_file, deadline = Path(profile) / "DevToolsActivePort", time.time() + 60
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.time() > deadline:
                    why = proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timed out after 60s"
                    raise RuntimeError(f"chromium did not open its DevTools port: {why}")
                time.sleep(0.2)
            port = int(port_file.read_text().split()[0])
            pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
            try:  # every DevTools call included: a hung renderer cannot hang the caller
                png, seen = asyncio.run(
                    asyncio.wait_for(
                        _drive(
                            ws_url,
                            url,
                            size,
                            texts,
                            together,
                            ready,
                            timeout_s,
                            CLOSE_ASSISTANT_JS if close_assistant else None,
                        ),
                        timeout_s + 60,
                    )
                )
            except (asyncio.TimeoutError, TimeoutError):
                raise RuntimeError(f"chromium did not finish with {url} within {timeout_s + 60:.0f}s") from None
        finally:
            _stop_group(proc)
    out_png.write_bytes(png)
    return seen


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the browser and every helper process it started (it leads its own session), then reap it."""
    import os
    import signal

    def signal_group(sig) -> bool:
        try:
            os.killpg(proc.pid, sig)
            return True
        except ProcessLookupError:
            return False

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.time() + 10
    while signal_group(0) and time.time() < deadline:  # helpers exit just after the main process
        time.sleep(0.2)
    signal_group(signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=10)


def screenshot_compare(
    tracking_uri: str,
    url_for_port,
    out_png: str | Path,
    texts: tuple[str, ...] = (),
    together: tuple[str, ...] = (),
    size: tuple[int, int] = (1440, 900),
    timeout_s: float = 120.0,
) -> tuple[Path, dict]:
    """Serve ``tracking_uri`` with ``mlflow ui`` on loopback, open ``url_for_port(port)`` and save its first screen."""
    with serve_mlflow_ui(tracking_uri) as port:
        seen = open_page(url_for_port(port), out_png, size=size, texts=texts, together=together, timeout_s=timeout_s)
    return Path(out_png).resolve(), seen
