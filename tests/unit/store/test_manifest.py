"""Manifest round trip and strict validation."""

from __future__ import annotations

import copy
import hashlib
import json
import time

import pytest

from mmbatch.errors import ManifestError, StoreError
from mmbatch.manifest import (
    CHECKPOINT_ID_RE,
    ChunkRef,
    FileEntry,
    Manifest,
    checkpoint_id_time,
    new_checkpoint_id,
)

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


def sample() -> Manifest:
    return Manifest(
        checkpoint_id="20261127T110601.123Z-1a2b3c4d",
        job_key="job-123.main",
        container_id="c0ffee" * 10,
        created_at=1795777561.123,
        attempt="2",
        node={
            "hostname": "ip-10-0-0-1", "instance_id": "i-0abc", "instance_type": "c6i.large",
            "availability_zone": "us-east-1a", "lifecycle": "spot",
        },
        compat={
            "image_id": "sha256:" + "1" * 64, "job_hash": "2" * 64, "cpu_flags": ["avx2", "sse4_2"],
            "criu_version": "4.1.1", "runc_version": "1.2.5", "arch": "x86_64", "kernel": "6.1.0",
            "gpu": None,
        },
        files=[
            FileEntry("pages-1.img", 3, 0o600, SHA_A, [
                ChunkRef(SHA_A, 1, "chunks/ca/" + SHA_A, 0), ChunkRef(SHA_B, 2, "packs/p-000001", 10),
            ]),
            FileEntry("sub/empty", 0, 0o644, hashlib.sha256(b"").hexdigest(), []),
            FileEntry("caf\udcff", 1, 0o600, SHA_B, [ChunkRef(SHA_B, 1, "packs/p-000001", 0)]),
        ],
        open_files=[{"path": "/data/out.log", "size": 1234, "append": True, "writable": True}],
        stats={"freeze_seconds": 0.8, "bytes_total": 3},
        labels={"k": "v"},
    )


def test_round_trip():
    m = sample()
    data = m.to_json()
    back = Manifest.from_json(data)
    assert back == m
    assert back.to_json() == data  # deterministic
    assert Manifest.from_json(data.decode()) == m
    assert back.total_size == 4
    assert back.chunk_objects() == {"chunks/ca/" + SHA_A, "packs/p-000001"}


def test_defaults_fill_node_and_compat():
    m = Manifest(checkpoint_id=new_checkpoint_id(), job_key="j", node={"hostname": "h"}, compat={"gpu": {"count": 1}})
    doc = json.loads(m.to_json())
    assert doc["node"]["instance_id"] == ""
    assert doc["compat"]["cpu_flags"] == []
    assert doc["compat"]["gpu"] == {"count": 1}
    assert doc["format"] == 1
    assert Manifest.from_json(m.to_json()).node["hostname"] == "h"


def test_checkpoint_ids_sort_by_time():
    ids = [new_checkpoint_id(t) for t in (1e9, 1e9 + 0.001, 1e9 + 1, 2e9)]
    assert all(CHECKPOINT_ID_RE.match(i) for i in ids)
    assert ids == sorted(ids)
    assert abs(checkpoint_id_time(ids[1]) - (1e9 + 0.001)) < 1e-6
    assert abs(checkpoint_id_time(new_checkpoint_id()) - time.time()) < 5
    assert new_checkpoint_id(1e9) != new_checkpoint_id(1e9)


def _doc():
    return json.loads(sample().to_json())


