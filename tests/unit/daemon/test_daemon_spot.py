"""The Spot watcher and the IMDSv2 client against the fake IMDS, and the fake
itself held to the protocol (raw HTTP, so the client cannot hide a mistake)."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Dict, List, Optional, Tuple

import pytest

from mmbatch import node_info
from mmbatch.imds_fake import FakeImds, imds_time
from mmbatch.spot import (
    INSTANCE_ACTION,
    REBALANCE,
    ImdsClient,
    ImdsError,
    InterruptionNotice,
    SpotWatcher,
    parse_imds_time,
    parse_instance_action,
)


class Clock:
    def __init__(self, t: float = 1_790_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def imds(clock):
    fake = FakeImds(clock=clock, instance_id="i-0123456789abcdef0").start()
    yield fake
    fake.stop()


def raw(imds: FakeImds, method: str, path: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, str, Dict]:
    conn = http.client.HTTPConnection("127.0.0.1", imds.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), dict(resp.getheaders())
    finally:
        conn.close()


def token(imds: FakeImds, ttl: str = "60") -> str:
    status, body, headers = raw(imds, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": ttl})
    assert status == 200 and headers["X-aws-ec2-metadata-token-ttl-seconds"] == ttl
    return body


# -- the fake speaks IMDSv2 ------------------------------------------------------------

@pytest.mark.parametrize("ttl", [None, "0", "21601", "-5", "abc", ""])
def test_token_needs_a_valid_ttl(imds, ttl):
    headers = {} if ttl is None else {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
    assert raw(imds, "PUT", "/latest/api/token", headers)[0] == 400


@pytest.mark.parametrize("ttl", ["1", "21600"])
def test_token_ttl_range_ends_are_accepted(imds, ttl):
    assert token(imds, ttl)


def test_token_refused_through_a_proxy(imds):
    status, _, _ = raw(imds, "PUT", "/latest/api/token",
                       {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.1"})
    assert status == 403


def test_gets_need_a_valid_unexpired_token(imds, clock):
    path = "/latest/meta-data/instance-id"
    assert raw(imds, "GET", path)[0] == 401
    assert raw(imds, "GET", path, {"X-aws-ec2-metadata-token": "AQAEAnot-a-token"})[0] == 401
    t = token(imds, "10")
    status, body, _ = raw(imds, "GET", path, {"X-aws-ec2-metadata-token": t})
    assert (status, body) == (200, "i-0123456789abcdef0")
    clock.t += 10.5
    assert raw(imds, "GET", path, {"X-aws-ec2-metadata-token": t})[0] == 401


def test_instance_action_is_404_until_scheduled_then_the_documented_json(imds, clock):
    t = {"X-aws-ec2-metadata-token": token(imds)}
    status, body, headers = raw(imds, "GET", INSTANCE_ACTION, t)
    assert status == 404 and "404 - Not Found" in body
    assert raw(imds, "GET", REBALANCE, t)[0] == 404
    assert raw(imds, "GET", "/latest/meta-data/spot/termination-time", t)[0] == 404
    imds.schedule_interruption(120)
    status, body, headers = raw(imds, "GET", INSTANCE_ACTION, t)
    assert status == 200 and headers["Content-Type"] == "text/plain"
    data = json.loads(body)
    assert list(data) == ["action", "time"]
    assert data == {"action": "terminate", "time": imds_time(clock.t + 120)}
    assert data["time"].endswith("Z") and len(data["time"]) == len("2026-11-27T12:00:00Z")
    assert raw(imds, "GET", "/latest/meta-data/spot/termination-time", t)[1] == data["time"]


def test_rebalance_recommendation_shape(imds, clock):
    t = {"X-aws-ec2-metadata-token": token(imds)}
    imds.schedule_rebalance()
    status, body, _ = raw(imds, "GET", REBALANCE, t)
    assert status == 200 and json.loads(body) == {"noticeTime": imds_time(clock.t)}


def test_control_api(imds, clock):
    status, body, _ = raw(imds, "POST", "/_fake/interrupt?in=30&action=stop")
    assert status == 200 and json.loads(body) == {"action": "stop", "time": imds_time(clock.t + 30)}
    assert raw(imds, "POST", "/_fake/interrupt?action=explode")[0] == 400
    assert raw(imds, "POST", "/_fake/rebalance")[0] == 200
    state = json.loads(raw(imds, "GET", "/_fake/state")[1])
    assert state["interruption"]["action"] == "stop" and state["rebalance"]
    assert raw(imds, "POST", "/_fake/clear")[0] == 200
    t = {"X-aws-ec2-metadata-token": token(imds)}
    assert raw(imds, "GET", INSTANCE_ACTION, t)[0] == 404


def test_instance_facts(imds):
    t = {"X-aws-ec2-metadata-token": token(imds)}
    def get(p):
        return raw(imds, "GET", "/latest/meta-data/" + p, t)[1]
    assert get("instance-type") == "m6i.large"
    assert get("placement/availability-zone") == "us-east-1a"
    assert get("instance-life-cycle") == "spot"
    assert "instance-id" in get("").split("\n")


# -- the client ----------------------------------------------------------------------

def test_client_uses_one_token_for_many_gets(imds, clock):
    c = ImdsClient(imds.url, token_ttl=600, clock=clock)
    for _ in range(5):
        assert c.get("/latest/meta-data/instance-id") == "i-0123456789abcdef0"
    assert c.tokens_fetched == 1
    assert imds.state()["counters"]["token_requests"] == 1


def test_client_renews_the_token_before_its_ttl(imds, clock):
    c = ImdsClient(imds.url, token_ttl=100, clock=clock)  # renewed 10 s before the end
    c.get(INSTANCE_ACTION)
    clock.t += 89
    c.get(INSTANCE_ACTION)
    assert c.tokens_fetched == 1
    clock.t += 2  # 91 s: inside the margin, renew before IMDS would say 401
    c.get(INSTANCE_ACTION)
    assert c.tokens_fetched == 2
    assert imds.state()["counters"]["unauthorized"] == 0


def test_client_gets_a_new_token_on_401(imds, clock):
    c = ImdsClient(imds.url, token_ttl=600, clock=clock)
    c.get(INSTANCE_ACTION)
    imds.expire_tokens()  # IMDS forgot it (or the instance was stopped and started)
    assert c.get("/latest/meta-data/instance-type") == "m6i.large"
    assert c.tokens_fetched == 2


def test_client_404_is_none_and_errors_are_typed(imds, clock):
    c = ImdsClient(imds.url, clock=clock)
    assert c.get(INSTANCE_ACTION) is None
    dead = ImdsClient("http://127.0.0.1:9", timeout=0.5)
    with pytest.raises(ImdsError):
        dead.get(INSTANCE_ACTION)
    with pytest.raises(ImdsError):
        ImdsClient("https://169.254.169.254")
    with pytest.raises(ImdsError):
        ImdsClient(imds.url, token_ttl=0)


# -- the watcher -----------------------------------------------------------------------

def test_watcher_reports_each_notice_once(imds, clock):
    seen: List[object] = []
    w = SpotWatcher(ImdsClient(imds.url, clock=clock), on_interruption=seen.append, on_rebalance=seen.append)
    assert w.poll_once() == (None, None)
    imds.schedule_rebalance()
    _, rebalance = w.poll_once()
    assert rebalance is not None and seen == [rebalance]
    imds.schedule_interruption(120)
    action, again = w.poll_once()
    assert again is None, "the same rebalance recommendation is not reported twice"
    assert isinstance(action, InterruptionNotice)
    assert action.action == "terminate" and action.time == pytest.approx(clock.t + 120, abs=1)
    assert w.poll_once() == (None, None)
    clock.t += 5
    imds.schedule_interruption(120)  # a different notice
    assert w.poll_once()[0] is not None
    assert len(seen) == 3


def test_watcher_run_polls_until_stopped(imds):
    got = threading.Event()
    w = SpotWatcher(ImdsClient(imds.url), on_interruption=lambda n: got.set(), poll_seconds=0.05)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    t.start()
    imds.schedule_interruption(120)
    assert got.wait(5)
    stop.set()
    t.join(5)
    assert not t.is_alive()


def test_watcher_survives_an_unreachable_imds():
    logs: List[str] = []
    w = SpotWatcher(ImdsClient("http://127.0.0.1:9", timeout=0.2), poll_seconds=0.01, log=logs.append)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    t.start()
    t.join(0.3)
    stop.set()
    t.join(5)
    assert len(logs) == 1 and "IMDS" in logs[0], "logged once, not at every poll"


def test_time_and_notice_parsing():
    assert parse_imds_time("1970-01-01T00:01:00Z") == 60.0
    assert parse_imds_time("1970-01-01T00:01:00.500Z") == 60.5
    with pytest.raises(ValueError):
        parse_imds_time("1970-01-01T00:01:00+02:00")
    n = parse_instance_action('{"action": "terminate", "time": "2026-11-27T12:00:00Z"}')
    assert (n.action, n.raw_time) == ("terminate", "2026-11-27T12:00:00Z")
    for bad in ("", "{}", '{"action": 1, "time": "x"}', '{"action": "stop", "time": "soon"}', "[]"):
        with pytest.raises(ImdsError):
            parse_instance_action(bad)


def test_node_facts_from_imds_land_in_manifests(imds, clock, tmp_path, monkeypatch):
    c = ImdsClient(imds.url, clock=clock)
    facts = node_info.facts_from_imds(c.get)
    assert facts == {"instance_id": "i-0123456789abcdef0", "instance_type": "m6i.large",
                     "availability_zone": "us-east-1a", "lifecycle": "spot"}
    path = str(tmp_path / "run" / "node.json")
    monkeypatch.setenv("MMBATCH_NODE_INFO", path)
    assert node_info.write_node_info(facts) == path
    from mmbatch.checkpointer import node_info as manifest_node_info

    info = manifest_node_info()
    assert info["instance_id"] == "i-0123456789abcdef0" and info["lifecycle"] == "spot" and info["hostname"]
