"""gc marks what it deletes, so a bucket lifecycle rule can finish an interrupted gc.

The rule (`mmbatch aws bucket`) expires only objects tagged `mmbatch-gc=garbage`:
these tests pin down that gc tags exactly the objects it is about to delete,
never one a manifest still needs, and that a later PUT of the same key (a
commit uploading that chunk again) clears the tag. Run on every backend; the
tag itself exists only on S3 (a real S3-compatible server here).
"""

from __future__ import annotations

import os
import time
from typing import Dict, Iterable, List

import pytest

from mmbatch.checkpoints import CheckpointRepository
from mmbatch.errors import StoreError
from mmbatch.manifest import Manifest
from mmbatch.store.base import GARBAGE_TAG_KEY, GARBAGE_TAG_VALUE

JOB = "job-1"
LATER = 7200.0  # past the one-hour grace period


def _template() -> Manifest:
    return Manifest(container_id="c" * 64, attempt="1", node={"hostname": "node-a"})


def _commit_versions(repo: CheckpointRepository, tmp_path, n: int) -> List[Manifest]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    shared = os.urandom(150_000)
    out = []
    for i in range(n):
        (src / "shared").write_bytes(shared)
        (src / "changing").write_bytes(os.urandom(100_000 + i))
        out.append(repo.commit(str(src), _template()))
    return out


def _data_keys(store) -> set:
    return set(store.list(f"jobs/{JOB}/chunks")) | set(store.list(f"jobs/{JOB}/packs"))


def _referenced(repo: CheckpointRepository) -> set:
    refs = set()
    for m in repo.list():
        refs |= {f"jobs/{JOB}/{o}" for o in m.chunk_objects()}
    return refs


def _tags(store, key: str) -> Dict[str, str]:
    full = f"{store.prefix}/{key}" if store.prefix else key
    resp = store.client.get_object_tagging(Bucket=store.bucket, Key=full)
    return {t["Key"]: t["Value"] for t in resp.get("TagSet", [])}


def _interrupting(wrappers, store):
    """The store, but every delete fails: a gc cut short after it marked."""

    class Interrupted(wrappers["wrapped"]):
        marked: List[str] = []

        def mark_garbage(self, keys: Iterable[str]) -> int:
            keys = list(keys)
            self.marked.extend(keys)
            return self.inner.mark_garbage(keys)

        def delete_many(self, keys: Iterable[str]) -> None:
            raise StoreError("injected: the node died before the delete")

    return Interrupted(store)


def test_gc_marks_exactly_what_it_deletes(store, wrappers, tmp_path, backend_name):
    repo = CheckpointRepository(store, JOB, chunk_size=64 * 1024, pack_size=256 * 1024)
    _commit_versions(repo, tmp_path, 3)
    assert repo.prune(keep=1).objects_deleted == 0  # young: nothing yet
    trash = set(store.list(f"jobs/{JOB}/trash"))
    assert len(trash) == 2

    cut_short = _interrupting(wrappers, store)
    later = CheckpointRepository(cut_short, JOB, chunk_size=64 * 1024, pack_size=256 * 1024,
                                 clock=lambda: time.time() + LATER)
    with pytest.raises(StoreError, match="injected"):
        later.gc()
    live = _referenced(repo)
    garbage = _data_keys(store) - live
    assert garbage, "the pruned checkpoints left unreferenced chunks or packs"
    assert set(cut_short.marked) == garbage | trash, "marked = unreferenced data + expired trash, nothing else"
    assert not set(cut_short.marked) & live

    if backend_name == "s3":
        for key in garbage | trash:
            assert _tags(store, key) == {GARBAGE_TAG_KEY: GARBAGE_TAG_VALUE}, key
        for key in live | set(store.list(f"jobs/{JOB}/manifests")) | {f"jobs/{JOB}/LATEST"}:
            assert _tags(store, key) == {}, f"{key} is live and must not carry the garbage tag"
    else:
        assert store.mark_garbage(sorted(garbage)) == 0, "file systems have no tags (and no lifecycle rules)"

    # The next gc that is not cut short deletes what the first one marked.
    done = CheckpointRepository(store, JOB, clock=lambda: time.time() + LATER).gc()
    assert done.objects_deleted == len(garbage) and done.trash_deleted == len(trash)
    assert _data_keys(store) == live
    repo.fetch(repo.latest(), str(tmp_path / "restored"))


def test_a_key_put_again_loses_the_mark(store, backend_name):
    """A commit that uploads a marked chunk again (same content, same key) makes it live: no tag."""
    if backend_name != "s3":
        pytest.skip("only S3 objects carry tags")
    key = f"jobs/{JOB}/chunks/ab/" + "ab" * 32
    store.put_bytes(key, b"chunk")
    assert store.mark_garbage([key, f"jobs/{JOB}/chunks/cd/gone"]) == 1, "a missing object is skipped"
    assert _tags(store, key) == {GARBAGE_TAG_KEY: GARBAGE_TAG_VALUE}
    store.put_bytes(key, b"chunk")
    assert _tags(store, key) == {}
    assert store.get_bytes(key) == b"chunk"


def _stubbed_store():
    """An S3ObjectStore whose client answers from botocore's Stubber (request params
    are checked against the S3 model; nothing is sent). One tagging at a time, so
    the order of answers is the order of keys."""
    import boto3
    from botocore.stub import Stubber

    from mmbatch.config import StoreSection
    from mmbatch.store.s3 import S3ObjectStore

    session = boto3.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                            region_name="us-east-1")
    store = S3ObjectStore("s3://ckpt-bucket/pfx", StoreSection(region="us-east-1", parallel=1), session=session)
    return store, Stubber(store.client)


def _tagging(key: str) -> dict:
    return {"Bucket": "ckpt-bucket", "Key": f"pfx/{key}",
            "Tagging": {"TagSet": [{"Key": GARBAGE_TAG_KEY, "Value": GARBAGE_TAG_VALUE}]}}


def test_a_role_without_tagging_is_told_once_and_gc_goes_on(caplog):
    store, stub = _stubbed_store()
    keys = [f"jobs/{JOB}/chunks/{i:02x}/{i:064x}" for i in range(4)]
    stub.add_response("put_object_tagging", {}, _tagging(keys[0]))
    stub.add_client_error("put_object_tagging", "NoSuchKey", http_status_code=404, expected_params=_tagging(keys[1]))
    stub.add_client_error("put_object_tagging", "AccessDenied", http_status_code=403,
                          expected_params=_tagging(keys[2]))
    with stub, caplog.at_level("WARNING"):
        assert store.mark_garbage(keys) == 1, "tagged, gone (skipped), refused, then no more requests"
        stub.assert_no_pending_responses()
    refusals = [r for r in caplog.records if "s3:PutObjectTagging" in r.getMessage()]
    assert len(refusals) == 1 and "AccessDenied" in refusals[0].getMessage()
