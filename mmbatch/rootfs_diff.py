"""The container's rootfs changes: captured from the overlay upperdir at
checkpoint, applied to a new container's rootfs before restore.

CRIU restores open files by path, so the new container's rootfs must first
hold the old one's changes, or it fails with "Can't open file ... on
restore". The diff is a tar of new and changed files plus a JSON list of
deletions (overlay whiteouts: character devices 0/0) and opaque directories
(xattr trusted.overlay.opaque=y: a directory deleted and made again).

Most of the copying happens before the job is frozen: `precopy` puts every
regular file that has not changed for a while into a base tar while the job
runs, remembering each file's signature (inode, size, mtime, ctime, mode)
taken before reading it. `capture`, while the job is frozen, then only stats
the tree and copies what is new or whose signature changed (a file written
after its pre-copy has a later mtime: files modified in the last seconds are
never pre-copied, so the coarse timestamp clock cannot hide a write). The
freeze therefore costs a stat walk plus the hot files, not the whole diff.

Applying happens in a forked child chrooted into the new rootfs, so a
symlink in the image can never redirect a write onto the host. Before
applying, everything the diff will touch is backed up, so a failed restore
can put the rootfs back as the image had it and the cold start is clean.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from mmbatch.errors import CheckpointError, RestoreError

DIFF_TAR = "rootfs-diff.tar"
BASE_TAR = "rootfs-base.tar"
DIFF_META = "rootfs-diff.json"
PRECOPY_MIN_AGE = 2.0  # seconds a file must have been left alone to be pre-copied
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


@dataclass
class OverlayDirs:
    merged: str
    upper: str
    lowers: List[str]


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _split_options(opts: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    # Commas inside paths are escaped by the kernel as "\,"? They are not, but
    # overlay rejects such paths anyway; plain split is what the kernel gives.
    for item in opts.split(","):
        k, _, v = item.partition("=")
        out[k] = v
    return out


def find_overlay(merged: str, mountinfo: str = "/proc/self/mountinfo") -> OverlayDirs:
    """Upper and lower dirs of the overlay mounted at `merged`."""
    merged = os.path.realpath(merged)
    found: Optional[Tuple[str, str]] = None
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            if not sep:
                continue
            fields = left.split()
            rfields = right.split()
            if len(fields) < 5 or len(rfields) < 3:
                continue
            if _unescape(fields[4]) == merged and rfields[0] == "overlay":
                found = (rfields[2], merged)  # the last mount at a path wins
    if not found:
        raise CheckpointError(f"no overlay file system is mounted at {merged}; rootfs changes cannot be captured")
    opts = _split_options(found[0])
    if "upperdir" not in opts:
        raise CheckpointError(f"overlay at {merged} has no upperdir (read-only rootfs?)")
    # Docker's overlay2 mounts with paths relative to its home when the
    # option string would be too long: resolve them against that home.
    home = os.path.dirname(os.path.dirname(merged))

    def absolute(p: str) -> str:
        p = _unescape(p)
        return p if os.path.isabs(p) else os.path.join(home, p)

    lowers = [absolute(p) for p in opts.get("lowerdir", "").split(":") if p]
    return OverlayDirs(merged=merged, upper=absolute(opts["upperdir"]), lowers=lowers)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) in (b"y", b"y\0"):
                return True
        except OSError:
            continue
    return False


Signature = Tuple[int, int, int, int, int]


def _signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


@dataclass
class Precopy:
    """Regular files copied into BASE_TAR while the job ran, by signature."""

    signatures: Dict[str, Signature]
    bytes: int
    seconds: float


def _walk(upper: str):
    """(relative path, absolute path) of every entry under upper, parents first."""
    for dirpath, dirnames, filenames in os.walk(upper):
        rel_dir = os.path.relpath(dirpath, upper)
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            yield (name if rel_dir == "." else os.path.join(rel_dir, name)), os.path.join(dirpath, name)


def precopy(upper: str, out_dir: str, min_age: float = PRECOPY_MIN_AGE) -> Precopy:
    """Copy the cold regular files of `upper` into BASE_TAR (the job runs)."""
    import time

    t0 = time.monotonic()
    cutoff = (time.time() - min_age) * 1e9
    signatures: Dict[str, Signature] = {}
    nbytes = 0
    try:
        with tarfile.open(os.path.join(out_dir, BASE_TAR), "w", format=tarfile.PAX_FORMAT) as tar:
            for rel, full in _walk(upper):
                st = os.lstat(full)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                    continue  # directories, links and hard links go in the frozen pass
                if st.st_mtime_ns > cutoff or st.st_ctime_ns > cutoff:
                    continue  # hot: copied while frozen
                info = tar.gettarinfo(full, arcname=rel)
                with open(full, "rb") as f:
                    tar.addfile(info, f)
                signatures[rel] = _signature(st)
                nbytes += st.st_size
    except OSError as e:
        raise CheckpointError(f"pre-copying rootfs changes from {upper} failed: {e}") from e
    return Precopy(signatures=signatures, bytes=nbytes, seconds=time.monotonic() - t0)


def capture(upper: str, out_dir: str, pre: Optional[Precopy] = None) -> Dict[str, int]:
    """Write DIFF_TAR and DIFF_META of `upper` into out_dir (the job is frozen).

    With a precopy, files whose signature did not change stay in its base tar.
    Returns counts: files, bytes (the whole diff), frozen_bytes (copied now).
    """
    deleted: List[str] = []
    opaque: List[str] = []
    unchanged: set = set()
    files = 0
    nbytes = 0
    frozen_bytes = 0
    tar_path = os.path.join(out_dir, DIFF_TAR)
    base = pre.signatures if pre else {}
    try:
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            for rel, full in _walk(upper):
                st = os.lstat(full)
                if _is_whiteout(st):
                    deleted.append(rel)
                    continue
                if stat.S_ISDIR(st.st_mode) and _is_opaque(full):
                    opaque.append(rel)
                if stat.S_ISSOCK(st.st_mode):
                    continue  # sockets are recreated by CRIU, not by tar
                files += 1
                if stat.S_ISREG(st.st_mode):
                    nbytes += st.st_size
                    if base.get(rel) == _signature(st):
                        unchanged.add(rel)
                        continue
                    frozen_bytes += st.st_size
                tar.add(full, arcname=rel, recursive=False)
    except OSError as e:
        raise CheckpointError(f"capturing rootfs changes from {upper} failed: {e}") from e
    meta = {
        "format": 2,
        "deleted": deleted,
        "opaque": opaque,
        "base": BASE_TAR if pre else None,
        "base_skip": sorted(set(base) - unchanged),
        "files": files,
        "bytes": nbytes,
    }
    with open(os.path.join(out_dir, DIFF_META), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    if pre and not base:
        os.unlink(os.path.join(out_dir, BASE_TAR))  # an empty base is not worth a file
        meta["base"] = None
        with open(os.path.join(out_dir, DIFF_META), "w", encoding="utf-8") as f:
            json.dump(meta, f)
    return {"files": files, "bytes": nbytes, "frozen_bytes": frozen_bytes, "deleted": len(deleted),
            "opaque": len(opaque)}


def _safe_name(name: str) -> bool:
    if not name or name.startswith("/") or "\0" in name:
        return False
    return ".." not in name.split("/")


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _touched(meta: Dict, members: List[tarfile.TarInfo]) -> List[str]:
    names = set(meta.get("deleted", [])) | set(meta.get("opaque", []))
    names.update(m.name for m in members if not m.isdir())
    return sorted(names)


def _in_chroot(root: str, work) -> None:
    """Run work() in a forked child chrooted into root; raise on failure."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            os.chroot(root)
            os.chdir("/")
            work()
        except BaseException as e:  # report everything to the parent
            os.write(w, f"{type(e).__name__}: {e}".encode()[:4000])
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or message:
        raise RestoreError(f"rootfs update in {root} failed: {message or 'child died'}")


