"""CheckpointRepository on every store backend: commit, fetch, dedup, prune, records."""

from __future__ import annotations

import json
import logging
import os
import stat
import time

import pytest

from mmbatch.checkpoints import CheckpointRepository
from mmbatch.chunking import PAGE_SIZE, Extent
from mmbatch.errors import CorruptObject, JobIdentityError, ManifestError, ObjectNotFound, StoreError
from mmbatch.manifest import Manifest, new_checkpoint_id

MiB = 1024 * 1024
JOB = "job-1"


def template(**kw) -> Manifest:
    m = Manifest(container_id="c" * 64, attempt="1", node={"hostname": "node-a"}, stats={"freeze_seconds": 0.5})
    for k, v in kw.items():
        setattr(m, k, v)
    return m


def make_tree(root, files):
    """files: {relpath: bytes or (bytes, mode)}"""
    for rel, spec in files.items():
        data, mode = spec if isinstance(spec, tuple) else (spec, 0o600)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)
    return root


def read_tree(root):
    out = {}
    for dirpath, _dirs, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = (open(p, "rb").read(), stat.S_IMODE(os.stat(p).st_mode))
    return out


def job_keys(store, sub=""):
    return set(store.list(f"jobs/{JOB}/{sub}" if sub else f"jobs/{JOB}"))


def referenced_objects(repo):
    refs = set()
    for m in repo.list():
        refs |= {f"jobs/{JOB}/{o}" for o in m.chunk_objects()}
    return refs


# -- commit and fetch -------------------------------------------------------------


def test_commit_fetch_round_trip(small_repo, tmp_path):
    src = make_tree(tmp_path / "src", {
        "pages-1.img": os.urandom(300 * 1024 + 123),
        "core-1.img": (os.urandom(500), 0o644),
        "sub/dir/inventory.img": (b"inv", 0o400),
        "empty.img": b"",
        "exec.sh": (b"#!/bin/sh\n", 0o755),
    })
    progress = []
    m = small_repo.commit(str(src), template(), progress=lambda d, t: progress.append((d, t)))
    assert m.job_key == JOB and m.checkpoint_id and m.created_at > 0
    assert {f.path for f in m.files} == {"pages-1.img", "core-1.img", "sub/dir/inventory.img", "empty.img", "exec.sh"}
    assert m.stats["freeze_seconds"] == 0.5  # the template's numbers are kept
    assert m.stats["bytes_total"] == m.total_size == sum(len(v[0]) for v in read_tree(src).values())
    assert m.stats["bytes_uploaded"] == m.stats["bytes_total"]
    assert m.stats["chunks_uploaded"] == m.stats["chunks_total"] > 0
    assert m.stats["upload_seconds"] >= 0
    assert progress[-1] == (m.total_size, m.total_size)
    assert small_repo.latest() == m
    assert small_repo.get(m.checkpoint_id) == m

    dest = tmp_path / "dest"
    fetched = []
    small_repo.fetch(m, str(dest), progress=lambda d, t: fetched.append((d, t)))
    got = read_tree(dest)
    want = read_tree(src)
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}
    assert got["core-1.img"][1] == 0o600  # 0644 -> owner bits only, at most 0600
    assert got["sub/dir/inventory.img"][1] == 0o400
    assert got["exec.sh"][1] == 0o600
    assert stat.S_IMODE(os.stat(dest / "sub").st_mode) == 0o700
    assert fetched[-1] == (m.total_size, m.total_size)
    assert {f.path: f.mode for f in m.files}["exec.sh"] == 0o755  # the manifest keeps the real mode


def test_big_chunks_alone_small_chunks_packed(store, tmp_path):
    # chunks of half a pack or more are objects of their own
    repo = CheckpointRepository(store, JOB, chunk_size=128 * 1024, pack_size=256 * 1024, parallel=4)
    files = {f"s{i}": os.urandom(1000) for i in range(50)}
    src = make_tree(tmp_path / "src", {"big": os.urandom(5 * 128 * 1024), **files})
    m = repo.commit(str(src), template())
    objs = m.chunk_objects()
    assert sum(o.startswith("chunks/") for o in objs) == 5
    packs = [o for o in objs if o.startswith("packs/")]
    assert len(packs) == 1  # 50 small files in one pack, not 50 objects
    assert m.stats["objects_uploaded"] == 6
    for o in objs:
        assert store.exists(f"jobs/{JOB}/{o}")


