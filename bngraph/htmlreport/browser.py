"""A headless Chromium driven over the Chrome DevTools protocol, in the standard library only: to
screenshot a report (``python -m bngraph.htmlreport.screenshot``) and to test it in a real browser.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol messages (JSON, each ended
by a NUL byte) from its file descriptor 3 and writes to 4, as Puppeteer's ``pipe: true`` does, so
no port is opened and no websocket is needed. The flags are those this kind of machine needs
headless and offline (no sandbox as root, no GPU, no background networking).
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe"]


class BrowserError(RuntimeError):
    """The browser could not be started or did not answer."""


def find_browser() -> str | None:
    """The path of a Chromium-like browser on PATH (``BNGRAPH_BROWSER`` first), or None."""
    given = os.environ.get("BNGRAPH_BROWSER")
    if given:
        return shutil.which(given) or (given if os.path.isfile(given) else None)
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class Browser:
    """One headless browser with one page: ``open(url)``, ``evaluate(js)``, ``screenshot(path)``;
    ``console`` collects console messages, uncaught exceptions and log entries (level, text), and
    ``requests`` every URL the page asked for. Use it as a context manager."""

    def __init__(self, exe: str | None = None, width: int = 1280, height: int = 900, timeout: float = 60):
        self.exe = exe or find_browser()
        if self.exe is None:
            raise BrowserError("no Chromium on PATH (apt-get install chromium)")
        self.timeout, self.width, self.height = timeout, width, height
        self.console, self.requests, self._id, self._buf = [], [], 0, b""
        self._profile = tempfile.mkdtemp(prefix="bngraph-browser-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds():  # in the child: its fd 3 reads our messages, its fd 4 writes its answers
            a, b = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)  # inheritable, unlike every other descriptor Python opened (PEP 446)
            os.dup2(b, 4)

        args = [self.exe, *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=fds, close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": False}, session=True)
        except BaseException:
            self.close()
            raise

    # ---- the protocol ----------------------------------------------------------------------
    def _send(self, message: dict):
        os.write(self._to_child, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise BrowserError(f"{os.path.basename(self.exe)} did not answer within {self.timeout} s")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.poll() is not None else ""
                raise BrowserError(f"{os.path.basename(self.exe)} closed the connection {err}".strip())
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _event(self, msg: dict):
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.console.append((p.get("type"), text))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.console.append(("exception", d.get("exception", {}).get("description") or d.get("text", "")))
        elif method == "Log.entryAdded":
            e = p.get("entry", {})
            self.console.append((e.get("level"), e.get("text", "")))
        elif method == "Network.requestWillBeSent":
            self.requests.append(p.get("request", {}).get("url", ""))

    def call(self, method: str, params: dict | None = None, session: bool = False, wait_for: str | None = None):
        """Send one command and return its result; ``wait_for``: also wait for that event."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self._send(msg)
        deadline, result, seen = time.monotonic() + self.timeout, None, wait_for is None
        while result is None or not seen:
            m = self._receive(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error'].get('message')}")
                result = m.get("result", {})
            elif "method" in m:
                self._event(m)
                seen = seen or m["method"] == wait_for
        return result

    # ---- what a test or a script does ------------------------------------------------------
    def open(self, url: str):
        """Load ``url`` and wait until its load event has fired."""
        self.call("Page.navigate", {"url": url}, session=True, wait_for="Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                      session=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError(f"{expression[:80]}: {d.get('exception', {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")

    def key(self, key: str, code: int):
        """Press and release one key in the focused element (``"Enter"``, 13)."""
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code,
                                                 **({"text": "\r"} if key == "Enter" and kind == "keyDown" else {})},
                      session=True)

    def click(self, x: float, y: float):
        """A real mouse click at page coordinates (x, y) of the viewport."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                      session=True)

    def screenshot(self, path, full_page: bool = False) -> str:
        """A PNG of the viewport (or the whole page) written to ``path``."""
        params = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["width"],
                                                            "height": size["height"], "scale": 1})
        data = self.call("Page.captureScreenshot", params, session=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return os.fspath(path)

    def close(self):
        try:
            if self.proc.poll() is None:
                try:
                    self._send({"id": self._id + 1, "method": "Browser.close"})
                    self.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.proc.stderr:
                self.proc.stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
