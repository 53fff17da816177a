"""The runtime's `create` of GPU jobs: CRIU's lock timeout in the CRIU config
file, and the nvidia prestart hook when the delegate is the nvidia runtime
(it modifies the spec only on `create`, so a restore needs it from us)."""

from __future__ import annotations

import json
import os

import pytest

from tests.unit.shim.shim_harness import ShimHarness, write_fake_runtime

CID = "feedfacecafe0123" * 4
GPU_JOB = ["PATH=/bin", "AWS_BATCH_JOB_ID=gpu-job-1", "NVIDIA_VISIBLE_DEVICES=all"]


@pytest.fixture
def shim(tmp_path) -> ShimHarness:
    return ShimHarness(str(tmp_path))


def create(shim: ShimHarness, env, delegate: str, extra: str = ""):
    shim.write_config(delegate=delegate, extra=extra)
    bundle = shim.bundle(env)
    spec_file = os.path.join(bundle, "config.json")
    argv = ["--root", shim.root, "--log", os.path.join(bundle, "log.json"), "--log-format", "json",
            "create", "--bundle", bundle, "--pid-file", os.path.join(bundle, "init.pid"), CID]
    res = shim.run(*argv, exit_code=0, watch=[spec_file])
    assert res.returncode == 0, res
    with open(os.path.join(shim.state_dir, CID, "criu.conf"), encoding="utf-8") as f:
        criu_conf = f.read().splitlines()
    return json.loads(res.call["seen"][spec_file]), criu_conf, res.call["argv"][0]


def nvidia_runtime(shim: ShimHarness) -> str:
    runtime = write_fake_runtime(os.path.join(shim.bin_dir, "nvidia-container-runtime"))
    hook = os.path.join(shim.bin_dir, "nvidia-container-runtime-hook")
    with open(hook, "w", encoding="utf-8") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(hook, 0o755)
    return runtime


def test_gpu_job_through_the_nvidia_runtime(shim: ShimHarness) -> None:
    runtime = nvidia_runtime(shim)
    spec, criu_conf, called = create(shim, GPU_JOB, runtime, extra='[gpu]\nlock_timeout = "45s"\n')
    assert called == runtime  # chained to the nvidia runtime, which then sees its hook in place
    assert spec["hooks"]["prestart"] == [{"path": os.path.join(shim.bin_dir, "nvidia-container-runtime-hook"),
                                          "args": ["nvidia-container-runtime-hook", "prestart"]}]
    assert "timeout 45" in criu_conf and "tcp-close" in criu_conf


def test_gpu_job_through_runc_gets_no_hook(shim: ShimHarness) -> None:
    spec, criu_conf, called = create(shim, GPU_JOB, shim.fake)
    assert called == shim.fake
    assert "prestart" not in (spec.get("hooks") or {})
    assert "timeout 30" in criu_conf


def test_cpu_job_is_unchanged_by_gpu_support(shim: ShimHarness) -> None:
    runtime = nvidia_runtime(shim)
    spec, criu_conf, _ = create(shim, ["PATH=/bin", "AWS_BATCH_JOB_ID=cpu-job"], runtime)
    assert "prestart" not in (spec.get("hooks") or {})
    assert not any(line.startswith("timeout") for line in criu_conf)
