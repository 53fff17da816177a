"""Reading the node's GPUs from nvidia-smi (the fake speaks its formats)."""

from __future__ import annotations

import subprocess

import pytest

from mmbatch import gpu
from tests.lib.fakes import calls


def test_parse_query_gpu_with_and_without_units():
    one = gpu.parse_query_gpu("NVIDIA A10G, 1, 570.86.15, 23028 MiB\n")
    assert one == gpu.GpuInfo(model="NVIDIA A10G", count=1, driver="570.86.15", memory_mib=23028)
    four = gpu.parse_query_gpu("".join("NVIDIA H100 80GB HBM3, 4, 575.51.03, 81559\n" for _ in range(4)))
    assert (four.model, four.count, four.memory_mib) == ("NVIDIA H100 80GB HBM3", 4, 4 * 81559)


@pytest.mark.parametrize("text,why", [
    ("", "listed no GPU"),
    ("NVIDIA A10G, 1, 570.86.15\n", "unexpected nvidia-smi output"),
    ("NVIDIA A10G, 2, 570.86.15, 23028\nNVIDIA A10G, 2, 565.57.01, 23028\n", "several driver versions"),
])
def test_parse_query_gpu_rejects(text, why):
    with pytest.raises(gpu.GpuError, match=why):
        gpu.parse_query_gpu(text)


def test_parse_cuda_version_from_version_and_header():
    assert gpu.parse_cuda_version("NVIDIA-SMI version  : 570.86.15\nCUDA Version        : 12.8\n") == "12.8"
    header = "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4  |"
    assert gpu.parse_cuda_version(header) == "12.4"
    assert gpu.parse_cuda_version("no such line") == ""


def test_detect_through_the_fake_nvidia_smi(gpu_node, tmp_path):
    smi = gpu_node(gpus=[{"name": "NVIDIA L4", "memory_mib": 23034}] * 2, driver="580.95.05", cuda="13.0")
    info = gpu.detect(smi)
    assert info == gpu.GpuInfo(model="NVIDIA L4", count=2, driver="580.95.05", cuda="13.0", memory_mib=46068)
    assert info.to_compat() == {"model": "NVIDIA L4", "count": 2, "driver": "580.95.05", "cuda": "13.0",
                                "memory_mib": 46068}
    assert [c["argv"] for c in calls(str(tmp_path))] == [
        ["--query-gpu=name,count,driver_version,memory.total", "--format=csv,noheader,nounits"], ["--version"]]


def test_fake_nvidia_smi_formats_match_the_real_tool(gpu_node):
    smi = gpu_node()
    def run(*args):
        return subprocess.run([smi, *args], capture_output=True, text=True)
    assert run("--query-gpu=name,memory.total", "--format=csv").stdout == \
        "name, memory.total [MiB]\nNVIDIA A10G, 23028 MiB\n"
    assert run("--query-gpu=name,count,driver_version,memory.total", "--format=csv,noheader").stdout == \
        "NVIDIA A10G, 1, 570.86.15, 23028 MiB\n"
    bad = run("--query-gpu=name,bogus", "--format=csv")
    assert bad.returncode == 2 and 'Field "bogus" is not a valid field to query.' in bad.stdout
    assert "CUDA Version: 12.8" in run().stdout
    assert run("-L").stdout.startswith("GPU 0: NVIDIA A10G (UUID: GPU-")


def test_no_nvidia_smi_means_no_gpu(tmp_path):
    assert gpu.detect(str(tmp_path / "nvidia-smi")) is None


def test_driver_not_loaded_is_an_error(gpu_node):
    smi = gpu_node(loaded=False)
    with pytest.raises(gpu.GpuError, match="couldn't communicate with the NVIDIA driver") as e:
        gpu.detect(smi)
    assert "exit 9" in e.value.message


def test_nvidia_smi_timeout_is_an_error():
    def hang(argv, **kw):
        raise subprocess.TimeoutExpired(argv, kw.get("timeout"))
    with pytest.raises(gpu.GpuError, match="cannot run nvidia-smi"):
        gpu.detect("nvidia-smi", run=hang)


def test_cuda_version_from_the_table_when_version_flag_is_unknown(gpu_node):
    smi = gpu_node(driver="515.65.01", cuda="11.7")

    def old_smi(argv, **kw):  # drivers before --version existed
        if argv[1:] == ["--version"]:
            return subprocess.CompletedProcess(argv, 2, "Invalid combination of input arguments.\n", "")
        return subprocess.run(argv, **kw)
    assert gpu.detect(smi, run=old_smi).cuda == "11.7"
