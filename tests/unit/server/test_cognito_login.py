"""The Cognito authorization-code flow, end to end over HTTP on 127.0.0.1:
the server, a fake Cognito speaking Cognito's endpoints and JSON, and a
client that follows the redirects by hand (so every hop is checked)."""

from __future__ import annotations

import base64
import http.client
import time
import urllib.parse
from typing import Dict, Optional, Tuple

import pytest

from mmbatch.server.auth import OIDC_COOKIE, SESSION_COOKIE, parse_cookies


def request(url: str, method: str = "GET", body: Optional[Dict[str, str]] = None,
            cookies: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], list, str]:
    """(status, headers, Set-Cookie headers, body) of one request; redirects are not followed."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {}
    data = None
    if body is not None:
        data = urllib.parse.urlencode(body)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data, headers=headers)
    resp = conn.getresponse()
    text = resp.read().decode("utf-8", "replace")
    set_cookies = resp.headers.get_all("Set-Cookie") or []
    out = (resp.status, {k.lower(): v for k, v in resp.headers.items()}, set_cookies, text)
    conn.close()
    return out


def cookie_attrs(header: str) -> Tuple[str, str, Dict[str, str]]:
    first, *attrs = [p.strip() for p in header.split(";")]
    name, _, value = first.partition("=")
    return name, value, {a.partition("=")[0].lower(): a.partition("=")[2] for a in attrs}


@pytest.fixture
def cognito_server(make_server, fake_cognito, store, tmp_path):
    secret = tmp_path / "client-secret"
    secret.write_text(fake_cognito.client_secret + "\n")
    secret.chmod(0o600)
    server = make_server({
        "cognito_region": "us-east-1", "cognito_user_pool_id": fake_cognito.user_pool_id,
        "cognito_client_id": fake_cognito.client_id, "cognito_client_secret_file": str(secret),
        "cognito_domain": fake_cognito.url, "cognito_idp_endpoint": fake_cognito.url,
    }, store.url)
    fake_cognito.callback_urls.append(f"{server.url}/auth/callback")
    return server


def start_login(server, fake) -> Tuple[Dict[str, str], Dict[str, str]]:
    """Up to Cognito's redirect back: (query of the callback, cookies the server set)."""
    status, headers, _, _ = request(server.url + "/jobs")
    assert status == 303 and headers["location"] == "/login?next=%2Fjobs"
    status, _, _, page = request(server.url + "/login?next=%2Fjobs")
    assert status == 200 and "/login/cognito?next=%2Fjobs" in page
    status, headers, set_cookies, _ = request(server.url + "/login/cognito?next=%2Fjobs")
    assert status == 302
    authorize = urllib.parse.urlsplit(headers["location"])
    assert f"{authorize.scheme}://{authorize.netloc}" == fake.url and authorize.path == "/oauth2/authorize"
    q = dict(urllib.parse.parse_qsl(authorize.query))
    assert q["response_type"] == "code" and q["client_id"] == fake.client_id
    assert q["redirect_uri"] == f"{server.url}/auth/callback" and "openid" in q["scope"].split()
    assert len(q["state"]) >= 20 and len(q["nonce"]) >= 20 and q["state"] != q["nonce"]
    [oidc] = set_cookies
    name, value, attrs = cookie_attrs(oidc)
    assert name == OIDC_COOKIE and "httponly" in attrs and attrs["samesite"] == "Lax" and "secure" not in attrs
    # Cognito's hosted UI: authorize -> /login -> sign in -> back to the callback
    status, headers, _, _ = request(headers["location"])
    assert status == 302 and headers["location"].startswith("/login?")
    status, _, _, form = request(fake.url + headers["location"])
    assert status == 200 and 'name="password"' in form
    status, headers, _, _ = request(fake.url + "/login", "POST", {**q, "username": "alice",
                                                                   "password": fake.users["alice"]})
    assert status == 302 and headers["location"].startswith(f"{server.url}/auth/callback?")
    back = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(headers["location"]).query))
    assert back["state"] == q["state"] and back["code"]
    return back, {OIDC_COOKIE: value}


def test_authorization_code_flow_signs_in(cognito_server, fake_cognito):
    back, cookies = start_login(cognito_server, fake_cognito)
    status, headers, set_cookies, _ = request(
        f"{cognito_server.url}/auth/callback?{urllib.parse.urlencode(back)}", cookies=cookies)
    assert status == 303 and headers["location"] == "/jobs"
    jar = {cookie_attrs(c)[0]: cookie_attrs(c) for c in set_cookies}
    assert jar[OIDC_COOKIE][2]["max-age"] == "0"  # the login's state is spent
    _, session, attrs = jar[SESSION_COOKIE]
    assert "httponly" in attrs and attrs["samesite"] == "Lax" and attrs["path"] == "/"
    assert int(attrs["max-age"]) == 8 * 3600
    status, _, _, page = request(cognito_server.url + "/jobs", cookies={SESSION_COOKIE: session})
    assert status == 200 and ">alice<" in page
    # the code was exchanged as a confidential client: Basic auth, form body
    [req] = fake_cognito.requests
    basic = base64.b64decode(req["headers"]["Authorization"].split()[1]).decode()
    assert basic == f"{fake_cognito.client_id}:{fake_cognito.client_secret}"
    assert req["form"]["grant_type"] == "authorization_code"
    assert req["form"]["redirect_uri"] == f"{cognito_server.url}/auth/callback"
    # signing out clears the session and goes through Cognito's logout
    status, headers, set_cookies, _ = request(cognito_server.url + "/logout", "POST", {},
                                              cookies={SESSION_COOKIE: session})
    assert status == 303 and headers["location"].startswith(f"{fake_cognito.url}/logout?")
    assert cookie_attrs(set_cookies[0])[2]["max-age"] == "0"
    status, headers, _, _ = request(headers["location"])
    assert status == 302 and headers["location"] == f"{cognito_server.url}/login"