def _mutations():
    def m(fn):
        d = _doc()
        fn(d)
        return json.dumps(d)

    def setf(path, value):
        def fn(d):
            target = d
            for p in path[:-1]:
                target = target[p]
            target[path[-1]] = value
        return fn

    def delf(path):
        def fn(d):
            target = d
            for p in path[:-1]:
                target = target[p]
            del target[path[-1]]
        return fn

    return {
        "not json": "{",
        "not an object": "[1, 2]",
        "empty": "",
        "bytes garbage": b"\xff\xfe",
        "no format": m(delf(["format"])),
        "format 2": m(setf(["format"], 2)),
        "format string": m(setf(["format"], "1")),
        "format bool": m(setf(["format"], True)),
        "unknown key": m(setf(["extra"], 1)),
        "missing key": m(delf(["labels"])),
        "bad id": m(setf(["checkpoint_id"], "yesterday")),
        "id with slash": m(setf(["checkpoint_id"], "../20261127T110601.123Z-1a2b3c4d")),
        "bad job key": m(setf(["job_key"], "../other")),
        "empty job key": m(setf(["job_key"], "")),
        "created_at string": m(setf(["created_at"], "now")),
        "created_at bool": m(setf(["created_at"], False)),
        "attempt int": m(setf(["attempt"], 2)),
        "node unknown": m(setf(["node", "color"], "red")),
        "node missing": m(delf(["node", "lifecycle"])),
        "node value int": m(setf(["node", "hostname"], 5)),
        "compat unknown": m(setf(["compat", "secret"], "x")),
        "compat flags not list": m(setf(["compat", "cpu_flags"], "avx2")),
        "compat flag int": m(setf(["compat", "cpu_flags"], [1])),
        "compat gpu list": m(setf(["compat", "gpu"], [])),
        "compat criu int": m(setf(["compat", "criu_version"], 4)),
        "files not list": m(setf(["files"], {})),
        "path dotdot": m(setf(["files", 0, "path"], "../x")),
        "path inner dotdot": m(setf(["files", 0, "path"], "a/../../x")),
        "path absolute": m(setf(["files", 0, "path"], "/etc/passwd")),
        "path empty component": m(setf(["files", 0, "path"], "a//b")),
        "path dot": m(setf(["files", 0, "path"], ".")),
        "path empty": m(setf(["files", 0, "path"], "")),
        "path nul": m(setf(["files", 0, "path"], "a\u0000b")),
        "duplicate path": m(setf(["files", 1, "path"], "pages-1.img")),
        "file under file": m(setf(["files", 1, "path"], "pages-1.img/x")),
        "size negative": m(setf(["files", 0, "size"], -1)),
        "size float": m(setf(["files", 0, "size"], 3.0)),
        "chunks do not add up": m(setf(["files", 0, "size"], 4)),
        "mode too big": m(setf(["files", 0, "mode"], 0o100644)),
        "file sha short": m(setf(["files", 0, "sha256"], "abc")),
        "file sha upper": m(setf(["files", 0, "sha256"], SHA_A.upper())),
        "file unknown key": m(setf(["files", 0, "owner"], "root")),
        "chunk zero size": m(setf(["files", 0, "chunks", 0, "size"], 0)),
        "chunk sha": m(setf(["files", 0, "chunks", 0, "sha256"], "z" * 64)),
        "chunk object escape": m(setf(["files", 0, "chunks", 0, "object"], "../../other/chunks/x")),
        "chunk object elsewhere": m(setf(["files", 0, "chunks", 0, "object"], "manifests/x.json")),
        "chunk object absolute": m(setf(["files", 0, "chunks", 0, "object"], "/chunks/x")),
        "chunk offset negative": m(setf(["files", 0, "chunks", 1, "offset"], -1)),
        "chunk missing key": m(delf(["files", 0, "chunks", 1, "offset"])),
        "open file bad append": m(setf(["open_files", 0, "append"], "yes")),
        "open file bad writable": m(setf(["open_files", 0, "writable"], 1)),
        "open file unknown": m(setf(["open_files", 0, "mode"], 1)),
        "open file not dict": m(setf(["open_files"], ["/data/x"])),
        "stats string": m(setf(["stats", "freeze_seconds"], "fast")),
        "stats bool": m(setf(["stats", "ok"], True)),
        "labels int": m(setf(["labels", "k"], 1)),
        "duplicate json key": '{"format": 1, "format": 1}',
        "nan": json.dumps(_doc(), separators=(",", ":")).replace('"freeze_seconds":0.8', '"freeze_seconds":NaN'),
        "deep nesting": "[" * 100000 + "]" * 100000,
    }


MUTATIONS = _mutations()


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_malformed_manifests_are_manifest_errors(name):
    with pytest.raises(ManifestError):
        Manifest.from_json(MUTATIONS[name])


def test_manifest_error_is_a_store_error():
    with pytest.raises(StoreError):
        Manifest.from_json("{}")


def test_unknown_format_message_says_why():
    d = _doc()
    d["format"] = 7
    with pytest.raises(ManifestError, match="unknown manifest format 7"):
        Manifest.from_json(json.dumps(d))


@pytest.mark.parametrize(
    "change",
    [
        lambda m: setattr(m, "checkpoint_id", ""),
        lambda m: setattr(m, "job_key", "a/b"),
        lambda m: m.files.append(copy.deepcopy(m.files[0])),
        lambda m: setattr(m.files[0], "path", "../x"),
        lambda m: m.node.update(extra="x"),
        lambda m: m.stats.update(x=float("inf")),
        lambda m: setattr(m, "format", 2),
    ],
)
def test_invalid_manifests_are_not_serialized(change):
    m = sample()
    change(m)
    with pytest.raises(ManifestError):
        m.to_json()
