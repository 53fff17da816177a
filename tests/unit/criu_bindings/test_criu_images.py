"""Image readers: real CRIU 4.1.1 files checked against crit, synthetic files for the edge cases."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from criu_bindings import messages
from criu_bindings.errors import BadMagicError, CorruptImageError, ImageError, TruncatedImageError
from criu_bindings.images import (
    IMG_COMMON_MAGIC,
    IMG_SERVICE_MAGIC,
    MAGICS,
    PE_LAZY,
    PE_PARENT,
    PE_PRESENT,
    PagesExtent,
    iter_pagemaps,
    pages_layout,
    read_dump_stats,
    read_inventory,
    read_pagemap,
    read_restore_stats,
    read_stats,
)
from criu_bindings.wire import Message

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
REAL_DIRS = {v: os.path.join(FIXTURES, f"criu-{v}-dump") for v in ("4.1.1", "4.2.1")}
CRIT_OF: Dict[str, Dict[str, Any]] = {}
for _v, _d in REAL_DIRS.items():
    with open(os.path.join(_d, "crit.json")) as _f:
        CRIT_OF[_v] = json.load(_f)
REAL = REAL_DIRS["4.1.1"]
PAGE = 4096


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def image_bytes(head: Sequence[int], entries: Sequence[bytes]) -> bytes:
    return b"".join(u32(m) for m in head) + b"".join(u32(len(e)) + e for e in entries)


def as_stored(entry: Dict[str, Any], fmt: str) -> Dict[str, Any]:
    """An entry written with "nr_pages" = count, stored as CRIU `fmt` ("4.1" or "4.2") stores it."""
    e = dict(entry)
    count = e.pop("nr_pages")
    if fmt == "4.1":
        return {**e, "compat_nr_pages": count}
    return {**e, "compat_nr_pages": 0, "nr_pages": count}


def write_pagemap(
    d: Path, name: str, pages_id: int, entries: List[Dict[str, Any]], pages_size: int = -1, fmt: str = "4.2"
) -> None:
    payloads = [messages.PAGEMAP_HEAD.encode({"pages_id": pages_id})]
    payloads += [messages.PAGEMAP_ENTRY.encode(as_stored(e, e.pop("fmt", fmt))) for e in map(dict, entries)]
    (d / name).write_bytes(image_bytes([IMG_COMMON_MAGIC, MAGICS["PAGEMAP"]], payloads))
    if pages_size >= 0:
        with open(d / f"pages-{pages_id}.img", "wb") as f:
            f.truncate(pages_size)


def raw_pagemap_entries(path: str) -> List[Dict[str, Any]]:
    """The pagemap_entry dicts as stored (no compat rules), for comparing with crit."""
    data = Path(path).read_bytes()
    pos, out = 8, []
    while pos < len(data):
        (size,) = struct.unpack_from("=I", data, pos)
        out.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return [messages.PAGEMAP_ENTRY.decode(e) for e in out[1:]]


def _crit_view(msg: Message, value: Dict[str, Any]) -> Dict[str, Any]:
    """Our decoding as crit prints it (enums by name), limited to crit's 3.17 fields."""
    out: Dict[str, Any] = {}
    for k, v in value.items():
        f = msg.by_name[k]
        if f.type == "enum":
            assert f.enum is not None
            v = f.enum.name_of(v)
        elif f.type == "message":
            assert f.message is not None
            v = _crit_view(f.message, v)
        out[k] = v
    return out


# --- real files ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(REAL_DIRS))
def test_real_inventory_matches_crit(version: str) -> None:
    d = REAL_DIRS[version]
    ours = read_inventory(d)  # the dir form
    assert read_inventory(os.path.join(d, "inventory.img")) == ours
    theirs = CRIT_OF[version]["crit"]["inventory.img"]["entries"][0]
    view = _crit_view(messages.INVENTORY_ENTRY, ours)
    # crit 3.17 predates plugins_entry (12), dump_criu_run_id (13), allow_uprobes (14): it drops them
    assert {k: v for k, v in view.items() if k in theirs} == theirs
    assert set(view) - set(theirs) <= {"plugins_entry", "dump_criu_run_id", "allow_uprobes"}
    assert ours["img_version"] == 2  # CRTOOLS_IMAGES_V1_1: the other images have a head magic


