"""CloudWatch Logs shipping (mmbatch.logs) against moto in server mode on
127.0.0.1, behind a small proxy that answers some PutLogEvents calls with
the real wire errors (ThrottlingException, AccessDeniedException in the
JSON 1.1 protocol), since moto does not throttle."""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional

import pytest

from mmbatch import logs
from tests.conftest import unavailable
from tests.lib.s3server import free_ports

GROUP = "/mmbatch/test"


@pytest.fixture(scope="module")
def moto_url():
    try:
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("moto[server] is not installed (a test-only dependency)")
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("moto server exited")
            time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)


class FaultProxy:
    """Forwards to moto; answers the first `fail` PutLogEvents calls itself
    with `code` the way CloudWatch Logs does (HTTP 400, JSON 1.1 __type)."""

    def __init__(self, upstream: str, code: str = "ThrottlingException", fail: int = 0, hang: bool = False) -> None:
        self.upstream = upstream.split("//", 1)[1]
        self.code = code
        self.fail = fail
        self.hang = hang
        self.targets: List[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                proxy.targets.append(target.split(".")[-1])
                if target.endswith(".PutLogEvents") and (proxy.fail > 0 or proxy.code and proxy.fail < 0):
                    proxy.fail -= 1 if proxy.fail > 0 else 0
                    if proxy.hang:
                        time.sleep(2)
                    msg = json.dumps({"__type": proxy.code, "message": "Rate exceeded"}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request("POST", self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def puts(self) -> int:
        return self.targets.count("PutLogEvents")


@pytest.fixture
def proxy_factory(moto_url):
    made: List[FaultProxy] = []

    def make(**kw) -> FaultProxy:
        p = FaultProxy(moto_url, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def read_stream(moto_url: str, group: str, stream: str) -> List[Dict]:
    client = logs.logs_client("us-east-1", moto_url)
    return client.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)["events"]


def unique_group() -> str:
    return f"{GROUP}/{uuid.uuid4().hex[:8]}"


def test_ships_batches_per_stream_in_time_order(moto_url, proxy_factory):
    proxy = proxy_factory()
    group = unique_group()
    shipper = logs.CloudWatchShipper(logs.logs_client("us-east-1", proxy.url), group)
    t = time.time()
    shipper.submit("node/mmbatchd", "second", t + 1)
    shipper.submit("node/mmbatchd", "first", t)
    shipper.submit("node/events", json.dumps({"kind": "checkpoint"}), t)
    assert shipper.flush() == 3
    assert [e["message"] for e in read_stream(moto_url, group, "node/mmbatchd")] == ["first", "second"]
    assert json.loads(read_stream(moto_url, group, "node/events")[0]["message"]) == {"kind": "checkpoint"}
    assert proxy.targets.count("CreateLogGroup") == 2 and proxy.targets.count("CreateLogStream") == 2, \
        "the group and each stream are created once (the second group call meets ResourceAlreadyExists)"
    shipper.submit("node/mmbatchd", "third", t + 2)
    assert shipper.flush() == 1 and proxy.targets.count("CreateLogStream") == 2, "known streams are not re-created"


def test_throttling_is_retried_with_backoff(moto_url, proxy_factory):
    proxy = proxy_factory(code="ThrottlingException", fail=3)
    group = unique_group()
    shipper = logs.CloudWatchShipper(logs.logs_client("us-east-1", proxy.url), group, base_backoff=0.1)
    for i in range(5):
        shipper.submit("s", f"event {i}", time.time())
    t0 = time.monotonic()
    assert shipper.flush() == 5
    elapsed = time.monotonic() - t0
    assert proxy.puts() == 4 and shipper.retries == 3 and shipper.failed == 0
    assert elapsed >= 0.05 + 0.1 + 0.2, "backoff doubles (with jitter down to half): at least 0.35 s"
    assert [e["message"] for e in read_stream(moto_url, group, "s")] == [f"event {i}" for i in range(5)], \
        "delivered once, in order"


def test_errors_that_retrying_cannot_fix_drop_the_batch(moto_url, proxy_factory, caplog):
    proxy = proxy_factory(code="AccessDeniedException", fail=-1)
    shipper = logs.CloudWatchShipper(logs.logs_client("us-east-1", proxy.url), unique_group())
    shipper.submit("s", "one")
    shipper.submit("s", "two")
    with caplog.at_level(logging.WARNING, logger="mmbatch.logs"):
        assert shipper.flush() == 0
    assert proxy.puts() == 1 and shipper.failed == 2 and shipper.retries == 0
    assert "AccessDeniedException" in caplog.text


def test_a_full_queue_drops_the_oldest_and_counts(moto_url, proxy_factory):
    proxy = proxy_factory()
    group = unique_group()
    drops: List[int] = []
    shipper = logs.CloudWatchShipper(logs.logs_client("us-east-1", proxy.url), group, queue_size=100,
                                     on_drop=drops.append)
    t = time.time()
    for i in range(150):
        shipper.submit("s", f"e{i:03d}", t + i / 1000)
    assert shipper.pending() == 100 and shipper.dropped == 50 and sum(drops) == 50
    assert shipper.flush() == 100
    got = [e["message"] for e in read_stream(moto_url, group, "s")]
    assert got == [f"e{i:03d}" for i in range(50, 150)]


def test_submit_never_blocks_while_cloudwatch_is_slow(moto_url, proxy_factory):
    proxy = proxy_factory(code="ThrottlingException", fail=-1, hang=True)  # every put: 2 s, then throttled
    shipper = logs.CloudWatchShipper(logs.logs_client("us-east-1", proxy.url), unique_group(), queue_size=1000,
                                     batch_seconds=0.1, base_backoff=0.5).start()
    try:
        shipper.submit("s", "first")
        time.sleep(0.5)  # the thread is now inside a slow put
        t0 = time.monotonic()
        for i in range(5000):
            shipper.submit("s", f"event {i}")
        assert time.monotonic() - t0 < 1.0
        assert shipper.dropped >= 4000
        deadline = time.time() + 10
        while time.time() < deadline and shipper.retries < 1:
            time.sleep(0.1)
    finally:
        t0 = time.monotonic()
        shipper.stop(flush_timeout=3.0)
        assert time.monotonic() - t0 < 12.0, "stop gives up on a throttling CloudWatch"
    assert proxy.puts() >= 1 and shipper.retries >= 1


def test_stop_drains_a_batch_that_is_being_retried(moto_url, proxy_factory):
    """A batch meeting throttling when stop() is called keeps being retried until the drain deadline."""
    proxy = proxy_factory(code="ThrottlingException", fail=3)
    group = unique_group()
    shipper = logs.CloudWatchShipper(logs.logs_client("us-east-1", proxy.url), group, batch_seconds=0.05,
                                     base_backoff=0.3).start()
    shipper.submit("s", "last words")
    deadline = time.time() + 10
    while time.time() < deadline and proxy.puts() < 1:
        time.sleep(0.02)
    assert proxy.puts() >= 1, "the shipper is retrying the batch"
    shipper.stop(flush_timeout=5.0)
    assert shipper.failed == 0 and shipper.sent == 1 and proxy.puts() == 4
    assert [e["message"] for e in read_stream(moto_url, group, "s")] == ["last words"]


def test_log_records_become_json_lines_in_the_stream(moto_url, proxy_factory):
    proxy = proxy_factory()
    group = unique_group()
    shipper = logs.CloudWatchShipper(logs.logs_client("us-east-1", proxy.url), group)
    handler = logs.CloudWatchHandler(shipper, "i-0abc/mmbatchd")
    logger = logging.getLogger("mmbatchd.test-cw")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("watching %s", "c1")
        logging.getLogger("botocore.test").warning("the shipper's own HTTP")
    finally:
        logger.removeHandler(handler)
    assert shipper.pending() == 1, "botocore's records are not shipped (they would feed themselves)"
    shipper.flush()
    doc = json.loads(read_stream(moto_url, group, "i-0abc/mmbatchd")[0]["message"])
    assert doc["msg"] == "watching c1" and doc["level"] == "info" and doc["logger"] == "mmbatchd.test-cw"


def test_batches_respect_put_log_events_limits():
    t = 1_700_000_000_000
    many = [(t, "x") for _ in range(25000)]
    assert [len(b) for b in logs.batches(many)] == [10000, 10000, 5000]
    big = "y" * (300 * 1024)
    sizes = [len(b) for b in logs.batches([(t, big)] * 7)]
    assert sizes == [3, 3, 1], "1 MiB per batch, 26 bytes of overhead per event"
    day = 24 * 3600 * 1000
    assert [len(b) for b in logs.batches([(t, "a"), (t + 1000, "b"), (t + day, "c")])] == [2, 1]
    assert logs.batches([]) == []


def test_messages_are_cut_to_fit_an_event():
    shipper = logs.CloudWatchShipper(client=None, log_group="g")
    shipper.submit("s", "z" * (logs.MAX_MESSAGE_BYTES + 5000))
    (_, _, msg), = list(shipper._queue)
    assert msg.endswith("...(truncated)") and len(msg.encode()) <= logs.MAX_MESSAGE_BYTES + 20


def test_stream_prefix_prefers_the_instance_id(tmp_path):
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"instance_id": "i-0123"}))
    assert logs.stream_prefix("", str(node)) == "i-0123"
    assert logs.stream_prefix("queue-a", str(node)) == "queue-a"
    assert logs.stream_prefix("", str(tmp_path / "none.json")) == socket.gethostname()


