"""The bucket: TLS and encryption enforced; the lifecycle removes only what gc marked."""

from __future__ import annotations

import json

import pytest

from mmbatch.aws import s3_bucket
from mmbatch.aws.errors import KitError
from mmbatch.store.base import GARBAGE_TAG_KEY, GARBAGE_TAG_VALUE
from tests.unit.aws.iam_eval import DENY, decide

STORE = "s3://ckpt-bucket/mmbatch"
KEY = "arn:aws:kms:us-east-1:111122223333:key/0123abcd-0123-0123-0123-0123456789ab"
OBJ = "arn:aws:s3:::ckpt-bucket/mmbatch/jobs/j/LATEST"


def _policy(**kw):
    req = s3_bucket.put_bucket_policy(STORE, **kw)
    return json.loads(req.params["Policy"])


def test_tls_is_required_for_everything():
    policy = _policy()
    for action, resource in (("s3:GetObject", OBJ), ("s3:ListBucket", "arn:aws:s3:::ckpt-bucket"),
                             ("s3:PutObject", "arn:aws:s3:::ckpt-bucket/other/x")):
        assert decide(policy, action, resource, {"aws:SecureTransport": "false"}) == DENY
        assert decide(policy, action, resource, {"aws:SecureTransport": "true",
                                                 "s3:x-amz-server-side-encryption": "AES256"}) != DENY


def test_writes_asking_for_other_encryption_are_refused():
    tls = {"aws:SecureTransport": "true"}
    policy = _policy()
    assert decide(policy, "s3:PutObject", OBJ, {**tls, "s3:x-amz-server-side-encryption": "AES256"}) != DENY
    assert decide(policy, "s3:PutObject", OBJ, {**tls, "s3:x-amz-server-side-encryption": "aws:kms"}) == DENY
    # no header (UploadPart of a multipart upload): default encryption applies, not refused
    assert decide(policy, "s3:PutObject", OBJ, tls) != DENY
    kms = _policy(kms_key_arn=KEY)
    good = {**tls, "s3:x-amz-server-side-encryption": "aws:kms",
            "s3:x-amz-server-side-encryption-aws-kms-key-id": KEY}
    assert decide(kms, "s3:PutObject", OBJ, good) != DENY
    assert decide(kms, "s3:PutObject", OBJ, {**good, "s3:x-amz-server-side-encryption": "AES256"}) == DENY
    assert decide(kms, "s3:PutObject", OBJ, {**good, "s3:x-amz-server-side-encryption-aws-kms-key-id":
                                             KEY.replace("0123abcd", "ffffffff")}) == DENY


def test_bucket_settings():
    enc = s3_bucket.put_bucket_encryption(STORE, KEY, account="111122223333").params
    assert enc["ExpectedBucketOwner"] == "111122223333"
    assert enc["ServerSideEncryptionConfiguration"]["Rules"] == [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": KEY},
        "BucketKeyEnabled": True}]
    pab = s3_bucket.put_public_access_block(STORE).params["PublicAccessBlockConfiguration"]
    assert set(pab.values()) == {True} and len(pab) == 4
    own = s3_bucket.put_bucket_ownership_controls(STORE).params["OwnershipControls"]
    assert own == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}


def _expiring(rules):
    """Rules that delete current objects by age (Days or Date)."""
    return [r for r in rules if {"Days", "Date"} & set(r.get("Expiration", {}))]


@pytest.mark.parametrize("store,prefix", [(STORE, "mmbatch/"), ("s3://ckpt-bucket/a/b", "a/b/"),
                                          ("s3://ckpt-bucket", "")])
@pytest.mark.parametrize("versioned", [False, True])
def test_lifecycle_expires_only_gc_marked_objects(store, prefix, versioned):
    req = s3_bucket.put_bucket_lifecycle_configuration(store, garbage_days=2, versioned=versioned)
    rules = req.params["LifecycleConfiguration"]["Rules"]
    tag = {"Key": GARBAGE_TAG_KEY, "Value": GARBAGE_TAG_VALUE}
    expiring = _expiring(rules)
    assert len(expiring) == 1
    flt = expiring[0]["Filter"]
    if prefix:
        assert flt == {"And": {"Prefix": prefix, "Tags": [tag]}}
    else:
        assert flt == {"Tag": tag}
    assert expiring[0]["Expiration"] == {"Days": 2}
    for rule in rules:
        assert rule["Status"] == "Enabled"
        assert "Transitions" not in rule and "NoncurrentVersionTransitions" not in rule
        if rule not in expiring:
            # the rest only removes what is not a live object: incomplete uploads, and with
            # versioning the versions mmbatch already deleted or replaced
            assert set(rule) - {"ID", "Status", "Filter"} <= {
                "AbortIncompleteMultipartUpload", "NoncurrentVersionExpiration", "Expiration"}
            assert rule.get("Expiration", {}) in ({}, {"ExpiredObjectDeleteMarker": True})
            assert rule["Filter"] == {"Prefix": prefix}
    assert any("NoncurrentVersionExpiration" in r for r in rules) == versioned


def test_garbage_days_bounds():
    for days in (0, 366):
        with pytest.raises(KitError, match="--garbage-days"):
            s3_bucket.lifecycle_rules(STORE, days)