@pytest.mark.parametrize("version", sorted(REAL_DIRS))
def test_real_stats_match_crit(version: str) -> None:
    d, crit = REAL_DIRS[version], CRIT_OF[version]["crit"]
    dump = read_dump_stats(d)
    assert read_stats(os.path.join(d, "stats-dump")) == crit["stats-dump"]["entries"][0]
    assert dump.__dict__ == crit["stats-dump"]["entries"][0]["dump"]
    restore = read_restore_stats(d)
    assert restore.__dict__ == crit["stats-restore"]["entries"][0]["restore"]
    assert dump.pages_written == restore.pages_restored


REAL_PAGEMAPS = [(v, n) for v in sorted(REAL_DIRS) for n in sorted(CRIT_OF[v]["pages_sizes"])]


@pytest.mark.parametrize("version, name", REAL_PAGEMAPS)
def test_real_pagemaps_match_crit(version: str, name: str, tmp_path: Path) -> None:
    path = os.path.join(REAL_DIRS[version], name)
    pm = read_pagemap(path)
    theirs = CRIT_OF[version]["crit"][name]["entries"]
    assert theirs[0] == {"pages_id": pm.pages_id}
    assert len(theirs) - 1 == len(pm.entries)
    raw = raw_pagemap_entries(path)
    for e, r, t in zip(pm.entries, raw, theirs[1:]):
        assert (e.vaddr, e.flags, e.in_parent) == (t["vaddr"], t["flags"], t.get("in_parent", False))
        # crit's nr_pages is field 2; CRIU >= 4.2 writes the count in field 5 and 0 in field 2
        assert r["compat_nr_pages"] == t["nr_pages"]
        if version == "4.1.1":
            assert "nr_pages" not in r and e.nr_pages == t["nr_pages"]
        else:
            assert t["nr_pages"] == 0 and e.nr_pages == r["nr_pages"] > 0
    # pages_layout against the real pages file size (kept as a sparse file of the same size)
    shutil.copy(path, tmp_path / name)
    size = CRIT_OF[version]["pages_sizes"][name]
    with open(tmp_path / pm.pages_file, "wb") as f:
        f.truncate(size)
    extents = pages_layout(tmp_path, name, page_size=PAGE)
    assert sum(x.length for x in extents) == size
    assert sum(e.nr_pages for e in pm.entries if e.flags & PE_PRESENT) * PAGE == size


@pytest.mark.parametrize("version", sorted(REAL_DIRS))
def test_real_pages_written_equals_pagemap_pages(version: str) -> None:
    # stats-dump.pages_written counts every present page of every process pagemap of that dump
    dump = read_dump_stats(REAL_DIRS[version])
    sizes = CRIT_OF[version]["pages_sizes"]
    assert sum(v for n, v in sizes.items() if not n.startswith("pagemap-shmem")) // PAGE == dump.pages_written


# --- magic checks --------------------------------------------------------------------------------


def test_magics_match_criu_magic_h() -> None:
    # values from criu/include/magic.h (v4.1.1), spot-checked
    assert IMG_COMMON_MAGIC == 0x54564319
    assert IMG_SERVICE_MAGIC == 0x55105940
    assert MAGICS["INVENTORY"] == 0x58313116
    assert MAGICS["PAGEMAP"] == 0x56084025
    assert MAGICS["STATS"] == 0x57093306
    assert len(set(MAGICS.values())) == len(MAGICS)


def test_real_files_carry_the_expected_heads() -> None:
    with open(os.path.join(REAL, "inventory.img"), "rb") as f:
        assert struct.unpack("=I", f.read(4))[0] == MAGICS["INVENTORY"]  # no head magic
    with open(os.path.join(REAL, "stats-dump"), "rb") as f:
        assert struct.unpack("=II", f.read(8)) == (IMG_SERVICE_MAGIC, MAGICS["STATS"])
    with open(os.path.join(REAL, "pagemap-7455.img"), "rb") as f:
        assert struct.unpack("=II", f.read(8)) == (IMG_COMMON_MAGIC, MAGICS["PAGEMAP"])


