import json
import os

import pytest

from mmbatch import config
from mmbatch.doctor import FAIL, PASS, WARN, Check, Doctor, exit_code, report


def host(tmp_path, files):
    for rel, text in files.items():
        p = tmp_path / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(tmp_path)


def statuses(doc):
    return {c.name: c.status for c in doc.results}


@pytest.mark.parametrize("mounts,expected", [
    ("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", "v2"),
    ("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n", "v1"),
    ("cgroup /sys/fs/cgroup/memory cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n", "hybrid"),
    ("proc /proc proc rw 0 0\n", "unknown"),
])
def test_cgroup_version(tmp_path, mounts, expected):
    doc = Doctor(config.Config(), host(tmp_path, {"/proc/self/mounts": mounts}))
    assert doc.cgroup_version() == expected


def test_docker_registration(tmp_path):
    root = host(tmp_path, {"/etc/docker/daemon.json": json.dumps(
        {"runtimes": {"mmbatch": {"path": "/opt/mmbatch/bin/mmbatch-runtime"}}, "default-runtime": "mmbatch"}),
        "/opt/mmbatch/bin/mmbatch-runtime": "#!/bin/sh\n"})
    os.chmod(os.path.join(root, "opt/mmbatch/bin/mmbatch-runtime"), 0o755)
    doc = Doctor(config.Config(), root)
    doc.check_docker()
    assert statuses(doc) == {"docker runtime": PASS, "default runtime": PASS}


def test_docker_problems(tmp_path):
    doc = Doctor(config.Config(), host(tmp_path, {"/etc/docker/daemon.json": "{bad"}))
    doc.check_docker()
    assert statuses(doc) == {"docker config": FAIL}
    doc = Doctor(config.Config(), host(tmp_path, {"/etc/docker/daemon.json": "{}"}))
    doc.check_docker()
    assert statuses(doc) == {"docker runtime": FAIL, "default runtime": WARN}


@pytest.mark.parametrize("ecs,status", [
    ("ECS_CLUSTER=x\nECS_CONTAINER_STOP_TIMEOUT=120s\n", PASS),
    ("ECS_CLUSTER=x\n", WARN),
    ("ECS_CONTAINER_STOP_TIMEOUT=30s\n", WARN),
])
def test_ecs_stop_timeout(tmp_path, ecs, status):
    doc = Doctor(config.Config(), host(tmp_path, {"/etc/ecs/ecs.config": ecs}))
    doc.check_ecs()
    assert statuses(doc)["ecs stop timeout"] == status


def test_imds_is_not_probed_off_ec2(tmp_path):
    doc = Doctor(config.Config(), host(tmp_path, {"/sys/devices/virtual/dmi/id/sys_vendor": "QEMU\n"}))
    doc.check_imds()
    assert statuses(doc) == {"imds": WARN} and "not probed" in doc.results[0].detail


def test_store_probe_and_spot_budget(tmp_path):
    cfg = config.Config()
    cfg.store.url = f"file://{tmp_path}/store"
    cfg.checkpoint.staging_dir = str(tmp_path / "staging")
    doc = Doctor(cfg, str(tmp_path))
    doc.check_staging_speed(probe_mib=4)
    doc.check_store(probe_mib=2)
    doc.check_spot_budget()
    s = statuses(doc)
    assert s["staging"] == PASS and s["store"] == PASS and "spot budget" in s
    assert "GiB of job memory" in doc.results[-1].detail
    assert os.listdir(tmp_path / "staging") == []


def test_unreachable_store_fails(tmp_path):
    cfg = config.Config()
    cfg.store.url = "/proc/no/such/store"
    doc = Doctor(cfg, str(tmp_path))
    doc.check_store(probe_mib=1)
    assert statuses(doc) == {"store": FAIL}


def test_report_and_exit_code():
    checks = [Check("a", PASS, "ok"), Check("b", WARN, "meh", "do x"), Check("c", FAIL, "bad", "do y")]
    text = report(checks)
    assert "[FAIL] c" in text and "fix: do y" in text and "fix: do x" in text
    assert exit_code(checks) == 1 and exit_code(checks[:2]) == 0
    assert json.loads(report(checks, as_json=True))[2]["status"] == FAIL
