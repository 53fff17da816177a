"""The instance role's policy grants exactly the store's actions, on its bucket and prefix only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

from mmbatch.aws import iam
from mmbatch.aws.errors import KitError
from tests.unit.aws.iam_eval import ALLOW, decide

ROOT = Path(__file__).resolve().parents[3]
STORE = "s3://ckpt-bucket/mmbatch/queue-a"
KEY = "arn:aws:kms:us-east-1:111122223333:key/0123abcd-0123-0123-0123-0123456789ab"
SOURCE = "s3://deploy-bucket/mmbatch/mmbatch-0.1.0.tar.gz"
OBJ = "arn:aws:s3:::ckpt-bucket/mmbatch/queue-a/"

# s3transfer's managed transfers, which s3.py calls through TransferManager:
# upload_file/upload_fileobj (one PUT, or a multipart upload aborted on failure)
# and download (HEAD for the size, then GETs).
S3TRANSFER_OPERATIONS = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload",
                         "AbortMultipartUpload", "HeadObject", "GetObject"}


def _policy(**kw):
    doc = iam.instance_role_policy(STORE, **kw)
    return json.loads(json.dumps(doc))  # what IAM receives: plain JSON


def _allowed(policy, action, resource, **ctx) -> bool:
    return decide(policy, action, resource, ctx) == ALLOW


def test_the_table_covers_every_s3_call_the_store_makes():
    model = botocore.session.get_session().get_service_model("s3")
    by_snake = {xform_name(op): op for op in model.operation_names}
    source = (ROOT / "mmbatch/store/s3.py").read_text()
    called = {by_snake[m] for m in re.findall(r"\.(\w+)\(", source) if m in by_snake}
    called |= {by_snake[m] for m in re.findall(r'get_paginator\("(\w+)"\)', source)}
    assert called, "the store's calls were not found"
    used = called | S3TRANSFER_OPERATIONS
    assert used == set(iam.STORE_OPERATIONS), f"used but not in the table: {used - set(iam.STORE_OPERATIONS)}; " \
        f"in the table but unused: {set(iam.STORE_OPERATIONS) - used}"


def test_policy_allows_exactly_the_store_actions():
    policy = _policy()
    actions = set()
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        for a in st["Action"] if isinstance(st["Action"], list) else [st["Action"]]:
            assert "*" not in a and "?" not in a, f"wildcard action {a}"
            actions.add(a)
    assert actions == set(iam.STORE_OPERATIONS.values())


def test_resources_are_the_bucket_and_prefix_only():
    policy = _policy()
    resources = set()
    for st in policy["Statement"]:
        resources |= set(st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])
    assert resources == {"arn:aws:s3:::ckpt-bucket", OBJ + "*"}


@pytest.mark.parametrize("action", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                                    "s3:PutObjectTagging"])
@pytest.mark.parametrize("key", ["jobs/j-1/LATEST", "jobs/j-1/chunks/ab/" + "ab" * 32, ".mmbatch-sse-probe-1"])
def test_object_actions_under_the_prefix_are_allowed(action, key):
    assert _allowed(_policy(), action, OBJ + key)


@pytest.mark.parametrize("resource", [
    "arn:aws:s3:::ckpt-bucket/mmbatch/queue-b/jobs/j-1/LATEST",   # another queue's prefix
    "arn:aws:s3:::ckpt-bucket/mmbatch/queue-ab/jobs/j-1/LATEST",  # a sibling sharing the name's start
    "arn:aws:s3:::ckpt-bucket/mmbatch/queue-a",                    # the prefix itself, not below it
    "arn:aws:s3:::ckpt-bucket/other",
    "arn:aws:s3:::other-bucket/mmbatch/queue-a/jobs/j-1/LATEST",
    "arn:aws:s3:::ckpt-bucket-2/mmbatch/queue-a/jobs/j-1/LATEST",
])
@pytest.mark.parametrize("action", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:PutObjectTagging"])
def test_objects_elsewhere_are_refused(action, resource):
    assert not _allowed(_policy(), action, resource)


@pytest.mark.parametrize("prefix", ["mmbatch/queue-a/", "mmbatch/queue-a/jobs/j-1/manifests/"])
def test_listing_the_prefix_is_allowed(prefix):
    assert _allowed(_policy(), "s3:ListBucket", "arn:aws:s3:::ckpt-bucket", **{"s3:prefix": prefix})


@pytest.mark.parametrize("ctx", [{}, {"s3:prefix": ""}, {"s3:prefix": "mmbatch/"}, {"s3:prefix": "mmbatch/queue-b/"},
                                 {"s3:prefix": "mmbatch/queue-ab/"}, {"s3:prefix": "mmbatch/queue-a"}])
def test_listing_elsewhere_is_refused(ctx):
    assert not _allowed(_policy(), "s3:ListBucket", "arn:aws:s3:::ckpt-bucket", **ctx)
    assert not _allowed(_policy(), "s3:ListBucket", "arn:aws:s3:::other-bucket", **{"s3:prefix": "mmbatch/queue-a/"})


@pytest.mark.parametrize("action", ["s3:GetObjectTagging", "s3:PutBucketPolicy", "s3:DeleteBucket", "s3:GetObjectAcl",
                                    "s3:PutObjectAcl", "s3:PutLifecycleConfiguration", "s3:ListAllMyBuckets",
                                    "s3:GetBucketLocation", "kms:Decrypt", "iam:PassRole"])
def test_nothing_else_is_allowed(action):
    for resource in ("arn:aws:s3:::ckpt-bucket", OBJ + "jobs/j-1/LATEST", "*"):
        assert not _allowed(_policy(), action, resource, **{"s3:prefix": "mmbatch/queue-a/"})


def test_kms_key_only_through_s3_in_its_region():
    policy = _policy(kms_key_arn=KEY)
    via = {"kms:ViaService": "s3.us-east-1.amazonaws.com"}
    for action in ("kms:GenerateDataKey", "kms:Decrypt"):
        assert _allowed(policy, action, KEY, **via)
        assert not _allowed(policy, action, KEY, **{"kms:ViaService": "s3.eu-west-1.amazonaws.com"})
        assert not _allowed(policy, action, KEY)  # called directly, not through S3
        assert not _allowed(policy, action, KEY.replace("0123abcd", "ffffffff"), **via)
    for action in ("kms:Encrypt", "kms:CreateGrant", "kms:ScheduleKeyDeletion"):
        assert not _allowed(policy, action, KEY, **via)


def test_source_object_is_readable_and_nothing_beside_it():
    policy = _policy(source=SOURCE)
    src = "arn:aws:s3:::deploy-bucket/mmbatch/mmbatch-0.1.0.tar.gz"
    assert _allowed(policy, "s3:GetObject", src)
    assert not _allowed(policy, "s3:PutObject", src)
    assert not _allowed(policy, "s3:GetObject", "arn:aws:s3:::deploy-bucket/mmbatch/other.tar.gz")
    assert not _allowed(policy, "s3:ListBucket", "arn:aws:s3:::deploy-bucket", **{"s3:prefix": "mmbatch/"})


def test_whole_bucket_store_and_other_partitions():
    whole = iam.instance_role_policy("s3://ckpt-bucket")
    assert _allowed(whole, "s3:GetObject", "arn:aws:s3:::ckpt-bucket/jobs/x")
    assert _allowed(whole, "s3:ListBucket", "arn:aws:s3:::ckpt-bucket", **{"s3:prefix": ""})
    assert not _allowed(whole, "s3:GetObject", "arn:aws:s3:::ckpt-bucket-2/jobs/x")
    cn = iam.instance_role_policy(STORE, partition="aws-cn",
                                  kms_key_arn=KEY.replace("arn:aws:", "arn:aws-cn:").replace("us-east-1", "cn-north-1"))
    assert _allowed(cn, "s3:GetObject", "arn:aws-cn:s3:::ckpt-bucket/mmbatch/queue-a/x")
    assert not _allowed(cn, "s3:GetObject", "arn:aws:s3:::ckpt-bucket/mmbatch/queue-a/x")
    kms = [s for s in cn["Statement"] if s["Sid"] == "MmbatchCheckpointKmsKey"][0]
    assert kms["Condition"]["StringEquals"]["kms:ViaService"] == "s3.cn-north-1.amazonaws.com.cn"


@pytest.mark.parametrize("kw,words", [
    ({"kms_key_arn": "alias/mmbatch"}, "not a KMS key ARN"),
    ({"partition": "aws-moon"}, "unknown partition"),
    ({"source": "s3://deploy-bucket"}, "names a bucket, not an object"),
])
def test_bad_inputs_are_refused(kw, words):
    with pytest.raises(KitError, match=words):
        iam.instance_role_policy(STORE, **kw)
    with pytest.raises(KitError, match="invalid bucket name"):
        iam.instance_role_policy("s3://Bad_Bucket/x")


def test_put_role_policy_request_is_valid_and_carries_the_document():
    policy = _policy(kms_key_arn=KEY, source=SOURCE)
    req = iam.put_role_policy("ecsInstanceRole", policy)
    assert (req.service, req.operation) == ("iam", "PutRolePolicy")
    assert json.loads(req.params["PolicyDocument"]) == policy
    assert json.loads(req.params["PolicyDocument"])["Version"] == "2012-10-17"
    with pytest.raises(KitError, match="not a role name"):
        iam.put_role_policy("arn:aws:iam::111122223333:role/x", policy)
