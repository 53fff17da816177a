"""Restore-on-create of a checkpoint that holds GPU state: every way it can
be incompatible with the new node ends in a cold start, with an event that
says why (no runc is reached: these checks come first)."""

from __future__ import annotations

import os

import pytest

from mmbatch import config, gpu
from mmbatch.checkpointer import open_repository
from mmbatch.compat import node_compat
from mmbatch.identity import JobSettings
from mmbatch.manifest import Manifest
from mmbatch.restorer import CreateRequest, restore_on_create
from tests.lib.fakes import CUDA_CHECKPOINT

SPEC = {"process": {"args": ["python", "train.py"], "cwd": "/", "env": ["MMBATCH_JOB_KEY=gpu-job",
                                                                       "NVIDIA_VISIBLE_DEVICES=all"]}}
A10G = {"model": "NVIDIA A10G", "count": 1, "driver": "570.86.15", "cuda": "12.8", "memory_mib": 23028}


@pytest.fixture
def world(tmp_path, monkeypatch, gpu_node):
    monkeypatch.setenv("MMBATCH_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("MMBATCH_NODE_INFO", str(tmp_path / "no-node.json"))
    libs = tmp_path / "criu-libs"
    libs.mkdir()
    (libs / gpu.PLUGIN_FILE).write_bytes(b"\x7fELF")
    cfg = config.Config()
    cfg.store.url = f"file://{tmp_path / 'store'}"
    cfg.gpu = config.GpuSection(nvidia_smi=gpu_node(), cuda_checkpoint=CUDA_CHECKPOINT, criu_plugin_dir=str(libs))
    settings = JobSettings(job_key="gpu-job", managed=True, mode="iterative", interval=900.0, diagnosis=False)
    repo = open_repository(cfg, settings.to_dict())
    src = tmp_path / "ck"
    (src / "criu").mkdir(parents=True)
    (src / "criu" / "inventory.img").write_bytes(b"x" * 100)
    compat = node_compat(SPEC, "", "4.2.1", "", gpu=dict(A10G))
    repo.commit(str(src), Manifest(job_key="gpu-job", container_id="old" * 21 + "d", compat=compat))
    logs = []
    req = CreateRequest(container_id="new" * 21 + "c", bundle=str(tmp_path / "bundle"), spec=SPEC,
                        settings=settings, config=cfg, runtime="/nonexistent/runc", globals_={}, pid_file="",
                        console_socket="", image_id="", state_dir=str(tmp_path / "state"),
                        log=lambda level, msg: logs.append((level, msg)))
    os.makedirs(req.state_dir)
    return req, repo, gpu_node, tmp_path, logs


def reasons(repo):
    return [(e["kind"], e.get("reason", "")) for e in repo.list_records("events")]


@pytest.mark.parametrize("change,why", [
    ({"node": {"gpus": [{"name": "NVIDIA L4", "memory_mib": 23034}]}},
     "GPU differs (1x NVIDIA A10G at dump, 1x NVIDIA L4 here)"),
    ({"node": {"gpus": [{"name": "NVIDIA A10G", "memory_mib": 23028}] * 4}}, "GPU differs (1x NVIDIA A10G at dump, 4x"),
    ({"node": {"driver": "565.57.01"}}, "GPU driver here (565.57.01) is older than at dump (570.86.15)"),
    ({"node": {"loaded": False}}, "couldn't communicate with the NVIDIA driver"),
    ({"no_smi": True}, "this node has no NVIDIA GPU"),
    ({"no_plugin": True}, "CRIU's CUDA plugin (cuda_plugin.so) not found"),
    ({"no_tool": True}, "cuda-checkpoint not found"),
])
def test_incompatible_gpu_checkpoint_cold_starts_with_a_reason(world, change, why):
    req, repo, gpu_node, tmp_path, logs = world
    if "node" in change:
        req.config.gpu.nvidia_smi = gpu_node(**change["node"])
    if change.get("no_smi"):
        req.config.gpu.nvidia_smi = str(tmp_path / "no-nvidia-smi")
    if change.get("no_plugin"):
        req.config.gpu.criu_plugin_dir = str(tmp_path)
    if change.get("no_tool"):
        req.config.gpu.cuda_checkpoint = str(tmp_path / "no-cuda-checkpoint")
    assert restore_on_create(req) is False
    events = reasons(repo)
    fallback = [r for k, r in events if k == "restore-fallback"]
    assert len(fallback) == 1 and fallback[0].startswith("incompatible: ") and why in fallback[0], events
    assert ("cold-start", "no restorable checkpoint") in events
    assert any(level == "warning" and why in msg for level, msg in logs)
