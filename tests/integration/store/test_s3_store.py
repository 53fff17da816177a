"""What is particular to the S3 store, against a real S3-compatible server.

The ObjectStore contract itself runs on S3 in tests/unit/store (the `s3`
backend); these tests cover URLs, the headers every request carries (SSE,
ExpectedBucketOwner, checksums), how S3 errors become typed StoreErrors,
batching and pagination.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from mmbatch.config import StoreSection
from mmbatch.errors import ObjectNotFound, StoreError
from mmbatch.store import open_store
from tests.integration.store.s3_stores import Requests, s3_store, store_section

MiB = 1024 * 1024


# -- URLs and settings ---------------------------------------------------------------


@pytest.mark.parametrize("url, bucket, prefix", [
    ("s3://my-bucket", "my-bucket", ""),
    ("s3://my-bucket/", "my-bucket", ""),
    ("s3://my.bucket-1/a/b", "my.bucket-1", "a/b"),
    ("s3://abc/a/b/", "abc", "a/b"),
])
def test_s3_urls(url, bucket, prefix):
    from mmbatch.store.s3 import parse_s3_url

    assert parse_s3_url(url) == (bucket, prefix)


@pytest.mark.parametrize("url", [
    "s3://", "s3://ab", "s3://UPPER", "s3://-bucket", "s3://bucket-", "s3://a..b", "s3://bucket_x",
    "s3://bucket/../x", "s3://bucket/a//b", "s3://bucket/a/./b", "s3://bucket/a?x=1", "s3://bucket/a#f",
    "s3://bucket/.mmbatch-x", "s3://bucket/a\\b", "s3://" + "b" * 64,
])
def test_bad_s3_urls_are_refused(url):
    with pytest.raises(StoreError):
        open_store(url, StoreSection(endpoint_url="http://127.0.0.1:1"))


def test_bad_settings_are_refused():
    from mmbatch.store.s3 import S3ObjectStore

    for cfg in (StoreSection(sse="aws:kms"), StoreSection(sse="des"), StoreSection(endpoint_url="ftp://x"),
                StoreSection(endpoint_url="http://host/path")):
        with pytest.raises(StoreError):
            S3ObjectStore("s3://bucket/p", cfg)


def test_open_store_uses_the_default_credential_chain(s3_server, bucket, monkeypatch):
    from mmbatch.store import s3 as s3_mod

    # The environment comes first in the chain; nothing reaches for instance metadata.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(s3_mod, "_default_session", None)
    store = open_store(f"s3://{bucket}/checkpoints/", store_section(s3_server))
    assert isinstance(store, s3_mod.S3ObjectStore)
    assert store.url == f"s3://{bucket}/checkpoints"
    assert s3_server.endpoint in store.describe() and store.url in repr(store)
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    other = open_store(f"s3://{bucket}/other", store_section(s3_server))
    assert other._session is store._session  # one Session (models, credentials) per process


def test_keys_live_under_the_prefix(s3_server, bucket):
    store = s3_store(s3_server, bucket, "a/b")
    store.put_bytes("jobs/j/LATEST", b"x")
    assert [k for k, _ in s3_server.objects(bucket)] == ["a/b/jobs/j/LATEST"]
    assert list(store.list("")) == ["jobs/j/LATEST"]
    with pytest.raises(StoreError, match="backslash"):
        store.put_bytes("a\\b", b"x")  # some S3-compatible servers turn it into '/'


def test_foreign_objects_under_the_prefix_are_not_listed(s3_server, bucket):
    store = s3_store(s3_server, bucket, "p")
    store.put_bytes("ok", b"1")
    c = s3_server.client()
    put = []
    # (SeaweedFS stores "a//b" as "a/b", and refuses "x/../y")
    for key in ("p/dir/", "p/.mmbatch-tmp-1", "p/sub/.mmbatch-tmp-2", "p/x/../y", "p/c/./d", "other/k"):
        try:
            c.put_object(Bucket=bucket, Key=key, Body=b"")
            put.append(key)
        except ClientError:
            pass  # AWS takes them all; SeaweedFS refuses some
    assert len(put) >= 3
    listed = {k for k, _ in s3_server.objects(bucket, "p/")}
    assert listed >= {"p/ok", "p/.mmbatch-tmp-1"}
    assert list(store.list("")) == ["ok"]


# -- what every request carries ---------------------------------------------------------


def test_sse_and_checksum_on_every_write(s3_server, bucket, tmp_path):
    if not s3_server.sse_kek:
        pytest.skip("this server has no SSE key")
    store = s3_store(s3_server, bucket, parallel=4)
    seen = Requests(store.client)
    store.put_bytes("small", b"x" * 1000)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(40 * MiB))  # above the multipart threshold
    store.put_file("big", str(big))
    store.put_bytes("big-bytes", os.urandom(33 * MiB))
    ops = seen.ops()
    assert ops.count("PutObject") == 1 and ops.count("CreateMultipartUpload") == 2 and "UploadPart" in ops
    for op, headers in seen.sent:
        if op in ("PutObject", "CreateMultipartUpload"):
            assert headers.get("x-amz-server-side-encryption") == "AES256", op
        if op in ("PutObject", "UploadPart"):
            assert "x-amz-checksum-crc32" in headers, op  # verified by the server before it stores anything
    for key in ("small", "big", "big-bytes"):
        head = s3_server.client().head_object(Bucket=bucket, Key=f"{store.prefix}/{key}")
        assert head.get("ServerSideEncryption") == "AES256"
    out = tmp_path / "out"
    store.get_file("big", str(out))
    assert out.read_bytes() == big.read_bytes()
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mmbatch")] == []


def test_expected_bucket_owner_on_every_request(s3_server, bucket, tmp_path):
    store = s3_store(s3_server, bucket, expected_bucket_owner="111122223333", parallel=2)
    seen = Requests(store.client)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(40 * MiB))
    store.put_bytes("a/1", b"1")
    store.put_file("a/big", str(src))
    store.get_file("a/big", str(tmp_path / "dst"))
    assert store.get_bytes("a/1") == b"1" and store.get_range("a/1", 0, 1) == b"1"
    assert store.exists("a/1") and not store.exists("a/2")
    store.stat("a/1")
    assert sorted(store.list("a")) == ["a/1", "a/big"]
    list(store.list_info("a"))
    store.delete("a/1")
    store.delete_many(["a/big"])
    assert len(seen.sent) >= 12
    missing = [op for op, headers in seen.sent if headers.get("x-amz-expected-bucket-owner") != "111122223333"]
    assert missing == []


def test_upload_corrupted_in_transit_is_refused_and_sent_again(s3_server, bucket):
    """The server checks the CRC32 sent with the data: a body damaged on the way never lands."""
    store = s3_store(s3_server, bucket)
    seen = Requests(store.client)
    damaged = []

    def damage_first_put(request, **_):
        if damaged:
            return
        body = request.body
        body = bytearray(body.read() if hasattr(body, "read") else body)
        body[len(body) // 2] ^= 0xFF  # one bit pattern flipped, same length
        request.body = bytes(body)
        damaged.append(True)

    store.client.meta.events.register("before-send.s3.PutObject", damage_first_put)
    data = os.urandom(100_000)
    store.put_bytes("k", data)
    assert damaged and seen.count("PutObject") == 2
    assert store.get_bytes("k") == data


# -- errors -------------------------------------------------------------------------------


def test_missing_objects_and_ranges(s3_server, bucket):
    store = s3_store(s3_server, bucket)
    with pytest.raises(ObjectNotFound, match="'nope'"):
        store.get_bytes("nope")
    with pytest.raises(ObjectNotFound, match="'nope'"):
        store.stat("nope")
    store.put_bytes("empty", b"")
    store.put_bytes("ten", b"0123456789")
    assert store.get_range("empty", 0, 10) == b""
    assert store.get_range("ten", 10, 5) == b""
    assert store.get_range("ten", 20, 5) == b""
    assert store.get_range("ten", 8, 5) == b"89"
    with pytest.raises(ObjectNotFound):
        store.get_range("nope", 0, 0)


def test_wrong_credentials_say_so(s3_server, bucket):
    probe = s3_server.session(secret_key="wrong-secret").client("s3", endpoint_url=s3_server.endpoint)
    try:
        probe.list_objects_v2(Bucket=bucket, MaxKeys=1)
        pytest.skip("this server does not check credentials")
    except Exception:
        pass
    for access_key, secret_key in ((s3_server.access_key, "wrong-secret"), ("nobody", "wrong-secret")):
        store = s3_store(s3_server, bucket, session=s3_server.session(access_key, secret_key))
        for op in (lambda st: st.put_bytes("k", b"x"), lambda st: st.get_bytes("k"),
                   lambda st: list(st.list("")), lambda st: st.stat("k"), lambda st: st.exists("k")):
            with pytest.raises(StoreError) as ei:
                op(store)
            assert not isinstance(ei.value, ObjectNotFound)
            assert "credentials" in (ei.value.hint or ""), str(ei.value)
            assert "wrong-secret" not in str(ei.value)  # never shown


def test_wrong_bucket_names_the_bucket(s3_server):
    store = s3_store(s3_server, "mmbatch-no-such-bucket")
    for op in (lambda: store.get_bytes("k"), lambda: list(store.list("")), lambda: store.stat("k"),
               lambda: store.exists("k"), lambda: store.put_bytes("k", b"x"), lambda: store.delete("k")):
        with pytest.raises(StoreError) as ei:
            op()
        assert not isinstance(ei.value, ObjectNotFound)
        assert "mmbatch-no-such-bucket" in str(ei.value)


def test_unreachable_store_says_so(s3_server):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from mmbatch.store.s3 import S3ObjectStore

    store = S3ObjectStore("s3://bucket/p", StoreSection(endpoint_url=f"http://127.0.0.1:{port}", sse="none"),
                          session=s3_server.session(), max_attempts=2)
    for op in (lambda: store.get_bytes("k"), lambda: store.put_bytes("k", b"x"), lambda: list(store.list(""))):
        with pytest.raises(StoreError, match="store unreachable") as ei:
            op()
        assert "'k'" in str(ei.value) or "'/'" in str(ei.value)


def test_server_without_the_requested_sse_gets_a_clear_error(s3_server, bucket):
    """SeaweedFS has no aws:kms (and no SSE-S3 without a key): the error says to set sse = "none"."""
    store = s3_store(s3_server, bucket, sse="aws:kms", kms_key_id="alias/mmbatch", max_attempts=1)
    with pytest.raises(StoreError) as ei:
        store.put_bytes("k", b"secret")
    assert 'sse = "none"' in (ei.value.hint or ""), str(ei.value)
    assert "'k'" in str(ei.value)
    assert [k for k, _ in s3_server.objects(bucket)] == []  # nothing stored, probe removed
    plain = s3_store(s3_server, bucket, sse="none")
    plain.put_bytes("k", b"ok")  # the same server takes it without SSE


# -- listing and deleting -------------------------------------------------------------------


def test_list_info_comes_from_the_listing(s3_server, bucket):
    store = s3_store(s3_server, bucket)
    for i in range(5):
        store.put_bytes(f"d/{i}", b"x" * i)
    seen = Requests(store.client)
    infos = dict(store.list_info("d"))
    assert {k: i.size for k, i in infos.items()} == {f"d/{i}": i for i in range(5)}
    assert seen.ops() == ["ListObjectsV2"]  # no HEAD per object
    for key, info in infos.items():
        assert abs(store.stat(key).mtime - info.mtime) < 1.0


def test_listing_pages_and_batched_deletes(s3_server, bucket):
    store = s3_store(s3_server, bucket)
    keys = [f"many/{i:05d}" for i in range(1105)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b""), keys))
    seen = Requests(store.client)
    assert sorted(store.list("many")) == keys
    assert seen.count("ListObjectsV2") == 2
    seen.clear()
    store.delete_many(keys + [f"gone/{i}" for i in range(1000)])  # missing keys are not errors
    assert seen.count("DeleteObjects") == 3
    assert list(store.list("")) == []


def test_per_key_delete_errors_are_reported(s3_server, bucket):
    store = s3_store(s3_server, bucket)
    store.put_bytes("a", b"1")
    store.put_bytes("b", b"2")

    def refuse_b(parsed, **_):  # as S3 reports a key it could not delete
        parsed["Errors"] = [{"Key": f"{store.prefix}/b", "Code": "AccessDenied", "Message": "Access Denied"}]

    store.client.meta.events.register("after-call.s3.DeleteObjects", refuse_b)
    with pytest.raises(StoreError, match="'b'") as ei:
        store.delete_many(["a", "b"])
    assert "s3:DeleteObject" in (ei.value.hint or "")


def test_small_uploads_do_not_wait_for_100_continue(s3_server, bucket, tmp_path):
    """An empty PUT with "Expect: 100-continue" made SeaweedFS hang the connection's next
    request until the read timeout (urllib3 1.26): small bodies go without it."""
    import time

    store = s3_store(s3_server, bucket, read_timeout=5, max_attempts=1)
    seen = Requests(store.client)
    t0 = time.monotonic()
    for data in (b"", b"0123456789", b"", b"x" * 1000):
        store.put_bytes("k", data)
        assert store.get_bytes("k") == data
    assert time.monotonic() - t0 < 4
    store.put_bytes("big", os.urandom(2 * MiB))
    expects = [("expect" in headers) for op, headers in seen.sent if op == "PutObject"]
    assert expects == [False, False, False, False, True]