def test_packs_are_bounded_by_pack_size(store, tmp_path):
    repo = CheckpointRepository(store, JOB, chunk_size=64 * 1024, pack_size=64 * 1024, parallel=2)
    src = make_tree(tmp_path / "src", {f"s{i}": os.urandom(20_000) for i in range(20)})
    m = repo.commit(str(src), template())
    packs = sorted(o for o in m.chunk_objects() if o.startswith("packs/"))
    assert len(packs) == 7  # 3 x 20 KB per 64 KiB pack
    for p in packs:
        assert store.stat(f"jobs/{JOB}/{p}").size <= 64 * 1024
    dest = tmp_path / "d"
    repo.fetch(m, str(dest))
    assert read_tree(dest) == read_tree(src)


def test_memory_is_bounded_and_uploads_parallel(store, wrappers, tmp_path):
    counting = wrappers["counting"](store)
    repo = CheckpointRepository(counting, JOB, chunk_size=64 * 1024, pack_size=128 * 1024, parallel=3)
    src = make_tree(tmp_path / "src", {"big": os.urandom(40 * 64 * 1024), "small": os.urandom(70_000)})
    repo.commit(str(src), template())
    assert counting.peak_in_flight <= 3 * 128 * 1024
    assert counting.peak_in_flight > 64 * 1024  # more than one put at a time


