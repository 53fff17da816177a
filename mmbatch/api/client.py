"""A client of the node API for the CLI: the unix socket when it can be
opened (root on the node), else TCP with the token from [api] token_file."""

from __future__ import annotations

import http.client
import json
import os
from typing import Any, Optional, Tuple

from mmbatch import config as config_mod
from mmbatch.api.server import parse_listen, read_token, socket_path
from mmbatch.errors import MmbatchError
from mmbatch.unix_http import UnixHTTPConnection


class DaemonUnreachable(MmbatchError):
    """mmbatchd does not answer (not running, or no access to its socket)."""


class ApiError(MmbatchError):
    """mmbatchd answered with an error status."""

    def __init__(self, status: int, message: str, hint: Optional[str] = None) -> None:
        super().__init__(f"mmbatchd: {message} (HTTP {status})", hint=hint)
        self.status = status


class NodeClient:
    def __init__(self, socket_file: str = "", tcp: Optional[Tuple[str, int]] = None, token: str = "",
                 timeout: float = 15.0) -> None:
        self.socket_file = socket_file
        self.tcp = tcp
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_config(cls, cfg: config_mod.Config, timeout: float = 15.0) -> NodeClient:
        token, tcp = "", None
        if cfg.api.token_file and cfg.api.listen:
            try:
                token = read_token(cfg.api.token_file)
                tcp = parse_listen(cfg.api.listen)
            except MmbatchError:
                token, tcp = "", None
        return cls(socket_path(cfg), tcp, token, timeout)

    def _connections(self):
        if self.socket_file and os.path.exists(self.socket_file):
            yield UnixHTTPConnection(self.socket_file, self.timeout), {}
        if self.tcp is not None and self.token:
            yield http.client.HTTPConnection(self.tcp[0], self.tcp[1], timeout=self.timeout), \
                {"Authorization": f"Bearer {self.token}"}

    def request(self, method: str, path: str, body: Any = None) -> Tuple[int, str, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        errors = []
        for conn, headers in self._connections():
            if data is not None:
                headers = dict(headers, **{"Content-Type": "application/json"})
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.getheader("Content-Type") or "", resp.read()
            except OSError as e:
                errors.append(f"{e}")
            finally:
                conn.close()
        where = self.socket_file + (f" or {self.tcp[0]}:{self.tcp[1]}" if self.tcp else "")
        raise DaemonUnreachable(f"mmbatchd does not answer on {where}" + (f" ({'; '.join(errors)})" if errors else ""),
                                hint="is mmbatchd running? (root reads its socket; others need [api] token_file)")

    def get_json(self, path: str) -> Any:
        return self._json(*self.request("GET", path))

    def put_json(self, path: str, body: Any) -> Any:
        return self._json(*self.request("PUT", path, body))

    def _json(self, status: int, _ctype: str, raw: bytes) -> Any:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if status >= 400:
            msg = data.get("error") if isinstance(data, dict) else raw[:200].decode(errors="replace")
            hint = data.get("hint") if isinstance(data, dict) else None
            raise ApiError(status, str(msg), hint)
        return data
