"""Helpers to drive a real dockerd from tests.

The engine is whatever `docker` talks to (DOCKER_HOST); .ci/run starts one.
Images are built without a registry: busybox-static copied into a rootfs and
`docker import`ed (ENVIRONMENT.md), Python from the host's interpreter and
its libraries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from typing import Dict, List, Optional, Sequence

BUSYBOX_IMAGE = "mmbatch-test/busybox:1"
PYTHON_IMAGE = "mmbatch-test/python:1"
LABEL = "io.mmbatch.test=1"


def docker(*args: str, check: bool = True, timeout: float = 120, input: Optional[bytes] = None,
           env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, timeout=timeout, input=input, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
        )
    return proc


def out(*args: str, **kw) -> str:
    return docker(*args, **kw).stdout.decode(errors="replace").strip()


def available() -> Optional[str]:
    """None when a dockerd answers, else why not."""
    if not shutil.which("docker"):
        return "docker CLI not installed"
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker info failed: {e}"
    if proc.returncode != 0:
        return "no dockerd running: " + proc.stderr.decode(errors="replace").strip()[:200]
    return None


def runtimes() -> List[str]:
    try:
        return sorted(json.loads(out("info", "--format", "{{json .Runtimes}}")).keys())
    except (AssertionError, ValueError):
        return []


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False).returncode == 0


def _import_rootfs(root: str, name: str) -> None:
    from mmbatch.demo import import_rootfs

    import_rootfs(root, name)


def _base_rootfs(root: str) -> None:
    from mmbatch.demo import build_busybox_rootfs

    build_busybox_rootfs(root)


def ensure_busybox() -> str:
    if not image_exists(BUSYBOX_IMAGE):
        root = tempfile.mkdtemp(prefix="mmbatch-bb-")
        try:
            _base_rootfs(root)
            _import_rootfs(root, BUSYBOX_IMAGE)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return BUSYBOX_IMAGE


def _ldd_libs(binary: str) -> List[str]:
    proc = subprocess.run(["ldd", binary], capture_output=True, text=True)
    libs = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        for p in parts:
            if p.startswith("/"):
                libs.append(p)
    return libs


def ensure_python() -> str:
    """An image with the host's /usr/bin/python3 and its stdlib (no site-packages)."""
    if not image_exists(PYTHON_IMAGE):
        root = tempfile.mkdtemp(prefix="mmbatch-py-")
        try:
            _base_rootfs(root)
            py = os.path.realpath("/usr/bin/python3")
            ver = subprocess.run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            for lib in [py] + _ldd_libs(py):
                dest = os.path.join(root, lib.lstrip("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copy2(lib, dest)
            os.symlink(py, os.path.join(root, "bin", "python3")) if py != "/bin/python3" else None
            stdlib = f"/usr/lib/python{ver}"
            shutil.copytree(stdlib, os.path.join(root, stdlib.lstrip("/")), symlinks=True,
                            ignore=shutil.ignore_patterns("site-packages", "dist-packages", "test", "tests",
                                                          "idlelib", "tkinter", "ensurepip", "__pycache__"))
            dyn = os.path.join(root, stdlib.lstrip("/"), "lib-dynload")
            if not os.path.isdir(dyn):
                os.makedirs(dyn)
            _import_rootfs(root, PYTHON_IMAGE)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return PYTHON_IMAGE


class Containers:
    """Tracks containers a test started and removes them afterwards."""

    def __init__(self) -> None:
        self.names: List[str] = []

    def name(self, prefix: str = "t") -> str:
        n = f"mmbt-{prefix}-{uuid.uuid4().hex[:8]}"
        self.names.append(n)
        return n

    def run(self, *args: str, name: Optional[str] = None, detach: bool = True, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        name = name or self.name()
        if name not in self.names:
            self.names.append(name)
        argv = ["run", "--name", name, "--label", LABEL]
        if detach:
            argv.append("-d")
        return docker(*argv, *args, check=check, timeout=timeout)

    def cleanup(self) -> None:
        for n in self.names:
            docker("rm", "-f", n, check=False, timeout=60)
        self.names.clear()


def wait_for_log(name: str, predicate, timeout: float = 30.0, interval: float = 0.1) -> str:
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        proc = docker("logs", name, check=False)
        text = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        if predicate(text):
            return text
        time.sleep(interval)
    raise AssertionError(f"timeout waiting on logs of {name}; last:\n{text[-2000:]}")


def container_id(name: str) -> str:
    return out("inspect", "-f", "{{.Id}}", name)


def inspect(name: str) -> Dict:
    return json.loads(out("inspect", name))[0]


def wait_exit(name: str, timeout: float = 60) -> int:
    return int(out("wait", name, timeout=timeout))


def args_list(items: Sequence[str]) -> List[str]:
    return list(items)


def logs(name: str, timeout: float = 60) -> tuple[str, str]:
    """(stdout, stderr) of `docker logs`, kept apart as the engine stored them."""
    proc = docker("logs", name, timeout=timeout)
    return proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll predicate() until it returns a truthy value (returned); AssertionError on timeout."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() >= deadline:
            raise AssertionError(f"timeout after {timeout}s waiting for {what}")
        time.sleep(interval)


def container_state(name: str) -> Dict:
    """The engine's State of a container (Status, Running, Paused, ExitCode, OOMKilled, ...)."""
    return json.loads(out("inspect", "-f", "{{json .State}}", name))
