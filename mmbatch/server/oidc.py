"""Amazon Cognito login: the OIDC authorization-code flow, as a confidential client.

1. The browser is sent to `<domain>/oauth2/authorize?response_type=code&
   client_id=..&redirect_uri=..&scope=openid email&state=..&nonce=..`;
   `state` and `nonce` are random and kept in a short-lived signed cookie.
2. Cognito's hosted UI signs the user in and redirects to `redirect_uri`
   with `code` and `state`; the server checks `state` against the cookie.
3. The server exchanges the code at `<domain>/oauth2/token` (form body,
   `Authorization: Basic` with the client id and secret when there is a
   secret) and gets `{"id_token", "access_token", "refresh_token",
   "expires_in", "token_type": "Bearer"}`.
4. The id token is verified against the user pool's key set at
   `https://cognito-idp.<region>.amazonaws.com/<pool id>/.well-known/jwks.json`:
   RS256 signature, `iss` (that URL without the suffix), `aud` (the client
   id), `token_use` "id", `exp`, and `nonce`.

Only the identity (`sub`, `email`, `cognito:username`) is kept, in the
server's own session cookie; Cognito's tokens are not stored.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from mmbatch.server import jwt
from mmbatch.server.errors import AuthError, TokenInvalid

JWKS_REFRESH_SECONDS = 3600.0
JWKS_MIN_REFETCH_SECONDS = 30.0
HTTP_TIMEOUT = 10.0

Fetch = Callable[[urllib.request.Request], Tuple[int, bytes]]


def _http(req: urllib.request.Request) -> Tuple[int, bytes]:
    """(status, body) of one request; no proxies from the environment, no redirects followed."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(req, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, resp.read(1 << 20)
    except urllib.error.HTTPError as e:
        return e.code, e.read(1 << 20)
    except (urllib.error.URLError, OSError) as e:
        raise AuthError(f"cannot reach {req.full_url.split('?')[0]}: {getattr(e, 'reason', e)}",
                        hint="check the Cognito settings in [server] and the network path") from e


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def domain_url(domain: str, region: str) -> str:
    """The hosted UI's base URL from `cognito_domain`: a full URL, a host name, or a Cognito prefix."""
    domain = domain.strip().rstrip("/")
    if domain.startswith(("https://", "http://")):
        return domain
    if "." in domain:
        return f"https://{domain}"
    return f"https://{domain}.auth.{region}.amazoncognito.com"


@dataclass(frozen=True)
class CognitoClient:
    """One app client of one user pool, and where the server receives the code."""

    region: str
    user_pool_id: str
    client_id: str
    client_secret: str
    domain: str  # base URL of the hosted UI (see domain_url)
    redirect_uri: str
    idp_endpoint: str = ""  # default https://cognito-idp.<region>.amazonaws.com
    scope: str = "openid email"

    @property
    def issuer(self) -> str:
        base = (self.idp_endpoint or f"https://cognito-idp.{self.region}.amazonaws.com").rstrip("/")
        return f"{base}/{self.user_pool_id}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"

    def authorize_url(self, state: str, nonce: str) -> str:
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
            "scope": self.scope, "state": state, "nonce": nonce,
        }, quote_via=urllib.parse.quote)
        return f"{self.domain}/oauth2/authorize?{query}"

    def logout_url(self, logout_uri: str) -> str:
        query = urllib.parse.urlencode({"client_id": self.client_id, "logout_uri": logout_uri},
                                       quote_via=urllib.parse.quote)
        return f"{self.domain}/logout?{query}"


class JwksCache:
    """The user pool's signing keys, fetched once and again when an unknown key id shows up
    (Cognito rotates keys), at most every JWKS_MIN_REFETCH_SECONDS."""

    def __init__(self, url: str, fetch: Fetch = _http, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: Dict[str, jwt.RsaPublicKey] = {}
        self._fetched_at = 0.0

    def _refresh(self) -> None:
        status, body = self._fetch(urllib.request.Request(self.url, headers={"Accept": "application/json"}))
        if status != 200:
            raise AuthError(f"JWKS {self.url} answered HTTP {status}")
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise AuthError(f"JWKS {self.url} is not JSON: {e}") from None
        self._keys = jwt.parse_jwks(doc)
        self._fetched_at = self._clock()

    def keys_for(self, kid: Optional[str]) -> Dict[str, jwt.RsaPublicKey]:
        with self._lock:
            age = self._clock() - self._fetched_at
            stale = not self._keys or age > JWKS_REFRESH_SECONDS
            unknown = kid is not None and kid not in self._keys and age > JWKS_MIN_REFETCH_SECONDS
            if stale or unknown:
                self._refresh()
            return dict(self._keys)


@dataclass(frozen=True)
class Identity:
    """Who signed in."""

    subject: str
    username: str
    email: str
    via: str  # "cognito", "token" or "dev"


class CognitoLogin:
    """Token exchange and id-token verification for one CognitoClient."""

    def __init__(self, client: CognitoClient, fetch: Fetch = _http, clock: Callable[[], float] = time.time,
                 jwks: Optional[JwksCache] = None) -> None:
        self.client = client
        self._fetch = fetch
        self._clock = clock
        self.jwks = jwks or JwksCache(client.jwks_url, fetch, clock)

    def exchange(self, code: str) -> Dict[str, Any]:
        """POST /oauth2/token with the code; the token response (AuthError when refused)."""
        c = self.client
        form = {"grant_type": "authorization_code", "client_id": c.client_id, "code": code,
                "redirect_uri": c.redirect_uri}
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if c.client_secret:
            basic = base64.b64encode(f"{c.client_id}:{c.client_secret}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {basic}"
        req = urllib.request.Request(f"{c.domain}/oauth2/token", data=urllib.parse.urlencode(form).encode(),
                                     headers=headers, method="POST")
        status, body = self._fetch(req)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        if status != 200:
            err = doc.get("error") if isinstance(doc, dict) else None
            raise AuthError(f"Cognito refused the authorization code (HTTP {status}: {err or 'no error given'})",
                            hint="sign in again; check the app client id, secret and callback URL")
        if not isinstance(doc, dict) or not isinstance(doc.get("id_token"), str):
            raise AuthError("Cognito's token response has no id_token", hint="enable the openid scope")
        return doc

    def verify_id_token(self, token: str, nonce: Optional[str]) -> Dict[str, Any]:
        header, _claims, _input, _sig = jwt.split(token)
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        return jwt.verify(token, self.jwks.keys_for(kid), issuer=self.client.issuer,
                          audience=self.client.client_id, token_use="id", nonce=nonce, now=self._clock())

    def complete(self, code: str, nonce: str) -> Identity:
        """The signed-in user for an authorization code (AuthError / TokenInvalid when refused)."""
        claims = self.verify_id_token(self.exchange(code)["id_token"], nonce)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenInvalid("id token has no subject", "malformed")
        return Identity(subject=sub, username=str(claims.get("cognito:username") or claims.get("email") or sub),
                        email=str(claims.get("email") or ""), via="cognito")
