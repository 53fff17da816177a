"""A full store file system: a clear StoreError, and earlier checkpoints stay intact.

Mounts a small tmpfs in a temp dir (needs root) and unmounts it afterwards.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from mmbatch.checkpoints import CheckpointRepository
from mmbatch.errors import StoreError
from mmbatch.manifest import Manifest
from mmbatch.store import open_store

pytestmark = pytest.mark.root

MiB = 1024 * 1024


@pytest.fixture
def small_fs(needs_root, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        why = f"cannot mount a tmpfs here: {r.stderr.strip()}"
        if os.environ.get("MMBATCH_TEST_STRICT") == "1":  # as tests/conftest.py's unavailable()
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _tmp_files(root):
    return [os.path.join(d, n) for d, _, names in os.walk(root) for n in names if n.startswith(".mmbatch-tmp-")]


def test_full_store_gives_a_clear_error_and_keeps_earlier_checkpoints(small_fs, tmp_path):
    store = open_store(f"file://{small_fs}/checkpoints")
    repo = CheckpointRepository(store, "job-1", chunk_size=256 * 1024, pack_size=1 * MiB, parallel=4)
    src = tmp_path / "src"
    src.mkdir()
    first_data = os.urandom(1 * MiB)
    (src / "pages-1.img").write_bytes(first_data)
    (src / "core-1.img").write_bytes(b"core")
    first = repo.commit(str(src), Manifest())

    (src / "pages-1.img").write_bytes(os.urandom(8 * MiB))  # twice what the file system holds
    with pytest.raises(StoreError) as exc:
        repo.commit(str(src), Manifest())
    err = exc.value
    assert "full" in str(err), str(err)
    assert err.job_key == "job-1"
    assert "job-1" in str(err)

    assert repo.latest() == first
    assert [m.checkpoint_id for m in repo.list()] == [first.checkpoint_id]
    assert _tmp_files(small_fs) == []  # no half-written objects left behind
    dest = tmp_path / "restored"
    repo.fetch(first, str(dest))
    assert (dest / "pages-1.img").read_bytes() == first_data

    # once space is back (after gc of the failed commit's orphans), commits work again
    later = CheckpointRepository(store, "job-1", chunk_size=256 * 1024, pack_size=1 * MiB,
                                 clock=lambda: first.created_at + 7200)
    later.gc()
    (src / "pages-1.img").write_bytes(os.urandom(1 * MiB))
    second = repo.commit(str(src), Manifest())
    assert repo.latest() == second


def test_full_store_on_a_single_put(small_fs):
    store = open_store(str(small_fs / "s"))
    with pytest.raises(StoreError) as exc:
        store.put_bytes("jobs/j/big", os.urandom(6 * MiB))
    assert "the store's file system is full" in exc.value.hint
    assert "jobs/j/big" in str(exc.value)
    assert not store.exists("jobs/j/big")
    assert _tmp_files(small_fs) == []
