"""The pre-dump chain against the real runc and CRIU on this kernel.

This kernel has no soft-dirty tracking, so the real chain cannot run here:
these tests pin down that mmbatch detects that the same way the kernel
reports it, and that runc given exactly the argv mmbatch would use fails
only in its feature check ("CRIU is missing features"), leaving the job
running and nothing behind. On a kernel with the feature (AL2023) the
second test takes the other branch and checks that the chain is written.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time

import pytest

from mmbatch import predump
from mmbatch.errors import CheckpointError
from mmbatch.runc import Runc
from tests.conftest import unavailable
from tests.lib import runc_bundle

pytestmark = [pytest.mark.root, pytest.mark.criu]

COUNTER = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i >> /count.log; sleep 0.05; done"]


def kernel_tracks_dirty_pages() -> bool:
    """The kernel's own answer: clear the soft-dirty bits, write a page, read bit 55 of its pagemap entry."""
    buf = mmap.mmap(-1, 4096)
    try:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        buf[0:1] = b"a"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("4")
        except OSError:
            return False  # EINVAL: no CONFIG_MEM_SOFT_DIRTY
        buf[0:1] = b"b"
        with open("/proc/self/pagemap", "rb") as f:
            f.seek((addr // mmap.PAGESIZE) * 8)
            entry = int.from_bytes(f.read(8), "little")
        return bool(entry & (1 << 55))
    finally:
        buf.close()


@pytest.fixture
def bundle(tmp_path):
    why = runc_bundle.unavailable_reason()
    if why:
        unavailable(why)
    b = runc_bundle.Bundle(COUNTER, base=str(tmp_path))
    b.start()
    yield b
    b.cleanup()


def test_feature_detection_agrees_with_the_kernel(tmp_path):
    if os.geteuid() != 0:
        unavailable("needs root (criu check)")
    cache = str(tmp_path / "features.json")
    expected = kernel_tracks_dirty_pages()
    assert predump.mem_dirty_track(cache_file=cache) is expected
    assert os.path.exists(cache)
    # the cached answer is the same, without running criu
    assert predump.mem_dirty_track(cache_file=cache, run=_must_not_run) is expected


def _must_not_run(*a, **kw):
    raise AssertionError("criu check ran although the answer was cached")


def _lines(b: runc_bundle.Bundle) -> int:
    return len(b.read("/count.log").split())


def test_real_runc_with_our_pre_dump_argv(bundle, tmp_path):
    deadline = time.time() + 10
    while _lines(bundle) < 5 and time.time() < deadline:
        time.sleep(0.05)
    ck = tmp_path / "ck"
    work = tmp_path / "work"
    ck.mkdir()
    work.mkdir()
    runc = Runc(runc_bundle.RUNC, ["--root", bundle.root], log_file=str(work / "runc.log"))
    if not predump.mem_dirty_track():
        with pytest.raises(CheckpointError) as ei:
            predump.run_pre_dumps(runc, bundle.id, str(ck), str(work), 2)
        assert "CRIU is missing features" in str(ei.value), str(ei.value)
        assert not os.path.exists(ck / "criu-pre0"), "a failed pre-dump leaves nothing behind"
        # the job was never stopped: it still runs and counts on
        assert bundle.status() == "running"
        n = _lines(bundle)
        time.sleep(0.5)
        assert _lines(bundle) > n
        # and a full dump still works after the failed pre-dump
        runc.checkpoint(bundle.id, str(ck / "criu"), str(work / "final"), leave_running=True)
        assert os.path.exists(ck / "criu" / "inventory.img")
        assert bundle.status() == "running"
    else:  # a kernel with soft-dirty tracking: the chain is really written
        parent = predump.run_pre_dumps(runc, bundle.id, str(ck), str(work), 2)
        assert parent == "../criu-pre1"
        assert os.path.islink(ck / "criu-pre1" / "parent")
        runc.checkpoint(bundle.id, str(ck / "criu"), str(work / "final"), leave_running=True,
                        extra=("--parent-path", parent))
        assert os.readlink(ck / "criu" / "parent") == "../criu-pre1"
        assert bundle.status() == "running"
