"""The user data of `mmbatch aws user-data`, run against a temporary host root.

Its shell part is taken out of the MIME document as cloud-init would, and
run with MMBATCH_HOST_ROOT (handed to install.sh as --host-root: no
packages, no dockerd reload, nothing outside the temp dir), MMBATCH_SRC_DIR
(this source tree: nothing is fetched) and --no-venv. What the node would
get is then on disk: ecs.config, daemon.json and config.toml.
"""

from __future__ import annotations

import email
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from mmbatch import config
from mmbatch.aws.user_data import UserDataOptions, render

ROOT = Path(__file__).resolve().parents[3]
KEY = "arn:aws:kms:us-east-1:111122223333:key/0123abcd-0123-0123-0123-0123456789ab"
ORIGINAL_DAEMON_JSON = ('{"runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime", "runtimeArgs": []}},'
                        ' "default-runtime": "nvidia", "log-driver": "json-file"}\n')
# What Batch's own user data part and an older image may have written.
ORIGINAL_ECS_CONFIG = ("ECS_CLUSTER=AWSBatch-mmbatch-spot-1234\nECS_CONTAINER_STOP_TIMEOUT=30s\n"
                       "ECS_ENABLE_GPU_SUPPORT=true\n")


@pytest.fixture
def host(tmp_path: Path) -> Path:
    hr = tmp_path / "host"
    (hr / "etc/docker").mkdir(parents=True)
    (hr / "etc/ecs").mkdir()
    (hr / "etc/os-release").write_text('NAME="Amazon Linux"\nID="amzn"\nVERSION_ID="2023"\n')
    (hr / "etc/docker/daemon.json").write_text(ORIGINAL_DAEMON_JSON)
    (hr / "etc/ecs/ecs.config").write_text(ORIGINAL_ECS_CONFIG)
    return hr


def shell_part(mime: str) -> str:
    msg = email.message_from_string(mime)
    [part] = [p for p in msg.walk() if p.get_content_type() == "text/x-shellscript"]
    return part.get_payload(decode=True).decode("ascii")


def run_user_data(tmp_path: Path, hr: Path, opts: UserDataOptions) -> subprocess.CompletedProcess:
    script = tmp_path / "mmbatch-node.sh"
    script.write_text(shell_part(render(opts)))
    env = dict(os.environ, MMBATCH_HOST_ROOT=str(hr), MMBATCH_SRC_DIR=str(ROOT), MMBATCH_PYTHON=sys.executable,
               MMBATCH_INSTALL_ARGS="--no-venv")
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def ecs_lines(hr: Path) -> Dict[str, str]:
    lines = (hr / "etc/ecs/ecs.config").read_text().splitlines()
    keys = [line.split("=", 1)[0] for line in lines]
    assert len(keys) == len(set(keys)), f"a key appears twice: {lines}"
    return dict(line.split("=", 1) for line in lines)


def test_gpu_node_with_kms_store(tmp_path: Path, host: Path) -> None:
    opts = UserDataOptions(store="s3://ckpt-bucket/mmbatch", source="s3://deploy-bucket/mmbatch.tar.gz",
                           region="us-east-1", gpu="yes", sse="aws:kms", kms_key_id=KEY,
                           expected_bucket_owner="111122223333")
    out = run_user_data(tmp_path, host, opts)
    assert "not reloading dockerd" in out.stdout, "--host-root implies --no-reload"

    assert ecs_lines(host) == {
        "ECS_CLUSTER": "AWSBatch-mmbatch-spot-1234",
        "ECS_ENABLE_GPU_SUPPORT": "true",
        "ECS_CONTAINER_STOP_TIMEOUT": "120s",
        "ECS_CONTAINER_START_TIMEOUT": "660s",
        "ECS_ENABLE_SPOT_INSTANCE_DRAINING": "true",
        "ECS_NVIDIA_RUNTIME": "mmbatch",
    }
    daemon = json.loads((host / "etc/docker/daemon.json").read_text())
    assert daemon["default-runtime"] == "mmbatch"
    assert daemon["runtimes"]["mmbatch"] == {"path": "/opt/mmbatch/bin/mmbatch-runtime"}
    assert daemon["runtimes"]["nvidia"]["path"] == "/usr/bin/nvidia-container-runtime"
    assert daemon["log-driver"] == "json-file"

    path = host / "etc/mmbatch/config.toml"
    cfg = config.load(str(path))
    assert cfg.store.url == "s3://ckpt-bucket/mmbatch"
    assert (cfg.store.region, cfg.store.sse, cfg.store.kms_key_id, cfg.store.expected_bucket_owner) == \
        ("us-east-1", "aws:kms", KEY, "111122223333")
    assert cfg.checkpoint.mode == "iterative"
    assert cfg.runtime.delegate == "/usr/bin/nvidia-container-runtime", "chained to the previous default"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert (host / "etc/systemd/system/mmbatchd.service").is_file()

    # cloud-init runs it once, but a second run (a re-run by hand) changes nothing
    before = {p: p.read_bytes() for p in host.rglob("*") if p.is_file()}
    run_user_data(tmp_path, host, opts)
    assert {p: p.read_bytes() for p in host.rglob("*") if p.is_file()} == before


def test_cpu_node_with_a_file_store(tmp_path: Path, host: Path) -> None:
    (host / "etc/docker/daemon.json").unlink()
    (host / "etc/ecs/ecs.config").unlink()
    opts = UserDataOptions(store="file:///fsx/mmbatch", source="https://example.invalid/mmbatch.tar.gz",
                           gpu="no", mode="none", spot_draining=False, stop_timeout="3m", start_timeout="20m")
    run_user_data(tmp_path, host, opts)
    assert ecs_lines(host) == {"ECS_CONTAINER_STOP_TIMEOUT": "180s", "ECS_CONTAINER_START_TIMEOUT": "1200s"}
    assert json.loads((host / "etc/docker/daemon.json").read_text()) == {
        "runtimes": {"mmbatch": {"path": "/opt/mmbatch/bin/mmbatch-runtime"}}, "default-runtime": "mmbatch"}
    cfg = config.load(str(host / "etc/mmbatch/config.toml"))
    assert (cfg.store.url, cfg.checkpoint.mode, cfg.runtime.delegate) == ("file:///fsx/mmbatch", "none", "runc")
    assert cfg.store.region == "" and cfg.store.sse == "AES256", "a file store gets no S3 settings"
