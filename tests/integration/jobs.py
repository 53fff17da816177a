"""Job scripts and helpers for the checkpoint/restore integration tests."""

from __future__ import annotations

import os
import subprocess
import time
from typing import List, Optional, Tuple

from mmbatch import config as config_mod
from mmbatch.checkpointer import checkpoint_container, open_repository
from tests.lib import docker as dk

RUNTIME = os.environ.get("MMBATCH_TEST_RUNTIME", "mmbatch")

# A counting job: prints "n pid nonce", writes n to its rootfs (/count) and
# appends it through a file descriptor it holds open on a volume (so CRIU's
# size check of open volume files is exercised). Stops with exit $EXIT when
# /data/stop appears.
COUNTER = (
    "nonce=$RANDOM$RANDOM; n=0; exec 3>>/data/counter.log; "
    "while [ ! -e /data/stop ]; do n=$((n+1)); echo \"$n $$ $nonce\"; echo $n > /count; echo $n >&3; "
    "sleep 0.1; done; exit ${EXIT:-0}"
)

Line = Tuple[int, str, str]


def cfg() -> config_mod.Config:
    return config_mod.load()


def parse_lines(text: str) -> List[Line]:
    out = []
    for ln in text.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[0].isdigit():
            out.append((int(parts[0]), parts[1], parts[2]))
    return out


def lines_of(name: str) -> List[Line]:
    return parse_lines(dk.docker("logs", name, check=False).stdout.decode(errors="replace"))


def wait_lines(name: str, n: int, timeout: float = 30) -> List[Line]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = lines_of(name)
        if len(got) >= n:
            return got
        time.sleep(0.1)
    logs = dk.docker("logs", name, check=False)
    raise AssertionError(
        f"{name}: fewer than {n} lines after {timeout}s: {logs.stdout[-500:]!r} {logs.stderr[-500:]!r}"
    )


def start_counter(containers: dk.Containers, image: str, job_id: str, attempt: int, vol: str,
                  name: Optional[str] = None, extra: Tuple[str, ...] = ()) -> str:
    name = name or containers.name("job")
    containers.run("--runtime", RUNTIME, "--network", "none", "-e", f"AWS_BATCH_JOB_ID={job_id}",
                   "-e", f"AWS_BATCH_JOB_ATTEMPT={attempt}", "-v", f"{vol}:/data", *extra,
                   image, "sh", "-c", COUNTER, name=name)
    return name


def paused_checkpoint(name: str) -> Tuple[Line, str]:
    """Pause the job, read its last line, checkpoint it (it stays paused), unpause.

    Returns (last line at the checkpoint, checkpoint id).
    """
    dk.docker("pause", name)
    time.sleep(0.4)  # let lines already written reach the log
    last = lines_of(name)[-1]
    c = cfg()
    result = checkpoint_container(dk.container_id(name), c, c.runtime.state_dir, reason="test")
    assert dk.inspect(name)["State"]["Paused"], "a container paused by the user must stay paused"
    dk.docker("unpause", name)
    return last, result.checkpoint_id


def kill(name: str) -> None:
    dk.docker("kill", name)
    dk.docker("wait", name, check=False)


def repo_for(job_id: str):
    from mmbatch.identity import sanitize_component

    return open_repository(cfg(), {"job_key": sanitize_component(job_id)})


def volume_counts(vol: str) -> List[int]:
    with open(os.path.join(vol, "counter.log")) as f:
        return [int(x) for x in f.read().split()]


def assert_consecutive(values: List[int]) -> None:
    assert values, "no values"
    assert values == list(range(1, len(values) + 1)), f"not 1..N without gaps or repeats: {values[:5]}...{values[-5:]}"


def store_files(root: str) -> List[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(os.path.join(dirpath, f) for f in files)
    return out


def mmbatch_cli(*args: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run([sys.executable, "-m", "mmbatch.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
