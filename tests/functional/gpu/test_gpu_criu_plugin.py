"""CRIU's real CUDA plugin (built for the installed CRIU 4.2) runs the fake
cuda-checkpoint, with exactly what mmbatch gives CRIU for a GPU job: the
environment of mmbatch.gpu (CRIU_LIBS_DIR, cuda-checkpoint on PATH) and the
CRIU config-file lines (the lock timeout). Every cuda-checkpoint call must
come from CRIU, in the plugin's order; device state must survive a dump, a
kill and a restore; a lock that times out must fail the dump and leave the
job running."""

from __future__ import annotations

import functools
import os
import subprocess
import time

import pytest

from mmbatch import config, gpu
from tests.functional.gpu.conftest import FI_PLUGIN_CUDA_FORCE_ENABLE, lines, wait_lines
from tests.lib.fakes import called_by_criu, calls

pytestmark = [pytest.mark.root, pytest.mark.criu, pytest.mark.slow]


def criu_env(fake_gpu, plugin_dir):
    """What the checkpointer and restorer hand to runc (and runc to CRIU)."""
    cfg = config.GpuSection(cuda_checkpoint=fake_gpu.cuda_checkpoint, criu_plugin_dir=plugin_dir,
                            nvidia_smi=fake_gpu.nvidia_smi)
    setup = gpu.require_setup(cfg, gpu.detect(cfg.nvidia_smi, run=functools.partial(subprocess.run,
                                                                                     env=fake_gpu.env)))
    env = setup.environment({**fake_gpu.env, "PATH": "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"})
    env["CRIU_FAULT"] = FI_PLUGIN_CUDA_FORCE_ENABLE  # no /proc/driver/nvidia/gpus here
    return env