def test_fetch_coalesces_reads_from_a_pack(store, wrappers, tmp_path):
    counting = wrappers["counting"](store)
    repo = CheckpointRepository(counting, JOB, chunk_size=64 * 1024, pack_size=1 * MiB, parallel=2)
    data = os.urandom(64 * 1024 * 4)
    src = make_tree(tmp_path / "src", {"pages-1.img": data})
    # extents of 3 pages: every chunk is small, so all land in one pack, back to back
    extents = [Extent(i * 3 * PAGE_SIZE, 3 * PAGE_SIZE) for i in range(len(data) // (3 * PAGE_SIZE))]
    m = repo.commit(str(src), template(), extents_for=lambda rel: extents if rel == "pages-1.img" else None)
    assert len(m.files[0].chunks) > 20
    assert {c.object for c in m.files[0].chunks} == {f"packs/{m.checkpoint_id}-000001"}
    repo.fetch(m, str(tmp_path / "d"))
    assert counting.range_reads == 1
    assert (tmp_path / "d" / "pages-1.img").read_bytes() == data


def test_symlinks_and_special_files(small_repo, tmp_path):
    src = make_tree(tmp_path / "src", {"real": b"real data", "dir/x": b"x"})
    os.symlink("real", src / "inside-link")
    os.symlink("dir", src / "dir-link")
    os.mkfifo(src / "fifo")
    m = small_repo.commit(str(src), template())
    assert sorted(f.path for f in m.files) == ["dir/x", "inside-link", "real"]
    small_repo.fetch(m, str(tmp_path / "d"))
    assert (tmp_path / "d" / "inside-link").read_bytes() == b"real data"
    assert not (tmp_path / "d" / "inside-link").is_symlink()


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside", "/"])
def test_symlink_escaping_the_checkpoint_is_rejected(small_repo, tmp_path, target):
    (tmp_path / "outside").write_bytes(b"host secret")
    src = make_tree(tmp_path / "src", {"a": b"a"})
    os.symlink(target, src / "evil")
    with pytest.raises(StoreError, match="outside"):
        small_repo.commit(str(src), template())
    assert small_repo.list() == []


def test_commit_rejects_bad_input(small_repo, tmp_path):
    with pytest.raises(StoreError):
        small_repo.commit(str(tmp_path / "absent"), template())
    src = make_tree(tmp_path / "src", {"a": b"a"})
    with pytest.raises(StoreError):
        small_repo.commit(str(src), template(job_key="other-job"))
    with pytest.raises(ManifestError):
        small_repo.commit(str(src), template(node={"bogus": "x"}))
    m = small_repo.commit(str(src), template())
    with pytest.raises(StoreError, match="already exists"):
        small_repo.commit(str(src), template(checkpoint_id=m.checkpoint_id))
    assert [x.checkpoint_id for x in small_repo.list()] == [m.checkpoint_id]


def test_errors_carry_the_job_key(small_repo, tmp_path):
    with pytest.raises(StoreError) as exc:
        small_repo.commit(str(tmp_path / "absent"), template())
    assert exc.value.job_key == JOB
    assert JOB in str(exc.value)


@pytest.mark.parametrize("key", ["", "../x", "a/b", "-a", ".a", "a" * 201, "a\0", "é", "a b", None])
def test_job_key_is_validated(store, key):
    with pytest.raises(JobIdentityError):
        CheckpointRepository(store, key)


def test_repository_settings_are_validated(store):
    for kw in ({"chunk_size": 1000}, {"chunk_size": 0}, {"pack_size": 4096, "chunk_size": 8192}, {"parallel": 0}):
        with pytest.raises(ValueError):
            CheckpointRepository(store, JOB, **kw)


def test_from_config(store):
    from mmbatch.config import StoreSection

    repo = CheckpointRepository.from_config(store, JOB, StoreSection(chunk_size=8192, pack_size=16384, parallel=2))
    assert (repo.chunk_size, repo.pack_size, repo.parallel) == (8192, 16384, 2)


def test_ids_keep_increasing_when_the_clock_goes_back(store, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"a"})
    first = CheckpointRepository(store, JOB).commit(str(src), template())
    behind = CheckpointRepository(store, JOB, clock=lambda: time.time() - 86400)
    second = behind.commit(str(src), template())
    assert second.checkpoint_id > first.checkpoint_id
    assert behind.latest().checkpoint_id == second.checkpoint_id


# -- dedup ---------------------------------------------------------------------------


def test_dedup_uploads_only_changed_chunks(store, tmp_path):
    repo = CheckpointRepository(store, JOB, chunk_size=2 * MiB)
    data = bytearray(os.urandom(20 * 2 * MiB))
    src = make_tree(tmp_path / "src", {"pages-1.img": bytes(data), "core-1.img": b"core"})
    first = repo.commit(str(src), template())
    assert first.stats["bytes_uploaded"] == 40 * MiB + 4
    for i in (3, 17):  # 10% of the 2 MiB chunks change
        data[i * 2 * MiB + 100] ^= 0xFF
    (src / "pages-1.img").write_bytes(bytes(data))
    second = repo.commit(str(src), template())
    assert second.stats["bytes_uploaded"] == 2 * 2 * MiB
    assert second.stats["chunks_uploaded"] == 2
    assert second.stats["chunks_total"] == 21
    dest = tmp_path / "d"
    repo.fetch(second, str(dest))
    assert (dest / "pages-1.img").read_bytes() == bytes(data)


def test_dedup_along_extents_when_an_earlier_region_grows(store, tmp_path):
    chunk = 16 * PAGE_SIZE
    repo = CheckpointRepository(store, JOB, chunk_size=chunk, pack_size=4 * chunk)
    regions = [os.urandom(40 * PAGE_SIZE), os.urandom(64 * PAGE_SIZE), os.urandom(33 * PAGE_SIZE)]
    vaddrs = [0x10000000, 0x20000000, 0x7F0000000000]

    def layout(regs):
        extents, off = [], 0
        for r, v in zip(regs, vaddrs):
            extents.append(Extent(off, len(r), v))
            off += len(r)
        return b"".join(regs), extents

    data, extents = layout(regions)
    src = make_tree(tmp_path / "src", {"pages-1.img": data})
    repo.commit(str(src), template(), extents_for=lambda rel: extents)
    regions[0] += os.urandom(3 * PAGE_SIZE)  # the heap grows by 3 pages
    data, extents = layout(regions)
    (src / "pages-1.img").write_bytes(data)
    m = repo.commit(str(src), template(), extents_for=lambda rel: extents)
    # only the grown region's last piece changes; a fixed grid would re-upload almost everything
    assert m.stats["bytes_uploaded"] <= 3 * PAGE_SIZE + chunk
    repo.fetch(m, str(tmp_path / "d"))
    assert (tmp_path / "d" / "pages-1.img").read_bytes() == data


def test_broken_extents_fall_back_to_fixed_chunks(small_repo, tmp_path, caplog):
    data = os.urandom(200_000)
    src = make_tree(tmp_path / "src", {"pages-1.img": data, "other": b"x"})

    def extents_for(rel):
        if rel == "other":
            raise RuntimeError("cannot parse pagemap")
        return [("bad",)]

    with caplog.at_level(logging.WARNING):
        m = small_repo.commit(str(src), template(), extents_for=extents_for)
    assert "fixed-size chunks" in caplog.text
    small_repo.fetch(m, str(tmp_path / "d"))
    assert (tmp_path / "d" / "pages-1.img").read_bytes() == data


def test_chunks_of_vanished_objects_are_uploaded_again(small_repo, tmp_path):
    data = os.urandom(200_000)
    src = make_tree(tmp_path / "src", {"f": data})
    first = small_repo.commit(str(src), template())
    victim = sorted(first.chunk_objects())[0]
    small_repo.store.delete(f"jobs/{JOB}/{victim}")
    second = small_repo.commit(str(src), template())
    assert second.stats["bytes_uploaded"] > 0
    small_repo.fetch(second, str(tmp_path / "d"))
    assert (tmp_path / "d" / "f").read_bytes() == data


# -- corruption -------------------------------------------------------------------------


def _flip(store, key, at=0):
    data = bytearray(store.get_bytes(key))
    data[at] ^= 0xFF
    store.put_bytes(key, bytes(data))


def test_corrupt_chunk_is_detected_on_fetch(small_repo, tmp_path):
    src = make_tree(tmp_path / "src", {"ok": b"fine" * 10, "pages-1.img": os.urandom(200_000)})
    m = small_repo.commit(str(src), template())
    entry = next(f for f in m.files if f.path == "pages-1.img")
    _flip(small_repo.store, f"jobs/{JOB}/{entry.chunks[1].object}", entry.chunks[1].offset + 5)
    dest = tmp_path / "d"
    with pytest.raises(CorruptObject) as exc:
        small_repo.fetch(m, str(dest))
    assert "pages-1.img" in str(exc.value) and "chunk 1" in str(exc.value)
    assert exc.value.job_key == JOB
    # nothing half-written is left under a final name, and no temp files remain
    left = set(os.listdir(dest))
    assert "pages-1.img" not in left
    assert not [n for n in left if n.startswith(".mmbatch")]


def test_corrupt_packed_chunk_and_missing_object(small_repo, tmp_path):
    src = make_tree(tmp_path / "src", {"small": b"s" * 1000, "big": os.urandom(64 * 1024)})
    m = small_repo.commit(str(src), template())
    small = next(f for f in m.files if f.path == "small")
    _flip(small_repo.store, f"jobs/{JOB}/{small.chunks[0].object}", small.chunks[0].offset)
    with pytest.raises(CorruptObject, match="small"):
        small_repo.fetch(m, str(tmp_path / "d1"))
    _flip(small_repo.store, f"jobs/{JOB}/{small.chunks[0].object}", small.chunks[0].offset)  # mend it again
    small_repo.fetch(m, str(tmp_path / "d-ok"))
    big = next(f for f in m.files if f.path == "big")
    small_repo.store.delete(f"jobs/{JOB}/{big.chunks[0].object}")
    with pytest.raises(CorruptObject, match="missing"):
        small_repo.fetch(m, str(tmp_path / "d2"))


def test_truncated_object_is_corrupt(small_repo, tmp_path):
    src = make_tree(tmp_path / "src", {"big": os.urandom(64 * 1024)})
    m = small_repo.commit(str(src), template())
    key = f"jobs/{JOB}/{m.files[0].chunks[0].object}"
    small_repo.store.put_bytes(key, small_repo.store.get_bytes(key)[:-1])
    with pytest.raises(CorruptObject, match="truncated"):
        small_repo.fetch(m, str(tmp_path / "d"))


def test_fetch_refuses_symlinks_in_the_destination(small_repo, tmp_path):
    src = make_tree(tmp_path / "src", {"sub/file": b"data"})
    m = small_repo.commit(str(src), template())
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "d"
    dest.mkdir()
    os.symlink(outside, dest / "sub")
    with pytest.raises(StoreError):
        small_repo.fetch(m, str(dest))
    assert list(outside.iterdir()) == []


def test_fetch_refuses_a_manifest_of_another_job(small_repo, store, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"a"})
    m = small_repo.commit(str(src), template())
    other = CheckpointRepository(store, "job-2")
    with pytest.raises(StoreError):
        other.fetch(m, str(tmp_path / "d"))


