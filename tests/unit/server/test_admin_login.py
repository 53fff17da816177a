"""The admin token, sessions, dev mode and the request guards."""

from __future__ import annotations

import os
import time

import pytest

from mmbatch import config as config_mod
from mmbatch.errors import ConfigError
from mmbatch.server.app import safe_next
from mmbatch.server.auth import SESSION_COOKIE, AuthPolicy, Signer, read_admin_token
from mmbatch.server.cli import build
from mmbatch.server.errors import ServerError
from tests.unit.server.test_cognito_login import cookie_attrs, request

TOKEN = "0123456789abcdef-admin-token"


@pytest.fixture
def token_server(make_server, admin_token_file, store):
    return make_server({"admin_token_file": admin_token_file}, store.url)


def login(server, token=TOKEN, next_path="/"):
    return request(server.url + "/login", "POST", {"token": token, "next": next_path})


def test_pages_need_a_login_and_the_token_signs_in(token_server):
    for path in ("/", "/jobs", "/nodes", "/cost", "/jobs/some-job"):
        status, headers, _, _ = request(token_server.url + path)
        assert status == 303 and headers["location"].startswith("/login?next="), path
    for path in ("/nodes.csv", "/jobs.csv", "/api/summary"):
        status, headers, _, _ = request(token_server.url + path)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer"), path
    status, headers, set_cookies, _ = login(token_server, next_path="/nodes")
    assert status == 303 and headers["location"] == "/nodes"
    name, session, attrs = cookie_attrs(set_cookies[0])
    assert name == SESSION_COOKIE and "httponly" in attrs and attrs["samesite"] == "Lax"
    status, headers, _, page = request(token_server.url + "/nodes", cookies={SESSION_COOKIE: session})
    assert status == 200 and "<h1>Nodes</h1>" in page
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin" and headers["cache-control"] == "no-store"
    # a forged or altered session is no session
    assert request(token_server.url + "/", cookies={SESSION_COOKIE: session[:-2] + "xx"})[0] == 303


def test_wrong_token_is_refused_slowly(token_server):
    t0 = time.monotonic()
    status, _, set_cookies, page = login(token_server, token="0123456789abcdef-admin-tokeN")
    assert status == 401 and "Wrong admin token" in page and not set_cookies
    assert time.monotonic() - t0 >= 0.4


