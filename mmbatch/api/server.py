"""The node API's listeners: HTTP over TCP (127.0.0.1 by default) with a
bearer token always required, and HTTP over a unix socket (mode 0600, owner
only, no token).

Batch jobs run with host networking and reach 127.0.0.1: without a token
file the TCP listener is not opened at all. Tokens are compared in constant
time (hmac.compare_digest).
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import socketserver
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, List, Optional, Tuple

from mmbatch import config as config_mod
from mmbatch.api import routes
from mmbatch.errors import ConfigError, MmbatchError

log = logging.getLogger("mmbatchd.api")

SOCKET_NAME = "mmbatchd.sock"


def socket_path(cfg: config_mod.Config) -> str:
    """[api] socket, or mmbatchd.sock next to the hook socket."""
    if cfg.api.socket:
        return cfg.api.socket
    hook = os.environ.get("MMBATCH_HOOK_SOCKET") or cfg.api.hook_socket
    return os.path.join(os.path.dirname(hook), SOCKET_NAME)


def read_token(path: str) -> str:
    """The token in `path` (first line, stripped). ConfigError when unusable."""
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the API token: {e.strerror}", path=path, key="api.token_file") from e
    if len(token) < 16:
        raise ConfigError("the API token must be at least 16 characters", path=path, key="api.token_file",
                          hint="e.g. `openssl rand -hex 32 > FILE; chmod 600 FILE`")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("API token file %s is readable by others: chmod 600 it", path)
    return token


def token_matches(expected: str, header: Optional[str]) -> bool:
    """`Authorization: Bearer <token>` against the expected token, in constant time."""
    if not expected or not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def parse_listen(listen: str) -> Tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    server_version = "mmbatchd"
    protocol_version = "HTTP/1.1"

    def address_string(self) -> str:
        addr = self.client_address
        return addr[0] if isinstance(addr, tuple) and addr else "unix"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, answer: routes.Answer, extra: Optional[List[Tuple[str, str]]] = None) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in extra or []:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    def _dispatch(self) -> None:
        srv: Any = self.server
        length = routes.parse_body_length(self.headers.get("Content-Length"))
        if length < 0 or length > routes.MAX_BODY:
            self.close_connection = True
            self._send(routes.error(413 if length > 0 else 400, "bad or too large Content-Length"))
            return
        body = self.rfile.read(length) if length else b""
        if srv.token_required and not token_matches(srv.token, self.headers.get("Authorization")):
            self._send(routes.error(401, "a valid bearer token is required",
                                    "Authorization: Bearer <the token in [api] token_file>"),
                       [("WWW-Authenticate", 'Bearer realm="mmbatchd"')])
            return
        try:
            answer = routes.handle(srv.view, self.command, self.path, body)
        except Exception as e:  # a bug answers 500, never kills the listener
            log.exception("API %s %s: %s", self.command, self.path, e)
            answer = routes.error(500, f"internal error: {type(e).__name__}")
        self._send(answer)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _dispatch


class _TcpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class ApiServer:
    """Both listeners around one DaemonView; start() binds, stop() closes."""

    def __init__(self, view: Any, socket_file: str = "", listen: str = "", token: str = "") -> None:
        self.view = view
        self.socket_file = socket_file
        self.listen = listen
        self.token = token
        self._servers: List[socketserver.BaseServer] = []
        self._threads: List[threading.Thread] = []
        self.tcp_address: Optional[Tuple[str, int]] = None

    @classmethod
    def from_config(cls, view: Any, cfg: config_mod.Config) -> ApiServer:
        token = read_token(cfg.api.token_file) if cfg.api.token_file and cfg.api.listen else ""
        return cls(view, socket_path(cfg), cfg.api.listen if token else "", token)

    def _serve(self, srv: socketserver.BaseServer, name: str) -> None:
        srv.view = self.view  # type: ignore[attr-defined]
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.5}, name=name, daemon=True)
        t.start()
        self._servers.append(srv)
        self._threads.append(t)

    def start(self) -> ApiServer:
        if self.socket_file:
            self._serve(self._bind_unix(self.socket_file), "api-unix")
            log.info("node API on unix socket %s", self.socket_file)
        if self.listen:
            if not self.token:
                raise ConfigError("the TCP API needs a token", key="api.token_file")
            host, port = parse_listen(self.listen)
            try:
                srv = _TcpServer((host, port), _Handler)
            except OSError as e:
                raise MmbatchError(f"cannot listen on {self.listen}: {e.strerror}",
                                   hint="free the port or change [api] listen") from e
            srv.token, srv.token_required = self.token, True  # type: ignore[attr-defined]
            self.tcp_address = srv.server_address[:2]  # type: ignore[assignment]
            self._serve(srv, "api-tcp")
            log.info("node API on http://%s:%d (token required)", *self.tcp_address)
        return self

    def _bind_unix(self, path: str) -> _UnixServer:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise MmbatchError(f"another mmbatchd serves {path}", hint="stop it first")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # left by a daemon that died
            finally:
                probe.close()
        old = os.umask(0o177)
        try:
            srv = _UnixServer(path, _Handler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        srv.token, srv.token_required = self.token, False  # type: ignore[attr-defined]
        return srv

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(5)
        if self.socket_file:
            try:
                os.unlink(self.socket_file)
            except OSError:
                pass
        self._servers, self._threads = [], []