# -- failures leave no trace -------------------------------------------------------------


@pytest.mark.parametrize("fail_at", [1, 3])
def test_failed_commit_leaves_no_manifest_and_previous_intact(store, wrappers, tmp_path, fail_at):
    good = CheckpointRepository(store, JOB, chunk_size=64 * 1024, pack_size=128 * 1024, parallel=3)
    src = make_tree(tmp_path / "src", {"pages-1.img": os.urandom(400_000), "small": os.urandom(3000)})
    first = good.commit(str(src), template())
    want = read_tree(src)
    make_tree(src, {"pages-1.img": os.urandom(600_000), "new": os.urandom(100_000)})
    failing = wrappers["failing"](store, fail_at=fail_at, match=f"jobs/{JOB}/")
    broken = CheckpointRepository(failing, JOB, chunk_size=64 * 1024, pack_size=128 * 1024, parallel=3)
    with pytest.raises(StoreError, match="injected"):
        broken.commit(str(src), template())
    assert [m.checkpoint_id for m in good.list()] == [first.checkpoint_id]
    assert good.latest() == first
    assert store.get_bytes(f"jobs/{JOB}/LATEST").strip().decode() == first.checkpoint_id
    dest = tmp_path / "d"
    good.fetch(first, str(dest))
    assert read_tree(dest) == {k: (v[0], 0o600) for k, v in want.items()}
    # the failed commit's packs are removed; only content-addressed chunks may linger for gc
    assert not [k for k in job_keys(store, "packs") if "-0000" in k and first.checkpoint_id not in k]