def test_json_formatter_writes_one_object_per_line(tmp_path):
    from mmbatch import config as config_mod

    cfg = config_mod.from_dict({"log": {"dir": str(tmp_path / "log")}})
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        logs.setup_daemon_logging(cfg, "info")
        logging.getLogger("mmbatchd").warning("a %s with\nnewline", "message")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("mmbatchd").exception("failed")
    finally:
        for h in root.handlers[len(before):]:
            h.close()
        root.handlers = before
        root.setLevel(level)
    lines = (tmp_path / "log" / "mmbatchd.jsonl").read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    assert docs[0]["msg"] == "a message with\nnewline" and docs[0]["level"] == "warning"
    assert "ValueError: boom" in docs[1]["exc"]
    assert oct(os.stat(tmp_path / "log" / "mmbatchd.jsonl").st_mode & 0o777) == "0o640"


def test_start_cloudwatch_is_off_unless_enabled(moto_url):
    from mmbatch import config as config_mod

    assert logs.start_cloudwatch(config_mod.Config()) is None
    cfg = config_mod.from_dict({"cloudwatch": {"enabled": True, "endpoint_url": moto_url, "region": "us-east-1",
                                               "log_group": unique_group(), "stream_prefix": "n1",
                                               "batch_seconds": 0.2}})
    root = logging.getLogger()
    before = list(root.handlers)
    shipper: Optional[logs.CloudWatchShipper] = None
    try:
        shipper, prefix = logs.start_cloudwatch(cfg)
        assert prefix == "n1"
        logging.getLogger("mmbatchd").warning("hello CloudWatch")
        deadline = time.time() + 10
        while time.time() < deadline and shipper.sent < 1:
            time.sleep(0.1)
        assert shipper.sent >= 1
    finally:
        root.handlers = before
        if shipper is not None:
            shipper.stop()
    msgs = [json.loads(e["message"])["msg"] for e in read_stream(moto_url, cfg.cloudwatch.log_group, "n1/mmbatchd")]
    assert "hello CloudWatch" in msgs