def test_wrong_magic(tmp_path: Path) -> None:
    p = tmp_path / "x.img"
    p.write_bytes(image_bytes([IMG_COMMON_MAGIC, MAGICS["CORE"]], []))
    with pytest.raises(BadMagicError, match="CORE"):
        read_pagemap(p)
    # pagemap magic behind the service head (stats' head) is wrong too
    p.write_bytes(image_bytes([IMG_SERVICE_MAGIC, MAGICS["PAGEMAP"]], [b"\x08\x01"]))
    with pytest.raises(BadMagicError):
        read_pagemap(p)
    # and stats behind the common head
    p.write_bytes(image_bytes([IMG_COMMON_MAGIC, MAGICS["STATS"]], [b""]))
    with pytest.raises(BadMagicError):
        read_stats(p)
    # an inventory never has a head magic
    p.write_bytes(image_bytes([IMG_COMMON_MAGIC, MAGICS["INVENTORY"]], [b"\x08\x02"]))
    with pytest.raises(BadMagicError):
        read_inventory(p)
    p.write_bytes(b"\0\0\0\0garbage")
    with pytest.raises(BadMagicError):
        read_stats(p)


def test_v1_images_without_head_magic_are_read(tmp_path: Path) -> None:
    p = tmp_path / "pagemap-1.img"
    p.write_bytes(image_bytes([MAGICS["PAGEMAP"]], [messages.PAGEMAP_HEAD.encode({"pages_id": 3})]))
    assert read_pagemap(p).pages_id == 3


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", TruncatedImageError),
        (b"\x40\x59", TruncatedImageError),
        (u32(IMG_SERVICE_MAGIC), TruncatedImageError),
        (u32(IMG_SERVICE_MAGIC) + u32(MAGICS["STATS"]) + b"\x05\x00", TruncatedImageError),
        (u32(IMG_SERVICE_MAGIC) + u32(MAGICS["STATS"]) + u32(100) + b"\x0a", TruncatedImageError),
        (u32(IMG_SERVICE_MAGIC) + u32(MAGICS["STATS"]) + u32(0xFFFFFFFF) + b"\x0a", TruncatedImageError),
        (u32(IMG_SERVICE_MAGIC) + u32(MAGICS["STATS"]) + u32(2) + b"\x0a\x05", CorruptImageError),
        (u32(IMG_SERVICE_MAGIC) + u32(MAGICS["STATS"]) + u32(2) + b"\x0b\x00", CorruptImageError),
        # two stats entries
        (u32(IMG_SERVICE_MAGIC) + u32(MAGICS["STATS"]) + u32(0) + u32(0), CorruptImageError),
        # no entry at all
        (u32(IMG_SERVICE_MAGIC) + u32(MAGICS["STATS"]), CorruptImageError),
    ],
)
def test_malformed_stats(tmp_path: Path, data: bytes, error: type) -> None:
    p = tmp_path / "stats-dump"
    p.write_bytes(data)
    with pytest.raises(error):
        read_dump_stats(p)


def test_stats_of_the_wrong_kind(tmp_path: Path) -> None:
    p = tmp_path / "stats-restore"
    payload = messages.STATS_ENTRY.encode(
        {"restore": {"pages_compared": 0, "pages_skipped_cow": 0, "forking_time": 1, "restore_time": 2}}
    )
    p.write_bytes(image_bytes([IMG_SERVICE_MAGIC, MAGICS["STATS"]], [payload]))
    assert read_restore_stats(tmp_path).restore_time == 2
    with pytest.raises(CorruptImageError, match="no dump statistics"):
        read_dump_stats(p)


def test_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        read_inventory(tmp_path)
    with pytest.raises(ImageError):
        read_pagemap(tmp_path / "pagemap-1.img")


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=120), reader=st.sampled_from([read_pagemap, read_stats, read_inventory]))
def test_arbitrary_files_give_image_errors(tmp_path: Path, data: bytes, reader: Any) -> None:
    p = tmp_path / "fuzz.img"
    for head in (b"", u32(IMG_COMMON_MAGIC) + u32(MAGICS["PAGEMAP"]), u32(IMG_SERVICE_MAGIC) + u32(MAGICS["STATS"])):
        p.write_bytes(head + data)
        try:
            reader(p)
        except ImageError:
            pass


# --- pagemap rules and pages layout --------------------------------------------------------------


