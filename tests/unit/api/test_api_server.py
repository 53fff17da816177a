"""The node API of a real mmbatchd (its loop on a thread, a fake engine, a
real file store), served on 127.0.0.1 with an ephemeral port and on a unix
socket in a temp dir. Every answer is checked against the OpenAPI document;
tokens, config changes and metrics are checked end to end. No root."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from typing import Any, Dict

import pytest

from mmbatch import config as config_mod
from mmbatch import events
from mmbatch.api import openapi, server
from mmbatch.api.client import ApiError, NodeClient
from mmbatch.api.metrics import parse_text
from mmbatch.checkpointer import CheckpointResult
from mmbatch.daemon import Daemon
from mmbatch.spot import InterruptionNotice
from tests.lib.fake_engine import FakeEngine
from tests.unit.api.daemon_world import TOKEN, cid_of, commit_checkpoint, running_node


@pytest.fixture
def node(tmp_path, monkeypatch):
    yield from running_node(tmp_path, monkeypatch)


def response_schema(method: str, path: str, status: str = "200") -> Dict[str, Any]:
    op = openapi.document()["paths"][path][method.lower()]
    return op["responses"][status]["content"]["application/json"]["schema"]


def test_every_answer_matches_the_openapi_document(node):
    a, b = cid_of(1), cid_of(2)
    doc = openapi.document()
    assert node.get("/api/v1/openapi.json") == json.loads(json.dumps(doc))

    n = node.get("/api/v1/node")
    openapi.validate(n, response_schema("GET", "/api/v1/node"))
    assert n["jobs"]["active"] == 2 and n["node"]["instance_id"] == "i-0abc"
    assert n["config"] == {"mode": "iterative", "interval": 60.0}

    jobs = node.get("/api/v1/jobs")
    openapi.validate(jobs, response_schema("GET", "/api/v1/jobs"))
    by_id = {j["container_id"]: j for j in jobs["jobs"]}
    assert set(by_id) == {a, b}
    assert by_id[a]["job_key"] == "job-a" and by_id[b]["interval"] == 45.0
    assert by_id[a]["next_checkpoint_at"] > time.time(), "job-a counts from its checkpoint 20 s ago"

    for ref in (a, a[:12], "job-a"):
        detail = node.get(f"/api/v1/jobs/{ref}")
        openapi.validate(detail, response_schema("GET", "/api/v1/jobs/{id}"))
        assert detail["job"]["container_id"] == a
        assert [c["job_key"] for c in detail["checkpoints"]] == ["job-a"]
        assert detail["checkpoints"][0]["freeze_seconds"] == 0.25

    status, _, body = node.tcp("GET", "/api/v1/jobs/no-such-job")
    assert status == 404
    openapi.validate(json.loads(body), response_schema("GET", "/api/v1/jobs/{id}", "404"))

    cks = node.get("/api/v1/checkpoints")
    openapi.validate(cks, response_schema("GET", "/api/v1/checkpoints"))
    assert [c["job_key"] for c in cks["checkpoints"]] == ["job-a"] and cks["errors"] == {}
    assert node.get("/api/v1/checkpoints?job=job-b")["checkpoints"] == []
    status, _, body = node.tcp("GET", "/api/v1/checkpoints?job=../etc")
    assert status == 400
    openapi.validate(json.loads(body), response_schema("GET", "/api/v1/checkpoints", "400"))

    conf = node.get("/api/v1/config")
    openapi.validate(conf, response_schema("GET", "/api/v1/config"))
    assert conf["overrides"] == {} and conf["file"]["api"]["token_file"].endswith("/token")


def test_tcp_rejects_missing_and_wrong_tokens(node, monkeypatch):
    compared = []
    real = server.hmac.compare_digest

    def spy(x, y):
        compared.append((x, y))
        return real(x, y)

    monkeypatch.setattr(server.hmac, "compare_digest", spy)
    for kw in ({"token": None}, {"token": "wrong"}, {"token": TOKEN[:-1]}, {"token": TOKEN + "x"},
               {"auth": f"Basic {TOKEN}"}, {"auth": TOKEN}, {"token": ""}):
        for path in ("/api/v1/node", "/metrics", "/api/v1/config"):
            status, headers, body = node.tcp("GET", path, **kw)
            assert status == 401, (kw, path)
            assert headers["www-authenticate"].startswith("Bearer")
            openapi.validate(json.loads(body), openapi.schema("Error"))
    status, _, _ = node.tcp("PUT", "/api/v1/config", {"interval": "10m"}, token="wrong")
    assert status == 401 and node.daemon.cfg.checkpoint.interval == 60.0, "a rejected PUT changes nothing"
    digest = lambda t: hashlib.sha256(t.encode()).digest()  # noqa: E731
    assert (digest("wrong"), digest(TOKEN)) in compared, "tokens are compared with hmac.compare_digest"
    assert all(len(x) == len(y) == 32 for x, y in compared), "digests: the token's length does not leak"
    assert node.tcp("GET", "/api/v1/node")[0] == 200


def test_unix_socket_is_private_and_needs_no_token(node):
    assert stat.S_IMODE(os.stat(node.sock).st_mode) == 0o600
    client = NodeClient(socket_file=node.sock)
    n = client.get_json("/api/v1/node")
    openapi.validate(n, response_schema("GET", "/api/v1/node"))
    status, ctype, body = client.request("GET", "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    with pytest.raises(ApiError) as e:
        client.get_json("/api/v1/nothing")
    assert e.value.status == 404


def test_without_a_token_file_there_is_no_tcp_listener(tmp_path):
    cfg = config_mod.from_dict({"api": {"listen": "127.0.0.1:0", "token_file": "",
                                        "socket": str(tmp_path / "s.sock")}})
    srv = server.ApiServer.from_config(object(), cfg)
    assert srv.listen == "" and srv.socket_file == str(tmp_path / "s.sock")
    short = tmp_path / "short-token"
    short.write_text("abc\n")
    short.chmod(0o600)
    cfg.api.token_file = str(short)
    with pytest.raises(config_mod.ConfigError, match="at least 16"):
        server.ApiServer.from_config(object(), cfg)
    public = tmp_path / "public-token"
    public.write_text(TOKEN + "\n")
    public.chmod(0o644)
    cfg.api.token_file = str(public)
    with pytest.raises(config_mod.ConfigError, match="open to every user"):
        server.ApiServer.from_config(object(), cfg)
    public.chmod(0o640)  # an operators' group may read it
    assert server.ApiServer.from_config(object(), cfg).token == TOKEN


def test_unix_socket_is_0600_before_it_listens_and_the_umask_is_left_alone(tmp_path, monkeypatch):
    short = tempfile.mkdtemp(prefix="mmbt-api-", dir="/tmp")
    path = os.path.join(short, "api.sock")
    modes_at_listen = []
    real_activate = server._UnixServer.server_activate

    def activate(self):
        modes_at_listen.append(stat.S_IMODE(os.stat(path).st_mode))
        real_activate(self)

    def no_umask(mask):
        raise AssertionError("the process-wide umask must not change: other threads create files")

    real_umask = os.umask
    old = real_umask(0o000)  # the most permissive: the mode must not come from the umask
    monkeypatch.setattr(server._UnixServer, "server_activate", activate)
    monkeypatch.setattr(os, "umask", no_umask)
    try:
        api = server.ApiServer(object(), socket_file=path).start()
    finally:
        monkeypatch.setattr(os, "umask", real_umask)
        real_umask(old)
    try:
        assert modes_at_listen == [0o600] and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        api.stop()
    assert not os.path.exists(path)
    with open(path, "w") as f:  # not a socket: neither served nor removed
        f.write("x")
    with pytest.raises(server.MmbatchError, match="not a socket"):
        server.ApiServer(object(), socket_file=path).start()
    assert os.path.isfile(path)
    shutil.rmtree(short, ignore_errors=True)


@pytest.mark.parametrize("body,needle", [
    ({"interval": "5s"}, "checkpoint.interval"),
    ({"interval": "soon"}, "checkpoint.interval"),
    ({"interval": -60}, "checkpoint.interval"),
    ({"mode": "sometimes"}, "not one of"),
    ({"keep": 3}, "unexpected property 'keep'"),
    ({}, "at least 1 properties"),
    ([], "expected object"),
    ({"interval": True}, "expected string or number"),
    (b"{not json", "not JSON"),
    ({"interval": "nan"}, "checkpoint.interval"),
    ({"interval": "inf"}, "checkpoint.interval"),
    (b'{"interval": NaN}', "not JSON"),
    (b'{"interval": 1e999}', "checkpoint.interval"),
    (b"[" * 60000, "not JSON"),
])
def test_config_put_is_validated(node, body, needle):
    status, _, raw = node.tcp("PUT", "/api/v1/config", body)
    assert status == 400, raw
    err = json.loads(raw)
    openapi.validate(err, response_schema("PUT", "/api/v1/config", "400"))
    assert needle in err["error"]
    assert node.get("/api/v1/config")["runtime"] == {"mode": "iterative", "interval": 60.0}


def test_config_put_moves_the_schedule_without_a_restart(node):
    a, b = cid_of(1), cid_of(2)
    d = node.daemon
    before_a = d.scheduler.get(a).next_due
    before_b = d.scheduler.get(b).next_due
    status, _, raw = node.tcp("PUT", "/api/v1/config", {"interval": "10m"})
    assert status == 200, raw
    conf = json.loads(raw)
    openapi.validate(conf, response_schema("PUT", "/api/v1/config"))
    assert conf["runtime"]["interval"] == 600.0 and conf["overrides"] == {"interval": 600.0}
    sa = d.scheduler.get(a)
    assert sa.interval == 600.0 and sa.next_due == pytest.approx(before_a + 540.0), "jitter is 0 here"
    assert d.scheduler.get(b).next_due == before_b, "a job with its own interval keeps it"
    jobs = {j["container_id"]: j for j in node.get("/api/v1/jobs")["jobs"]}
    assert jobs[a]["interval"] == 600.0 and jobs[b]["interval"] == 45.0

    status, _, raw = node.tcp("PUT", "/api/v1/config", {"mode": "none"})
    assert status == 200 and json.loads(raw)["overrides"] == {"interval": 600.0, "mode": "none"}
    assert all(j["next_checkpoint_at"] is None for j in node.get("/api/v1/jobs")["jobs"])
    assert node.get("/api/v1/node")["config"]["mode"] == "none"
    kinds = [json.loads(line)["kind"] for line in open(node.tmp_path / "log" / "events.log")]
    assert kinds.count("config-change") == 2


def test_metrics_count_results_restores_and_interruptions(node, tmp_path):
    a = cid_of(1)
    d = node.daemon
    m = commit_checkpoint(d.cfg, tmp_path, "job-a", time.time(), a)
    result = CheckpointResult(checkpoint_id=m.checkpoint_id, job_key="job-a", container_id=a, freeze_seconds=0.3,
                              dump_seconds=0.2, total_seconds=1.0, bytes_total=1000, bytes_uploaded=250, manifest=m)
    d.post("done", a, "periodic", result, None)
    events.emit(events.make("restore", "job-x", cid_of(9), checkpoint_id="x"))
    events.emit(events.make("cold-start", "job-y", cid_of(8), reason="no checkpoint"))
    events.emit(events.make("checkpoint", "job-a", a))  # not a restore: not counted there
    d.post("call", lambda: d.begin_interruption(InterruptionNotice("terminate", time.time() + 120, "soon")),
           __import__("queue").Queue())

    deadline = time.time() + 10
    samples: Dict[str, Dict] = {}
    while time.time() < deadline:
        status, headers, body = node.tcp("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = parse_text(body.decode())
        if sum(samples.get("mmbatch_restores_total", {}).values()) >= 2 and \
                samples["mmbatch_interruptions_total"].get((), 0) >= 1:
            break
        time.sleep(0.2)
    assert samples["mmbatch_checkpoints_total"] == {(("reason", "periodic"),): 1.0}
    assert samples["mmbatch_freeze_seconds_count"][()] == 1.0
    assert samples["mmbatch_freeze_seconds_sum"][()] == pytest.approx(0.3)
    assert samples["mmbatch_freeze_seconds_bucket"][(("le", "0.25"),)] == 0.0
    assert samples["mmbatch_freeze_seconds_bucket"][(("le", "0.5"),)] == 1.0
    assert samples["mmbatch_freeze_seconds_bucket"][(("le", "+Inf"),)] == 1.0
    assert samples["mmbatch_checkpoint_bytes_total"][()] == 1000.0
    assert samples["mmbatch_uploaded_bytes_total"][()] == 250.0
    assert samples["mmbatch_dedup_ratio"][()] == pytest.approx(0.75)
    assert samples["mmbatch_restores_total"] == {(("outcome", "restored"),): 1.0, (("outcome", "cold"),): 1.0}
    assert samples["mmbatch_interruptions_total"][()] == 1.0
    assert samples["mmbatch_managed_jobs"][(("state", "running"),)] == 2.0


def test_a_busy_port_does_not_stop_the_daemon(tmp_path, monkeypatch):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    short = tempfile.mkdtemp(prefix="mmbt-api-", dir="/tmp")
    monkeypatch.setenv("MMBATCH_LOG_DIR", str(tmp_path / "log"))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    cfg = config_mod.from_dict({
        "runtime": {"state_dir": str(tmp_path / "state")},
        "api": {"hook_socket": os.path.join(short, "hook.sock"), "listen": f"127.0.0.1:{port}",
                "token_file": str(token_file)},
    })
    d = Daemon(cfg, engine=FakeEngine())
    try:
        d.start(spot=False, engine_events=False)
        assert d.api is not None and d.api.tcp_address is None, "no TCP listener; the daemon still started"
        status, _, body = NodeClient(socket_file=os.path.join(short, "mmbatchd.sock")).request("GET", "/metrics")
        assert status == 200 and b"mmbatch_checkpoints_total" in body, "the unix socket is still served"
    finally:
        d.shutdown()
        blocker.close()
        shutil.rmtree(short, ignore_errors=True)


def test_an_unusable_token_file_leaves_the_unix_socket_served(tmp_path, monkeypatch):
    short = tempfile.mkdtemp(prefix="mmbt-api-", dir="/tmp")
    monkeypatch.setenv("MMBATCH_LOG_DIR", str(tmp_path / "log"))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o666)
    cfg = config_mod.from_dict({
        "runtime": {"state_dir": str(tmp_path / "state")},
        "api": {"hook_socket": os.path.join(short, "hook.sock"), "listen": "127.0.0.1:0",
                "token_file": str(token_file)},
    })
    d = Daemon(cfg, engine=FakeEngine())
    try:
        d.start(spot=False, engine_events=False)
        assert d.api is not None and d.api.tcp_address is None, "no TCP without a private token"
        sock = os.path.join(short, "mmbatchd.sock")
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        status, _, body = NodeClient(socket_file=sock).request("GET", "/metrics")
        assert status == 200 and b"mmbatch_checkpoints_total" in body
    finally:
        d.shutdown()
        shutil.rmtree(short, ignore_errors=True)
