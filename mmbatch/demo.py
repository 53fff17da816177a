"""`mmbatch demo`: the whole story on this node, with real Docker and CRIU.

A counting job runs as a Batch job would (AWS_BATCH_JOB_ID set, attempt 1),
is checkpointed, then killed as a Spot reclaim would kill it. Batch's retry
(same job id, attempt 2) starts through mmbatch-runtime, which restores the
checkpoint: the job continues from the count it had, with the same PID and
the same random nonce it drew once at start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import List, Optional, Tuple

from mmbatch.config import Config

DEMO_IMAGE = "mmbatch-demo/busybox:1"
JOB_SCRIPT = (
    'nonce=$RANDOM$RANDOM; n=0; '
    'while :; do n=$((n+1)); echo "count=$n pid=$$ nonce=$nonce"; echo $n > /work-count; sleep 0.25; done'
)


def _docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def build_busybox_rootfs(root: str) -> None:
    """A minimal rootfs from the host's static busybox (no registry needed)."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise RuntimeError("busybox not found: install busybox-static")
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp", "data", "root", "var/tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy2(busybox, os.path.join(root, "bin", "busybox"))
    subprocess.run(["chroot", root, "/bin/busybox", "--install", "-s", "/bin"], check=True)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
                "worker:x:1000:1000:worker:/tmp:/bin/sh\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\nworker:x:1000:\n")


def import_rootfs(root: str, name: str) -> None:
    tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
    try:
        proc = subprocess.run(["docker", "import", "-", name], stdin=tar.stdout, capture_output=True, timeout=300)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"docker import {name}: {proc.stderr.decode(errors='replace')}")


def ensure_image(name: str = DEMO_IMAGE) -> str:
    if _docker("image", "inspect", name, check=False).returncode == 0:
        return name
    root = tempfile.mkdtemp(prefix="mmbatch-demo-")
    try:
        build_busybox_rootfs(root)
        import_rootfs(root, name)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return name


def _lines(name: str) -> List[str]:
    return [ln for ln in _docker("logs", name, check=False).stdout.splitlines() if ln.startswith("count=")]


def _parse(line: str) -> Tuple[int, str, str]:
    fields = dict(item.split("=", 1) for item in line.split())
    return int(fields["count"]), fields["pid"], fields["nonce"]


def _say(msg: str) -> None:
    print(msg, flush=True)


def _wait_lines(name: str, n: int, timeout: float = 30) -> List[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = _lines(name)
        if len(lines) >= n:
            return lines
        time.sleep(0.1)
    raise RuntimeError(f"container {name} printed fewer than {n} lines in {timeout}s")


def _preflight(runtime: str) -> Optional[str]:
    if not shutil.which("docker"):
        return "the docker CLI is not installed"
    info = _docker("info", "--format", "{{json .Runtimes}}", check=False)
    if info.returncode != 0:
        return "dockerd is not running (start it, or see README: Troubleshooting)"
    if f'"{runtime}"' not in info.stdout:
        return f"Docker has no runtime {runtime!r}: run install.sh (it registers mmbatch in daemon.json)"
    if not shutil.which("criu"):
        return "criu is not installed: run install.sh (it installs CRIU 4.x)"
    return None


def run_demo(cfg: Config, keep: bool = False, runtime: str = "mmbatch") -> int:
    from mmbatch.checkpointer import checkpoint_container
    from mmbatch.engine import DockerEngine

    problem = _preflight(runtime)
    if problem:
        print(f"mmbatch demo: {problem}", file=sys.stderr)
        return 2
    image = ensure_image()
    job_id = f"demo-{uuid.uuid4().hex[:8]}"
    first, second = f"mmbatch-demo-{job_id}-1", f"mmbatch-demo-{job_id}-2"
    common = ["--runtime", runtime, "--network", "none", "-e", f"AWS_BATCH_JOB_ID={job_id}"]
    ok = False
    try:
        _say(f"1. Batch starts job {job_id} (attempt 1) through mmbatch-runtime")
        _docker("run", "-d", "--name", first, *common, "-e", "AWS_BATCH_JOB_ATTEMPT=1", image, "sh", "-c",
                JOB_SCRIPT)
        lines = _wait_lines(first, 8)
        _say("   " + lines[-1])
        cid = DockerEngine(cfg.runtime.docker_socket).inspect(first)["Id"]

        _say("2. mmbatch checkpoints it (freeze, CRIU dump, rootfs diff, resume, store)")
        before = _parse(_lines(first)[-1])
        result = checkpoint_container(cid, cfg, cfg.runtime.state_dir, reason="demo")
        after = _parse(_lines(first)[-1])
        _say(f"   checkpoint {result.checkpoint_id}: job frozen {result.freeze_seconds * 1000:.0f} ms, "
             f"{result.bytes_total / 1e6:.1f} MB in {result.total_seconds:.2f} s, store {cfg.store.url}")

        time.sleep(1.0)
        _say("3. The Spot instance is reclaimed: the job is killed")
        last_before_kill = _lines(first)[-1]
        _docker("kill", first)
        _docker("wait", first, check=False)
        _say(f"   last line of attempt 1: {last_before_kill} (work after the checkpoint is redone)")

        _say("4. Batch retries the job (attempt 2); mmbatch-runtime restores it on create")
        t0 = time.monotonic()
        _docker("run", "-d", "--name", second, *common, "-e", "AWS_BATCH_JOB_ATTEMPT=2", image, "sh", "-c",
                JOB_SCRIPT)
        started = time.monotonic() - t0
        lines = _wait_lines(second, 4)
        count, pid, nonce = _parse(lines[0])
        _say(f"   `docker run` returned in {started:.2f} s; first lines of attempt 2:")
        for ln in lines[:3]:
            _say("   " + ln)
        # The job was frozen somewhere between the two lines read around the
        # checkpoint: it must go on right after that point, not from 1.
        ok = before[0] < count <= after[0] + 1 and (pid, nonce) == before[1:]
        if ok:
            _say(f"5. Continued: count {count} follows the checkpoint (taken at count {before[0]}..{after[0]}), "
                 f"same pid {pid} and nonce {nonce}: nothing before the checkpoint was redone")
        else:
            _say(f"5. NOT continued: expected a count in {before[0] + 1}..{after[0] + 1} with pid {before[1]} "
                 f"nonce {before[2]}, got {count} {pid} {nonce}. "
                 f"See /var/log/mmbatch/events.log and `mmbatch events {job_id}`.")
        return 0 if ok else 1
    except Exception as e:
        print(f"mmbatch demo failed: {e}", file=sys.stderr)
        return 1
    finally:
        if not keep:
            _docker("rm", "-f", first, second, check=False)
            try:
                from mmbatch.checkpointer import open_repository

                open_repository(cfg, {"job_key": job_id}).delete_all()
            except Exception:
                pass
        else:
            _say(f"kept: containers {first} {second}; `mmbatch checkpoints {job_id}`")