def test_compat_flags_for_old_images(tmp_path: Path) -> None:
    # criu/pagemap.c init_compat_pagemap_entry(): no flags -> PE_PRESENT; in_parent -> PE_PARENT
    write_pagemap(
        fmt="4.1",
        d=tmp_path,
        name="pagemap-1.img",
        pages_id=1,
        pages_size=(2 + 3 + 4) * PAGE,
        entries=[
            {"vaddr": 0x1000, "nr_pages": 2},
            {"vaddr": 0x3000, "nr_pages": 1, "in_parent": True},
            {"vaddr": 0x4000, "nr_pages": 3, "in_parent": False},
            {"vaddr": 0x8000, "nr_pages": 1, "flags": PE_LAZY},
            {"vaddr": 0x9000, "nr_pages": 4, "flags": PE_LAZY | PE_PRESENT},
            {"vaddr": 0xF000, "nr_pages": 1, "flags": PE_PARENT},
        ],
    )
    pm = read_pagemap(tmp_path / "pagemap-1.img")
    flags = [PE_PRESENT, PE_PARENT, PE_PRESENT, PE_LAZY, PE_LAZY | PE_PRESENT, PE_PARENT]
    assert [e.flags for e in pm.entries] == flags
    assert [e.present for e in pm.entries] == [True, False, True, False, True, False]
    assert [e.parent for e in pm.entries] == [False, True, False, False, False, True]
    assert pages_layout(tmp_path, "pagemap-1.img", page_size=PAGE) == [
        PagesExtent(vaddr=0x1000, offset=0, length=2 * PAGE),
        PagesExtent(vaddr=0x4000, offset=2 * PAGE, length=3 * PAGE),
        PagesExtent(vaddr=0x9000, offset=5 * PAGE, length=4 * PAGE),
    ]


def test_page_count_field_5_wins_over_field_2(tmp_path: Path) -> None:
    # CRIU >= 4.2: compat_nr_pages (2) is 0 and nr_pages (5) is a uint64; v4.2 reads 5 when present
    big = 2**33
    payloads = [
        messages.PAGEMAP_HEAD.encode({"pages_id": 1}),
        messages.PAGEMAP_ENTRY.encode({"vaddr": 0, "compat_nr_pages": 0, "flags": PE_PRESENT, "nr_pages": 3}),
        messages.PAGEMAP_ENTRY.encode({"vaddr": 0x10000, "compat_nr_pages": 7, "flags": PE_PRESENT}),
        messages.PAGEMAP_ENTRY.encode({"vaddr": 0x100000, "compat_nr_pages": 9, "flags": PE_PARENT, "nr_pages": big}),
    ]
    (tmp_path / "pagemap-1.img").write_bytes(image_bytes([IMG_COMMON_MAGIC, MAGICS["PAGEMAP"]], payloads))
    assert [e.nr_pages for e in read_pagemap(tmp_path / "pagemap-1.img").entries] == [3, 7, big]
    with open(tmp_path / "pages-1.img", "wb") as f:
        f.truncate(10 * PAGE)
    assert pages_layout(tmp_path, "pagemap-1.img", page_size=PAGE) == [
        PagesExtent(0, 0, 3 * PAGE),
        PagesExtent(0x10000, 3 * PAGE, 7 * PAGE),
    ]


def test_in_parent_with_explicit_flags(tmp_path: Path) -> None:
    # in_parent wins over a flags field without PE_PRESENT...
    write_pagemap(
        tmp_path, "pagemap-1.img", 1, [{"vaddr": 0, "nr_pages": 1, "in_parent": True, "flags": 0}], 0, fmt="4.1"
    )
    assert pages_layout(tmp_path, "pagemap-1.img") == []
    # ...and PE_PARENT together with PE_PRESENT is a contradiction CRIU never writes
    write_pagemap(
        tmp_path, "pagemap-2.img", 2, [{"vaddr": 0, "nr_pages": 1, "in_parent": True, "flags": PE_PRESENT}], fmt="4.1"
    )
    with pytest.raises(CorruptImageError, match="both"):
        pages_layout(tmp_path, "pagemap-2.img")


