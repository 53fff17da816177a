"""Checkpoints on S3 when things go wrong: the server dies mid-upload, an object
rots, the credentials or the bucket are wrong. A checkpoint is either whole
and fetchable or absent; earlier ones are never harmed; errors say what to do.
"""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from mmbatch.checkpoints import CheckpointRepository
from mmbatch.errors import CorruptObject, ObjectNotFound, StoreError
from mmbatch.manifest import Manifest
from tests.integration.store.s3_stores import s3_store

MiB = 1024 * 1024
JOB = "job-1"


def template() -> Manifest:
    return Manifest(container_id="c" * 64, attempt="1", node={"hostname": "node-a"})


def write_pages(path, size: int) -> bytes:
    """A CRIU-like pages image of random data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def repo_on(store, **kw) -> CheckpointRepository:
    kw.setdefault("chunk_size", 1 * MiB)
    kw.setdefault("pack_size", 4 * MiB)
    kw.setdefault("parallel", 4)
    return CheckpointRepository(store, JOB, **kw)


def assert_every_manifest_is_whole(repo: CheckpointRepository) -> None:
    """Every chunk every committed manifest names is in the store, big enough."""
    for m in repo.list():
        for f in m.files:
            for c in f.chunks:
                info = repo.store.stat(f"{repo.prefix}/{c.object}")
                assert info.size >= c.offset + c.size, (m.checkpoint_id, f.path, c.object)


@pytest.mark.slow
def test_server_killed_mid_upload(private_s3, tmp_path):
    server = private_s3
    bucket = server.create_bucket()
    store = s3_store(server, bucket, "ckpt")
    repo = repo_on(store)
    first_data = write_pages(tmp_path / "first" / "pages-1.img", 6 * MiB)
    first = repo.commit(str(tmp_path / "first"), template())

    write_pages(tmp_path / "big" / "pages-1.img", 96 * MiB)
    killed = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= total // 4 and not killed.is_set():
            killed.set()
            server.kill()  # SIGKILL by PID, a quarter of the way in

    outcome = {}

    def commit_big() -> None:
        try:
            outcome["manifest"] = repo.commit(str(tmp_path / "big"), template(), progress=progress)
        except BaseException as e:  # reported below
            outcome["error"] = e

    t = threading.Thread(target=commit_big)
    t.start()
    t.join(timeout=180)
    assert not t.is_alive(), "the commit hangs when the server is gone"
    assert killed.is_set()
    error = outcome.get("error")
    assert isinstance(error, StoreError), outcome
    assert "unreachable" in str(error) and error.job_key == JOB

    server.restart()  # the same directory and ports
    again = repo_on(s3_store(server, bucket, "ckpt"))
    assert [m.checkpoint_id for m in again.list()] == [first.checkpoint_id]
    assert again.latest() == first
    assert_every_manifest_is_whole(again)
    again.fetch(first, str(tmp_path / "restored"))
    assert (tmp_path / "restored" / "pages-1.img").read_bytes() == first_data
    # The next checkpoint works, and reuses what the first one stored.
    m = again.commit(str(tmp_path / "first"), template())
    assert m.stats["bytes_uploaded"] == 0
    assert again.latest() == m


def test_corrupt_object_is_detected_on_fetch(s3_server, bucket, tmp_path):
    store = s3_store(s3_server, bucket, "ckpt")
    repo = repo_on(store)
    old_data = write_pages(tmp_path / "v1" / "pages-1.img", 3 * MiB)
    old = repo.commit(str(tmp_path / "v1"), template())
    write_pages(tmp_path / "v2" / "pages-1.img", 3 * MiB)
    new = repo.commit(str(tmp_path / "v2"), template())

    chunk = new.files[0].chunks[1]
    key = f"ckpt/{repo.prefix}/{chunk.object}"
    c = s3_server.client()
    body = bytearray(c.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[chunk.offset + 100] ^= 0x01
    c.put_object(Bucket=bucket, Key=key, Body=bytes(body))  # rotted at rest: a valid object, wrong bytes

    with pytest.raises(CorruptObject, match="chunk 1 of pages-1.img"):
        repo.fetch(new, str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / "pages-1.img").exists()
    repo.fetch(old, str(tmp_path / "good"))  # what restore falls back to
    assert hashlib.sha256((tmp_path / "good" / "pages-1.img").read_bytes()).digest() == \
        hashlib.sha256(old_data).digest()

    c.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(CorruptObject, match="missing"):
        repo.fetch(new, str(tmp_path / "gone"))


def test_wrong_credentials_give_a_clear_error(s3_server, bucket, tmp_path):
    write_pages(tmp_path / "src" / "pages-1.img", 1 * MiB)
    good = repo_on(s3_store(s3_server, bucket, "ckpt"))
    good.commit(str(tmp_path / "src"), template())
    bad = repo_on(s3_store(s3_server, bucket, "ckpt", session=s3_server.session(secret_key="not-the-secret")))
    for op in (bad.latest, lambda: bad.commit(str(tmp_path / "src"), template())):
        with pytest.raises(StoreError) as ei:
            op()
        assert not isinstance(ei.value, ObjectNotFound)
        assert "credentials" in (ei.value.hint or ""), str(ei.value)
        assert ei.value.job_key == JOB
        assert "not-the-secret" not in str(ei.value)


def test_wrong_bucket_gives_a_clear_error(s3_server, tmp_path):
    write_pages(tmp_path / "src" / "pages-1.img", 1 * MiB)
    repo = repo_on(s3_store(s3_server, "mmbatch-typo-bucket", "ckpt"))
    for op in (repo.latest, lambda: repo.commit(str(tmp_path / "src"), template())):
        with pytest.raises(StoreError, match="bucket 'mmbatch-typo-bucket' does not exist") as ei:
            op()
        assert not isinstance(ei.value, ObjectNotFound)
