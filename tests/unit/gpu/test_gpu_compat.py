"""Where a checkpoint with GPU state may restore, and how the manifest keeps it."""

from __future__ import annotations

import pytest

from mmbatch import compat, gpu
from mmbatch.errors import ManifestError
from mmbatch.manifest import Manifest, new_checkpoint_id

A10G_1 = {"model": "NVIDIA A10G", "count": 1, "driver": "570.86.15", "cuda": "12.8", "memory_mib": 23028}


def node(**kw):
    return {**A10G_1, **kw}


@pytest.mark.parametrize("recorded,current,expected", [
    (None, None, None),  # a CPU checkpoint restores anywhere
    (None, A10G_1, None),
    (A10G_1, A10G_1, None),
    (A10G_1, node(driver="575.51.03", cuda="12.9"), None),  # a newer driver is fine
    (A10G_1, node(driver="570.133.20"), None),  # compared as numbers, not text
    (A10G_1, None, "this node has no NVIDIA GPU"),
    (A10G_1, node(model="NVIDIA L4"), "GPU differs (1x NVIDIA A10G at dump, 1x NVIDIA L4 here)"),
    (A10G_1, node(count=4), "GPU differs (1x NVIDIA A10G at dump, 4x NVIDIA A10G here)"),
    (A10G_1, node(driver="565.57.01"), "GPU driver here (565.57.01) is older than at dump (570.86.15)"),
    (A10G_1, node(driver="570.86.10"), "older than at dump"),
    (A10G_1, node(driver=""), "GPU driver here (unknown)"),
])
def test_compat_problem(recorded, current, expected):
    got = gpu.compat_problem(recorded, current)
    if expected is None:
        assert got is None
    else:
        assert got is not None and expected in got


def test_compat_check_uses_the_gpu_rule():
    spec = {"process": {"args": ["train"], "env": ["NVIDIA_VISIBLE_DEVICES=all"]}}
    rec = compat.node_compat(spec, "sha256:abc", "4.2.1", "", gpu=A10G_1)
    assert compat.check(rec, compat.node_compat(spec, "sha256:abc", "4.2.1", "", gpu=node(driver="580.1"))) is None
    why = compat.check(rec, compat.node_compat(spec, "sha256:abc", "4.2.1", "", gpu=None))
    assert "no NVIDIA GPU" in why


def _manifest(gpu_record):
    m = Manifest(checkpoint_id=new_checkpoint_id(), job_key="job-1", container_id="c" * 64, created_at=1.0)
    m.compat["gpu"] = gpu_record
    return m


def test_manifest_keeps_the_gpu_record():
    m = _manifest(dict(A10G_1))
    back = Manifest.from_json(m.to_json())
    assert back.compat["gpu"] == A10G_1


@pytest.mark.parametrize("bad,why", [
    ({"model": "x", "vendor": "nvidia"}, "unknown key"),
    ({"model": 3}, "compat.gpu.model must be a string"),
    ({"count": "1"}, "compat.gpu.count must be an integer"),
    ({"memory_mib": -1}, "compat.gpu.memory_mib must be an integer"),
    ("A10G", "compat.gpu must be an object"),
])
def test_manifest_rejects_a_bad_gpu_record(bad, why):
    with pytest.raises(ManifestError, match=why):
        _manifest(bad).to_json()
