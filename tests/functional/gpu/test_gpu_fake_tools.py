"""The fake cuda-checkpoint against the stand-in CUDA program: the real
tool's command line, outputs, error messages and exit codes (CUDA error
code modulo 256), and its refusal to be called by mmbatch (a Python parent)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.lib.fakes import CUDA_CHECKPOINT, calls, write_driver

pytestmark = [pytest.mark.root]


def cc(fake_gpu, *args):
    """cuda-checkpoint run the way CRIU's plugin runs it: by a non-Python parent (sh)."""
    return subprocess.run(["sh", "-c", '"$@"; exit $?', "sh", CUDA_CHECKPOINT, *args], capture_output=True,
                          text=True, env=fake_gpu.env, timeout=60)


@pytest.fixture
def app(fake_gpu, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the fake driver writes /proc/PID/mem of another process: needs root")
    return fake_gpu.start_app(str(tmp_path / "app.out"))


def test_states_and_actions(fake_gpu, app):
    tid = int(cc(fake_gpu, "--get-restore-tid", "--pid", str(app)).stdout)
    assert tid != app and open(f"/proc/{app}/task/{tid}/comm").read().strip() == "cuda-ckpt"
    assert cc(fake_gpu, "--get-state", "--pid", str(tid)).stdout == "running\n"  # a thread id works too
    for action, state in (("lock", "locked"), ("checkpoint", "checkpointed"), ("restore", "locked"),
                          ("unlock", "running")):
        r = cc(fake_gpu, "--action", action, "--pid", str(app))
        assert (r.returncode, r.stdout) == (0, ""), (action, r)
        assert cc(fake_gpu, "-p", str(app), "--get-state").stdout == state + "\n"
    assert cc(fake_gpu, "--toggle", "--pid", str(app)).returncode == 0
    assert cc(fake_gpu, "--get-state", "--pid", str(app)).stdout == "checkpointed\n"
    assert not [n for n in os.listdir(fake_gpu.dir) if n.startswith("gpu-")], "device memory released"
    assert cc(fake_gpu, "--toggle", "--pid", str(app)).returncode == 0
    assert cc(fake_gpu, "--get-state", "--pid", str(app)).stdout == "running\n"


def test_errors_are_the_drivers(fake_gpu, app):
    r = cc(fake_gpu, "--action", "unlock", "--pid", str(app))
    assert (r.returncode, r.stdout) == (401 % 256, f'Could not unlock on process ID {app}: '
                                        '"the operation cannot be performed in the present state"\n')
    r = cc(fake_gpu, "--get-restore-tid", "--pid", str(os.getpid()))  # a process without CUDA
    assert (r.returncode, r.stdout) == (3, f'Could not get restore thread ID on process ID {os.getpid()}: '
                                        '"initialization error"\n')
    r = cc(fake_gpu, "--get-state", "--pid", "999999999")
    assert (r.returncode, r.stdout) == (1, 'Could not get state on process ID 999999999: "invalid argument"\n')
    assert cc(fake_gpu, "--action", "freeze", "--pid", str(app)).returncode == 1


def test_lock_waits_for_work_in_flight_up_to_its_timeout(fake_gpu, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    slow = fake_gpu.start_app(str(tmp_path / "slow.out"), kernel_seconds=2.0)
    r = cc(fake_gpu, "--action", "lock", "--pid", str(slow), "--timeout", "200")
    if r.returncode == 0:  # landed between two kernels: unlock and try once more
        cc(fake_gpu, "--action", "unlock", "--pid", str(slow))
        r = cc(fake_gpu, "--action", "lock", "--pid", str(slow), "--timeout", "200")
    assert (r.returncode, r.stdout) == (909 % 256, f'Could not lock on process ID {slow}: '
                                        '"the wait operation has timed out"\n')
    assert cc(fake_gpu, "--get-state", "--pid", str(slow)).stdout == "running\n"
    r = cc(fake_gpu, "--action", "lock", "--pid", str(slow))  # no timeout: waits for the kernel
    assert r.returncode == 0 and cc(fake_gpu, "--get-state", "--pid", str(slow)).stdout == "locked\n"


def test_help_and_driver_versions(fake_gpu):
    assert "--action lock | checkpoint | restore | unlock" in cc(fake_gpu, "-h").stdout
    assert "Version 570.86.10." in cc(fake_gpu, "--help").stdout
    write_driver(fake_gpu.dir, "550.54.15")  # before --action: CRIU's plugin disables itself
    assert "--action" not in cc(fake_gpu, "-h").stdout
    write_driver(fake_gpu.dir, "535.183.01")
    r = cc(fake_gpu, "-h")
    assert (r.returncode, r.stderr) == (1, "Insufficient driver\n")
    os.unlink(os.path.join(fake_gpu.dir, "driver.json"))
    r = cc(fake_gpu, "-h")
    assert r.returncode == 127 and "libcuda.so.1: cannot open shared object file" in r.stderr


def test_refuses_python_callers(fake_gpu):
    r = subprocess.run([CUDA_CHECKPOINT, "--get-state", "--pid", "1"], capture_output=True, text=True,
                       env=fake_gpu.env)
    assert r.returncode == 99 and "only CRIU's plugin may call it" in r.stderr
    assert calls(fake_gpu.dir)[-1]["refused"] == "called by a Python process"