def _extract_all(tar: tarfile.TarFile, members: List[tarfile.TarInfo], dest: str) -> None:
    kwargs = {"numeric_owner": True}
    if hasattr(tarfile, "fully_trusted_filter"):
        kwargs["filter"] = "fully_trusted"  # names were checked; we are in a chroot
    tar.extractall(dest, members=members, **kwargs)  # noqa: S202


def _open_layers(diff_dir: str, meta: Dict) -> List[Tuple[tarfile.TarFile, List[tarfile.TarInfo]]]:
    """The tars to extract, in order, each with the members to take from it."""
    layers = []
    skip = set(meta.get("base_skip") or [])
    if meta.get("base"):
        if meta["base"] != BASE_TAR:
            raise RestoreError(f"rootfs diff names an unknown base {meta['base']!r}")
        base = tarfile.open(os.path.join(diff_dir, BASE_TAR), "r")
        layers.append((base, [m for m in base.getmembers() if m.name not in skip]))
    top = tarfile.open(os.path.join(diff_dir, DIFF_TAR), "r")
    layers.append((top, top.getmembers()))
    return layers


def apply(merged: str, diff_dir: str, backup_path: str) -> List[str]:
    """Apply a captured diff to the rootfs at `merged`; back up first.

    Returns the touched paths, for revert(). Raises RestoreError.
    """
    try:
        with open(os.path.join(diff_dir, DIFF_META), encoding="utf-8") as f:
            meta = json.load(f)
        layers = _open_layers(diff_dir, meta)
    except (OSError, ValueError, tarfile.TarError) as e:
        raise RestoreError(f"rootfs diff in {diff_dir} is unreadable: {e}") from e
    try:
        members = [m for _tar, ms in layers for m in ms]
        for m in members:
            if not _safe_name(m.name) or (m.islnk() and not _safe_name(m.linkname)):
                raise RestoreError(f"rootfs diff has an unsafe entry {m.name!r}")
        for name in meta.get("deleted", []) + meta.get("opaque", []):
            if not _safe_name(name):
                raise RestoreError(f"rootfs diff has an unsafe path {name!r}")
        touched = _touched(meta, members)
        backup_file = open(backup_path, "wb")  # noqa: SIM115  written by the child
        import grp  # noqa: F401  imported before chroot: tarfile may need them
        import pwd  # noqa: F401

        def work() -> None:
            # 1. back up what the image has at every touched path
            with tarfile.open(fileobj=backup_file, mode="w", format=tarfile.PAX_FORMAT) as backup:
                for name in touched:
                    if os.path.lexists("/" + name):
                        backup.add("/" + name, arcname=name, recursive=True)
            backup_file.flush()
            # 2. deletions, then opaque dirs emptied, then the new content
            for name in meta.get("deleted", []):
                _remove("/" + name)
            for name in meta.get("opaque", []):
                p = "/" + name
                if os.path.isdir(p) and not os.path.islink(p):
                    for entry in os.listdir(p):
                        _remove(os.path.join(p, entry))
            for m in members:
                p = "/" + m.name
                if not m.isdir() and os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                elif m.isdir() and os.path.lexists(p) and not os.path.isdir(p):
                    os.unlink(p)
            for tar, ms in layers:
                _extract_all(tar, ms, "/")

        try:
            _in_chroot(merged, work)
        finally:
            backup_file.close()
    finally:
        for tar, _ms in layers:
            tar.close()
    return touched


def revert(merged: str, touched: List[str], backup_path: str) -> None:
    """Put the touched paths back as they were before apply()."""
    import grp  # noqa: F401
    import pwd  # noqa: F401

    try:
        backup = tarfile.open(backup_path, "r")
    except (OSError, tarfile.TarError) as e:
        raise RestoreError(f"rootfs backup {backup_path} unreadable: {e}") from e
    with backup:
        members = [m for m in backup.getmembers() if _safe_name(m.name)]

        def work() -> None:
            for name in sorted(touched, key=lambda n: n.count("/"), reverse=True):
                try:
                    _remove("/" + name)
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        raise
            _extract_all(backup, members, "/")

        _in_chroot(merged, work)
