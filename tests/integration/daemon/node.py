"""A private mmbatch node for the daemon's integration tests.

Each Node is its own dockerd (own --data-root, --exec-root, --pidfile,
socket, containerd, cgroup parent; no bridge, no iptables) with the runtime
"mmbatch" registered from the path in /etc/docker/daemon.json, and its own
mmbatch config (state dir, staging, log dir, hook socket, node.json) given
to dockerd, and so to the runtime, through MMBATCH_CONFIG and friends. Its
mmbatchd runs as a subprocess with the same environment.

The shared dockerd is never touched: its managed containers live in
/run/mmbatch and would otherwise be seen, frozen and checkpointed by a test
daemon. Nodes share only what a test gives them (the checkpoint store).
Everything a Node starts is stopped by PID at stop().
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def registered_runtime() -> str:
    """The path of the runtime "mmbatch" in the shared dockerd's daemon.json."""
    with open("/etc/docker/daemon.json", encoding="utf-8") as f:
        return json.load(f)["runtimes"]["mmbatch"]["path"]


class Node:
    def __init__(self, name: str, store_dir: str) -> None:
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"mmbt-{name}-", dir="/tmp")
        self.store_dir = store_dir
        self.sock = os.path.join(self.dir, "docker.sock")
        self.data_root = os.path.join(self.dir, "data")
        self.exec_root = os.path.join(self.dir, "exec")
        self.pidfile = os.path.join(self.dir, "docker.pid")
        self.state_dir = os.path.join(self.dir, "run")
        self.staging = os.path.join(self.dir, "staging")
        self.log_dir = os.path.join(self.dir, "log")
        self.hook_socket = os.path.join(self.dir, "run", "hook.sock")
        self.node_json = os.path.join(self.dir, "run", "node.json")
        self.config = os.path.join(self.dir, "config.toml")
        self.cgroup_parent = f"/mmbt-{name}-{uuid.uuid4().hex[:6]}"
        self.dockerd: Optional[subprocess.Popen] = None
        self.mmbatchd: Optional[subprocess.Popen] = None
        self._mmbatchd_log = None
        self.extra_env: Dict[str, str] = {}  # e.g. S3 credentials for the shim and mmbatchd
        for d in (self.data_root, self.exec_root, self.state_dir, self.staging, self.log_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        with open(os.path.join(self.dir, "daemon.json"), "w") as f:
            f.write("{}\n")

    # -- configuration ---------------------------------------------------------------

    def write_config(self, imds: str = "http://127.0.0.1:9", interval: str = "15m", keep: int = 100,
                     parallel: int = 2, jitter: float = 0.1, grace: float = 60, poll: float = 0.5,
                     kill_wait: float = 100, final_parallel: int = 0, spot_enabled: bool = True,
                     store_url: str = "", store_settings: Optional[Dict[str, object]] = None,
                     delegate: str = "runc") -> None:
        store_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (store_settings or {}).items())
        text = f"""
[runtime]
delegate = "{delegate}"
state_dir = "{self.state_dir}"
docker_socket = "{self.sock}"
[checkpoint]
interval = "{interval}"
keep = {keep}
staging_dir = "{self.staging}"
parallel = {parallel}
jitter = {jitter}
retry_seconds = "2s"
[store]
url = "{store_url or 'file://' + self.store_dir}"
{store_lines}[spot]
imds_endpoint = "{imds}"
poll_seconds = {poll}
grace_seconds = {grace}
kill_wait_seconds = {kill_wait}
final_parallel = {final_parallel}
enabled = {"true" if spot_enabled else "false"}
[api]
hook_socket = "{self.hook_socket}"
[log]
dir = "{self.log_dir}"
"""
        tmp = self.config + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.config)

    def env(self) -> Dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "MMBATCH_"))}
        e.update({
            "PATH": PATH,
            "MMBATCH_CONFIG": self.config,
            "MMBATCH_CONFIG_CACHE": os.path.join(self.dir, "config.cache"),
            "MMBATCH_LOG_DIR": self.log_dir,
            "MMBATCH_HOOK_SOCKET": self.hook_socket,
            "MMBATCH_NODE_INFO": self.node_json,
            "PYTHONUNBUFFERED": "1",
        })
        e.update(self.extra_env)
        return e

    # -- dockerd -----------------------------------------------------------------------

    def start_dockerd(self, timeout: float = 30) -> None:
        argv = [
            "dockerd", "--config-file", os.path.join(self.dir, "daemon.json"),
            "--data-root", self.data_root, "--exec-root", self.exec_root, "--pidfile", self.pidfile,
            "-H", f"unix://{self.sock}", "--iptables=false", "--ip-masq=false", "--bridge=none",
            "--cgroup-parent", self.cgroup_parent, "--add-runtime", f"mmbatch={registered_runtime()}",
        ]
        log = open(os.path.join(self.dir, "dockerd.log"), "ab")
        self.dockerd = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env(),
                                        start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.docker("info", "--format", "{{json .Runtimes}}", check=False, timeout=10).returncode == 0:
                return
            if self.dockerd.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"dockerd of node {self.name} did not start: {self.tail('dockerd.log')}")

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: Optional[bytes] = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", "-H", f"unix://{self.sock}", *args], capture_output=True,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"node {self.name}: docker {' '.join(args)} failed ({proc.returncode}): "
                                 f"{proc.stderr.decode(errors='replace')}")
        return proc

    def out(self, *args: str, **kw) -> str:
        return self.docker(*args, **kw).stdout.decode(errors="replace").strip()

    def load_images(self, *images: str) -> None:
        """Copy images from the shared engine (same image ids on every node)."""
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        try:
            proc = subprocess.run(["docker", "-H", f"unix://{self.sock}", "load"], stdin=save.stdout,
                                  capture_output=True, timeout=300)
        finally:
            assert save.stdout is not None
            save.stdout.close()
            save.wait()
        if proc.returncode != 0:
            raise AssertionError(f"docker load on node {self.name}: {proc.stderr.decode(errors='replace')}")

    def container_id(self, name: str) -> str:
        return self.out("inspect", "-f", "{{.Id}}", name)

    def container_state(self, name: str) -> Dict:
        return json.loads(self.out("inspect", "-f", "{{json .State}}", name))

    def logs(self, name: str) -> str:
        p = self.docker("logs", name, check=False)
        return p.stdout.decode(errors="replace")

    def runtime_status(self, cid: str) -> Optional[str]:
        """The runtime's own view (Docker does not know that mmbatchd paused a job)."""
        root = os.path.join(self.exec_root, "runtime-runc", "moby")
        proc = subprocess.run(["runc", "--root", root, "state", cid], capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout).get("status")

    # -- mmbatchd ---------------------------------------------------------------------

    def start_mmbatchd(self, wait: float = 15) -> subprocess.Popen:
        assert self.mmbatchd is None or self.mmbatchd.poll() is not None, "mmbatchd already runs"
        env = self.env()
        env["PYTHONPATH"] = REPO
        self._mmbatchd_log = open(os.path.join(self.log_dir, "mmbatchd.log"), "ab")
        self.mmbatchd = subprocess.Popen(
            [sys.executable, "-m", "mmbatch.daemon", "--log-level", "debug"], stdout=self._mmbatchd_log,
            stderr=self._mmbatchd_log, stdin=subprocess.DEVNULL, env=env, cwd="/",
        )
        deadline = time.time() + wait
        while time.time() < deadline:
            if os.path.exists(self.hook_socket):
                return self.mmbatchd
            if self.mmbatchd.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"mmbatchd of node {self.name} did not start: {self.tail('log/mmbatchd.log')}")

    def stop_mmbatchd(self, timeout: float = 150) -> Optional[int]:
        p = self.mmbatchd
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        if self._mmbatchd_log is not None:
            self._mmbatchd_log.close()
            self._mmbatchd_log = None
        return p.returncode

    def daemon_log(self) -> str:
        return self.tail("log/mmbatchd.log", 200000)

    def events(self) -> List[Dict]:
        out = []
        try:
            with open(os.path.join(self.log_dir, "events.log"), encoding="utf-8") as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        except FileNotFoundError:
            pass
        return out

    def tail(self, rel: str, n: int = 3000) -> str:
        try:
            with open(os.path.join(self.dir, rel), encoding="utf-8", errors="replace") as f:
                return f.read()[-n:]
        except OSError as e:
            return f"({e})"

    # -- teardown ---------------------------------------------------------------------

    def remove_all_containers(self) -> None:
        if self.dockerd is None or self.dockerd.poll() is not None:
            return
        ids = self.out("ps", "-aq", check=False, timeout=30).split()
        if ids:
            self.docker("rm", "-f", *ids, check=False, timeout=120)

    def stop_dockerd(self, timeout: float = 30) -> None:
        if self.dockerd is None:
            return
        containerd_pid = None
        try:
            with open(os.path.join(self.exec_root, "containerd", "containerd.pid")) as f:
                containerd_pid = int(f.read().strip())
        except (OSError, ValueError):
            pass
        if self.dockerd.poll() is None:
            self.dockerd.send_signal(signal.SIGTERM)
            try:
                self.dockerd.wait(timeout)
            except subprocess.TimeoutExpired:
                self.dockerd.kill()
                self.dockerd.wait(10)
        if containerd_pid and _cmdline_mentions(containerd_pid, self.exec_root):
            _stop_pid(containerd_pid, timeout=10)
        self.dockerd = None

    def stop(self) -> None:
        try:
            self.stop_mmbatchd(timeout=30)
        finally:
            try:
                self.remove_all_containers()
            finally:
                self.stop_dockerd()
                self._cleanup_files()

    def _cleanup_files(self) -> None:
        with open("/proc/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1] for line in f]
        for m in sorted((m for m in mounts if m.startswith(self.dir + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        for ctrl in os.listdir("/sys/fs/cgroup"):
            top = os.path.join("/sys/fs/cgroup", ctrl, self.cgroup_parent.lstrip("/"))
            if os.path.isdir(top):
                for d, _dirs, _files in sorted(os.walk(top), key=lambda x: len(x[0]), reverse=True):
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass


def _cmdline_mentions(pid: int, text: str) -> bool:
    """Only a process of this node is ever signalled (a PID may have been reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False


def _stop_pid(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
