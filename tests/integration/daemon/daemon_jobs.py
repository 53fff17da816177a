"""Jobs and store helpers for mmbatchd's integration tests."""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, List, Optional, Tuple

from mmbatch import config as config_mod
from mmbatch.checkpointer import open_repository
from mmbatch.identity import sanitize_component
from tests.integration.daemon.node import Node

RUNTIME = os.environ.get("MMBATCH_TEST_RUNTIME", "mmbatch")

# Prints "n pid" every 0.1 s until n reaches LIMIT (default: for ever), then exits 0.
COUNTER = (
    'n=0; while [ "$n" -lt "${LIMIT:-100000000}" ]; do n=$((n+1)); echo "$n $$"; sleep 0.1; done; exit 0'
)

# A Python job holding MIB MiB of random (incompressible, never deduplicated)
# memory; prints "ready", then "n" every 0.1 s, touching a page each time.
BIG_PYTHON = r"""
import os, sys, time
mib = int(os.environ.get("MIB", "512"))
buf = bytearray(mib << 20)
for off in range(0, len(buf), 1 << 20):
    buf[off:off + (1 << 20)] = os.urandom(1 << 20)
print("ready", flush=True)
n = 0
while True:
    n += 1
    buf[(n * 4096) % len(buf)] = n & 255
    print(n, flush=True)
    time.sleep(0.1)
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


def run_job(node: Node, name: str, job_id: str, *extra: str, image: str, argv: Tuple[str, ...],
            attempt: int = 1, network: str = "none") -> str:
    node.docker("run", "-d", "--name", name, "--runtime", RUNTIME, "--network", network,
                "-e", f"AWS_BATCH_JOB_ID={job_id}", "-e", f"AWS_BATCH_JOB_ATTEMPT={attempt}", *extra, image, *argv)
    return node.container_id(name)


def counter_lines(text: str) -> List[int]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit():
            out.append(int(parts[0]))
    return out


def repo(node: Node, job_id: str):
    return open_repository(config_mod.load(node.config), {"job_key": sanitize_component(job_id)})


def manifests(node: Node, job_id: str) -> list:
    """Committed checkpoints of a job, oldest first."""
    return sorted(repo(node, job_id).list(), key=lambda m: m.created_at)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1,
             node: Optional[Node] = None):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() >= deadline:
            extra = ""
            if node is not None:
                if node.mmbatchd is not None and node.mmbatchd.poll() is None:
                    os.kill(node.mmbatchd.pid, signal.SIGUSR2)  # its threads' stacks, into its log
                    time.sleep(0.5)
                extra = f"\n--- mmbatchd log ---\n{node.daemon_log()[-12000:]}"
            raise AssertionError(f"timeout after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)