def criu(criu_binary, env, *args, check=True):
    r = subprocess.run([criu_binary, *args], env=env, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    if check:
        assert r.returncode == 0, (args, r.stderr)
    return r


def plugin_calls(fake_gpu):
    out = []
    for c in calls(fake_gpu.dir):
        assert "refused" not in c, c
        assert called_by_criu(c), f"not called by CRIU: {c['parent']}"
        out.append(c)
    return out


def argv_of(cs, pid, tid):
    return [[{str(pid): "PID", str(tid): "TID"}.get(a, a) for a in c["argv"]] for c in cs]


def config_file(tmp_path, lock_timeout):
    p = tmp_path / "criu.conf"
    p.write_text("\n".join(gpu.criu_config_lines(lock_timeout)) + "\n")
    return str(p)


def test_dump_leave_running_then_dump_kill_restore(fake_gpu, cuda_plugin_dir, criu_binary, tmp_path):
    env = criu_env(fake_gpu, cuda_plugin_dir)
    out = str(tmp_path / "app.out")
    pid = fake_gpu.start_app(out)
    tid = int(open(f"/proc/{pid}/task/{max(int(t) for t in os.listdir(f'/proc/{pid}/task'))}/stat").read().split()[0])
    conf = config_file(tmp_path, 30)

    # 1. a periodic checkpoint: --leave-running, as runc checkpoint --leave-running
    img1 = tmp_path / "img1"
    img1.mkdir()
    criu(criu_binary, env, "dump", "-t", str(pid), "-D", str(img1), "-o", "dump.log", "-v4", "--config", conf,
         "--leave-running")
    cs = plugin_calls(fake_gpu)
    assert argv_of(cs, pid, tid) == [
        ["-h"],  # cuda_plugin_init: does this cuda-checkpoint know --action?
        ["--get-restore-tid", "--pid", "PID"],
        ["--get-state", "--pid", "TID"],
        ["--action", "lock", "--pid", "PID", "--timeout", "30000"],  # CRIU --timeout 30 s from the config file
        ["--get-restore-tid", "--pid", "PID"],
        ["--action", "checkpoint", "--pid", "PID"],
        ["--get-restore-tid", "--pid", "PID"],  # cuda_plugin_fini with --leave-running: resume the job
        ["--action", "restore", "--pid", "PID"],
        ["--action", "unlock", "--pid", "PID"],
    ]
    assert all("dump" in c["parent"] for c in cs)
    stats = gpu.log_stats(str(img1 / "dump.log"))
    assert stats["gpu_processes"] == 1 and stats["gpu_checkpoint_seconds"] > 0 and "gpu_lock_seconds" in stats
    assert stats["gpu_resume_seconds"] > 0, "--action restore and unlock after the dump take time"
    n = len(lines(out))
    got = wait_lines(out, n + 5)
    assert all(step == counter for step, counter in got), "device memory went on with the job"

    # 2. the final checkpoint: the job dies with the dump (the instance goes away)
    os.unlink(os.path.join(fake_gpu.dir, "calls.jsonl"))
    img2 = tmp_path / "img2"
    img2.mkdir()
    criu(criu_binary, env, "dump", "-t", str(pid), "-D", str(img2), "-o", "dump.log", "-v4", "--config", conf)
    assert [c["argv"][:2] for c in plugin_calls(fake_gpu)][-1] == ["--action", "checkpoint"]
    os.waitpid(pid, 0)
    at_dump = lines(out)[-1]
    assert not [f for f in os.listdir(fake_gpu.dir) if f.startswith("gpu-")], "the dead job's GPU memory is gone"

    # 3. restore: CRIU's plugin copies device memory back and unlocks the job
    os.unlink(os.path.join(fake_gpu.dir, "calls.jsonl"))
    criu(criu_binary, env, "restore", "-D", str(img2), "-o", "restore.log", "-v4", "--config", conf, "-d")
    fake_gpu.pids.append(pid)
    cs = plugin_calls(fake_gpu)
    assert argv_of(cs, pid, tid) == [
        ["-h"],
        ["--get-restore-tid", "--pid", "PID"],
        ["--action", "restore", "--pid", "PID"],
        ["--action", "unlock", "--pid", "PID"],
    ]
    assert all("restore" in c["parent"] for c in cs)
    assert gpu.log_stats(str(img2 / "restore.log"))["gpu_resume_seconds"] > 0
    after = wait_lines(out, len(lines(out)) + 3)
    resumed = after[after.index(at_dump) + 1:]
    assert resumed[0] == [at_dump[0] + 1, at_dump[1] + 1], (at_dump, resumed[:3])
    assert all(step == counter for step, counter in resumed), "device state restored with the job"


def test_lock_timeout_fails_the_dump_and_the_job_runs_on(fake_gpu, cuda_plugin_dir, criu_binary, tmp_path):
    env = criu_env(fake_gpu, cuda_plugin_dir)
    out = str(tmp_path / "slow.out")
    pid = fake_gpu.start_app(out, kernel_seconds=4.0)  # a long kernel: the lock must wait for it
    img = tmp_path / "img"
    img.mkdir()
    t0 = time.monotonic()
    r = criu(criu_binary, env, "dump", "-t", str(pid), "-D", str(img), "-o", "dump.log", "-v4",
             "--config", config_file(tmp_path, 1), "--leave-running", check=False)
    if r.returncode == 0:  # the lock landed between two kernels; the next one starts at once
        pytest.fail("lock succeeded although a 4 s kernel runs almost all the time")
    assert time.monotonic() - t0 < 10
    lock = [c for c in plugin_calls(fake_gpu) if c["argv"][:2] == ["--action", "lock"]]
    assert lock and lock[0]["argv"][-2:] == ["--timeout", "1000"]
    log = (img / "dump.log").read_text()
    # CRIU arms alarm(--timeout) for the freezing stage too: either cuda-checkpoint's
    # own timeout or CRIU's alarm ends the lock first (as in NVIDIA/cuda-checkpoint#26);
    # either way the dump fails and the plugin unlocks the job.
    assert "PAUSE_DEVICES failed" in log
    assert "the wait operation has timed out" in log or "Timeout reached" in log
    assert [c["argv"][:2] for c in plugin_calls(fake_gpu)][-1] == ["--action", "unlock"] or \
        "the wait operation has timed out" in log
    os.kill(pid, 0)
    st = subprocess.run(["sh", "-c", '"$@"; exit $?', "sh", fake_gpu.cuda_checkpoint, "--get-state", "--pid",
                         str(pid)], capture_output=True, text=True, env=fake_gpu.env)
    assert st.stdout == "running\n"
    n = len(lines(out))
    assert len(wait_lines(out, n + 1, timeout=15)) > n, "the job goes on after the failed dump"
