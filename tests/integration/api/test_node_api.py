"""The node API and the operators' CLI on a real node: a private dockerd
with the mmbatch runtime, mmbatchd as a subprocess serving its API on
127.0.0.1 (ephemeral port, token) and on its unix socket. A job is
checkpointed after a runtime interval change (PUT /api/v1/config), killed
and restored; the API, /metrics and `mmbatch status/jobs/gc/support-bundle`
see each step."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any, Dict, List

import pytest

from mmbatch.api import openapi
from mmbatch.api.metrics import parse_text
from mmbatch.imds_fake import FakeImds
from tests.conftest import unavailable
from tests.integration.daemon import daemon_jobs as jobs
from tests.integration.daemon.node import REPO, Node
from tests.lib.s3server import free_ports

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.root, pytest.mark.slow]

TOKEN = "integration-" + os.urandom(16).hex()


@pytest.fixture
def api_node(docker_engine, needs_root, busybox_image):
    if not shutil.which("dockerd") or not shutil.which("runc") or not shutil.which("criu"):
        unavailable("dockerd, runc and criu are needed for a private node")
    store = tempfile.mkdtemp(prefix="mmbt-store-", dir="/tmp")
    imds = FakeImds(instance_id="i-0" + os.urandom(8).hex()).start()
    node = Node("api", store)
    try:
        node.write_config(imds=imds.url, interval="15m", jitter=0.0)
        token_file = os.path.join(node.dir, "api.token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (TOKEN + "\n").encode())
        os.close(fd)
        port = free_ports(1)[0]
        with open(node.config, encoding="utf-8") as f:
            text = f.read()
        text = text.replace("[api]\n", f'[api]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{token_file}"\n', 1)
        with open(node.config, "w", encoding="utf-8") as f:
            f.write(text)
        node.start_dockerd()
        node.load_images(busybox_image)
        node.start_mmbatchd()
        node.api_port = port  # type: ignore[attr-defined]
        node.image = busybox_image  # type: ignore[attr-defined]
        node.api_socket = os.path.join(os.path.dirname(node.hook_socket), "mmbatchd.sock")  # type: ignore
        wait_api(node)
        yield node
    finally:
        node.stop()
        imds.stop()
        shutil.rmtree(store, ignore_errors=True)


def call(node: Node, method: str, path: str, body: Any = None, token: str = TOKEN):
    conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=20)  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get(node: Node, path: str, schema_path: str = "") -> Any:
    status, body = call(node, "GET", path)
    assert status == 200, (path, status, body)
    if path == "/metrics":
        return parse_text(body.decode())
    doc = json.loads(body)
    op = openapi.document()["paths"][schema_path or path]["get"]
    openapi.validate(doc, op["responses"]["200"]["content"]["application/json"]["schema"])
    return doc


def wait_api(node: Node, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if call(node, "GET", "/api/v1/node")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the API did not come up: {node.tail('log/mmbatchd.log')}")


def mmbatch(node: Node, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = node.env()
    env["PYTHONPATH"] = REPO
    return subprocess.run([sys.executable, "-m", "mmbatch.cli", "--config", node.config, *argv], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=node.dir)


def test_api_and_cli_follow_a_job_through_checkpoint_and_restore(api_node):
    node = api_node
    assert os.stat(node.api_socket).st_mode & 0o777 == 0o600  # type: ignore[attr-defined]
    assert call(node, "GET", "/api/v1/node", token="")[0] == 401
    assert call(node, "GET", "/metrics", token="not-" + TOKEN)[0] == 401

    job_id = jobs.unique("api")
    cid = jobs.run_job(node, "job", job_id, image=node.image, argv=("sh", "-c", jobs.COUNTER))
    jobs.wait_for(lambda: any(j["container_id"] == cid for j in get(node, "/api/v1/jobs")["jobs"]), 30,
                  "mmbatchd to watch the job", node=node)
    job = get(node, f"/api/v1/jobs/{cid[:12]}", "/api/v1/jobs/{id}")["job"]
    assert job["job_key"] == job_id and job["interval"] == 900.0 and job["decision"] == "cold"
    assert job["next_checkpoint_at"] > time.time() + 800

    # A bad change is refused; a good one moves the job's schedule at once.
    status, body = call(node, "PUT", "/api/v1/config", {"interval": "3s"})
    assert status == 400 and b"checkpoint.interval" in body
    status, body = call(node, "PUT", "/api/v1/config", {"interval": "10s"})
    assert status == 200 and json.loads(body)["overrides"] == {"interval": 10.0}
    t_put = time.time()
    ms = jobs.wait_for(lambda: jobs.manifests(node, job_id) or None, 40, "a periodic checkpoint at the new interval",
                       interval=0.2, node=node)
    assert ms[0].labels["reason"] == "periodic" and ms[0].created_at - t_put < 20
    detail = get(node, f"/api/v1/jobs/{job_id}", "/api/v1/jobs/{id}")
    assert ms[0].checkpoint_id in [c["checkpoint_id"] for c in detail["checkpoints"]]
    cks = get(node, f"/api/v1/checkpoints?job={job_id}", "/api/v1/checkpoints")
    assert ms[0].checkpoint_id in [c["checkpoint_id"] for c in cks["checkpoints"]]
    m = jobs.wait_for(lambda: (lambda s: s if s.get("mmbatch_checkpoints_total") else None)(get(node, "/metrics")),
                      10, "the checkpoint in /metrics", node=node)
    assert m["mmbatch_checkpoints_total"][(("reason", "periodic"),)] >= 1
    assert m["mmbatch_freeze_seconds_count"][()] >= 1 and m["mmbatch_checkpoint_bytes_total"][()] > 0

    # The CLI sees the same, over the unix socket.
    p = mmbatch(node, "status", "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["jobs"]["active"] == 1 and st["config"]["interval"] == 10.0
    p = mmbatch(node, "jobs", "--json")
    assert p.returncode == 0 and [j["job_key"] for j in json.loads(p.stdout)["jobs"]] == [job_id]
    p = mmbatch(node, "jobs")
    assert p.returncode == 0 and job_id in p.stdout and cid[:12] in p.stdout

    # Killed from outside, retried: the runtime restores it, and the metrics count the restore.
    status, _ = call(node, "PUT", "/api/v1/config", {"mode": "none"})  # no more checkpoints meanwhile
    assert status == 200
    node.docker("kill", "job")
    node.docker("rm", "job")
    cid2 = jobs.run_job(node, "job2", job_id, image=node.image, argv=("sh", "-c", jobs.COUNTER), attempt=2)
    m = jobs.wait_for(lambda: (lambda s: s if s.get("mmbatch_restores_total") else None)(get(node, "/metrics")),
                      30, "the restore in /metrics", node=node)
    assert m["mmbatch_restores_total"] == {(("outcome", "restored"),): 1.0}
    job2 = jobs.wait_for(lambda: next((j for j in get(node, "/api/v1/jobs")["jobs"] if j["container_id"] == cid2),
                                      None), 30, "the restored job in /api/v1/jobs", node=node)
    assert job2["decision"] == "restored"
    assert job2["restored_from"] in [x.checkpoint_id for x in jobs.manifests(node, job_id)]
    assert job2["next_checkpoint_at"] is None, "mode none: nothing scheduled"

    # gc and support-bundle on the live node.
    p = mmbatch(node, "gc", job_id, "--json")
    assert p.returncode == 0, p.stderr
    assert [r["job"] for r in json.loads(p.stdout)["jobs"]] == [job_id]
    out = os.path.join(node.dir, "bundle.tar.gz")
    p = mmbatch(node, "support-bundle", "-o", out, "--json")
    assert p.returncode == 0, p.stderr
    with tarfile.open(out) as tar:
        files: Dict[str, str] = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode(errors="replace")
                                 for m in tar.getmembers()}
    assert TOKEN not in "".join(files.values())
    kinds: List[str] = [json.loads(line)["kind"] for line in files["logs/events.log"].splitlines() if line]
    assert {"checkpoint", "restore", "config-change"} <= set(kinds)
    assert json.loads(files["daemon/jobs.json"])["jobs"]
    assert any(d["name"] == "docker engine" for d in json.loads(files["doctor.json"]))
    log_lines = [json.loads(line) for line in files["logs/mmbatchd.jsonl"].splitlines() if line.startswith("{")]
    assert any("node API" in rec["msg"] for rec in log_lines), "the daemon's JSON log lines are in the bundle"