def test_callback_with_another_state_or_without_the_cookie_is_refused(cognito_server, fake_cognito):
    back, cookies = start_login(cognito_server, fake_cognito)
    forged = dict(back, state="attacker-state")
    status, _, set_cookies, _ = request(f"{cognito_server.url}/auth/callback?{urllib.parse.urlencode(forged)}",
                                        cookies=cookies)
    assert status == 401 and not any(c.startswith(SESSION_COOKIE + "=") for c in set_cookies)
    status, _, set_cookies, _ = request(f"{cognito_server.url}/auth/callback?{urllib.parse.urlencode(back)}")
    assert status == 401 and not any(c.startswith(SESSION_COOKIE + "=") for c in set_cookies)
    assert fake_cognito.requests == []  # nothing was exchanged


def test_code_is_single_use(cognito_server, fake_cognito):
    back, cookies = start_login(cognito_server, fake_cognito)
    url = f"{cognito_server.url}/auth/callback?{urllib.parse.urlencode(back)}"
    assert request(url, cookies=cookies)[0] == 303
    status, _, set_cookies, page = request(url, cookies=cookies)
    assert status == 401 and "invalid_grant" in page
    assert not any(c.startswith(SESSION_COOKIE + "=") for c in set_cookies)


@pytest.mark.parametrize("spoil", ["audience", "issuer", "expired", "signature", "nonce"])
def test_bad_id_tokens_do_not_sign_in(cognito_server, fake_cognito, other_key, spoil):
    if spoil == "audience":
        fake_cognito.id_token_overrides = {"aud": "some-other-app-client"}
    elif spoil == "issuer":
        fake_cognito.id_token_overrides = {"iss": fake_cognito.url + "/us-east-1_OtherPool"}
    elif spoil == "expired":
        fake_cognito.id_token_overrides = {"exp": int(time.time()) - 600, "iat": int(time.time()) - 4200}
    elif spoil == "signature":
        fake_cognito.signing_key = other_key
    else:
        fake_cognito.id_token_overrides = {"nonce": "from-another-login"}
    back, cookies = start_login(cognito_server, fake_cognito)
    status, _, set_cookies, page = request(
        f"{cognito_server.url}/auth/callback?{urllib.parse.urlencode(back)}", cookies=cookies)
    assert status == 401 and "Login refused" in page
    assert not any(c.startswith(SESSION_COOKIE + "=") for c in set_cookies)
    assert request(cognito_server.url + "/", cookies=parse_cookies(""))[0] == 303


def test_cognito_error_redirect_is_shown(cognito_server):
    status, _, _, page = request(f"{cognito_server.url}/auth/callback?error=access_denied&state=x")
    assert status == 401 and "access_denied" in page


def test_wrong_client_secret_is_refused_by_cognito(make_server, fake_cognito, store, tmp_path):
    secret = tmp_path / "wrong-secret"
    secret.write_text("not-the-secret")
    secret.chmod(0o600)
    server = make_server({
        "cognito_region": "us-east-1", "cognito_user_pool_id": fake_cognito.user_pool_id,
        "cognito_client_id": fake_cognito.client_id, "cognito_client_secret_file": str(secret),
        "cognito_domain": fake_cognito.url, "cognito_idp_endpoint": fake_cognito.url,
    }, store.url)
    fake_cognito.callback_urls.append(f"{server.url}/auth/callback")
    back, cookies = start_login(server, fake_cognito)
    status, _, _, page = request(f"{server.url}/auth/callback?{urllib.parse.urlencode(back)}", cookies=cookies)
    assert status == 401 and "invalid_client" in page


def test_https_public_url_makes_cookies_secure(make_server, fake_cognito, store):
    server = make_server({
        "public_url": "https://dashboard.example.com",
        "cognito_region": "us-east-1", "cognito_user_pool_id": fake_cognito.user_pool_id,
        "cognito_client_id": fake_cognito.client_id, "cognito_domain": fake_cognito.url,
        "cognito_idp_endpoint": fake_cognito.url,
    }, store.url)
    status, headers, set_cookies, _ = request(server.url + "/login/cognito")
    assert status == 302
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(headers["location"]).query))
    assert q["redirect_uri"] == "https://dashboard.example.com/auth/callback"
    assert "secure" in cookie_attrs(set_cookies[0])[2]


def test_client_secret_file_must_be_private(make_server, fake_cognito, store, tmp_path):
    from mmbatch.server.errors import ServerError

    secret = tmp_path / "client-secret"
    secret.write_text(fake_cognito.client_secret)
    secret.chmod(0o640)
    settings = {"cognito_region": "us-east-1", "cognito_user_pool_id": fake_cognito.user_pool_id,
                "cognito_client_id": fake_cognito.client_id, "cognito_client_secret_file": str(secret),
                "cognito_domain": fake_cognito.url, "cognito_idp_endpoint": fake_cognito.url}
    with pytest.raises(ServerError, match="readable by others"):
        make_server(settings, store.url)
    link = tmp_path / "secret-link"
    secret.chmod(0o600)
    link.symlink_to(secret)
    with pytest.raises(ServerError, match="cannot read"):
        make_server(dict(settings, cognito_client_secret_file=str(link)), store.url)
