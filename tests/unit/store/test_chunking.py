"""Chunk planning properties (pure logic, hypothesis)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mmbatch.chunking import (
    PAGE_SIZE,
    Extent,
    Piece,
    extents_by_file,
    normalize_extents,
    plan_chunks,
    plan_extents,
    plan_fixed,
)

CHUNK_SIZES = st.sampled_from([PAGE_SIZE, 2 * PAGE_SIZE, 4 * PAGE_SIZE, 16 * PAGE_SIZE])


def assert_covers(pieces, file_size, chunk_size):
    pos = 0
    for p in pieces:
        assert p.offset == pos, "pieces must be contiguous and in order"
        assert 0 < p.length <= chunk_size
        pos = p.end
    assert pos == file_size


@st.composite
def pages_layout(draw, max_extents=8):
    """Extents laid out back to back in a pages file (as CRIU writes them), maybe with gaps and a tail."""
    chunk_size = draw(CHUNK_SIZES)
    n = draw(st.integers(0, max_extents))
    extents = []
    offset = 0
    vaddr = draw(st.integers(0, 1 << 20)) * PAGE_SIZE
    with_vaddr = draw(st.booleans())
    for _ in range(n):
        offset += draw(st.sampled_from([0, 0, 0, 1, 100, PAGE_SIZE]))  # usually no gap
        pages = draw(st.integers(1, 40))
        vaddr += draw(st.integers(0, 50)) * PAGE_SIZE
        extents.append(Extent(offset, pages * PAGE_SIZE, vaddr if with_vaddr else None))
        offset += pages * PAGE_SIZE
        vaddr += pages * PAGE_SIZE
    tail = draw(st.integers(0, 3 * PAGE_SIZE))
    return chunk_size, extents, offset + tail


@settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 10 * 1024 * 1024), chunk_size=CHUNK_SIZES)
def test_fixed_plan_covers_exactly(size, chunk_size):
    pieces = plan_fixed(size, chunk_size)
    assert_covers(pieces, size, chunk_size)
    assert all(p.length == chunk_size for p in pieces[:-1])
    assert plan_chunks(size, chunk_size) == pieces


@settings(max_examples=300, deadline=None)
@given(pages_layout())
def test_extent_plan_covers_exactly_and_is_page_aligned(layout):
    chunk_size, extents, size = layout
    pieces = plan_extents(size, extents, chunk_size)
    assert_covers(pieces, size, chunk_size)
    merged = normalize_extents(extents, size)
    # entries contiguous in the file and in memory are one run; all others stay apart
    assert sum(e.length for e in merged) == sum(e.length for e in extents)
    for a, b in zip(merged, merged[1:]):
        assert not (a.offset + a.length == b.offset and a.vaddr is not None and b.vaddr == a.vaddr + a.length)
    for ext in merged:
        inside = [p for p in pieces if ext.offset <= p.offset < ext.offset + ext.length]
        # no piece straddles a run's boundary, and pieces inside start on page boundaries
        assert inside[0].offset == ext.offset
        assert inside[-1].end == ext.offset + ext.length
        for p in inside:
            assert (p.offset - ext.offset) % PAGE_SIZE == 0
            assert p.length % PAGE_SIZE == 0
            if ext.vaddr is not None and p.offset != ext.offset:
                # cuts fall on chunk_size-aligned virtual addresses
                assert (ext.vaddr + p.offset - ext.offset) % chunk_size == 0


def _relative_pieces(pieces, ext):
    return [(p.offset - ext.offset, p.length) for p in pieces if ext.offset <= p.offset < ext.offset + ext.length]


@settings(max_examples=300, deadline=None)
@given(layout=pages_layout(), data=st.data())
def test_unchanged_extent_keeps_its_chunks_when_an_earlier_one_grows_or_shrinks(layout, data):
    chunk_size, extents, size = layout
    if len(extents) < 2:
        return
    # separate runs (adjacent ones merge: test_where_crius_entries_split_...)
    assume(len(normalize_extents(extents, size)) == len(extents))
    grown = data.draw(st.integers(0, len(extents) - 2))
    delta = data.draw(st.integers(-extents[grown].length // PAGE_SIZE + 1, 64)) * PAGE_SIZE
    new_extents = []
    for i, e in enumerate(extents):
        if i == grown:
            new_extents.append(Extent(e.offset, e.length + delta, e.vaddr))
        elif i > grown:
            new_extents.append(Extent(e.offset + delta, e.length, e.vaddr))
        else:
            new_extents.append(e)
    assume(len(normalize_extents(new_extents, size + delta)) == len(new_extents))
    before = plan_extents(size, extents, chunk_size)
    after = plan_extents(size + delta, new_extents, chunk_size)
    for old, new in zip(extents[grown + 1:], new_extents[grown + 1:]):
        assert _relative_pieces(before, old) == _relative_pieces(after, new)


@settings(max_examples=200, deadline=None)
@given(chunk_pages=st.sampled_from([4, 16]), start_page=st.integers(0, 1000), grow=st.integers(1, 40),
       pages=st.integers(1, 200))
def test_region_growing_at_its_start_keeps_aligned_chunks(chunk_pages, start_page, grow, pages):
    """With virtual addresses, a mapping that grows downwards (a stack) keeps its old chunks."""
    chunk_size = chunk_pages * PAGE_SIZE
    vaddr = (start_page + grow) * PAGE_SIZE
    before = plan_extents(pages * PAGE_SIZE, [Extent(0, pages * PAGE_SIZE, vaddr)], chunk_size)
    after = plan_extents((pages + grow) * PAGE_SIZE, [Extent(0, (pages + grow) * PAGE_SIZE, vaddr - grow * PAGE_SIZE)],
                         chunk_size)
    # map pieces to virtual addresses; every whole old piece after the first cut is still a piece
    old = {(vaddr + p.offset, p.length) for p in before[1:]}
    new = {(vaddr - grow * PAGE_SIZE + p.offset, p.length) for p in after}
    assert old <= new


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 200_000),
    chunk_size=CHUNK_SIZES,
    raw=st.lists(st.tuples(st.integers(0, 250_000), st.integers(0, 100_000)), max_size=10),
)
def test_inconsistent_extents_still_cover_the_file_once(size, chunk_size, raw):
    """Overlapping, unsorted, unaligned or out-of-range extents only cost dedup, never correctness."""
    pieces = plan_extents(size, raw, chunk_size)
    assert_covers(pieces, size, chunk_size)
    norm = normalize_extents(raw, size)
    for a, b in zip(norm, norm[1:]):
        assert a.offset + a.length <= b.offset
    assert all(e.offset + e.length <= size and e.length > 0 for e in norm)


def test_extent_like_objects_and_tuples():
    obj = SimpleNamespace(offset=0, length=3 * PAGE_SIZE, vaddr=0x7F0000000000)
    assert plan_extents(3 * PAGE_SIZE, [obj], PAGE_SIZE) == [Piece(i * PAGE_SIZE, PAGE_SIZE) for i in range(3)]
    no_vaddr = SimpleNamespace(offset=0, length=PAGE_SIZE)
    assert plan_extents(PAGE_SIZE, [no_vaddr], PAGE_SIZE) == [Piece(0, PAGE_SIZE)]
    assert plan_extents(PAGE_SIZE, [(0, PAGE_SIZE)], PAGE_SIZE) == [Piece(0, PAGE_SIZE)]
    assert plan_chunks(PAGE_SIZE, PAGE_SIZE, extents=[(0, PAGE_SIZE, 0)]) == [Piece(0, PAGE_SIZE)]


def test_example_plan():
    chunk = 4 * PAGE_SIZE
    # an extent of 6 pages at vaddr 2 pages (cut at vaddr 4 pages), a 100-byte gap, an extent of 9 pages
    extents = [Extent(0, 6 * PAGE_SIZE, 2 * PAGE_SIZE), Extent(6 * PAGE_SIZE + 100, 9 * PAGE_SIZE, None)]
    size = 15 * PAGE_SIZE + 100 + 10
    assert plan_extents(size, extents, chunk) == [
        Piece(0, 2 * PAGE_SIZE),
        Piece(2 * PAGE_SIZE, 4 * PAGE_SIZE),
        Piece(6 * PAGE_SIZE, 100),
        Piece(6 * PAGE_SIZE + 100, 4 * PAGE_SIZE),
        Piece(10 * PAGE_SIZE + 100, 4 * PAGE_SIZE),
        Piece(14 * PAGE_SIZE + 100, PAGE_SIZE),
        Piece(15 * PAGE_SIZE + 100, 10),
    ]


@pytest.mark.parametrize(
    "bad",
    [[(-1, 5)], [(0, -5)], [(0, 5, -1)], [("0", 5)], [(0,)], [object()], [(True, 5)]],
)
def test_invalid_extents(bad):
    with pytest.raises(ValueError):
        plan_extents(100, bad, PAGE_SIZE)


@pytest.mark.parametrize("size, chunk", [(-1, PAGE_SIZE), (10, 0), (10, 1000), (10, -PAGE_SIZE)])
def test_invalid_sizes(size, chunk):
    with pytest.raises(ValueError):
        plan_extents(size, [], chunk)


def test_extents_by_file():
    pagemaps = [
        ("/img/pagemap-1.img", "/img/pages-1.img", [Extent(0, PAGE_SIZE, 0)]),
        ("pagemap-2.img", "pages-2.img", [(0, PAGE_SIZE)]),
    ]
    got = extents_by_file("/img", pagemaps)
    assert set(got) == {"pages-1.img", "pages-2.img"}
    assert got.get("core-1.img") is None


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.lists(st.integers(1, 300), min_size=1, max_size=8), st.integers(0, 40))
def test_where_crius_entries_split_a_mapping_does_not_move_the_cuts(chunk_pages, region_pages, shift):
    """CRIU splits one mapping into pagemap entries where its page pipes fill up, which
    depends on how much was dumped before: two dumps of the same unchanged mapping may
    split it differently. The chunks must not depend on those splits."""
    page = 4096
    total = sum(region_pages)
    vaddr = 0x7F0000000000 + 17 * page
    whole = [(0, total * page, vaddr)]
    split, off = [], 0
    for n in region_pages:  # the same memory, cut into entries at other places
        split.append((off * page, n * page, vaddr + off * page))
        off += n
    prefix = shift * page  # and preceded by a different amount of other memory
    moved = [(o + prefix, ln, v) for o, ln, v in split]
    a = plan_extents(total * page, whole, chunk_pages * page)
    b = plan_extents(total * page + prefix, [(0, prefix, 0x1000)] + moved, chunk_pages * page)
    as_offsets = [(p.offset, p.length) for p in a]
    b_in_region = [(p.offset - prefix, p.length) for p in b if p.offset >= prefix]
    assert b_in_region == as_offsets