def test_failing_manifest_write_leaves_no_checkpoint(store, wrappers, tmp_path):
    src = make_tree(tmp_path / "src", {"a": os.urandom(1000)})
    failing = wrappers["failing"](store, fail_at=1, match="/manifests/")
    repo = CheckpointRepository(failing, JOB)
    with pytest.raises(StoreError):
        repo.commit(str(src), template())
    assert CheckpointRepository(store, JOB).latest() is None


def test_failing_latest_write_still_commits(store, wrappers, tmp_path):
    src = make_tree(tmp_path / "src", {"a": os.urandom(1000)})
    repo = CheckpointRepository(store, JOB)
    first = repo.commit(str(src), template())
    failing = wrappers["failing"](store, fail_at=1, match="/LATEST")
    second = CheckpointRepository(failing, JOB).commit(str(src), template())
    assert repo.latest() == first  # the pointer is stale: still a good checkpoint
    assert [m.checkpoint_id for m in repo.list()] == [second.checkpoint_id, first.checkpoint_id]


# -- list / latest -------------------------------------------------------------------------


def test_list_newest_first_and_skips_unreadable(small_repo, tmp_path, caplog):
    src = make_tree(tmp_path / "src", {"a": b"a"})
    ids = [small_repo.commit(str(src), template()).checkpoint_id for _ in range(3)]
    bad_id = new_checkpoint_id(time.time() + 60)
    small_repo.store.put_bytes(f"jobs/{JOB}/manifests/{bad_id}.json", b"{not json")
    small_repo.store.put_bytes(f"jobs/{JOB}/manifests/README", b"ignored")
    with caplog.at_level(logging.WARNING):
        listed = small_repo.list()
    assert [m.checkpoint_id for m in listed] == ids[::-1]
    assert bad_id in caplog.text


def test_manifest_under_the_wrong_name_is_skipped(small_repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"a"})
    m = small_repo.commit(str(src), template())
    other_id = new_checkpoint_id(time.time() + 60)
    small_repo.store.put_bytes(f"jobs/{JOB}/manifests/{other_id}.json", m.to_json())
    assert [x.checkpoint_id for x in small_repo.list()] == [m.checkpoint_id]
    with pytest.raises(ManifestError):
        small_repo.get(other_id)


def test_latest_uses_the_pointer(small_repo, wrappers, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"a"})
    for _ in range(3):
        last = small_repo.commit(str(src), template())
    listed = []

    class NoList(wrappers["wrapped"]):
        def list(self, prefix=""):
            listed.append(prefix)
            return super().list(prefix)

    repo = CheckpointRepository(NoList(small_repo.store), JOB)
    assert repo.latest() == last
    assert listed == []  # O(1): no listing when the pointer is good


