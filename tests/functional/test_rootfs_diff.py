"""The rootfs diff on real overlay mounts: capture, apply, revert, no escape."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from mmbatch import rootfs_diff

pytestmark = pytest.mark.root


def _overlay(base, name, lower):
    upper, work, merged = (base / f"{name}-{p}" for p in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], check=True)
    return merged


def _tree(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", os.stat(p).st_mode & 0o7777)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", f.read(), os.stat(p).st_mode & 0o7777)
    return out


@pytest.fixture
def image(tmp_path, needs_root):
    lower = tmp_path / "lower"
    (lower / "d").mkdir(parents=True)
    (lower / "etc").mkdir()
    (lower / "a").write_text("original a")
    (lower / "b").write_text("to be deleted")
    (lower / "d" / "x").write_text("x")
    (lower / "d" / "y").write_text("y")
    (lower / "etc" / "conf").write_text("conf")
    outside = f"/tmp/mmbatch-escape-{uuid.uuid4().hex[:8]}"
    os.symlink(outside, lower / "data")  # a hostile image: /data points at a host path
    mounts = []
    yield tmp_path, lower, outside, mounts
    for m in reversed(mounts):
        subprocess.run(["umount", "-l", str(m)], check=False)
    assert not os.path.exists(outside), "a write escaped the container's rootfs"


@pytest.mark.parametrize("precopied", [False, True], ids=["frozen-only", "precopied"])
def test_capture_apply_revert(image, precopied):
    base, lower, outside, mounts = image
    old = _overlay(base, "old", lower)
    mounts.append(old)
    (old / "a").write_text("changed a")
    (old / "b").unlink()
    (old / "c").write_text("new c")
    os.chmod(old / "c", 0o751)
    subprocess.run(["rm", "-rf", str(old / "d")], check=True)
    (old / "d").mkdir()
    (old / "d" / "z").write_text("z")  # d is now opaque: x and y must not come back
    os.symlink("c", old / "link-to-c")
    (old / "new-dir" / "deep").mkdir(parents=True)
    (old / "new-dir" / "deep" / "f").write_text("deep")
    expected = _tree(old)

    diff = base / "diff"
    diff.mkdir()
    upper = rootfs_diff.find_overlay(str(old)).upper
    if precopied:
        (old / "cold").write_text("cold file")
        (old / "changes-after-precopy").write_text("v1")
        (old / "deleted-after-precopy").write_text("bye")
        # min_age=0: every file counts as cold here (ctime cannot be set back)
        pre = rootfs_diff.precopy(str(upper), str(diff), min_age=0)
        assert {"cold", "changes-after-precopy", "deleted-after-precopy", "c"} <= set(pre.signatures)
        # the job runs on between the pre-copy and the freeze
        (old / "changes-after-precopy").write_text("v2, longer")
        (old / "deleted-after-precopy").unlink()
        expected = _tree(old)
        stats = rootfs_diff.capture(upper, str(diff), pre)
        assert stats["frozen_bytes"] < stats["bytes"]
    else:
        stats = rootfs_diff.capture(upper, str(diff))
    assert stats["deleted"] == 1 and stats["opaque"] == 1

    new = _overlay(base, "new", lower)
    mounts.append(new)
    before = _tree(new)
    touched = rootfs_diff.apply(str(new), str(diff), str(base / "backup.tar"))
    assert _tree(new) == expected

    rootfs_diff.revert(str(new), touched, str(base / "backup.tar"))
    after = _tree(new)
    # everything the image had is back; only directories the diff made remain, empty
    leftover = {k: v for k, v in after.items() if k not in before}
    assert all(v[0] == "dir" for v in leftover.values()), leftover
    assert {k: v for k, v in after.items() if k in before} == before


def test_diff_writes_through_an_image_symlink_stay_inside(image):
    base, lower, outside, mounts = image
    # The old container had a real /data directory with a file in it ...
    old_lower = base / "old-lower"
    (old_lower / "data").mkdir(parents=True)
    old = _overlay(base, "old", old_lower)
    mounts.append(old)
    (old / "data" / "evil").write_text("should land inside the rootfs")
    diff = base / "diff"
    diff.mkdir()
    rootfs_diff.capture(rootfs_diff.find_overlay(str(old)).upper, str(diff))
    # ... the new image has /data -> a host path. Applying must not write there.
    new = _overlay(base, "new", lower)
    mounts.append(new)
    try:
        rootfs_diff.apply(str(new), str(diff), str(base / "backup.tar"))
    except Exception:
        pass  # refusing is fine too; escaping is not
    assert not os.path.exists(os.path.join(outside, "evil"))


def test_unsafe_diff_is_refused(tmp_path, needs_root):
    import json
    import tarfile

    diff = tmp_path / "diff"
    diff.mkdir()
    with tarfile.open(diff / rootfs_diff.DIFF_TAR, "w") as tar:
        info = tarfile.TarInfo("../../escape")
        info.size = 0
        tar.addfile(info)
    (diff / rootfs_diff.DIFF_META).write_text(json.dumps({"deleted": [], "opaque": []}))
    target = tmp_path / "root"
    target.mkdir()
    with pytest.raises(Exception) as e:
        rootfs_diff.apply(str(target), str(diff), str(tmp_path / "b.tar"))
    assert "unsafe" in str(e.value)
