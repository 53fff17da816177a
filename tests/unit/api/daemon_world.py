"""A real mmbatchd for API and CLI tests: its loop on a thread, a fake
engine (no dockerd in unit tests), a real file store, the API on
127.0.0.1 with an ephemeral port and on a unix socket in a temp dir."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Dict, Iterator, Optional, Tuple

from mmbatch import config as config_mod
from mmbatch.checkpointer import open_repository
from mmbatch.daemon import Daemon
from mmbatch.manifest import Manifest
from tests.lib.fake_engine import FakeEngine

TOKEN = "t0ken-" + "a1b2c3d4" * 4


def cid_of(n: int) -> str:
    return f"{n:02d}" * 32


def write_state(cfg, cid: str, job_key: str, interval: float = 60.0, **extra) -> None:
    st = {"container_id": cid, "managed": True, "decision": "cold", "created_at": time.time() - 30,
          "job": {"job_key": job_key, "interval": interval, "mode": "iterative", "batch_job_id": job_key,
                  "attempt": "1"},
          "runtime": "runc", "globals": {"root": "/nonexistent"}}
    st.update(extra)
    d = os.path.join(cfg.runtime.state_dir, cid)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "state.json"), "w") as f:
        json.dump(st, f)


def commit_checkpoint(cfg, tmp_path, job_key: str, created_at: float, container_id: str) -> Manifest:
    src = tmp_path / f"ck-{job_key}-{created_at}"
    (src / "criu").mkdir(parents=True)
    (src / "criu" / "pages-1.img").write_bytes(os.urandom(3 * 4096))
    repo = open_repository(cfg, {"job_key": job_key})
    return repo.commit(str(src), Manifest(job_key=job_key, container_id=container_id, created_at=created_at,
                                          stats={"freeze_seconds": 0.25}, labels={"reason": "periodic"}))


class Node:
    def __init__(self, daemon: Daemon, sock: str, tmp_path) -> None:
        self.daemon = daemon
        self.sock = sock
        self.tmp_path = tmp_path
        self.thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.daemon.api.tcp_address[1]

    def tcp(self, method: str, path: str, body: Any = None, token: Optional[str] = TOKEN,
            auth: Optional[str] = None) -> Tuple[int, Dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {}
        if auth is not None:
            headers["Authorization"] = auth
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get(self, path: str) -> Any:
        status, _, body = self.tcp("GET", path)
        assert status == 200, (path, status, body)
        return json.loads(body)


def running_node(tmp_path, monkeypatch) -> Iterator[Node]:
    short = tempfile.mkdtemp(prefix="mmbt-api-", dir="/tmp")  # unix socket paths must stay short
    monkeypatch.setenv("MMBATCH_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("MMBATCH_NODE_INFO", str(tmp_path / "node.json"))
    monkeypatch.delenv("MMBATCH_HOOK_SOCKET", raising=False)
    (tmp_path / "node.json").write_text(json.dumps({"instance_id": "i-0abc", "instance_type": "m5.large"}))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    cfg = config_mod.from_dict({
        "runtime": {"state_dir": str(tmp_path / "state")},
        "checkpoint": {"interval": "60s", "staging_dir": str(tmp_path / "staging"), "jitter": 0.0},
        "store": {"url": f"file://{tmp_path / 'store'}"},
        "api": {"hook_socket": os.path.join(short, "hook.sock"), "listen": "127.0.0.1:0",
                "token_file": str(token_file)},
        "spot": {"grace_seconds": 30},
    })
    os.makedirs(cfg.runtime.state_dir)
    engine = FakeEngine()
    a, b = cid_of(1), cid_of(2)
    write_state(cfg, a, "job-a")
    write_state(cfg, b, "job-b", interval=45.0)  # its own interval, from its env
    engine.running = [a, b]
    commit_checkpoint(cfg, tmp_path, "job-a", time.time() - 20, a)
    d = Daemon(cfg, engine=engine)
    d.start(spot=False, engine_events=False)
    n = Node(d, os.path.join(short, "mmbatchd.sock"), tmp_path)
    n.thread = threading.Thread(target=d.run, daemon=True)
    n.thread.start()
    yield n
    d.stop_event.set()
    d.post("stop")
    n.thread.join(30)
    shutil.rmtree(short, ignore_errors=True)
