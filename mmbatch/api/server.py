"""The node API's listeners: HTTP over TCP (127.0.0.1 by default) with a
bearer token always required, and HTTP over a unix socket (mode 0600, owner
only, no token).

Batch jobs run with host networking and reach 127.0.0.1: without a token
file the TCP listener is not opened at all. Tokens are compared in constant
time (hmac.compare_digest).
"""

from __future__ import annotations

import hashlib
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
    """The token in `path` (first line, stripped). ConfigError when unusable: unreadable,
    shorter than 16 characters, or open to every user (group access, e.g. an operators'
    group, is allowed with a warning)."""
    try:
        with open(path, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the API token: {getattr(e, 'strerror', None) or e}", path=path,
                          key="api.token_file") from e
    if st.st_mode & stat.S_IRWXO:
        raise ConfigError(f"the API token file is open to every user (mode {stat.S_IMODE(st.st_mode):o})",
                          path=path, key="api.token_file", hint=f"chmod 600 {path}")
    if len(token) < 16:
        raise ConfigError("the API token must be at least 16 characters", path=path, key="api.token_file",
                          hint="e.g. `openssl rand -hex 32 > FILE; chmod 600 FILE`")
    if st.st_mode & stat.S_IRWXG:
        log.warning("API token file %s is readable by its group: chmod 600 it unless that is meant", path)
    return token


def token_matches(expected: str, header: Optional[str]) -> bool:
    """`Authorization: Bearer <token>` against the expected token, in constant time
    (digests are compared, so the token's length does not leak either)."""
    if not expected or not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(hashlib.sha256(given.strip().encode("utf-8", "replace")).digest(),
                               hashlib.sha256(expected.encode("utf-8")).digest())


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
        self._unix_bound = False  # the socket file is ours to remove
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
        """Bind and serve. A unix socket that cannot be served raises MmbatchError; a TCP port
        that is taken is logged and only the unix socket is served (tcp_address stays None)."""
        if self.listen and not self.token:
            raise ConfigError("the TCP API needs a token", key="api.token_file")
        if self.socket_file:
            self._serve(self._bind_unix(self.socket_file), "api-unix")
            self._unix_bound = True
            log.info("node API on unix socket %s", self.socket_file)
        if self.listen:
            host, port = parse_listen(self.listen)
            try:
                srv = _TcpServer((host, port), _Handler)
            except OSError as e:
                log.error("node API: cannot listen on %s (%s): free the port or change [api] listen; "
                          "serving only the unix socket", self.listen, e.strerror)
                return self
            srv.token, srv.token_required = self.token, True  # type: ignore[attr-defined]
            self.tcp_address = srv.server_address[:2]  # type: ignore[assignment]
            self._serve(srv, "api-tcp")
            log.info("node API on http://%s:%d (token required)", *self.tcp_address)
        return self

    def _bind_unix(self, path: str) -> _UnixServer:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise MmbatchError(f"{path} exists and is not a socket", hint="remove it or change [api] socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise MmbatchError(f"another mmbatchd serves {path}", hint="stop it first")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # left by a daemon that died
            finally:
                probe.close()
        # bind, chmod, then listen: nobody can connect before the mode is 0600 (a bound socket
        # that does not listen refuses connections), and the process-wide umask is left alone
        # (other threads of the daemon create files meanwhile).
        srv = _UnixServer(path, _Handler, bind_and_activate=False)
        try:
            srv.server_bind()
            os.chmod(path, 0o600)
            srv.server_activate()
        except OSError as e:
            srv.server_close()
            raise MmbatchError(f"cannot serve the API on {path}: {e.strerror}") from e
        srv.token, srv.token_required = self.token, False  # type: ignore[attr-defined]
        return srv

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(5)
        if self._unix_bound:  # never another daemon's socket
            try:
                os.unlink(self.socket_file)
            except OSError:
                pass
        self._servers, self._threads, self._unix_bound = [], [], False
