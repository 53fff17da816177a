"""Incremental checkpoints on S3: rewriting a tenth of a big image uploads about a tenth.

Measured at the server, not from the repository's own statistics: the sum
of the object sizes in the bucket, listed with boto3, before and after each
commit.
"""

from __future__ import annotations

import math
import os
import random

import pytest

from mmbatch.checkpoints import CheckpointRepository
from mmbatch.manifest import Manifest
from tests.integration.store.s3_stores import s3_store

MiB = 1024 * 1024
SIZE = 256 * MiB
BLOCK = 1 * MiB


@pytest.mark.slow
def test_rewriting_ten_percent_adds_at_most_fifteen_percent(s3_server, bucket, tmp_path):
    # 1 MiB chunks for 1 MiB writes on the same 1 MiB grid: each rewritten
    # block is exactly one chunk.
    store = s3_store(s3_server, bucket, "ckpt")
    repo = CheckpointRepository(store, "job-1", chunk_size=1 * MiB, pack_size=16 * MiB, parallel=8)
    src = tmp_path / "ckpt"
    src.mkdir()
    pages = src / "pages-1.img"
    with open(pages, "wb") as f:
        for _ in range(SIZE // (16 * MiB)):
            f.write(os.urandom(16 * MiB))
    (src / "inventory.img").write_bytes(os.urandom(4096))
    template = Manifest(container_id="c" * 64, attempt="1")

    before = s3_server.bucket_bytes(bucket)
    first = repo.commit(str(src), template)
    first_added = s3_server.bucket_bytes(bucket) - before
    assert first_added >= SIZE

    blocks = random.Random(5).sample(range(SIZE // BLOCK), math.ceil(SIZE / BLOCK / 10))  # 10%, scattered
    with open(pages, "r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK)
            f.write(os.urandom(BLOCK))
    middle = s3_server.bucket_bytes(bucket)
    second = repo.commit(str(src), template)
    second_added = s3_server.bucket_bytes(bucket) - middle

    print(f"first commit added {first_added} bytes, second {second_added} ({second_added / first_added:.1%})")
    assert second_added <= 0.15 * first_added, (second_added, first_added)
    assert second.stats["bytes_uploaded"] == len(blocks) * BLOCK  # inventory.img unchanged: reused
    assert repo.latest() == second
    repo.fetch(second, str(tmp_path / "restored"))
    assert (tmp_path / "restored" / "pages-1.img").read_bytes() == pages.read_bytes()
    assert first.checkpoint_id in {m.checkpoint_id for m in repo.list()}
