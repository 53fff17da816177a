"""What mmbatch gives CRIU for GPU jobs: which containers, the plugin's
libdir and cuda-checkpoint on PATH, the lock timeout, the nvidia hook."""

from __future__ import annotations

import os
import stat

import pytest

from mmbatch import config, gpu
from tests.lib.fakes import CUDA_CHECKPOINT

DUMP_LOG = """\
(00.046278) Plugin "cuda_plugin" (version 512 hooks 13)
(00.206359) cuda_plugin: initialized: cuda_plugin stage 0
(00.542533) cuda_plugin: pausing devices on pid 393
(00.687359) plugin: `cuda_plugin' hook 11 -> 0x7f9fb9573111
(00.840992) cuda_plugin: Checkpointing CUDA devices on pid 393 restore_tid 465
(01.013790) Seized task 393, state 1
(01.168035) cuda_plugin: resuming devices on pid 393
(01.168059) cuda_plugin: Restore thread pid 465 found for real pid 393
(01.400000) Writing stats
"""


@pytest.mark.parametrize("spec,expected", [
    ({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}, True),
    ({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=0,1"]}}, True),
    ({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=GPU-6b1c"]}}, True),
    ({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=void"]}}, False),
    ({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=none"]}}, False),
    ({"process": {"env": ["NVIDIA_VISIBLE_DEVICES="]}}, False),
    ({"process": {"env": ["PATH=/bin"]}}, False),
    ({"linux": {"devices": [{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]}}, True),
    ({"linux": {"devices": [{"path": "/dev/nvidiactl", "type": "c"}]}}, False),
    ({"mounts": [{"destination": "/dev/nvidia1", "source": "/dev/nvidia1"}]}, True),
    ({"hooks": {"prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["x", "prestart"]}]}},
     True),
    ({"annotations": {"cdi.k8s.io/nvidia-gpu": "nvidia.com/gpu=0"}}, True),
    ({}, False),
])
def test_requests_gpu(spec, expected):
    assert gpu.requests_gpu(spec) is expected


def test_nvidia_hook_added_like_the_nvidia_runtime_does():
    spec = {"hooks": {"poststart": [{"path": "/x"}]}}
    assert gpu.ensure_nvidia_hook(spec, "/usr/bin/nvidia-container-runtime-hook")
    assert spec["hooks"]["prestart"] == [
        {"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["nvidia-container-runtime-hook", "prestart"]}]
    assert not gpu.ensure_nvidia_hook(spec, "/usr/bin/nvidia-container-runtime-hook")  # once only
    other = {"hooks": {"prestart": [{"path": "/usr/local/bin/nvidia-container-toolkit", "args": ["t", "prestart"]}]}}
    assert not gpu.ensure_nvidia_hook(other, "/usr/bin/nvidia-container-runtime-hook")
    assert len(other["hooks"]["prestart"]) == 1
    empty = {}
    assert gpu.ensure_nvidia_hook(empty, "/h/nvidia-container-runtime-hook") and empty["hooks"]["prestart"]


def test_nvidia_hook_found_next_to_the_runtime(tmp_path):
    for name in ("nvidia-container-runtime", "nvidia-container-runtime-hook"):
        p = tmp_path / name
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    assert gpu.find_nvidia_hook(str(tmp_path / "nvidia-container-runtime"), path_env="") == \
        str(tmp_path / "nvidia-container-runtime-hook")
    assert gpu.is_nvidia_runtime("/usr/bin/nvidia-container-runtime")
    assert gpu.is_nvidia_runtime("nvidia-container-runtime.cdi")
    assert not gpu.is_nvidia_runtime("/usr/sbin/runc")


def _plugin_dir(tmp_path):
    d = tmp_path / "criu-libs"
    d.mkdir()
    (d / "cuda_plugin.so").write_bytes(b"\x7fELF")
    return str(d)


def test_criu_environment_puts_cuda_checkpoint_first_and_names_the_libdir(tmp_path):
    env = gpu.criu_environment("/opt/nvidia/bin/cuda-checkpoint", "/opt/criu4/usr/lib/criu",
                               {"PATH": "/usr/bin:/opt/nvidia/bin:/bin", "HOME": "/root"})
    assert env == {"PATH": "/opt/nvidia/bin:/usr/bin:/bin", "HOME": "/root",
                   "CRIU_LIBS_DIR": "/opt/criu4/usr/lib/criu"}
    assert gpu.criu_environment("/x/cuda-checkpoint", "/l", {})["PATH"].startswith("/x:/usr/local/sbin")


def test_lock_timeout_becomes_criu_timeout():
    assert gpu.criu_config_lines(30.0) == ["timeout 30"]
    assert gpu.criu_config_lines(0.2) == ["timeout 1"]


def test_setup_finds_tool_by_config_or_path(tmp_path, monkeypatch):
    cfg = config.GpuSection(cuda_checkpoint=CUDA_CHECKPOINT, criu_plugin_dir=_plugin_dir(tmp_path))
    info = gpu.GpuInfo("NVIDIA A10G", 1, "570.86.15")
    setup = gpu.require_setup(cfg, info)
    assert (setup.cuda_checkpoint, setup.plugin_dir) == (CUDA_CHECKPOINT, cfg.criu_plugin_dir)
    monkeypatch.setenv("PATH", os.path.dirname(CUDA_CHECKPOINT) + ":/usr/bin")
    by_name = gpu.require_setup(config.GpuSection(criu_plugin_dir=cfg.criu_plugin_dir), info)
    assert by_name.cuda_checkpoint == CUDA_CHECKPOINT
    env = by_name.environment({"PATH": "/usr/bin"})
    assert env["CRIU_LIBS_DIR"] == cfg.criu_plugin_dir and env["PATH"].split(":")[0] == os.path.dirname(
        CUDA_CHECKPOINT)


@pytest.mark.parametrize("driver,tool,plugin,why", [
    ("550.54.15", True, True, "older than r555"),
    ("570.86.15", False, True, "cuda-checkpoint not found"),
    ("570.86.15", True, False, r"CUDA plugin \(cuda_plugin.so\) not found"),
])
def test_setup_says_what_is_missing(tmp_path, driver, tool, plugin, why):
    cfg = config.GpuSection(cuda_checkpoint=CUDA_CHECKPOINT if tool else str(tmp_path / "nope"),
                            criu_plugin_dir=_plugin_dir(tmp_path) if plugin else str(tmp_path))
    with pytest.raises(gpu.GpuError, match=why):
        gpu.require_setup(cfg, gpu.GpuInfo("NVIDIA A10G", 1, driver))


def test_not_executable_tool_is_missing(tmp_path):
    tool = tmp_path / "cuda-checkpoint"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(stat.S_IRUSR)
    assert gpu.find_cuda_checkpoint(str(tool)) is None
    assert gpu.find_cuda_checkpoint("cuda-checkpoint", path_env=str(tmp_path)) is None


def test_setup_for_cpu_jobs_and_nodes_without_gpu(gpu_node, tmp_path):
    cfg = config.GpuSection(nvidia_smi=str(tmp_path / "no-nvidia-smi"))
    assert gpu.setup_for(cfg, {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}) is None  # no GPU here
    cfg = config.GpuSection(nvidia_smi=gpu_node(), cuda_checkpoint=CUDA_CHECKPOINT,
                            criu_plugin_dir=_plugin_dir(tmp_path))
    assert gpu.setup_for(cfg, {"process": {"env": ["PATH=/bin"]}}) is None  # a CPU job on a GPU node
    setup = gpu.setup_for(cfg, {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}})
    assert setup.gpu.to_compat()["model"] == "NVIDIA A10G"


@pytest.mark.parametrize("node_kw,plugin,problem", [
    ({}, True, ""),
    ({"loaded": False}, True, "couldn't communicate with the NVIDIA driver"),
    ({"driver": "535.183.01"}, True, "older than r555"),
    ({}, False, "cuda_plugin.so"),
])
def test_node_setup_for_restores(gpu_node, tmp_path, node_kw, plugin, problem):
    cfg = config.GpuSection(nvidia_smi=gpu_node(**node_kw), cuda_checkpoint=CUDA_CHECKPOINT,
                            criu_plugin_dir=_plugin_dir(tmp_path) if plugin else str(tmp_path))
    here, setup, why = gpu.node_setup(cfg)
    assert (setup is not None) is (not problem)
    assert problem in why
    if "driver" not in problem:
        assert here["model"] == "NVIDIA A10G"
    missing = config.GpuSection(nvidia_smi=str(tmp_path / "none"))
    assert gpu.node_setup(missing) == (None, None, "this node has no NVIDIA GPU (no nvidia-smi)")


def test_device_stats_from_a_criu_log():
    stats = gpu.device_stats(DUMP_LOG)
    assert stats == {"gpu_lock_seconds": 0.144826, "gpu_checkpoint_seconds": 0.172798,
                     "gpu_resume_seconds": 0.231965, "gpu_processes": 1}
    assert gpu.device_stats("(00.1) Dumping task 1\n") == {}
    assert gpu.log_stats("/nonexistent/dump.log") == {}


def test_gpu_config_section():
    cfg = config.loads('[gpu]\ncuda_checkpoint = "/opt/nvidia/cuda-checkpoint"\nlock_timeout = "2m"\n'
                       'criu_plugin_dir = "/opt/criu4/usr/lib/criu"\n')
    assert (cfg.gpu.cuda_checkpoint, cfg.gpu.lock_timeout) == ("/opt/nvidia/cuda-checkpoint", 120.0)
    assert config.Config().gpu.lock_timeout == 30.0
    for bad, key in (('lock_timeout = "0s"', "gpu.lock_timeout"), ('criu_plugin_dir = "rel"', "gpu.criu_plugin_dir"),
                     ('cuda_checkpoint = ""', "gpu.cuda_checkpoint"), ("vendor = 1", "gpu.vendor")):
        with pytest.raises(config.ConfigError, match=key):
            config.loads(f"[gpu]\n{bad}\n")
