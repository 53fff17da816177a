"""Chunk planning: where a checkpoint file is cut into content-addressed pieces.

Pure logic, no I/O. A plan is a list of `Piece(offset, length)` that covers
the file exactly once, in order; each piece is at most `chunk_size` bytes.

CRIU pages images (`pages-N.img`) hold the dumped memory as consecutive
runs, one per pagemap entry ("extent": offset and length in the pages file,
and the virtual address it maps to). A fixed grid over the file would move
every later cut when an earlier region grows by one page, so nothing after
it would dedup. Instead each extent is cut on its own: at the pages whose
virtual address is a multiple of `chunk_size` (or, without an address, every
`chunk_size` from the extent's start), so the cuts are page-aligned within
the extent and unchanged memory gives identical chunks from one checkpoint
to the next even when earlier regions grow or shrink, or when the region
itself grows at its start. Bytes not covered by any extent (gaps, a tail)
are cut on a fixed grid from the start of each gap.

Other files are cut on a fixed grid of `chunk_size`.

Extents come from `criu_bindings.images.iter_pagemaps(image_dir)`, which
yields `(pagemap_path, pages_path, extents)`; this module accepts any
object with `.offset` and `.length` (and optionally `.vaddr`), or plain
`(offset, length[, vaddr])` tuples, and does not import criu_bindings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

PAGE_SIZE = 4096
# A quarter of a typical scattered write (1 MiB): a rewritten block costs at
# most 1.25x its size (docs/stores.md, "Sizes and parallelism").
DEFAULT_CHUNK_SIZE = 256 * 1024


class Extent(NamedTuple):
    """A run of a pages image: `length` bytes at `offset`, mapping memory at `vaddr`."""

    offset: int
    length: int
    vaddr: Optional[int] = None


@dataclass(frozen=True)
class Piece:
    """One chunk of a file: `length` bytes at `offset`."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def as_extent(obj: Any) -> Extent:
    """An Extent from an extent-like object or a tuple; ValueError when it is not one."""
    if isinstance(obj, Extent):
        ext = obj
    elif isinstance(obj, (tuple, list)):
        if len(obj) not in (2, 3):
            raise ValueError(f"an extent is (offset, length[, vaddr]), got {obj!r}")
        ext = Extent(*obj)
    else:
        try:
            ext = Extent(obj.offset, obj.length, getattr(obj, "vaddr", None))
        except AttributeError:
            raise ValueError(f"not an extent (needs .offset and .length): {obj!r}") from None
    for name in ("offset", "length"):
        value = getattr(ext, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"extent {name} must be a non-negative integer, got {value!r}")
    vaddr = ext.vaddr
    if vaddr is not None and (isinstance(vaddr, bool) or not isinstance(vaddr, int) or vaddr < 0):
        raise ValueError(f"extent vaddr must be a non-negative integer or None, got {ext.vaddr!r}")
    return ext


def normalize_extents(extents: Iterable[Any], file_size: int) -> List[Extent]:
    """Sorted, non-overlapping, non-empty extents clipped to the file; runs
    contiguous both in the file and in memory are merged into one.

    Chunking only affects dedup, never correctness, so inconsistent input
    (overlaps, runs past the end) is trimmed rather than rejected.
    """
    out: List[Extent] = []
    covered = 0
    for ext in sorted((as_extent(e) for e in extents), key=lambda e: (e.offset, e.length)):
        start, end = max(ext.offset, covered), min(ext.offset + ext.length, file_size)
        if end <= start:
            continue
        vaddr = None if ext.vaddr is None else ext.vaddr + (start - ext.offset)
        prev = out[-1] if out else None
        if (prev is not None and prev.offset + prev.length == start and prev.vaddr is not None
                and vaddr is not None and prev.vaddr + prev.length == vaddr):
            # CRIU cuts one mapping into several pagemap entries where its
            # page pipes filled up, which depends on everything dumped
            # before: the cuts move between checkpoints, the memory does not.
            out[-1] = Extent(prev.offset, prev.length + (end - start), prev.vaddr)
        else:
            out.append(Extent(start, end - start, vaddr))
        covered = end
    return out


def _check_sizes(file_size: int, chunk_size: int, page_size: int) -> None:
    if isinstance(file_size, bool) or not isinstance(file_size, int) or file_size < 0:
        raise ValueError(f"file size must be a non-negative integer, got {file_size!r}")
    if page_size <= 0:
        raise ValueError(f"page size must be positive, got {page_size!r}")
    if chunk_size <= 0 or chunk_size % page_size:
        raise ValueError(f"chunk size must be a positive multiple of {page_size}, got {chunk_size!r}")


def _fixed(start: int, end: int, chunk_size: int) -> List[Piece]:
    return [Piece(off, min(chunk_size, end - off)) for off in range(start, end, chunk_size)]


def _cut_extent(ext: Extent, chunk_size: int, page_size: int) -> List[Piece]:
    first = chunk_size
    if ext.vaddr is not None and ext.vaddr % page_size == 0:
        first = (-ext.vaddr) % chunk_size or chunk_size
    pieces = [Piece(ext.offset, min(first, ext.length))]
    pieces.extend(_fixed(ext.offset + first, ext.offset + ext.length, chunk_size))
    return pieces


def plan_fixed(file_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> List[Piece]:
    """A fixed grid of `chunk_size` pieces (the last one shorter)."""
    _check_sizes(file_size, chunk_size, 1)
    return _fixed(0, file_size, chunk_size)


def plan_extents(
    file_size: int,
    extents: Iterable[Any],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    page_size: int = PAGE_SIZE,
) -> List[Piece]:
    """Pieces of a pages image cut along its extents (see the module docstring)."""
    _check_sizes(file_size, chunk_size, page_size)
    pieces: List[Piece] = []
    pos = 0
    for ext in normalize_extents(extents, file_size):
        pieces.extend(_fixed(pos, ext.offset, chunk_size))
        pieces.extend(_cut_extent(ext, chunk_size, page_size))
        pos = ext.offset + ext.length
    pieces.extend(_fixed(pos, file_size, chunk_size))
    return pieces


def plan_chunks(
    file_size: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    extents: Optional[Iterable[Any]] = None,
) -> List[Piece]:
    """Along `extents` when given (pages images), else a fixed grid."""
    if extents is None:
        return plan_fixed(file_size, chunk_size)
    return plan_extents(file_size, extents, chunk_size)


def extents_by_file(
    image_dir: str, pagemaps: Iterable[Tuple[str, str, Sequence[Any]]]
) -> Dict[str, List[Any]]:
    """Map each pages image, as a path relative to `image_dir`, to its extents.

    `pagemaps` is what `criu_bindings.images.iter_pagemaps(image_dir)` yields;
    the result suits `CheckpointRepository.commit(extents_for=result.get)`.
    """
    out: Dict[str, List[Any]] = {}
    for _pagemap_path, pages_path, extents in pagemaps:
        rel = pages_path
        if os.path.isabs(pages_path):
            rel = os.path.relpath(pages_path, image_dir)
        rel = os.path.normpath(rel).replace(os.sep, "/")
        out.setdefault(rel, []).extend(extents)
    return out
