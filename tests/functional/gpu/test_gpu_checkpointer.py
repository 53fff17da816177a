"""A periodic checkpoint of a GPU job through the whole mmbatch path: a
container created through mmbatch-runtime (which writes CRIU's lock timeout
into the job's CRIU config file), `checkpoint_container` (which finds the
node's GPUs with nvidia-smi and hands runc the plugin's libdir and
cuda-checkpoint's PATH), runc, CRIU 4.2 and its real CUDA plugin, and the
fake cuda-checkpoint against the stand-in CUDA program in the container.

Restore-on-create of a GPU job cannot run here: it happens inside the
runtime under containerd's environment, where CRIU's plugin sees no
/proc/driver/nvidia/gpus and disables itself (docs/gpu.md)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from mmbatch import config
from mmbatch.checkpointer import checkpoint_container
from tests.functional.gpu.conftest import FI_PLUGIN_CUDA_FORCE_ENABLE
from tests.lib import docker as dk
from tests.lib.fakes import FAKES, called_by_criu, calls

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.criu, pytest.mark.slow]


def ctypes_libs():
    """The test image has the host's python3 without libffi, which ctypes (the
    stand-in CUDA program's mmap) needs: bind-mount what _ctypes links."""
    import _ctypes

    out = subprocess.run(["ldd", _ctypes.__file__], capture_output=True, text=True).stdout
    args = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and "libffi" in parts[0]:
            lib = parts[parts.index("=>") + 1]
            args += ["-v", f"{lib}:{lib}:ro"]
    return args


def app_lines(name):
    out = dk.docker("logs", name, check=False).stdout.decode(errors="replace")
    return [[int(x) for x in ln.split()] for ln in out.splitlines() if ln.split() and ln.split()[0].isdigit()]


def wait_app_lines(name, n, timeout=30.0):
    return dk.wait_until(lambda: len(app_lines(name)) >= n and app_lines(name), timeout=timeout,
                         what=f"{n} lines from {name}")


def test_periodic_checkpoint_of_a_gpu_job(containers, python_image, fake_gpu, cuda_plugin_dir, tmp_path,
                                          monkeypatch):
    for k in ("FAKE_CUDA_DIR", "FAKE_NVIDIA_SMI_CONFIG"):
        monkeypatch.setenv(k, fake_gpu.env[k])
    monkeypatch.setenv("CRIU_FAULT", FI_PLUGIN_CUDA_FORCE_ENABLE)  # no /proc/driver/nvidia/gpus here
    job = f"gpu-{os.urandom(4).hex()}"
    name = containers.name("gpu")
    containers.run("--runtime", "mmbatch", "--network", "none", "-e", f"MMBATCH_JOB_KEY={job}",
                   "-e", "NVIDIA_VISIBLE_DEVICES=all", "-e", f"FAKE_CUDA_DIR={fake_gpu.dir}",
                   "-v", f"{fake_gpu.dir}:{fake_gpu.dir}", "-v", f"{FAKES}:{FAKES}:ro", *ctypes_libs(),
                   python_image, "python3", f"{FAKES}/cuda_app.py", name=name)
    wait_app_lines(name, 3)

    cfg = config.load()
    cfg.store.url = f"file://{tmp_path / 'store'}"
    cfg.gpu = config.GpuSection(nvidia_smi=fake_gpu.nvidia_smi, cuda_checkpoint=fake_gpu.cuda_checkpoint,
                                criu_plugin_dir=cuda_plugin_dir)
    result = checkpoint_container(dk.container_id(name), cfg, cfg.runtime.state_dir, reason="test")

    m = result.manifest
    assert m.compat["gpu"] == {"model": "NVIDIA A10G", "count": 1, "driver": "570.86.15", "cuda": "12.8",
                               "memory_mib": 23028}
    assert m.stats["gpu_processes"] == 1
    assert m.stats["pre_dumps"] == 0  # CRIU's CUDA plugin does not pre-dump
    # the device-state copy happens while the job is frozen, and is reported
    assert 0 < m.stats["gpu_checkpoint_seconds"] <= m.stats["freeze_seconds"]
    assert m.stats["gpu_lock_seconds"] > 0

    cs = calls(fake_gpu.dir)
    assert cs and all("refused" not in c for c in cs)
    for c in cs:  # all from CRIU (runc's `criu swrk`, titled "criu: dump --rpc ..."), none from mmbatch
        assert called_by_criu(c) and any(a.startswith("criu: dump --rpc") for a in c["parent"]), c
    actions = [c["argv"][1] for c in cs if c["argv"][0] == "--action"]
    assert actions == ["lock", "checkpoint", "restore", "unlock"]  # --leave-running: the job goes on
    lock = next(c["argv"] for c in cs if c["argv"][:2] == ["--action", "lock"])
    assert lock[-2:] == ["--timeout", str(int(config.load().gpu.lock_timeout) * 1000)]  # the runtime's criu.conf

    n = len(app_lines(name))
    time.sleep(0.5)
    after = wait_app_lines(name, n + 3)
    assert all(step == counter for step, counter in after), "device memory is intact and the job runs on"
    assert dk.inspect(name)["State"]["Running"]
