"""Restore with host networking and a live TCP connection; 1 GiB of memory."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from mmbatch import config as config_mod
from mmbatch.checkpointer import checkpoint_container
from tests.integration import jobs
from tests.lib import docker as dk

pytestmark = [pytest.mark.docker, pytest.mark.criu]

TCP_JOB = r"""
import os, socket, sys, time
port = int(sys.argv[1]); nonce = os.urandom(4).hex(); n = 0; conns = 0
def connect():
    global conns
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            conns += 1
            return s
        except OSError:
            time.sleep(0.2)
s = connect()
while True:
    n += 1
    try:
        s.sendall(("%d %s %d\n" % (n, nonce, conns)).encode())
    except OSError as e:
        print("reconnecting after", type(e).__name__, flush=True)
        s.close(); s = connect(); n -= 1
        continue
    print(n, nonce, conns, flush=True)
    time.sleep(0.1)
"""


class LineServer:
    """A TCP server on 127.0.0.1 that records the lines of each connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections: list = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            lines: list = []
            self.connections.append(lines)
            threading.Thread(target=self._read, args=(conn, lines), daemon=True).start()

    def _read(self, conn: socket.socket, lines: list) -> None:
        buf = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    lines.append(line.decode().split())

    def close(self) -> None:
        self.stop = True
        self.sock.close()


def test_host_network_tcp_connection_is_closed_and_job_reconnects(containers, python_image):
    server = LineServer()
    try:
        job_id = f"tcp-{os.urandom(4).hex()}"
        common = ["--runtime", jobs.RUNTIME, "--network", "host", "-e", f"AWS_BATCH_JOB_ID={job_id}"]
        a1 = containers.name("tcp")
        containers.run(*common, "-e", "AWS_BATCH_JOB_ATTEMPT=1", python_image, "python3", "-c", TCP_JOB,
                       str(server.port), name=a1)
        deadline = time.time() + 30
        while time.time() < deadline and not (server.connections and len(server.connections[0]) > 5):
            time.sleep(0.1)
        assert server.connections and len(server.connections[0]) > 5, "job never talked to the server"
        cfg = config_mod.load()
        checkpoint_container(dk.container_id(a1), cfg, cfg.runtime.state_dir, reason="test")
        time.sleep(0.3)
        jobs.kill(a1)
        first_conn = server.connections[0]
        nonce = first_conn[0][1]

        a2 = containers.name("tcp")
        containers.run(*common, "-e", "AWS_BATCH_JOB_ATTEMPT=2", python_image, "python3", "-c", TCP_JOB,
                       str(server.port), name=a2)
        deadline = time.time() + 30
        while time.time() < deadline and not (len(server.connections) >= 2 and len(server.connections[1]) > 3):
            time.sleep(0.1)
        assert len(server.connections) >= 2, "the restored job did not reconnect"
        second = server.connections[-1]
        assert second[0][1] == nonce, "the reconnecting job is not the restored one (nonce differs)"
        assert second[0][2] == "2", "the job should count its second connection"
        assert int(second[0][0]) > 1 and int(second[0][0]) <= int(first_conn[-1][0]) + 1
        logs = dk.docker("logs", a2).stdout.decode()
        assert "reconnecting after" in logs, logs[-500:]
    finally:
        server.close()


MEMORY_JOB = r"""
import hashlib, os, time
MiB = 1 << 20
N = int(os.environ.get("MIB", "1024"))
def block(i):
    return hashlib.sha256(b"block-%d" % i).digest() * (MiB // 32)
buf = bytearray(N * MiB)
mv = memoryview(buf)
for i in range(N):
    mv[i * MiB:(i + 1) * MiB] = block(i)
print("ready", flush=True)
while not os.path.exists("/data/verify"):
    time.sleep(0.1)
bad = [i for i in range(N) if mv[i * MiB:(i + 1) * MiB] != block(i)]
print("verified" if not bad else "CORRUPT %d blocks, first %d" % (len(bad), bad[0]), flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.slow
def test_one_gib_of_memory_survives_byte_for_byte(containers, python_image, tmp_path):
    vol = str(tmp_path)
    job_id = f"mem-{os.urandom(4).hex()}"
    common = ["--runtime", jobs.RUNTIME, "--network", "none", "-e", f"AWS_BATCH_JOB_ID={job_id}",
              "-e", "MIB=1024", "-v", f"{vol}:/data"]
    a1 = containers.name("mem")
    containers.run(*common, "-e", "AWS_BATCH_JOB_ATTEMPT=1", python_image, "python3", "-c", MEMORY_JOB, name=a1)
    dk.wait_for_log(a1, lambda t: "ready" in t, timeout=120)
    cfg = config_mod.load()
    result = checkpoint_container(dk.container_id(a1), cfg, cfg.runtime.state_dir, reason="test")
    assert result.bytes_total > 1 << 30
    jobs.kill(a1)
    a2 = containers.name("mem")
    containers.run(*common, "-e", "AWS_BATCH_JOB_ATTEMPT=2", python_image, "python3", "-c", MEMORY_JOB, name=a2,
                   timeout=300)
    open(os.path.join(vol, "verify"), "w").close()
    text = dk.wait_for_log(a2, lambda t: "verified" in t or "CORRUPT" in t, timeout=120)
    assert "verified" in text and "ready" not in text, text[-300:]