@pytest.mark.parametrize("pointer", [None, b"garbage", b"\xff\xfe", b"20001127T110601.123Z-1a2b3c4d", b"../x"])
def test_latest_falls_back_to_listing(small_repo, tmp_path, pointer):
    src = make_tree(tmp_path / "src", {"a": b"a"})
    small_repo.commit(str(src), template())
    newest = small_repo.commit(str(src), template())
    key = f"jobs/{JOB}/LATEST"
    if pointer is None:
        small_repo.store.delete(key)
    else:
        small_repo.store.put_bytes(key, pointer)
    assert small_repo.latest() == newest


def test_latest_skips_an_unreadable_pointed_manifest(small_repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"a"})
    older = small_repo.commit(str(src), template())
    newest = small_repo.commit(str(src), template())
    small_repo.store.put_bytes(f"jobs/{JOB}/manifests/{newest.checkpoint_id}.json", b"{}")
    assert small_repo.latest() == older


def test_no_checkpoints(small_repo):
    assert small_repo.latest() is None
    assert small_repo.list() == []
    with pytest.raises(ObjectNotFound):
        small_repo.get(new_checkpoint_id())
    with pytest.raises(ManifestError):
        small_repo.get("../../etc")


# -- prune and gc -------------------------------------------------------------------------


def _commit_versions(repo, tmp_path, n):
    src = tmp_path / "src"
    shared = os.urandom(150_000)
    ms = []
    for i in range(n):
        make_tree(src, {"shared": shared, "changing": os.urandom(100_000 + i), f"only-{i}": os.urandom(5000)})
        if i:
            os.unlink(src / f"only-{i - 1}")
        ms.append(repo.commit(str(src), template()))
    return ms


def test_prune_and_gc_keep_what_kept_manifests_reference(small_repo, tmp_path):
    ms = _commit_versions(small_repo, tmp_path, 4)
    result = small_repo.prune(keep=2, grace_seconds=0)
    assert result.manifests_pruned == 2
    assert [m.checkpoint_id for m in small_repo.list()] == [ms[3].checkpoint_id, ms[2].checkpoint_id]
    referenced = referenced_objects(small_repo)
    data_keys = job_keys(small_repo.store, "chunks") | job_keys(small_repo.store, "packs")
    assert data_keys == referenced  # everything referenced is there, nothing else is
    assert result.objects_deleted > 0
    assert job_keys(small_repo.store, "trash") == set()
    for m in small_repo.list():
        dest = tmp_path / f"d-{m.checkpoint_id}"
        small_repo.fetch(m, str(dest))
    assert small_repo.latest() == ms[3]


def test_gc_waits_for_the_grace_period(store, tmp_path):
    repo = CheckpointRepository(store, JOB, chunk_size=64 * 1024, pack_size=256 * 1024)
    ms = _commit_versions(repo, tmp_path, 3)
    before = job_keys(store)
    result = repo.prune(keep=1)  # default grace: one hour
    assert result.manifests_pruned == 2 and result.objects_deleted == 0
    assert len(job_keys(store, "trash")) == 2
    assert job_keys(store) - before == job_keys(store, "trash")
    later = CheckpointRepository(store, JOB, chunk_size=64 * 1024, pack_size=256 * 1024,
                                 clock=lambda: time.time() + 7200)
    result = later.gc()
    assert result.trash_deleted == 2 and result.objects_deleted > 0
    assert job_keys(store, "chunks") | job_keys(store, "packs") == referenced_objects(repo)
    repo.fetch(ms[2], str(tmp_path / "d"))


def test_orphans_of_a_failed_commit_are_collected_after_the_grace_period(store, wrappers, tmp_path):
    repo = CheckpointRepository(store, JOB, chunk_size=64 * 1024, pack_size=256 * 1024)
    src = make_tree(tmp_path / "src", {"a": os.urandom(100_000)})
    m = repo.commit(str(src), template())
    make_tree(src, {"b": os.urandom(500_000)})
    failing = wrappers["failing"](store, fail_at=1, match="/manifests/")
    with pytest.raises(StoreError):
        CheckpointRepository(failing, JOB, chunk_size=64 * 1024, pack_size=256 * 1024).commit(str(src), template())
    orphans = (job_keys(store, "chunks") | job_keys(store, "packs")) - referenced_objects(repo)
    assert orphans
    assert repo.gc().objects_deleted == 0  # young: might belong to a commit in flight
    later = CheckpointRepository(store, JOB, clock=lambda: time.time() + 7200)
    assert later.gc().objects_deleted == len(orphans)
    repo.fetch(m, str(tmp_path / "d"))


