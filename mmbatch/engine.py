"""The container engine's API (dockerd), over its unix socket, stdlib only.

Inside the runtime's `create`, `docker inspect` of the container deadlocks
(the engine holds the container's lock during start); the container list
(`GET /containers/json?all=1&filters=...`) reads a lock-free view and answers
in milliseconds, with ImageID and labels.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional

from mmbatch.errors import EngineError
from mmbatch.unix_http import UnixHTTPConnection

DEFAULT_SOCKET = "/var/run/docker.sock"
API = "/v1.41"


class DockerEngine:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _request(self, method: str, path: str, timeout: Optional[float] = None) -> Any:
        conn = UnixHTTPConnection(self.socket_path, timeout or self.timeout)
        try:
            conn.request(method, API + path)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise EngineError(f"docker API {method} {path} failed: {e}") from e
        finally:
            conn.close()
        if resp.status == 404:
            return None
        if resp.status >= 300:
            raise EngineError(f"docker API {method} {path}: HTTP {resp.status}: {body[:300]!r}")
        return json.loads(body) if body else None

    def info(self) -> Dict[str, Any]:
        """`GET /info`: the engine's runtimes, default runtime, versions."""
        return self._request("GET", "/info") or {}

    def container_summary(self, container_id: str) -> Optional[Dict[str, Any]]:
        """The container-list entry of one container (lock-free, safe in create)."""
        filters = urllib.parse.quote(json.dumps({"id": [container_id]}))
        items = self._request("GET", f"/containers/json?all=1&filters={filters}") or []
        for item in items:
            if item.get("Id") == container_id:
                return item
        return None

    def list_containers(self, label: Optional[str] = None) -> List[Dict[str, Any]]:
        q = "/containers/json?all=1"
        if label:
            q += "&filters=" + urllib.parse.quote(json.dumps({"label": [label]}))
        return self._request("GET", q) or []

    def inspect(self, container: str, timeout: Optional[float] = None) -> Optional[Dict[str, Any]]:
        """Full inspect. Never call it for a container inside its own create."""
        return self._request("GET", f"/containers/{urllib.parse.quote(container)}/json", timeout)

    def events(
        self, since: float, until: float, filters: Dict[str, List[str]], timeout: float = 30.0
    ) -> Iterator[Dict[str, Any]]:
        """Engine events between two times (the engine replays recent ones)."""
        q = f"/events?since={since:.3f}&until={until:.3f}&filters={urllib.parse.quote(json.dumps(filters))}"
        conn = UnixHTTPConnection(self.socket_path, timeout)
        try:
            conn.request("GET", API + q)
            resp = conn.getresponse()
            if resp.status != 200:
                raise EngineError(f"docker API events: HTTP {resp.status}")
            buf = b""
            while True:
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise EngineError(f"docker API events failed: {e}") from e
        finally:
            conn.close()
