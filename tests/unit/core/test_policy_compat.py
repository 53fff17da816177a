import pytest

from mmbatch import attempts, compat


def spec(env=(), args=("sh",), cwd="/", mounts=(), uid=0):
    return {
        "process": {"args": list(args), "cwd": cwd, "env": list(env), "user": {"uid": uid, "gid": 0}},
        "mounts": [{"destination": d, "source": s, "type": "bind", "options": ["rbind"]} for d, s in mounts],
    }


def test_job_hash_ignores_what_docker_and_ecs_set_per_host_and_task():
    a = spec(env=["A=1", "HOSTNAME=ip-10-0-0-1", "AWS_BATCH_JOB_ATTEMPT=1",
                  "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/aaa", "ECS_CONTAINER_METADATA_URI_V4=x"],
             mounts=[("/etc/hosts", "/var/lib/docker/containers/111/hosts"), ("/data", "/scratch")])
    b = spec(env=["A=1", "HOSTNAME=ip-10-0-0-2", "AWS_BATCH_JOB_ATTEMPT=2",
                  "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/bbb", "ECS_CONTAINER_METADATA_URI_V4=y"],
             mounts=[("/etc/hosts", "/var/lib/docker/containers/222/hosts"), ("/data", "/other")])
    assert compat.job_hash(a) == compat.job_hash(b)


@pytest.mark.parametrize("change", [
    dict(env=["A=2"]), dict(args=("sh", "-c", "x")), dict(cwd="/work"), dict(uid=1000),
    dict(mounts=[("/data2", "/x")]),
])
def test_job_hash_sees_what_the_job_defines(change):
    base = dict(env=["A=1"])
    assert compat.job_hash(spec(**base)) != compat.job_hash(spec(**{**base, **change}))


REC = {"image_id": "sha256:aaa", "job_hash": "h", "arch": "x86_64", "cpu_flags": ["avx2", "sse4_2", "hypervisor"],
       "criu_version": "4.2.1", "gpu": None}


def test_compatible():
    assert compat.check(REC, dict(REC, cpu_flags=["avx2", "sse4_2", "avx512f"])) is None


@pytest.mark.parametrize("current,why", [
    (dict(REC, image_id="sha256:bbb"), "image differs"),
    (dict(REC, job_hash="other"), "job definition differs"),
    (dict(REC, arch="aarch64"), "architecture"),
    (dict(REC, cpu_flags=["sse4_2"]), "avx2"),
    (dict(REC, criu_version="4.1.1"), "older"),
])
def test_incompatible(current, why):
    assert why in (compat.check(REC, current) or "")


def test_host_only_cpu_flags_do_not_matter():
    assert compat.check(REC, dict(REC, cpu_flags=["avx2", "sse4_2"])) is None


def test_gpu_rules():
    rec = dict(REC, gpu={"model": "A10G", "count": 1, "driver": "550.54"})
    assert compat.check(rec, dict(rec, gpu={"model": "A10G", "count": 1, "driver": "560.1"})) is None
    assert "no" in compat.check(rec, dict(rec, gpu=None))
    assert "GPU differs" in compat.check(rec, dict(rec, gpu={"model": "T4", "count": 1, "driver": "560"}))
    assert "driver" in compat.check(rec, dict(rec, gpu={"model": "A10G", "count": 1, "driver": "535.1"}))


def test_parse_version():
    assert compat.parse_version("Version: 4.2.1") == (4, 2, 1)
    assert compat.parse_version("1.1.5+ds1") == (1, 1, 5)
    assert compat.parse_version("none") == ()


@pytest.mark.parametrize("records,restore,why", [
    ([], True, "no earlier attempt"),
    ([{"container_id": "a", "started_at": 1, "end": None}], True, "host lost"),
    ([{"container_id": "a", "started_at": 1, "end": "killed", "signal": "9"}], True, "stopped from outside"),
    ([{"container_id": "a", "started_at": 1, "end": "oom"}], False, "OOM"),
    ([{"container_id": "a", "started_at": 1, "end": "exited", "exit_code": 1}], False, "ended on its own"),
    ([{"container_id": "a", "started_at": 1, "end": "succeeded"}], False, "succeeded"),
    # the newest attempt decides
    ([{"container_id": "a", "started_at": 1, "end": "exited"}, {"container_id": "b", "started_at": 2, "end": None}],
     True, "host lost"),
    ([{"container_id": "a", "started_at": 2, "end": "oom"}, {"container_id": "b", "started_at": 1, "end": None}],
     False, "OOM"),
])
def test_restore_policy(records, restore, why):
    ok, reason = attempts.should_restore(records)
    assert ok is restore and why in reason


def test_restore_failures():
    assert attempts.restore_failures(None) == 0
    assert attempts.restore_failures({"failures": 2}) == 2
    assert attempts.restore_failures({"failures": "x"}) == 0
