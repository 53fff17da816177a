"""A fake Amazon Cognito user pool and hosted UI on 127.0.0.1, for the server's login tests.

It speaks Cognito's endpoints and JSON, as far as an OIDC confidential
client uses them:

- `GET /oauth2/authorize?response_type=code&client_id&redirect_uri&scope&state&nonce`:
  an unknown client or a redirect URI that is not the client's callback URL
  is a 400 page (Cognito does not redirect to an unregistered URI); a bad
  response_type or a scope without openid redirects back with
  `error=unsupported_response_type` / `error=invalid_scope`; otherwise a 302
  to the hosted UI's `/login` with the same query.
- `GET /login` is the sign-in form; `POST /login` (username, password and
  the query) redirects to `redirect_uri?code=..&state=..` (a wrong password
  shows the form again).
- `POST /oauth2/token` (application/x-www-form-urlencoded,
  `Authorization: Basic base64(client_id:client_secret)` for a client with
  a secret): `grant_type=authorization_code&code&redirect_uri&client_id` →
  `{"id_token", "access_token", "refresh_token", "expires_in": 3600,
  "token_type": "Bearer"}`; a bad client is 400 `{"error": "invalid_client"}`,
  an unknown, used or expired code or another redirect URI 400
  `{"error": "invalid_grant"}`. Codes are single-use.
- `GET /<pool id>/.well-known/jwks.json`: the pool's RS256 keys (the issuer is
  `<base URL>/<pool id>`, so `cognito_idp_endpoint` is this server's URL).
- `GET /logout?client_id&logout_uri` → 302 to logout_uri.

Tokens are RS256 JWTs signed with a key made here (pure Python RSA).
`id_token_overrides` lets a test spoil the next tokens (another audience,
issuer, an expired one, a signature of another key).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

from mmbatch.server.jwt import b64url_encode, pkcs1_v15_sha256_encoding

# -- RSA test keys ------------------------------------------------------------------------

_SMALL_PRIMES = [p for p in range(3, 2000, 2) if all(p % q for q in range(3, int(p ** 0.5) + 1, 2))]


def _probably_prime(n: int, rounds: int = 24) -> bool:
    if n < 2:
        return False
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for _ in range(rounds):
        a = secrets.randbelow(n - 3) + 2
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if _probably_prime(candidate):
            return candidate


class RsaTestKey:
    """A 2048-bit RSA key pair for signing test tokens (RS256)."""

    def __init__(self, kid: Optional[str] = None, bits: int = 2048, e: int = 65537) -> None:
        while True:
            p, q = _prime(bits // 2), _prime(bits // 2)
            n = p * q
            phi = (p - 1) * (q - 1)
            if p != q and n.bit_length() == bits and phi % e:
                break
        self.n, self.e, self.d = n, e, pow(e, -1, phi)
        self.kid = kid or secrets.token_hex(8)

    @property
    def size(self) -> int:
        return (self.n.bit_length() + 7) // 8

    def jwk(self) -> Dict[str, str]:
        def b64(i: int) -> str:
            return b64url_encode(i.to_bytes((i.bit_length() + 7) // 8, "big"))

        return {"alg": "RS256", "e": b64(self.e), "kid": self.kid, "kty": "RSA", "n": b64(self.n), "use": "sig"}

    def sign(self, message: bytes) -> bytes:
        em = pkcs1_v15_sha256_encoding(message, self.size)
        return pow(int.from_bytes(em, "big"), self.d, self.n).to_bytes(self.size, "big")

    def token(self, claims: Dict[str, Any], header: Optional[Dict[str, Any]] = None) -> str:
        head = {"alg": "RS256", "kid": self.kid, "typ": "JWT"}
        head.update(header or {})
        signing_input = (b64url_encode(json.dumps(head, separators=(",", ":")).encode()) + "."
                         + b64url_encode(json.dumps(claims, separators=(",", ":")).encode()))
        return signing_input + "." + b64url_encode(self.sign(signing_input.encode("ascii")))


# -- the fake service ------------------------------------------------------------------------


class FakeCognito:
    """One user pool with one app client (and a secret), served on a thread."""

    def __init__(self, user_pool_id: str = "us-east-1_TestPool1", client_id: str = "testclient0123456789",
                 client_secret: str = "s3cret-of-the-app-client", callback_urls: Optional[List[str]] = None,
                 users: Optional[Dict[str, str]] = None, key: Optional[RsaTestKey] = None) -> None:
        self.user_pool_id = user_pool_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.callback_urls = list(callback_urls or [])
        self.users = dict(users or {"alice": "correct horse battery"})
        self.key = key or RsaTestKey()
        self.signing_key: RsaTestKey = self.key  # a test may sign with another key
        self.id_token_overrides: Dict[str, Any] = {}
        self.codes: Dict[str, Dict[str, Any]] = {}
        self.requests: List[Dict[str, Any]] = []  # token requests: headers and form, for assertions
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self  # type: ignore[attr-defined]
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/{self.user_pool_id}"

    def start(self) -> FakeCognito:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="fake-cognito")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def id_token(self, username: str, nonce: Optional[str], now: Optional[float] = None) -> str:
        now = time.time() if now is None else now
        sub = str(hashlib.sha256(username.encode()).hexdigest()[:8]) + "-1111-2222-3333-444455556666"
        claims: Dict[str, Any] = {
            "sub": sub, "aud": self.client_id, "email_verified": True, "token_use": "id",
            "auth_time": int(now), "iss": self.issuer, "cognito:username": username, "exp": int(now) + 3600,
            "iat": int(now), "jti": secrets.token_hex(16), "origin_jti": secrets.token_hex(16),
            "email": f"{username}@example.com", "event_id": secrets.token_hex(16),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(self.id_token_overrides)
        return self.signing_key.token(claims)

    def access_token(self, username: str, now: Optional[float] = None) -> str:
        now = time.time() if now is None else now
        return self.signing_key.token({
            "sub": username, "iss": self.issuer, "client_id": self.client_id, "origin_jti": secrets.token_hex(8),
            "token_use": "access", "scope": "openid email", "auth_time": int(now), "exp": int(now) + 3600,
            "iat": int(now), "jti": secrets.token_hex(8), "username": username})

    def issue_code(self, username: str, redirect_uri: str, nonce: Optional[str]) -> str:
        code = secrets.token_urlsafe(24)
        with self._lock:
            self.codes[code] = {"username": username, "redirect_uri": redirect_uri, "nonce": nonce,
                                "client_id": self.client_id, "expires": time.time() + 300}
        return code


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def fake(self) -> FakeCognito:
        return self.server.fake  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _send(self, status: int, body: bytes, ctype: str, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Dict[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json;charset=UTF-8")

    def _redirect(self, location: str) -> None:
        self._send(302, b"", "text/plain", {"Location": location})

    def _authorize_problem(self, q: Dict[str, str]) -> Optional[str]:
        """None when the request may go on; the 400 page's text otherwise."""
        if q.get("client_id") != self.fake.client_id:
            return "invalid_client"
        if q.get("redirect_uri") not in self.fake.callback_urls:
            return "redirect_mismatch"
        return None

    def do_GET(self) -> None:  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        fake = self.fake
        if url.path == f"/{fake.user_pool_id}/.well-known/jwks.json":
            self._json(200, {"keys": [fake.key.jwk()]})
        elif url.path == "/oauth2/authorize":
            problem = self._authorize_problem(q)
            if problem:
                self._send(400, f"<html><body>An error was encountered: {problem}</body></html>".encode(),
                           "text/html;charset=UTF-8")
                return
            back = q["redirect_uri"]
            state = {"state": q["state"]} if "state" in q else {}
            if q.get("response_type") != "code":
                self._redirect(back + "?" + urllib.parse.urlencode({"error": "unsupported_response_type", **state}))
            elif "openid" not in q.get("scope", "").split():
                self._redirect(back + "?" + urllib.parse.urlencode({"error": "invalid_scope", **state}))
            else:
                self._redirect("/login?" + url.query)
        elif url.path == "/login":
            self._login_form(q, "")
        elif url.path == "/logout":
            if q.get("client_id") != fake.client_id or not q.get("logout_uri"):
                self._send(400, b"<html><body>An error was encountered: invalid_request</body></html>",
                           "text/html;charset=UTF-8")
                return
            self._redirect(q["logout_uri"])
        else:
            self._send(404, b"not found", "text/plain")

    def _login_form(self, q: Dict[str, str], error: str) -> None:
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in q.items())
        body = (f"<!DOCTYPE html><html><head><title>Signin</title></head><body><h1>Sign in</h1>"
                f"{'<p class=error>' + html.escape(error) + '</p>' if error else ''}"
                f'<form method="post" action="/login" id="signin">{hidden}'
                '<input name="username" id="username"><input name="password" id="password" type="password">'
                '<button type="submit" id="submit">Sign in</button></form></body></html>')
        self._send(200 if not error else 401, body.encode(), "text/html;charset=UTF-8")

    def do_POST(self) -> None:  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
        fake = self.fake
        if url.path == "/login":
            q = {k: v for k, v in form.items() if k not in ("username", "password")}
            if self._authorize_problem(q):
                self._send(400, b"<html><body>An error was encountered</body></html>", "text/html;charset=UTF-8")
                return
            user = form.get("username", "")
            if fake.users.get(user) != form.get("password"):
                self._login_form(q, "Incorrect username or password.")
                return
            code = fake.issue_code(user, q["redirect_uri"], q.get("nonce"))
            params = {"code": code}
            if "state" in q:
                params["state"] = q["state"]
            self._redirect(q["redirect_uri"] + "?" + urllib.parse.urlencode(params))
        elif url.path == "/oauth2/token":
            self._token(form)
        else:
            self._send(404, b"not found", "text/plain")

    def _token(self, form: Dict[str, str]) -> None:
        fake = self.fake
        with fake._lock:
            fake.requests.append({"headers": dict(self.headers.items()), "form": dict(form)})
        if not (self.headers.get("Content-Type") or "").startswith("application/x-www-form-urlencoded"):
            self._json(400, {"error": "invalid_request"})
            return
        auth = self.headers.get("Authorization") or ""
        client_id = form.get("client_id", "")
        if auth.startswith("Basic "):
            try:
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                cid, secret = "", ""
            if cid != fake.client_id or secret != fake.client_secret:
                self._json(400, {"error": "invalid_client"})
                return
            client_id = client_id or cid
        elif fake.client_secret:  # a client with a secret must authenticate
            self._json(400, {"error": "invalid_client"})
            return
        if client_id != fake.client_id:
            self._json(400, {"error": "invalid_client"})
            return
        if form.get("grant_type") != "authorization_code":
            self._json(400, {"error": "unsupported_grant_type"})
            return
        with fake._lock:
            grant = fake.codes.pop(form.get("code", ""), None)  # single use
        if grant is None or grant["expires"] < time.time() or grant["redirect_uri"] != form.get("redirect_uri"):
            self._json(400, {"error": "invalid_grant"})
            return
        self._json(200, {"id_token": fake.id_token(grant["username"], grant["nonce"]),
                         "access_token": fake.access_token(grant["username"]),
                         "refresh_token": secrets.token_urlsafe(48), "expires_in": 3600, "token_type": "Bearer"})
