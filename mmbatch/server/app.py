"""The management server's HTTP side: routes, login gate, security headers.

stdlib only (http.server's ThreadingHTTPServer). Pages need a session (or
dev mode); CSV and JSON exports also take `Authorization: Bearer <admin
token>`. Unauthenticated page requests are sent to /login, API requests get
401. In dev mode (no login) only requests naming a loopback host are
answered, so a DNS-rebound site cannot read the pages. POSTs need an Origin
(or, without one, a Referer) of this server. Every response forbids framing
and sniffing, sends referrers only to this server (the OIDC callback URL
carries a code; same-origin keeps the Origin header that POSTs are checked
against) and is not cached; pages may load only the server's own script
and stylesheet.

Routes: / (overview), /jobs (?queue=&state=), /jobs/<job key>, /jobs.csv,
/nodes, /nodes.csv, /cost, /api/summary, /api/jobs/<job key>, /healthz,
/login, /login/cognito, /auth/callback, /logout, /static/<file>.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

from mmbatch.server import pages, reports
from mmbatch.server.auth import (
    OIDC_COOKIE,
    OIDC_COOKIE_SECONDS,
    SESSION_COOKIE,
    AuthPolicy,
    Signer,
    cookie_header,
    is_loopback,
    parse_cookies,
    token_matches,
)
from mmbatch.server.cache import JOB_COLUMNS, Cache
from mmbatch.server.errors import AuthError
from mmbatch.server.model import STATES, Prices
from mmbatch.server.oidc import Identity
from mmbatch.server.sync import Syncer

log = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
MAX_FORM_BYTES = 8192
FAILED_LOGIN_DELAY = 0.5

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'{extra}; frame-ancestors 'none'; base-uri 'none'")
DEV_IDENTITY = Identity(subject="dev", username="dev mode", email="", via="dev")


def safe_next(value: Optional[str]) -> str:
    """A local path to go to after login; anything else (another site) becomes "/".

    Browsers drop tabs and newlines from URLs and read a backslash as a slash,
    so "/<tab>/evil.example" would become "//evil.example": control characters
    and backslashes are refused outright.
    """
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or \
            any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "/"
    return value


def host_of(header: Optional[str]) -> str:
    """The host name of a Host header value ("127.0.0.1:8090", "[::1]:80", "localhost")."""
    value = (header or "").strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Dashboard:
    """Everything a request handler needs: the cache, its syncer, the login policy, prices."""

    def __init__(self, cache: Cache, syncer: Syncer, policy: AuthPolicy, prices: Prices,
                 public_url: str = "", signer: Optional[Signer] = None) -> None:
        self.cache = cache
        self.syncer = syncer
        self.policy = policy
        self.prices = prices
        self.public_url = public_url
        self.signer = signer or Signer()

    @property
    def csp(self) -> str:
        """The Content-Security-Policy; signing out of Cognito is a form post redirected to its domain."""
        extra = ""
        if self.policy.cognito is not None:
            parts = urllib.parse.urlsplit(self.policy.cognito.client.domain)
            extra = f" {parts.scheme}://{parts.netloc}"
        return CSP.format(extra=extra)


class _Handler(BaseHTTPRequestHandler):
    server_version = "mmbatch-server"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> Dashboard:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)

    # -- responses ---------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: Optional[Dict[str, str]] = None,
              cookies: Tuple[str, ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Security-Policy", self.app.csp)
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        for c in cookies:
            self.send_header("Set-Cookie", c)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _html(self, status: int, text: str, cookies: Tuple[str, ...] = ()) -> None:
        self._send(status, text.encode("utf-8"), "text/html; charset=utf-8", cookies=cookies)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc, sort_keys=True, default=str).encode("utf-8"), "application/json")

    def _redirect(self, location: str, cookies: Tuple[str, ...] = (), status: int = 303) -> None:
        self._send(status, b"", "text/plain", headers={"Location": location}, cookies=cookies)

    def _csv(self, name: str, columns: Tuple[str, ...], rows: Any) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else _csv_cell(r.get(c)) for c in columns])
        self._send(200, buf.getvalue().encode("utf-8"), "text/csv; charset=utf-8",
                   headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # -- who is asking -----------------------------------------------------------------

    def _cookies(self) -> Dict[str, str]:
        return parse_cookies(self.headers.get("Cookie"))

    def _identity(self) -> Optional[Identity]:
        policy = self.app.policy
        if not policy.login_needed:
            return DEV_IDENTITY
        who = policy.identity_from_session(self.app.signer, self._cookies().get(SESSION_COOKIE))
        return who or policy.identity_from_bearer(self.headers.get("Authorization"))

    def _same_origin(self) -> bool:
        """POSTs must come from our own pages (SameSite=Lax already keeps the session cookie off
        cross-site POSTs; this also covers the login form). Browsers send Origin with every POST;
        without it the Referer must be ours, and with neither (not a browser) the POST may go on."""
        host = self.headers.get("Host", "")
        origin = self.headers.get("Origin")
        if origin is not None:
            return origin != "null" and urllib.parse.urlsplit(origin).netloc == host
        referer = self.headers.get("Referer")
        if referer is not None:
            return urllib.parse.urlsplit(referer).netloc == host
        return True

    def _host_allowed(self) -> bool:
        """In dev mode (no login) only loopback host names: a page of another site whose name
        is re-bound to 127.0.0.1 (DNS rebinding) must not read the dashboard."""
        if self.app.policy.login_needed:
            return True
        host = host_of(self.headers.get("Host"))
        return is_loopback(host) or host == urllib.parse.urlsplit(self.app.public_url).hostname

    # -- dispatch ----------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("GET %s failed", self.path)
            self._html(500, pages.error_page(500, "internal error (see the server log)"))

    def do_POST(self) -> None:  # noqa: N802
        try:
            self._post()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("POST %s failed", self.path)
            self._html(500, pages.error_page(500, "internal error (see the server log)"))

    def _get(self) -> None:
        if not self._host_allowed():
            self._html(421, pages.error_page(421, "this server answers only to a loopback host name in dev mode"))
            return
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
            return
        if path.startswith("/static/"):
            self._static(path[len("/static/"):])
            return
        if path == "/login":
            self._login_form(safe_next(_one(query, "next")))
            return
        if path == "/login/cognito":
            self._cognito_start(safe_next(_one(query, "next")))
            return
        if path == "/auth/callback":
            self._cognito_callback(query)
            return
        who = self._identity()
        if who is None:
            if path.startswith("/api/") or path.endswith(".csv"):
                self._send(401, b'{"error": "login required"}', "application/json",
                           headers={"WWW-Authenticate": 'Bearer realm="mmbatch"'})
            else:
                self._redirect("/login?next=" + urllib.parse.quote(safe_next(self.path), safe=""))
            return
        self._page(path, query, who)

    def _page(self, path: str, query: Dict[str, Any], who: Identity) -> None:
        app = self.app
        cache = app.cache
        user = who.username if who.via != "dev" else pages.DEV_USER
        synced = cache.meta("synced_at")
        status = pages.sync_status(float(synced) if synced else None, app.syncer.last_error)
        if path == "/":
            body = pages.dashboard(reports.totals(cache), reports.queues(cache), reports.activity(cache),
                                   reports.cost(cache, app.prices))
            self._html(200, pages.layout("Overview", body, active="/", user=user, status=status))
        elif path == "/jobs":
            queue = _one(query, "queue")
            state = _one(query, "state")
            queue = queue if queue else None
            state = state if state in STATES else None
            rows = reports.jobs(cache, queue=queue, state=state)
            names = [q["job_queue"] for q in reports.queues(cache)]
            self._html(200, pages.layout("Jobs", pages.jobs_page(rows, queue, state, names), active="/jobs",
                                         user=user, status=status))
        elif path.startswith("/jobs/"):
            key = urllib.parse.unquote(path[len("/jobs/"):])
            j = reports.job(cache, key)
            if j is None:
                self._html(404, pages.layout("Not found", f"<p>No job {pages.esc(key)} in the store.</p>", user=user))
                return
            self._html(200, pages.layout(f"Job {key}", pages.job_page(j), active="/jobs", user=user, status=status))
        elif path == "/jobs.csv":
            self._csv("jobs.csv", JOB_COLUMNS, reports.jobs(cache))
        elif path == "/nodes":
            self._html(200, pages.layout("Nodes", pages.nodes_page(reports.nodes(cache)), active="/nodes",
                                         user=user, status=status))
        elif path == "/nodes.csv":
            self._csv("nodes.csv", reports.NODE_COLUMNS, reports.nodes(cache))
        elif path == "/cost":
            self._html(200, pages.layout("Cost", pages.cost_page(reports.cost(cache, app.prices)), active="/cost",
                                         user=user, status=status))
        elif path == "/api/summary":
            self._json(200, {"totals": reports.totals(cache), "queues": reports.queues(cache),
                             "cost": reports.cost(cache, app.prices), "synced_at": synced,
                             "sync_error": app.syncer.last_error})
        elif path.startswith("/api/jobs/"):
            j = reports.job(cache, urllib.parse.unquote(path[len("/api/jobs/"):]))
            if j is None:
                self._json(404, {"error": "no such job"})
            else:
                self._json(200, j)
        else:
            self._html(404, pages.layout("Not found", "<p>No such page.</p>", user=user))

    def _static(self, name: str) -> None:
        ext = os.path.splitext(name)[1]
        if "/" in name or "\0" in name or name.startswith(".") or ext not in STATIC_TYPES:
            self._send(404, b"not found\n", "text/plain")
            return
        try:
            with open(os.path.join(STATIC_DIR, name), "rb") as f:
                data = f.read()
        except OSError:
            self._send(404, b"not found\n", "text/plain")
            return
        self._send(200, data, STATIC_TYPES[ext])

    # -- login -------------------------------------------------------------------------

    def _login_form(self, next_path: str, error: str = "", status: int = 200) -> None:
        policy = self.app.policy
        if not policy.login_needed:
            self._redirect(next_path)
            return
        self._html(status, pages.login_page(bool(policy.admin_token), policy.cognito is not None, error, next_path))

    def _post(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if not self._host_allowed():
            self.close_connection = True
            self._html(421, pages.error_page(421, "this server answers only to a loopback host name in dev mode"))
            return
        if not self._same_origin():
            self.close_connection = True  # the body is left unread
            self._html(403, pages.error_page(403, "cross-site request refused"))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_FORM_BYTES:
            self.close_connection = True  # a negative length would read until the client hangs up
            self._html(413 if length > 0 else 400, pages.error_page(413 if length > 0 else 400,
                                                                    "bad or too large Content-Length"))
            return
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace")) if length else {}
        if path == "/login":
            policy = self.app.policy
            next_path = safe_next(_one(form, "next"))
            token = _one(form, "token") or ""
            if policy.admin_token and token_matches(token, policy.admin_token):
                who = Identity(subject="admin", username="admin", email="", via="token")
                self._redirect(next_path, cookies=(policy.session_cookie(self.app.signer, who),))
                return
            time.sleep(FAILED_LOGIN_DELAY)  # slows guessing; the token is long and random anyway
            log.warning("failed admin login from %s", self.address_string())
            self._login_form(next_path, "Wrong admin token.", status=401)
        elif path == "/logout":
            who = self._identity()
            clear = cookie_header(SESSION_COOKIE, "", 0, self.app.policy.secure_cookies)
            cognito = self.app.policy.cognito
            if who is not None and who.via == "cognito" and cognito is not None:
                self._redirect(cognito.client.logout_url(self.app.public_url.rstrip("/") + "/login"), cookies=(clear,))
            else:
                self._redirect("/login", cookies=(clear,))
        else:
            self._html(404, pages.error_page(404, "no such page"))

    def _cognito_start(self, next_path: str) -> None:
        cognito = self.app.policy.cognito
        if cognito is None:
            self._login_form(next_path, "Cognito login is not configured.", status=404)
            return
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        value = self.app.signer.sign({"kind": "oidc", "state": state, "nonce": nonce, "next": next_path},
                                     OIDC_COOKIE_SECONDS)
        cookie = cookie_header(OIDC_COOKIE, value, OIDC_COOKIE_SECONDS, self.app.policy.secure_cookies)
        self._redirect(cognito.client.authorize_url(state, nonce), cookies=(cookie,), status=302)

    def _cognito_callback(self, query: Dict[str, Any]) -> None:
        policy = self.app.policy
        cognito = policy.cognito
        clear = cookie_header(OIDC_COOKIE, "", 0, policy.secure_cookies)
        pending = self.app.signer.unsign(self._cookies().get(OIDC_COOKIE))
        if cognito is None:
            self._login_form("/", "Cognito login is not configured.", status=404)
            return
        if _one(query, "error"):
            self._html(401, pages.login_page(bool(policy.admin_token), True,
                                             f"Cognito refused the login: {_one(query, 'error')} "
                                             f"{_one(query, 'error_description') or ''}"), cookies=(clear,))
            return
        state, code = _one(query, "state") or "", _one(query, "code") or ""
        if not pending or pending.get("kind") != "oidc" or not state or not code or \
                not token_matches(state, str(pending.get("state", ""))):
            self._html(401, pages.login_page(bool(policy.admin_token), True,
                                             "The login expired or did not start here: sign in again."),
                       cookies=(clear,))
            return
        try:
            who = cognito.complete(code, str(pending.get("nonce", "")))
        except AuthError as e:
            log.warning("Cognito login refused: %s", e)
            self._html(401, pages.login_page(bool(policy.admin_token), True, f"Login refused: {e.message}"),
                       cookies=(clear,))
            return
        log.info("signed in through Cognito: %s (%s)", who.username, who.subject)
        self._redirect(safe_next(str(pending.get("next", "/"))),
                       cookies=(clear, policy.session_cookie(self.app.signer, who)))


def _csv_cell(v: Any) -> Any:
    """Text that a spreadsheet would run as a formula is quoted (CSV injection)."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def _one(query: Dict[str, Any], name: str) -> Optional[str]:
    values = query.get(name)
    return values[0] if values else None


class DashboardServer:
    """A ThreadingHTTPServer serving a Dashboard on (host, port); port 0 picks a free one."""

    def __init__(self, app: Dashboard, host: str, port: int) -> None:
        self.app = app
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.app = app  # type: ignore[attr-defined]
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="mmbatch-server-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