def test_bearer_token_for_exports(token_server):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", token_server.port, timeout=10)
    conn.request("GET", "/nodes.csv", headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    assert body.splitlines()[0].startswith("hostname,instance_id,instance_type")
    conn.request("GET", "/api/summary", headers={"Authorization": "Bearer wrong-token-of-some-length"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 401
    conn.close()


def test_login_goes_only_to_local_paths():
    assert safe_next("/jobs?queue=a") == "/jobs?queue=a"
    for bad in ("https://evil.example", "//evil.example/x", "/\\evil", "", None, "jobs",
                "/\t/evil.example", "/\n/evil.example", "/\r/evil.example", "/\x00x", "/\x7f/evil.example"):
        assert safe_next(bad) == "/", repr(bad)


def test_login_redirect_is_not_opened_by_a_tab(token_server):
    """Browsers strip tabs from a Location: "/<tab>/evil" would go to //evil."""
    status, headers, _, _ = login(token_server, next_path="/\t/evil.example")
    assert status == 303 and headers["location"] == "/"
    status, _, _, page = request(token_server.url + "/login?next=/%09/evil.example")
    assert status == 200 and 'name="next" value="/"' in page


def _post(server, headers, body: bytes = b""):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/login")
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders(body)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_cross_site_posts_are_refused(token_server):
    form = f"token={TOKEN}".encode()
    base = {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(form))}
    own = f"127.0.0.1:{token_server.port}"
    for extra in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                  {"Referer": "https://evil.example/page"},
                  {"Origin": f"http://{own}.evil.example"}):
        resp = _post(token_server, {**base, **extra}, form)
        assert resp.status == 403 and resp.headers.get("Set-Cookie") is None, extra
    for extra in ({"Origin": f"http://{own}"}, {"Referer": f"http://{own}/login?next=%2F"}, {}):
        resp = _post(token_server, {**base, **extra}, form)
        assert resp.status == 303 and resp.headers.get("Set-Cookie"), extra


def test_bad_content_length_is_refused_without_waiting(token_server):
    t0 = time.monotonic()
    for length, status in (("-1", 400), ("x", 400), ("100000", 413)):
        resp = _post(token_server, {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": length})
        assert resp.status == status, length
    assert time.monotonic() - t0 < 5, "a negative length must not read until the client hangs up"


def test_static_files_and_no_path_escape(token_server):
    status, headers, _, body = request(token_server.url + "/static/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and "data-js" in body
    for bad in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/cli.py", "/static/.hidden.css"):
        assert request(token_server.url + bad)[0] == 404, bad


def test_admin_token_file_must_be_private_and_long(tmp_path):
    p = tmp_path / "t"
    p.write_text(TOKEN)
    os.chmod(p, 0o644)
    with pytest.raises(ServerError, match="readable by others"):
        read_admin_token(str(p))
    os.chmod(p, 0o600)
    assert read_admin_token(str(p)) == TOKEN
    p.write_text("short")
    with pytest.raises(ServerError, match="shorter"):
        read_admin_token(str(p))


def test_dev_mode_only_on_loopback_and_no_login_without_settings(store, tmp_path):
    base = {"cache_path": str(tmp_path / "c.db")}
    cfg = config_mod.from_dict({"server": {**base, "dev": True}, "store": {"url": store.url}})
    with pytest.raises(ServerError, match="loopback"):
        build(cfg, listen="0.0.0.0:0")
    cfg = config_mod.from_dict({"server": base, "store": {"url": store.url}})
    with pytest.raises(ServerError, match="no login is configured"):
        build(cfg, listen="127.0.0.1:0")
    AuthPolicy(dev=True).check("::1")
    AuthPolicy(dev=True).check("localhost")


def test_dev_mode_serves_without_login(make_server, store):
    server = make_server({"dev": True}, store.url)
    status, _, _, page = request(server.url + "/")
    assert status == 200 and "dev mode (no login)" in page and "Sign out" not in page


def test_dev_mode_answers_only_loopback_host_names(make_server, store):
    """DNS rebinding: a site whose name now points at 127.0.0.1 sends its own name as Host."""
    import http.client

    server = make_server({"dev": True}, store.url)
    for host, status in ((f"evil.example:{server.port}", 421), ("evil.example", 421),
                         (f"localhost:{server.port}", 200), (f"127.0.0.1:{server.port}", 200),
                         (f"[::1]:{server.port}", 200)):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.putrequest("GET", "/api/summary", skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status == status, host
        if status == 421:
            assert b"totals" not in body


def test_signer_rejects_tampering_and_expiry():
    now = [1000.0]
    s = Signer(key=b"k" * 32, clock=lambda: now[0])
    v = s.sign({"kind": "session", "sub": "a"}, 60)
    assert s.unsign(v)["sub"] == "a"
    assert Signer(key=b"j" * 32, clock=lambda: now[0]).unsign(v) is None
    payload, mac = v.split(".")
    assert s.unsign(payload + "x." + mac) is None and s.unsign("garbage") is None and s.unsign(None) is None
    now[0] += 61
    assert s.unsign(v) is None


def test_server_config_is_validated():
    ok = config_mod.from_dict({"server": {"listen": "0.0.0.0:8443", "sync_interval": "2m",
                                          "instance_prices": ["m5.large 0.048 0.019"]}})
    assert ok.server.sync_interval == 120 and ok.server.instance_prices == ["m5.large 0.048 0.019"]
    for bad, key in [({"listen": "8090"}, "server.listen"), ({"cache_path": "rel.db"}, "server.cache_path"),
                     ({"instance_prices": ["m5.large 0.04"]}, "server.instance_prices"),
                     ({"instance_prices": ["m5.large x 1"]}, "server.instance_prices"),
                     ({"on_demand_vcpu_hour": -1}, "server.on_demand_vcpu_hour"),
                     ({"spot_vcpu_hour": float("nan")}, "server.spot_vcpu_hour"),
                     ({"sync_interval": "nan"}, "server.sync_interval"),
                     ({"session_lifetime": float("inf")}, "server.session_lifetime"),
                     ({"cognito_user_pool_id": "us-east-1_X"}, "server.cognito_user_pool_id"),
                     ({"public_url": "dash.example.com"}, "server.public_url"),
                     ({"colour": "blue"}, "server.colour")]:
        with pytest.raises(ConfigError) as e:
            config_mod.from_dict({"server": bad})
        assert e.value.key == key, bad
