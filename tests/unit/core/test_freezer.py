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
