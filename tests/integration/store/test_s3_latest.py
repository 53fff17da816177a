"""Finding a job's newest checkpoint on S3 costs a constant number of requests.

A restore-on-create is on the container's start path: `latest()` reads the
LATEST pointer and the manifest it names (two GETs, whatever the number of
checkpoints), and lists only when the pointer is missing, stale or garbage.
Requests are counted with a botocore event hook on the store's own client.
"""

from __future__ import annotations

import os

import pytest

from mmbatch.checkpoints import CheckpointRepository
from mmbatch.manifest import Manifest
from tests.integration.store.s3_stores import Requests, s3_store


def commit_n(repo: CheckpointRepository, src, n: int):
    out = []
    for _ in range(n):
        (src / "pages-1.img").write_bytes(os.urandom(50_000))
        out.append(repo.commit(str(src), Manifest(container_id="c" * 64, attempt="1")))
    return out


@pytest.mark.parametrize("n", [1, 7])
def test_latest_costs_two_requests_whatever_the_history(s3_server, bucket, tmp_path, n):
    store = s3_store(s3_server, bucket)
    repo = CheckpointRepository(store, "job-1", chunk_size=64 * 1024, pack_size=256 * 1024)
    src = tmp_path / "src"
    src.mkdir()
    committed = commit_n(repo, src, n)
    seen = Requests(store.client)
    fresh = CheckpointRepository(store, "job-1")  # as restore-on-create on another node
    assert fresh.latest() == committed[-1]
    assert seen.ops() == ["GetObject", "GetObject"]


@pytest.mark.parametrize("pointer", ["missing", "stale", "garbage"])
def test_unusable_pointer_falls_back_to_listing(s3_server, bucket, tmp_path, pointer):
    store = s3_store(s3_server, bucket)
    repo = CheckpointRepository(store, "job-1", chunk_size=64 * 1024, pack_size=256 * 1024)
    src = tmp_path / "src"
    src.mkdir()
    committed = commit_n(repo, src, 3)
    latest_key = f"{repo.prefix}/LATEST"
    if pointer == "missing":
        store.delete(latest_key)
    elif pointer == "stale":  # names a checkpoint that was pruned meanwhile
        store.put_bytes(latest_key, b"20200101T000000.000Z-deadbeef\n")
    else:
        store.put_bytes(latest_key, b"\xff\xfe not an id")
    seen = Requests(store.client)
    assert repo.latest() == committed[-1]
    ops = seen.ops()
    assert ops[0] == "GetObject" and "ListObjectsV2" in ops
    assert ops.count("ListObjectsV2") == 1  # one page: no per-object requests to find the newest