def test_gc_during_a_commit_keeps_what_the_commit_reuses(store, backdate, tmp_path):
    """A commit reuses chunks of a checkpoint that a concurrent prune retires: they must survive."""
    repo = CheckpointRepository(store, JOB, chunk_size=64 * 1024, pack_size=256 * 1024)
    src = make_tree(tmp_path / "src", {"data": os.urandom(300_000)})
    old = repo.commit(str(src), template())
    for key in job_keys(store):
        backdate(store, key, 7200)  # the old checkpoint's objects are older than the grace period
    other_node = CheckpointRepository(store, JOB, chunk_size=64 * 1024, pack_size=256 * 1024)
    ran = []

    def extents_for(rel):
        # called mid-commit, after the commit chose which chunks to reuse
        if not ran:
            newer = other_node.commit(str(tmp_path / "other"), template())
            ran.append(newer)
            other_node.prune(keep=1)  # retires `old`, whose chunks this commit is reusing
        return None

    make_tree(tmp_path / "other", {"x": b"other"})
    m = repo.commit(str(src), template(), extents_for=extents_for)
    assert m.stats["bytes_uploaded"] == 0  # everything reused from `old`
    assert old.checkpoint_id not in {x.checkpoint_id for x in repo.list()}
    repo.fetch(m, str(tmp_path / "d"))
    assert (tmp_path / "d" / "data").read_bytes() == (src / "data").read_bytes()


def test_gc_skips_when_a_manifest_is_unreadable(small_repo, tmp_path, caplog):
    _commit_versions(small_repo, tmp_path, 2)
    newer = new_checkpoint_id(time.time() + 60)
    doc = json.loads(small_repo.list()[0].to_json())
    doc["format"] = 2  # a newer mmbatch wrote it: we cannot know what it needs
    doc["checkpoint_id"] = newer
    small_repo.store.put_bytes(f"jobs/{JOB}/manifests/{newer}.json", json.dumps(doc).encode())
    before = job_keys(small_repo.store, "chunks") | job_keys(small_repo.store, "packs")
    with caplog.at_level(logging.WARNING):
        result = small_repo.gc(grace_seconds=0)
    assert result.skipped and result.objects_deleted == 0
    assert job_keys(small_repo.store, "chunks") | job_keys(small_repo.store, "packs") == before


def test_prune_needs_keep(small_repo):
    with pytest.raises(ValueError):
        small_repo.prune(0)


def test_delete_all(store, tmp_path):
    repo = CheckpointRepository(store, JOB, chunk_size=64 * 1024, pack_size=256 * 1024)
    other = CheckpointRepository(store, "job-10", chunk_size=64 * 1024, pack_size=256 * 1024)
    src = make_tree(tmp_path / "src", {"a": os.urandom(200_000)})
    repo.commit(str(src), template())
    repo.commit(str(src), template())
    repo.prune(keep=1)
    repo.put_record("attempts", "1", {"exit": 0})
    kept = other.commit(str(src), template())
    repo.delete_all()
    assert job_keys(store) == set()
    assert repo.latest() is None
    assert other.latest() == kept
    other.fetch(kept, str(tmp_path / "d"))


def test_delete_checkpoints_keeps_records(store, tmp_path):
    repo = CheckpointRepository(store, JOB, chunk_size=64 * 1024, pack_size=256 * 1024)
    src = make_tree(tmp_path / "src", {"a": os.urandom(200_000), "b": os.urandom(100)})
    repo.commit(str(src), template())
    repo.commit(str(src), template())
    repo.prune(keep=1)
    repo.put_record("attempts", "1", {"exit": 0})
    repo.put_record("events", "e1", {"kind": "checkpoint"})
    assert repo.delete_checkpoints() > 0
    assert repo.list() == [] and repo.latest() is None
    left = {k.split("/")[2] for k in store.list(f"jobs/{JOB}")}
    assert left == {"attempts", "events"}
    assert repo.get_record("attempts", "1") == {"exit": 0}


