"""Fixtures for GPU checkpoints on a machine without a GPU: CRIU's real CUDA
plugin, built for the installed CRIU by deploy/install-criu.sh, driving the
fake cuda-checkpoint (tests/lib/fakes) against a stand-in CUDA program.

CRIU's plugin disables itself when /proc/driver/nvidia/gpus/ is absent
unless CRIU's fault injection FI_PLUGIN_CUDA_FORCE_ENABLE (138) is set:
CRIU_FAULT=138 is the only concession to the missing GPU, and it changes
nothing else in CRIU (criu/include/fault-injection.h).

While these tests run, pytest is a child subreaper, so processes a dump
kills or a `criu restore -d` leaves behind are reaped by us and their pids
are free again at once.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, Iterator, List

import pytest

from tests.conftest import unavailable
from tests.lib.fakes import CUDA_APP, CUDA_CHECKPOINT, NVIDIA_SMI, write_driver, write_node

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FI_PLUGIN_CUDA_FORCE_ENABLE = "138"
PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(scope="session")
def criu_binary() -> str:
    if os.geteuid() != 0:
        unavailable("needs root (CRIU dumps and restores processes)")
    criu = shutil.which("criu")
    if not criu:
        unavailable("no criu on PATH (install.sh installs CRIU 4)")
    return criu


@pytest.fixture(scope="session")
def cuda_plugin_dir(criu_binary, tmp_path_factory) -> str:
    """cuda_plugin.so built from the installed CRIU's own source version."""
    if shutil.which("apt-get") is None:
        unavailable("building CRIU's CUDA plugin needs apt-get (CRIU's source package)")
    d = str(tmp_path_factory.mktemp("criu-libs"))
    out = subprocess.run(["bash", os.path.join(REPO, "deploy", "install-criu.sh"), "--build-cuda-plugin", d],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if out.returncode != 0 or not os.path.isfile(os.path.join(d, "cuda_plugin.so")):
        unavailable(f"could not build CRIU's CUDA plugin: {out.stderr.strip()[-500:]}")
    return d


@pytest.fixture
def subreaper() -> Iterator[None]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        reap()


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class FakeGpu:
    """One fake GPU node: the fake driver's dir, nvidia-smi's description,
    and the stand-in CUDA programs started on it."""

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "fake-cuda")
        os.makedirs(self.dir)
        write_driver(self.dir)
        self.smi_config = write_node(os.path.join(root, "nvidia-smi.json"))
        self.nvidia_smi = NVIDIA_SMI
        self.cuda_checkpoint = CUDA_CHECKPOINT
        self.pids: List[int] = []
        self.env: Dict[str, str] = {**os.environ, "FAKE_CUDA_DIR": self.dir,
                                    "FAKE_NVIDIA_SMI_CONFIG": self.smi_config}

    def start_app(self, out: str, kernel_seconds: float = 0.0) -> int:
        with open(out, "w") as f:
            proc = subprocess.Popen([sys.executable, CUDA_APP, "--kernel-seconds", str(kernel_seconds)],
                                    stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=self.env)
        self.pids.append(proc.pid)
        wait_lines(out, 2)
        return proc.pid

    def stop(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reap()


def lines(path: str) -> List[List[int]]:
    with open(path, encoding="utf-8") as f:
        return [[int(x) for x in line.split()] for line in f if line.strip() and line.split()[0].isdigit()]


def wait_lines(path: str, n: int, timeout: float = 20.0) -> List[List[int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = lines(path)
        if len(got) >= n:
            return got
        time.sleep(0.05)
    with open(path, encoding="utf-8") as f:
        raise AssertionError(f"{path}: fewer than {n} lines after {timeout}s: {f.read()[-500:]!r}")


@pytest.fixture
def fake_gpu(tmp_path, subreaper) -> Iterator[FakeGpu]:
    node = FakeGpu(str(tmp_path))
    yield node
    node.stop()
