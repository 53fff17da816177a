"""The fake nvidia-smi (tests/lib/fakes) describing a node's GPUs."""

from __future__ import annotations

from typing import Callable

import pytest

from tests.lib.fakes import NVIDIA_SMI, write_node


@pytest.fixture
def gpu_node(tmp_path, monkeypatch) -> Callable[..., str]:
    """gpu_node(driver=..., gpus=[...], cuda=..., loaded=True) describes the
    node to the fake nvidia-smi and returns the fake's path."""

    def make(**kw) -> str:
        monkeypatch.setenv("FAKE_NVIDIA_SMI_CONFIG", write_node(str(tmp_path / "nvidia-smi.json"), **kw))
        return NVIDIA_SMI

    return make