# -- records --------------------------------------------------------------------------------


def test_records(small_repo):
    assert small_repo.get_record("attempts", "1") is None
    assert small_repo.list_records("attempts") == []
    small_repo.put_record("attempts", "2", {"n": 2, "reason": "spot"})
    small_repo.put_record("attempts", "1", {"n": 1})
    small_repo.put_record("attempts", "1", {"n": 1, "ended": True})  # replaced
    small_repo.put_record("restores", "20261127T110601.123Z-1a2b3c4d", {"failures": 1})
    assert small_repo.get_record("attempts", "1") == {"n": 1, "ended": True}
    assert small_repo.list_records("attempts") == [{"n": 1, "ended": True}, {"n": 2, "reason": "spot"}]
    assert small_repo.store.exists(f"jobs/{JOB}/attempts/1.json")


def test_corrupt_records(small_repo, caplog):
    small_repo.put_record("attempts", "1", {"n": 1})
    small_repo.store.put_bytes(f"jobs/{JOB}/attempts/2.json", b"[1]")
    small_repo.store.put_bytes(f"jobs/{JOB}/attempts/3.json", b"{bad")
    with pytest.raises(CorruptObject):
        small_repo.get_record("attempts", "2")
    with caplog.at_level(logging.WARNING):
        assert small_repo.list_records("attempts") == [{"n": 1}]


@pytest.mark.parametrize(
    "kind, name",
    [("manifests", "x"), ("chunks", "x"), ("packs", "x"), ("trash", "x"), ("LATEST", "x"), ("../x", "y"),
     ("a/b", "y"), ("", "y"), ("Attempts", "y"), ("attempts", "../x"), ("attempts", "a/b"), ("attempts", ""),
     ("attempts", ".hidden"), ("attempts", "x" * 201)],
)
def test_record_kind_and_name_are_validated(small_repo, kind, name):
    with pytest.raises(StoreError):
        small_repo.put_record(kind, name, {})
    with pytest.raises(StoreError):
        small_repo.get_record(kind, name)


def test_record_data_must_be_json(small_repo):
    with pytest.raises(StoreError):
        small_repo.put_record("attempts", "1", {"x": object()})
    with pytest.raises(StoreError):
        small_repo.put_record("attempts", "1", ["not", "a", "dict"])


def test_sparse_packs_are_repacked_and_then_collected(store, tmp_path):
    """A pack the kept checkpoints barely use is not reused: its live chunks go into
    the next commit's pack, and gc removes it once nothing references it. The store
    then never holds a whole pack for one live chunk."""
    K = 64 * 1024
    repo = CheckpointRepository(store, JOB, chunk_size=K, pack_size=4 * K, parallel=2)
    data = bytearray(os.urandom(16 * K))  # 16 chunks: 4 packs of 4
    src = make_tree(tmp_path / "src", {"pages-1.img": bytes(data)})
    m1 = repo.commit(str(src), template())
    first_pack = m1.files[0].chunks[0].object
    assert [c.object for c in m1.files[0].chunks[:4]] == [first_pack] * 4

    for i in (0, 1, 2):  # three of the first pack's four chunks change
        data[i * K] ^= 0xFF
    (src / "pages-1.img").write_bytes(bytes(data))
    m2 = repo.commit(str(src), template())
    assert m2.stats["bytes_uploaded"] == 3 * K  # the first pack is still fully used (m1 is kept)
    repo.prune(keep=1, grace_seconds=0)  # m1 goes: m2 uses a quarter of the first pack

    m3 = repo.commit(str(src), template())  # nothing changed...
    assert m3.stats["bytes_uploaded"] == K  # ...but the sparse pack's live chunk moves
    assert first_pack not in m3.chunk_objects()
    repo.prune(keep=1, grace_seconds=0)
    assert not store.exists(f"jobs/{JOB}/{first_pack}"), "the sparse pack is collected"
    m4 = repo.commit(str(src), template())
    assert m4.stats["bytes_uploaded"] == 0  # a well-used pack is reused as before
    dest = tmp_path / "d"
    repo.fetch(m4, str(dest))
    assert (dest / "pages-1.img").read_bytes() == bytes(data)
