import pytest

from mmbatch.errors import CheckpointError
from mmbatch.freezer import Freezer


def test_v1_freeze_thaw_and_pids(tmp_path):
    (tmp_path / "freezer.state").write_text("THAWED\n")
    (tmp_path / "cgroup.procs").write_text("10\n12\n")
    fz = Freezer({"freezer": str(tmp_path), "memory": "/elsewhere"})
    fz.freeze()
    assert (tmp_path / "freezer.state").read_text() == "FROZEN" and fz.frozen()
    assert fz.pids() == [10, 12]
    fz.thaw()
    assert (tmp_path / "freezer.state").read_text() == "THAWED" and not fz.frozen()


def test_v2_waits_for_the_events_file(tmp_path):
    (tmp_path / "cgroup.freeze").write_text("0")
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    fz = Freezer({"": str(tmp_path)})
    fz.freeze()
    assert (tmp_path / "cgroup.freeze").read_text() == "1"


def test_a_cgroup_that_never_freezes_is_thawed_and_reported(tmp_path):
    (tmp_path / "cgroup.freeze").write_text("0")
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(CheckpointError, match="did not freeze"):
        Freezer({"": str(tmp_path)}).freeze(timeout=0.05)
    assert (tmp_path / "cgroup.freeze").read_text() == "0"


def test_no_freezer():
    with pytest.raises(CheckpointError):
        Freezer({"memory": "/x"})


def test_staging_prefers_tmpfs_only_when_it_fits(tmp_path):
    from mmbatch.config import CheckpointSection
    from mmbatch.staging import MARGIN, choose, container_memory

    shm = tmp_path / "shm"
    shm.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\ntmpfs {shm} tmpfs rw 0 0\n")
    meminfo = tmp_path / "meminfo"
    ck = CheckpointSection(staging_dir="/var/lib/mmbatch/staging", memory_staging_dir=str(shm))

    meminfo.write_text(f"MemTotal: 1 kB\nMemAvailable: {(4 << 30) // 1024} kB\n")
    assert choose(ck, 1 << 30, str(meminfo), str(mounts)) == str(shm / "mmbatch-staging")
    assert choose(ck, (4 << 30) - MARGIN + 1, str(meminfo), str(mounts)) == ck.staging_dir  # no room
    assert choose(ck, 0, str(meminfo), str(mounts)) == ck.staging_dir  # size unknown: disk
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\n/dev/vdb {shm} ext4 rw 0 0\n")
    assert choose(ck, 1 << 20, str(meminfo), str(mounts)) == ck.staging_dir  # not a tmpfs
    ck.memory_staging_dir = ""
    assert choose(ck, 1 << 20, str(meminfo), str(mounts)) == ck.staging_dir  # switched off

    (tmp_path / "memory.usage_in_bytes").write_text("123456\n")
    assert container_memory({"memory": str(tmp_path)}) == 123456
    assert container_memory({}) == 0