def test_pages_file_size_must_match(tmp_path: Path) -> None:
    write_pagemap(tmp_path, "pagemap-1.img", 1, [{"vaddr": 0, "nr_pages": 2, "flags": PE_PRESENT}], PAGE)
    with pytest.raises(CorruptImageError, match="8192 bytes but pages-1.img has 4096"):
        pages_layout(tmp_path, "pagemap-1.img", page_size=PAGE)
    write_pagemap(tmp_path, "pagemap-3.img", 3, [{"vaddr": 0, "nr_pages": 2, "flags": PE_PRESENT}])
    with pytest.raises(CorruptImageError, match="missing pages-3.img"):
        pages_layout(tmp_path, "pagemap-3.img")
    # nothing present and no pages file: fine
    write_pagemap(tmp_path, "pagemap-4.img", 4, [{"vaddr": 0, "nr_pages": 2, "flags": PE_PARENT}])
    assert pages_layout(tmp_path, "pagemap-4.img") == []


def test_pagemap_without_head_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "pagemap-1.img").write_bytes(image_bytes([IMG_COMMON_MAGIC, MAGICS["PAGEMAP"]], []))
    with pytest.raises(CorruptImageError):
        read_pagemap(tmp_path / "pagemap-1.img")


def test_page_size_validation(tmp_path: Path) -> None:
    write_pagemap(tmp_path, "pagemap-1.img", 1, [], 0)
    with pytest.raises(ValueError):
        pages_layout(tmp_path, "pagemap-1.img", page_size=3000)


def test_iter_pagemaps_covers_processes_then_shmem(tmp_path: Path) -> None:
    write_pagemap(tmp_path, "pagemap-10.img", 1, [{"vaddr": 0, "nr_pages": 1, "flags": PE_PRESENT}], PAGE)
    write_pagemap(tmp_path, "pagemap-9.img", 2, [{"vaddr": 0, "nr_pages": 2, "flags": PE_PRESENT}], 2 * PAGE)
    write_pagemap(tmp_path, "pagemap-shmem-77.img", 3, [{"vaddr": 0, "nr_pages": 3, "flags": PE_PRESENT}], 3 * PAGE)
    (tmp_path / "pagemap-notes.img").write_bytes(b"ignored: not a pagemap name")
    found = list(iter_pagemaps(tmp_path, page_size=PAGE))
    assert [os.path.basename(p) for p, _, _ in found] == ["pagemap-9.img", "pagemap-10.img", "pagemap-shmem-77.img"]
    assert [os.path.basename(p) for _, p, _ in found] == ["pages-2.img", "pages-1.img", "pages-3.img"]
    assert [sum(x.length for x in e) for _, _, e in found] == [2 * PAGE, PAGE, 3 * PAGE]


_entry = st.fixed_dictionaries(
    {"nr_pages": st.integers(0, 64), "fmt": st.sampled_from(["4.1", "4.2"])},
    optional={"flags": st.integers(0, 7).filter(lambda f: f != PE_PARENT | PE_PRESENT), "in_parent": st.just(False)},
)


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_entry, max_size=40), st.sampled_from([4096, 16384, 65536]))
def test_layout_is_contiguous_and_sums_to_the_pages_file(tmp_path: Path, raw: List[Dict[str, Any]], page: int) -> None:
    entries = []
    vaddr = 0x400000
    for e in raw:
        if e.get("flags", PE_PRESENT) & PE_PARENT and e.get("flags", PE_PRESENT) & PE_PRESENT:
            e = {**e, "flags": PE_PARENT}
        entries.append({"vaddr": vaddr, **e})
        vaddr += (e["nr_pages"] + 1) * page
    # entries without flags are only in pre-4.2 images; there they mean PE_PRESENT
    present = [e for e in entries if e.get("flags", PE_PRESENT) & PE_PRESENT and e["nr_pages"]]
    total = sum(e["nr_pages"] for e in present) * page
    write_pagemap(tmp_path, "pagemap-1.img", 1, entries, total)
    extents = pages_layout(tmp_path, "pagemap-1.img", page_size=page)
    assert [x.vaddr for x in extents] == [e["vaddr"] for e in present]
    offset = 0
    for x, e in zip(extents, present):
        assert x.offset == offset and x.length == e["nr_pages"] * page
        offset += x.length
    assert offset == total
