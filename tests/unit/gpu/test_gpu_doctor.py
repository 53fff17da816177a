"""`mmbatch doctor` on GPU nodes: driver for CRIU's CUDA plugin, the plugin,
cuda-checkpoint, host RAM for the device memory."""

from __future__ import annotations

import pytest

from mmbatch import config
from mmbatch.doctor import FAIL, PASS, WARN, Doctor
from tests.lib.fakes import CUDA_CHECKPOINT

GIB_KB = 1024 * 1024


def meminfo(gib: int) -> str:
    return f"MemTotal:       {gib * GIB_KB} kB\nMemFree:        1000 kB\n"


def doctor(tmp_path, smi, mem_gib=64, plugin=True, tool=CUDA_CHECKPOINT, delegate="nvidia-container-runtime"):
    host = tmp_path / "host"
    (host / "proc").mkdir(parents=True)
    (host / "proc/meminfo").write_text(meminfo(mem_gib))
    libs = tmp_path / "libs"
    libs.mkdir(exist_ok=True)
    if plugin:
        (libs / "cuda_plugin.so").write_bytes(b"\x7fELF")
    cfg = config.Config()
    cfg.gpu = config.GpuSection(nvidia_smi=smi, cuda_checkpoint=tool, criu_plugin_dir=str(libs))
    cfg.runtime.delegate = delegate
    doc = Doctor(cfg, str(host))
    doc.check_gpu()
    return {c.name: (c.status, c.detail, c.fix) for c in doc.results}


def test_ready_gpu_node(tmp_path, gpu_node):
    got = doctor(tmp_path, gpu_node())
    assert {k: v[0] for k, v in got.items()} == {
        "gpu": PASS, "gpu driver": PASS, "cuda-checkpoint": PASS, "criu cuda plugin": PASS, "gpu memory": PASS}
    assert got["gpu"][1] == "1x NVIDIA A10G, 23028 MiB, driver 570.86.15, CUDA 12.8"
    assert "needs >= 555" in got["gpu driver"][1]


@pytest.mark.parametrize("driver,status", [("550.163.01", FAIL), ("554.99", FAIL), ("555.42.02", WARN),
                                           ("565.57.01", WARN), ("570.86.15", PASS), ("580.95.05", PASS)])
def test_driver_version_for_the_cuda_plugin(tmp_path, gpu_node, driver, status):
    assert doctor(tmp_path, gpu_node(driver=driver))["gpu driver"][0] == status


@pytest.mark.parametrize("mem_gib,gpus,status", [
    (16, 1, FAIL),   # 16 GiB RAM cannot hold a 22.5 GiB device copy
    (32, 1, WARN),   # holds it once
    (64, 1, PASS),
    (192, 8, WARN),  # 8x 22.5 GiB = 180 GiB fits once, not twice
    (128, 8, FAIL),
])
def test_host_ram_must_hold_the_gpu_memory(tmp_path, gpu_node, mem_gib, gpus, status):
    smi = gpu_node(gpus=[{"name": "NVIDIA A10G", "memory_mib": 23028}] * gpus)
    got = doctor(tmp_path, smi, mem_gib=mem_gib)["gpu memory"]
    assert got[0] == status, got


def test_missing_plugin_tool_and_delegate(tmp_path, gpu_node):
    got = doctor(tmp_path, gpu_node(), plugin=False, tool=str(tmp_path / "nope"), delegate="runc")
    assert got["criu cuda plugin"][0] == FAIL and "install-criu.sh --cuda-plugin" in got["criu cuda plugin"][2]
    assert got["cuda-checkpoint"][0] == FAIL
    assert got["gpu delegate"][0] == WARN


def test_driver_not_answering_fails(tmp_path, gpu_node):
    got = doctor(tmp_path, gpu_node(loaded=False))
    assert got["gpu"][0] == FAIL and "NVIDIA driver" in got["gpu"][1]


def test_cpu_node_has_no_gpu_checks(tmp_path):
    assert doctor(tmp_path, str(tmp_path / "no-nvidia-smi")) == {}
