"""Who may see the dashboard: the admin token, signed session cookies, dev mode.

- The admin token lives in a file readable by its owner only (0600); it
  signs in through the login form, or as `Authorization: Bearer <token>` for
  scripts (CSV and JSON exports).
- A session is a cookie `mmbatch_session` = payload.HMAC-SHA256(payload),
  with a key drawn at server start (a restart signs everyone out). It is
  HttpOnly, SameSite=Lax (Cognito's redirect back is a top-level GET, which
  Lax allows; cross-site POSTs do not carry it) and Secure when the server's
  public URL is https.
- The OIDC login keeps its `state` and `nonce` in a second signed cookie,
  `mmbatch_oidc`, valid ten minutes.
- Dev mode (no login at all) is allowed only on a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from mmbatch.server.errors import AuthError, ServerError
from mmbatch.server.jwt import b64url_decode, b64url_encode
from mmbatch.server.oidc import Identity

SESSION_COOKIE = "mmbatch_session"
OIDC_COOKIE = "mmbatch_oidc"
OIDC_COOKIE_SECONDS = 600
MIN_TOKEN_LENGTH = 16


def read_secret_file(path: str, what: str, min_length: int = 1) -> str:
    """The secret in `path` (stripped): the file must be readable by its owner only (no group or
    other bits) and not a symbolic link. ServerError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise ServerError(f"cannot read the {what} file {path}: {e.strerror}",
                          hint="create it with e.g. `openssl rand -hex 32 > FILE; chmod 600 FILE`") from e
    try:
        st = os.fstat(fd)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ServerError(f"{what} file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o})",
                              hint=f"chmod 600 {path}")
        data = os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if len(data) < min_length:
        raise ServerError(f"{what} in {path} is shorter than {min_length} characters",
                          hint="use a random token, e.g. `openssl rand -hex 32`" if min_length > 1 else None)
    return data


def read_admin_token(path: str) -> str:
    """The admin token in `path`: owner-only permissions, at least 16 characters."""
    return read_secret_file(path, "admin token", MIN_TOKEN_LENGTH)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (of digests, so lengths do not leak either)."""
    return hmac.compare_digest(hashlib.sha256(given.encode("utf-8", "replace")).digest(),
                               hashlib.sha256(expected.encode("utf-8")).digest())


class Signer:
    """Signed, expiring JSON values for cookies."""

    def __init__(self, key: Optional[bytes] = None, clock: Callable[[], float] = time.time) -> None:
        self._key = key or secrets.token_bytes(32)
        self._clock = clock

    def sign(self, data: Dict[str, Any], seconds: float) -> str:
        body = dict(data)
        body["exp"] = int(self._clock() + seconds)
        payload = b64url_encode(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
        mac = hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest()
        return f"{payload}.{b64url_encode(mac)}"

    def unsign(self, value: Optional[str]) -> Optional[Dict[str, Any]]:
        """The data, or None when the value is missing, forged or expired."""
        if not value or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        want = hmac.new(self._key, payload.encode("ascii", "replace"), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(b64url_decode(mac), want):
                return None
            data = json.loads(b64url_decode(payload))
        except (AuthError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int) or data["exp"] < self._clock():
            return None
        return data


def cookie_header(name: str, value: str, max_age: int, secure: bool) -> str:
    parts = [f"{name}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def parse_cookies(header: Optional[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in out:
            out[name] = value.strip()
    return out


@dataclass
class AuthPolicy:
    """How this server signs people in (decided at start from [server])."""

    admin_token: str = ""
    cognito: Any = None  # an oidc.CognitoLogin, or None
    dev: bool = False
    session_seconds: int = 8 * 3600
    secure_cookies: bool = False

    @property
    def login_needed(self) -> bool:
        return not self.dev

    def check(self, listen_host: str) -> None:
        if self.dev:
            if not is_loopback(listen_host):
                raise ServerError(f"dev mode (no login) listens only on a loopback address, not {listen_host}",
                                  hint="listen on 127.0.0.1, or set admin_token_file or the cognito_* keys")
            return
        if not self.admin_token and self.cognito is None:
            raise ServerError("no login is configured",
                              hint="set server.admin_token_file, or the server.cognito_* keys, "
                                   "or server.dev = true on 127.0.0.1 for development")

    def identity_from_session(self, signer: Signer, cookie: Optional[str]) -> Optional[Identity]:
        data = signer.unsign(cookie)
        if not data or data.get("kind") != "session":
            return None
        return Identity(subject=str(data.get("sub", "")), username=str(data.get("name", "")),
                        email=str(data.get("email", "")), via=str(data.get("via", "")))

    def identity_from_bearer(self, header: Optional[str]) -> Optional[Identity]:
        if not self.admin_token or not header or not header.startswith("Bearer "):
            return None
        if token_matches(header[len("Bearer "):].strip(), self.admin_token):
            return Identity(subject="admin", username="admin", email="", via="token")
        return None

    def session_cookie(self, signer: Signer, who: Identity) -> str:
        value = signer.sign({"kind": "session", "sub": who.subject, "name": who.username, "email": who.email,
                             "via": who.via}, self.session_seconds)
        return cookie_header(SESSION_COOKIE, value, self.session_seconds, self.secure_cookies)
