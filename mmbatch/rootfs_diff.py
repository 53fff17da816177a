"""The container's rootfs changes: captured from the overlay upperdir at
checkpoint, applied to a new container's rootfs before restore.

CRIU restores open files by path, so the new container's rootfs must first
hold the old one's changes, or it fails with "Can't open file ... on
restore". The diff is a tar of new and changed files plus a JSON list of
deletions (overlay whiteouts: character devices 0/0) and opaque directories
(xattr trusted.overlay.opaque=y: a directory deleted and made again).

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
DIFF_META = "rootfs-diff.json"
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


def capture(upper: str, out_dir: str, exclude: Tuple[str, ...] = ()) -> Dict[str, int]:
    """Write DIFF_TAR and DIFF_META of `upper` into out_dir. Returns counts."""
    deleted: List[str] = []
    opaque: List[str] = []
    files = 0
    nbytes = 0
    tar_path = os.path.join(out_dir, DIFF_TAR)
    try:
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(upper):
                rel_dir = os.path.relpath(dirpath, upper)
                dirnames.sort()
                for name in sorted(dirnames) + sorted(filenames):
                    full = os.path.join(dirpath, name)
                    rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                    if rel in exclude:
                        continue
                    st = os.lstat(full)
                    if _is_whiteout(st):
                        deleted.append(rel)
                        continue
                    if stat.S_ISDIR(st.st_mode) and _is_opaque(full):
                        opaque.append(rel)
                    if stat.S_ISSOCK(st.st_mode):
                        continue  # sockets are recreated by CRIU, not by tar
                    tar.add(full, arcname=rel, recursive=False)
                    files += 1
                    if stat.S_ISREG(st.st_mode):
                        nbytes += st.st_size
    except OSError as e:
        raise CheckpointError(f"capturing rootfs changes from {upper} failed: {e}") from e
    meta = {"format": 1, "deleted": deleted, "opaque": opaque, "files": files, "bytes": nbytes}
    with open(os.path.join(out_dir, DIFF_META), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    return {"files": files, "bytes": nbytes, "deleted": len(deleted), "opaque": len(opaque)}


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


def apply(merged: str, diff_dir: str, backup_path: str) -> List[str]:
    """Apply a captured diff to the rootfs at `merged`; back up first.

    Returns the touched paths, for revert(). Raises RestoreError.
    """
    try:
        with open(os.path.join(diff_dir, DIFF_META), encoding="utf-8") as f:
            meta = json.load(f)
        tar = tarfile.open(os.path.join(diff_dir, DIFF_TAR), "r")
    except (OSError, ValueError, tarfile.TarError) as e:
        raise RestoreError(f"rootfs diff in {diff_dir} is unreadable: {e}") from e
    with tar:
        members = tar.getmembers()
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
            _extract_all(tar, members, "/")

        try:
            _in_chroot(merged, work)
        finally:
            backup_file.close()
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
