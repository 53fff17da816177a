"""Readers for the CRIU image files mmbatch needs: inventory, stats, pagemap.

Image file layout (CRIU criu/image.c, lib/pycriu/images/images.py):

    IMAGE  ::= [HEAD_MAGIC] MAGIC { SIZE PAYLOAD }
    SIZE   ::= u32, host byte order, length of PAYLOAD
    PAYLOAD::= one protobuf message

HEAD_MAGIC is IMG_COMMON_MAGIC for ordinary images and IMG_SERVICE_MAGIC
for the "service" files stats-* and irmap-cache (O_SERVICE in
criu/image-desc.c). The inventory file never has a HEAD_MAGIC (its
img_version tells whether the others do: 1 = no, 2 = yes). pages-N.img are
raw (RAW_IMAGE_MAGIC = 0: no magic at all). A pagemap-N.img holds one
pagemap_head (pages_id naming pages-<pages_id>.img) then pagemap_entry's.

Stats are written to CRIU's work dir (AT_FDCWD after chdir), which is the
images dir unless a work dir was given.

The pagemap rules follow criu/pagemap.c (init_compat_pagemap_entry): the
page count is field 5 (CRIU >= 4.2) or else field 2 (older CRIU); an entry
from an old image without `flags` is PE_PRESENT unless `in_parent` is set
(then PE_PARENT); only PE_PRESENT entries have bytes in the pages file,
laid out in pagemap order, nr_pages * page size each.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import struct
from typing import Any, Dict, Iterator, List, Tuple, Union

from . import messages
from .errors import BadMagicError, CorruptImageError, ImageError, TruncatedImageError, WireError
from .wire import Message

__all__ = [
    "MAGICS",
    "IMG_COMMON_MAGIC",
    "IMG_SERVICE_MAGIC",
    "PE_PARENT",
    "PE_LAZY",
    "PE_PRESENT",
    "DumpStats",
    "RestoreStats",
    "PagemapEntry",
    "Pagemap",
    "PagesExtent",
    "read_entries",
    "read_inventory",
    "read_stats",
    "read_dump_stats",
    "read_restore_stats",
    "read_pagemap",
    "pages_layout",
    "iter_pagemaps",
]

PathLike = Union[str, "os.PathLike[str]"]

# criu/include/magic.h (v4.1.1)
IMG_COMMON_MAGIC = 0x54564319  # Sarov
IMG_SERVICE_MAGIC = 0x55105940  # Zlatoust
RAW_IMAGE_MAGIC = 0x0

MAGICS: Dict[str, int] = {
    "INVENTORY": 0x58313116,
    "PSTREE": 0x50273030,
    "FDINFO": 0x56213732,
    "PAGEMAP": 0x56084025,
    "CORE": 0x55053847,
    "IDS": 0x54432030,
    "VMAS": 0x54123737,
    "PIPES": 0x56513555,
    "PIPES_DATA": 0x56453709,
    "FIFO": 0x58364939,
    "FIFO_DATA": 0x59333054,
    "SIGACT": 0x55344201,
    "UNIXSK": 0x54373943,
    "INETSK": 0x56443851,
    "PACKETSK": 0x60454618,
    "ITIMERS": 0x57464056,
    "POSIX_TIMERS": 0x52603957,
    "SK_QUEUES": 0x56264026,
    "UTSNS": 0x54473203,
    "CREDS": 0x54023547,
    "IPC_VAR": 0x53115007,
    "IPCNS_SHM": 0x46283044,
    "IPCNS_MSG": 0x55453737,
    "IPCNS_SEM": 0x59573019,
    "REG_FILES": 0x50363636,
    "EXT_FILES": 0x59255641,
    "FS": 0x51403912,
    "MM": 0x57492820,
    "REMAP_FPATH": 0x59133954,
    "GHOST_FILE": 0x52583605,
    "TCP_STREAM": 0x51465506,
    "EVENTFD_FILE": 0x44523722,
    "EVENTPOLL_FILE": 0x45023858,
    "EVENTPOLL_TFD": 0x44433746,
    "SIGNALFD": 0x57323820,
    "INOTIFY_FILE": 0x48424431,
    "INOTIFY_WD": 0x54562009,
    "MNTS": 0x55563928,
    "NETDEV": 0x57373951,
    "NETNS": 0x55933752,
    "TTY_FILES": 0x59433025,
    "TTY_INFO": 0x59453036,
    "TTY_DATA": 0x59413026,
    "FILE_LOCKS": 0x54323616,
    "RLIMIT": 0x57113925,
    "FANOTIFY_FILE": 0x55096122,
    "FANOTIFY_MARK": 0x56506035,
    "SIGNAL": 0x59255647,
    "NETLINK_SK": 0x58005614,
    "NS_FILES": 0x61394011,
    "TUNFILE": 0x57143751,
    "CGROUP": 0x59383330,
    "TIMERFD": 0x50493712,
    "CPUINFO": 0x61404013,
    "USERNS": 0x55474906,
    "SECCOMP": 0x64413049,
    "BINFMT_MISC": 0x67343323,
    "AUTOFS": 0x49353943,
    "FILES": 0x56303138,
    "MEMFD_INODE": 0x48453499,
    "TIMENS": 0x43114433,
    "PIDNS": 0x61157326,
    "BPFMAP_FILE": 0x57506142,
    "BPFMAP_DATA": 0x64324033,
    "APPARMOR": 0x59423047,
    "PIDFD": 0x54435556,
    "STATS": 0x57093306,
    "IRMAP_CACHE": 0x57004059,
}
_MAGIC_NAMES = {v: k for k, v in MAGICS.items()}
_SERVICE_IMAGES = ("STATS", "IRMAP_CACHE")

# criu/include/pagemap.h
PE_PARENT = 1 << 0  # pages are in the parent snapshot
PE_LAZY = 1 << 1  # pages can be restored lazily
PE_PRESENT = 1 << 2  # pages are in pages-<id>.img

_U32 = struct.Struct("=I")  # CRIU writes magics and sizes in host byte order


def _magic_name(value: int) -> str:
    return _MAGIC_NAMES.get(value, f"0x{value:08x}")


def _read_file(path: PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageError("no such image file", os.fspath(path)) from None
    except OSError as e:
        raise ImageError(f"cannot read: {e.strerror}", os.fspath(path)) from None


def _split_entries(data: bytes, image: str, path: str) -> Tuple[int, List[memoryview]]:
    """Check the magic(s) of `image` and cut the rest into payload slices."""
    view = memoryview(data)
    if len(view) < 4:
        raise TruncatedImageError(f"{len(view)} bytes: too short for a magic", path)
    (first,) = _U32.unpack_from(view, 0)
    pos = 4
    want = MAGICS[image]
    if first in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC):
        if image == "INVENTORY":
            raise BadMagicError("an inventory has no head magic", path)
        head = IMG_SERVICE_MAGIC if image in _SERVICE_IMAGES else IMG_COMMON_MAGIC
        if first != head:
            raise BadMagicError(
                f"head magic 0x{first:08x} is not the {'service' if head == IMG_SERVICE_MAGIC else 'common'}"
                f" magic 0x{head:08x} of a {image} image",
                path,
            )
        if len(view) < 8:
            raise TruncatedImageError("file ends after the head magic", path)
        (first,) = _U32.unpack_from(view, 4)
        pos = 8
    # else: a v1 image (inventory img_version 1) without head magic, as crit accepts
    if first != want:
        raise BadMagicError(f"magic {_magic_name(first)} (0x{first:08x}), expected {image} (0x{want:08x})", path)
    entries = []
    end = len(view)
    while pos < end:
        if end - pos < 4:
            raise TruncatedImageError(f"{end - pos} stray bytes at offset {pos}: not an entry size", path)
        (size,) = _U32.unpack_from(view, pos)
        pos += 4
        if size > end - pos:
            raise TruncatedImageError(f"entry at offset {pos - 4} claims {size} bytes, only {end - pos} left", path)
        entries.append(view[pos : pos + size])
        pos += size
    return first, entries


def _decode(message: Message, payload: memoryview, path: str, index: int) -> Dict[str, Any]:
    try:
        return message.decode(payload)
    except WireError as e:
        raise CorruptImageError(f"entry {index} is not a valid {message.name}: {e}", path) from e


def read_entries(path: PathLike, image: str, message: Message) -> List[Dict[str, Any]]:
    """Generic reader: check that `path` is an `image` (a MAGICS name) and decode every entry as `message`."""
    p = os.fspath(path)
    if image not in MAGICS:
        raise ValueError(f"unknown image type {image!r}")
    _, payloads = _split_entries(_read_file(p), image, p)
    return [_decode(message, payload, p, i) for i, payload in enumerate(payloads)]


def _one(path: str, image: str, message: Message) -> Dict[str, Any]:
    entries = read_entries(path, image, message)
    if len(entries) != 1:
        raise CorruptImageError(f"{len(entries)} entries, expected exactly one {message.name}", path)
    return entries[0]


def _in_dir(path: PathLike, name: str) -> str:
    p = os.fspath(path)
    return os.path.join(p, name) if os.path.isdir(p) else p


# --- inventory ------------------------------------------------------------------------


def read_inventory(path: PathLike) -> Dict[str, Any]:
    """Decode inventory.img (give the file or the images dir) into an inventory_entry dict."""
    return _one(_in_dir(path, "inventory.img"), "INVENTORY", messages.INVENTORY_ENTRY)


# --- stats ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DumpStats:
    """dump_stats_entry (images/stats.proto). Times are microseconds; counts are pages."""

    freezing_time: int
    frozen_time: int
    memdump_time: int
    memwrite_time: int
    pages_scanned: int
    pages_skipped_parent: int
    pages_written: int
    pages_lazy: int
    irmap_resolve: int | None = None
    page_pipes: int | None = None
    page_pipe_bufs: int | None = None
    shpages_scanned: int | None = None
    shpages_skipped_parent: int | None = None
    shpages_written: int | None = None


@dataclasses.dataclass(frozen=True)
class RestoreStats:
    """restore_stats_entry (images/stats.proto). Times are microseconds; counts are pages."""

    pages_compared: int
    pages_skipped_cow: int
    forking_time: int
    restore_time: int
    pages_restored: int | None = None


def read_stats(path: PathLike) -> Dict[str, Any]:
    """Decode a stats-dump or stats-restore file into a stats_entry dict.

    The dict has "dump" (a dump_stats_entry) or "restore" (a restore_stats_entry).
    """
    return _one(os.fspath(path), "STATS", messages.STATS_ENTRY)


def read_dump_stats(path: PathLike) -> DumpStats:
    """Read stats-dump (give the file or CRIU's work dir, by default the images dir)."""
    p = _in_dir(path, "stats-dump")
    stats = read_stats(p)
    if "dump" not in stats:
        raise CorruptImageError("no dump statistics in this stats file", p)
    return DumpStats(**stats["dump"])


def read_restore_stats(path: PathLike) -> RestoreStats:
    """Read stats-restore (give the file or CRIU's work dir)."""
    p = _in_dir(path, "stats-restore")
    stats = read_stats(p)
    if "restore" not in stats:
        raise CorruptImageError("no restore statistics in this stats file", p)
    return RestoreStats(**stats["restore"])


# --- pagemap ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PagemapEntry:
    """One pagemap_entry, as CRIU uses it after its compat rules (nr_pages from field 5 or 2, flags)."""

    vaddr: int
    nr_pages: int
    in_parent: bool
    flags: int

    @property
    def present(self) -> bool:
        """The pages are in this dump's pages file."""
        return bool(self.flags & PE_PRESENT)

    @property
    def parent(self) -> bool:
        """The pages are in the parent (pre-)dump."""
        return bool(self.flags & PE_PARENT)

    @property
    def lazy(self) -> bool:
        return bool(self.flags & PE_LAZY)


@dataclasses.dataclass(frozen=True)
class Pagemap:
    """A decoded pagemap-*.img: the pages file id and the entries in file order."""

    pages_id: int
    entries: Tuple[PagemapEntry, ...]

    @property
    def pages_file(self) -> str:
        return f"pages-{self.pages_id}.img"


@dataclasses.dataclass(frozen=True)
class PagesExtent:
    """Where one pagemap entry's memory lies in its pages file."""

    vaddr: int
    offset: int
    length: int


def _compat_flags(raw: Dict[str, Any]) -> int:
    # criu/pagemap.c: init_compat_pagemap_entry()
    flags = raw.get("flags", 0)
    if raw.get("in_parent"):
        flags |= PE_PARENT
    elif "flags" not in raw:
        flags = PE_PRESENT
    return flags


def read_pagemap(path: PathLike) -> Pagemap:
    """Decode a pagemap-N.img (or pagemap-shmem-N.img)."""
    p = os.fspath(path)
    _, payloads = _split_entries(_read_file(p), "PAGEMAP", p)
    if not payloads:
        raise CorruptImageError("no pagemap_head", p)
    head = _decode(messages.PAGEMAP_HEAD, payloads[0], p, 0)
    entries = []
    for i, payload in enumerate(payloads[1:], start=1):
        raw = _decode(messages.PAGEMAP_ENTRY, payload, p, i)
        entries.append(
            PagemapEntry(
                vaddr=raw["vaddr"],
                nr_pages=raw.get("nr_pages", raw["compat_nr_pages"]),
                in_parent=bool(raw.get("in_parent", False)),
                flags=_compat_flags(raw),
            )
        )
    return Pagemap(pages_id=head["pages_id"], entries=tuple(entries))


def _page_size(page_size: int | None) -> int:
    if page_size is None:
        return os.sysconf("SC_PAGE_SIZE")
    if page_size <= 0 or page_size & (page_size - 1):
        raise ValueError(f"page size must be a power of two, got {page_size}")
    return page_size


def _layout(pagemap: Pagemap, page_size: int, path: str) -> List[PagesExtent]:
    extents = []
    offset = 0
    for i, e in enumerate(pagemap.entries, start=1):
        if e.parent and e.present:
            # CRIU never writes both; its reader would disagree with itself on the offset.
            raise CorruptImageError(f"entry {i} at 0x{e.vaddr:x} is both PE_PARENT and PE_PRESENT", path)
        if not e.present or e.nr_pages == 0:
            continue
        length = e.nr_pages * page_size
        extents.append(PagesExtent(vaddr=e.vaddr, offset=offset, length=length))
        offset += length
    return extents


def pages_layout(image_dir: PathLike, pagemap_file: str, page_size: int | None = None) -> List[PagesExtent]:
    """Map each pagemap entry with data to its (offset, length) in its pages-<pages_id>.img.

    Entries in the parent (PE_PARENT / in_parent), lazy-only entries and
    other entries without PE_PRESENT have no bytes in the pages file and
    are left out. The extents are contiguous and in file order; their total
    must equal the pages file's size, else `CorruptImageError`.

    `pagemap_file` is a name inside `image_dir` (or a path); `page_size`
    defaults to this host's (CRIU uses the dumping host's PAGE_SIZE).
    """
    _, extents = _pagemap_extents(os.fspath(image_dir), pagemap_file, _page_size(page_size))
    return extents


def _pagemap_extents(image_dir: str, pagemap_file: str, page_size: int) -> Tuple[str, List[PagesExtent]]:
    pm_path = os.path.join(image_dir, pagemap_file)
    pagemap = read_pagemap(pm_path)
    extents = _layout(pagemap, page_size, pm_path)
    pages_path = os.path.join(os.path.dirname(pm_path), pagemap.pages_file)
    total = extents[-1].offset + extents[-1].length if extents else 0
    try:
        size = os.stat(pages_path).st_size
    except FileNotFoundError:
        if total == 0:
            return pages_path, extents
        raise CorruptImageError(f"{total} bytes of pages expected in missing {pagemap.pages_file}", pm_path) from None
    if size != total:
        raise CorruptImageError(f"pagemap describes {total} bytes but {pagemap.pages_file} has {size}", pm_path)
    return pages_path, extents


_PAGEMAP_NAME = re.compile(r"^pagemap-(shmem-)?(\d+)\.img$")


def _pagemap_order(path: str) -> Tuple[bool, int]:
    m = _PAGEMAP_NAME.match(os.path.basename(path))
    assert m is not None
    return bool(m.group(1)), int(m.group(2))


def iter_pagemaps(image_dir: PathLike, page_size: int | None = None) -> Iterator[Tuple[str, str, List[PagesExtent]]]:
    """Yield (pagemap path, pages path, extents) for every pagemap-*.img in a dump dir.

    Covers process pagemaps (pagemap-<pid>.img, by pid) then shared-memory
    ones (pagemap-shmem-<id>.img). See `pages_layout` for the extents.
    """
    d = os.fspath(image_dir)
    size = _page_size(page_size)
    found = [
        p for p in glob.glob(os.path.join(glob.escape(d), "pagemap-*.img")) if _PAGEMAP_NAME.match(os.path.basename(p))
    ]
    for pm_path in sorted(found, key=_pagemap_order):
        pages_path, extents = _pagemap_extents(d, os.path.basename(pm_path), size)
        yield pm_path, pages_path, extents
