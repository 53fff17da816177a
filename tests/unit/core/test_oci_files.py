import os

import pytest

from mmbatch import oci, open_files, rootfs_diff
from mmbatch.config import CheckpointSection
from mmbatch.errors import CheckpointError, IncompatibleCheckpoint

SPEC = {
    "root": {"path": "/var/lib/docker/overlay2/x/merged"},
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/data", "type": "bind", "source": "/scratch/job", "options": ["rbind", "rw"]},
        {"destination": "/data/sub", "type": "bind", "source": "/other", "options": ["rbind"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
    ],
}


def test_host_path_for_longest_bind_wins():
    assert oci.host_path_for(SPEC, "/data/a/b") == "/scratch/job/a/b"
    assert oci.host_path_for(SPEC, "/data/sub/f") == "/other/f"
    assert oci.host_path_for(SPEC, "/data") == "/scratch/job"
    assert oci.host_path_for(SPEC, "/datax/f") is None
    assert oci.host_path_for(SPEC, "/tmp/f") is None


def test_inject_and_criu_options(tmp_path):
    spec = {"annotations": {"keep": "me"}}
    oci.inject(spec, "/run/mmbatch/x/criu.conf", "job-1")
    assert spec["annotations"] == {"keep": "me", "org.criu.config": "/run/mmbatch/x/criu.conf",
                                   "io.mmbatch.job-key": "job-1"}
    lines = oci.criu_options(CheckpointSection())
    assert "tcp-close" in lines and "file-locks" in lines and "ghost-limit 64M" in lines
    assert not any(line.startswith("network-lock") for line in lines)
    off = oci.criu_options(CheckpointSection(tcp_close=False, file_locks=False, ext_unix_sk=False))
    assert off == ["ghost-limit 64M"]
    path = tmp_path / "criu.conf"
    oci.write_criu_config(str(path), lines)
    assert [ln for ln in path.read_text().splitlines() if not ln.startswith("#")] == lines


def test_write_spec_is_atomic_and_keeps_mode(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    os.chmod(tmp_path / "config.json", 0o640)
    oci.write_spec(str(tmp_path), {"a": 2})
    assert oci.read_spec(str(tmp_path)) == {"a": 2}
    assert os.stat(tmp_path / "config.json").st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["config.json"]


def _spec_for(tmp_path):
    return {"mounts": [{"destination": "/data", "type": "bind", "source": str(tmp_path), "options": ["rbind"]}]}


def test_plan_restore_truncates_grown_writable_files(tmp_path):
    (tmp_path / "log").write_bytes(b"x" * 150)
    (tmp_path / "same").write_bytes(b"y" * 10)
    recorded = [{"path": "/data/log", "size": 100, "append": True, "writable": True},
                {"path": "/data/same", "size": 10, "append": False, "writable": False}]
    actions = open_files.plan_restore(recorded, _spec_for(tmp_path))
    assert actions == [{"path": "/data/log", "host": str(tmp_path / "log"), "from": 150, "to": 100}]
    open_files.truncate(actions)
    assert os.path.getsize(tmp_path / "log") == 100


@pytest.mark.parametrize("entry,content,why", [
    ({"path": "/data/gone", "size": 1, "writable": True}, None, "missing"),
    ({"path": "/data/log", "size": 100, "writable": True}, b"x" * 50, "shorter"),
    ({"path": "/data/log", "size": 100, "writable": False}, b"x" * 150, "read-only"),
    ({"path": "/elsewhere/log", "size": 1, "writable": True}, None, "does not mount"),
])
def test_plan_restore_refuses_what_cannot_match(tmp_path, entry, content, why):
    if content is not None:
        (tmp_path / "log").write_bytes(content)
    with pytest.raises(IncompatibleCheckpoint) as e:
        open_files.plan_restore([entry], _spec_for(tmp_path))
    assert why in str(e.value)


def test_scan_finds_open_volume_files_of_a_process(tmp_path):
    spec = _spec_for(tmp_path)
    # This process, with the volume's host path mapped as if it were /data.
    spec["mounts"][0]["destination"] = str(tmp_path)
    f = open(tmp_path / "out.log", "ab")
    f.write(b"hello")
    f.flush()
    r = open(tmp_path / "in.txt", "wb")
    r.close()
    rr = open(tmp_path / "in.txt", "rb")
    try:
        found = {e["path"]: e for e in open_files.scan([os.getpid()], spec)}
    finally:
        f.close()
        rr.close()
    out = found[str(tmp_path / "out.log")]
    assert out["size"] == 5 and out["writable"] and out["append"]
    assert found[str(tmp_path / "in.txt")]["writable"] is False


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
300 22 0:50 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay \
rw,lowerdir=l/AAA:l/BBB,upperdir=abc/diff,workdir=abc/work
301 22 0:51 / /mnt/with\\040space rw - overlay overlay rw,lowerdir=/lo,upperdir=/up\\040x,workdir=/w
"""


def test_find_overlay_resolves_docker_relative_paths(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    ov = rootfs_diff.find_overlay("/var/lib/docker/overlay2/abc/merged", str(mi))
    assert ov.upper == "/var/lib/docker/overlay2/abc/diff"
    assert ov.lowers == ["/var/lib/docker/overlay2/l/AAA", "/var/lib/docker/overlay2/l/BBB"]
    ov2 = rootfs_diff.find_overlay("/mnt/with space", str(mi))
    assert ov2.upper == "/up x"
    with pytest.raises(CheckpointError):
        rootfs_diff.find_overlay("/not/mounted", str(mi))
