"""Faithful fakes of NVIDIA's tools for machines without a GPU: `nvidia-smi`,
`cuda-checkpoint` (with its fake driver, fake_cuda.py) and a stand-in CUDA
program (cuda_app.py). They speak the real tools' command lines, output
formats and exit codes; docs/gpu.md says what only a real GPU can verify."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

FAKES = os.path.dirname(os.path.abspath(__file__))
NVIDIA_SMI = os.path.join(FAKES, "nvidia-smi")
CUDA_CHECKPOINT = os.path.join(FAKES, "cuda-checkpoint")
CUDA_APP = os.path.join(FAKES, "cuda_app.py")
A10G = {"name": "NVIDIA A10G", "memory_mib": 23028}


def write_node(path: str, driver: str = "570.86.15", cuda: str = "12.8", gpus=None, loaded: bool = True) -> str:
    """The fake nvidia-smi's node description (FAKE_NVIDIA_SMI_CONFIG)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"driver": driver, "cuda": cuda, "gpus": [A10G] if gpus is None else gpus,
                   "driver_loaded": loaded}, f)
    return path


def write_driver(fake_dir: str, version: str = "570.86.10") -> None:
    """The fake driver's version (FAKE_CUDA_DIR/driver.json)."""
    with open(os.path.join(fake_dir, "driver.json"), "w", encoding="utf-8") as f:
        json.dump({"version": version}, f)


def calls(directory: str) -> List[Dict[str, Any]]:
    """Every call the fakes logged in DIR/calls.jsonl."""
    path = os.path.join(directory, "calls.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def called_by_criu(call: Dict[str, Any]) -> bool:
    """Was this fake call made by a CRIU process? Its parent's command line
    names criu (the private CRIU runs as `ld.so ... /opt/criu4/usr/sbin/criu
    dump ...`), or reads `criu: dump --rpc ...` (CRIU's process title in
    `criu swrk`, runc's mode)."""
    return any(os.path.basename(a) == "criu" or a.startswith("criu: ") for a in call.get("parent", []))
