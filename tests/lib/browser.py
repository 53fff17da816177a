"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, stdlib only.

Chromium starts with `--remote-debugging-port=0` and prints the browser's
websocket URL on stderr; a page target is opened through
`Target.createTarget` and attached with a flat session. A minimal RFC 6455
client (masked client frames, text and continuation frames, ping/pong,
close) carries the JSON commands. Enough for the server's browser tests:
navigate and wait for the load event, run JavaScript and read its value,
read cookies, take a screenshot.

Every process started here is stopped by its PID in `close()`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
from typing import Any, Dict, List, Optional

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> Optional[str]:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class WebSocket:
    """A blocking websocket client for ws:// URLs on this machine."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"only ws:// on loopback, not {url}")
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        req = (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        head, _, self._buf = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionError("websocket closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode("utf-8"))

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else b""
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode in (0x0, 0x1, 0x2):
                message += payload
                if b0 & 0x80:
                    return message.decode("utf-8")

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class Browser:
    """One headless Chromium with one page."""

    def __init__(self, binary: str, timeout: float = 60) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="mmbatch-chromium-")
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}", "--window-size=1300,1000", "about:blank"]
        self._log = open(os.path.join(self.profile, "chromium.log"), "w+b")
        env = dict(os.environ)
        env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env)
        self.ws: Optional[WebSocket] = None
        self._id = 0
        self._events: List[Dict[str, Any]] = []
        try:
            self.ws = WebSocket(self._devtools_url(), timeout=timeout)
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call("Network.enable")
        except BaseException:
            self.close()
            raise

    def _devtools_url(self) -> str:
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            self._log.seek(0)
            m = re.search(rb"DevTools listening on (ws://\S+)", self._log.read())
            if m:
                return m.group(1).decode()
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"chromium did not start: {self.log()[-2000:]}")

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _call(self, method: str, params: Optional[Dict[str, Any]] = None, session: Optional[str] = None) -> Any:
        assert self.ws is not None
        self._id += 1
        msg: Dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)
        raise TimeoutError(f"{method}: no answer in {self.timeout}s")

    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        return self._call(method, params, self.session)

    def wait_event(self, method: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        assert self.ws is not None
        deadline = time.time() + (timeout or self.timeout)
        while time.time() < deadline:
            for i, ev in enumerate(self._events):
                if ev.get("method") == method:
                    return self._events.pop(i)
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self._events.append(msg)
        raise TimeoutError(f"no {method} in time")

    def navigate(self, url: str) -> None:
        """Go to `url` and wait until the page (after any redirects) has loaded and its scripts ran."""
        self._events = [e for e in self._events if e.get("method") != "Page.loadEventFired"]
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise RuntimeError(f"navigate {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """Poll a JavaScript expression until it is truthy (e.g. a page loaded by a form post)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                value = self.eval(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{expression} did not become true; at {self.eval('location.href')}")

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serializable values only)."""
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if r.get("exceptionDetails"):
            raise RuntimeError(f"{expression}: {r['exceptionDetails'].get('text')} "
                               f"{r['exceptionDetails'].get('exception', {}).get('description', '')}")
        return r.get("result", {}).get("value")

    def cookies(self) -> List[Dict[str, Any]]:
        return self.call("Network.getCookies")["cookies"]

    def screenshot(self, path: str) -> str:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self.ws is not None:
            try:
                self._call("Browser.close")
            except Exception:
                pass
            self.ws.close()
            self.ws = None
        if self.proc.poll() is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
