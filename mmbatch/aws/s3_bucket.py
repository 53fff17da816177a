"""The checkpoint bucket: TLS and encryption enforced, private, and a lifecycle that only removes garbage.

- Bucket policy: deny any request without TLS (the whole bucket); deny a
  write to the prefix that asks for another encryption than the store's,
  and with SSE-KMS one that names another key. Only a request that carries
  the header is judged (`StringNotEquals` with `Null: false`; an
  `...IfExists` operator would be true for a missing header and so refuse
  every UploadPart of a multipart upload, which carries none): a request
  without it is encrypted by the bucket's default encryption.
- Default encryption (the same SSE, Bucket Key on), Block Public Access
  (all four), Object Ownership "bucket owner enforced" (no ACLs).
- Lifecycle: chunks are shared between a job's checkpoints (a chunk written
  a month ago may be in today's manifest), so an age-based expiry would
  delete live data. The one rule that expires objects is filtered on the
  tag gc puts on what it is about to delete (`mmbatch-gc=garbage`,
  mmbatch/checkpoints.py): it finishes a gc that was cut short and touches
  nothing else. The other rule aborts multipart uploads left incomplete
  (parts of an upload cut off by the instance's death: never an object),
  and on a versioned bucket removes noncurrent versions and expired delete
  markers (what mmbatch already deleted or replaced).
PutBucketLifecycleConfiguration replaces the bucket's whole lifecycle:
merge these rules with any the bucket has.
"""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from mmbatch.aws.arns import S3Location, check_account, check_kms_key_arn, check_partition
from mmbatch.aws.errors import KitError
from mmbatch.aws.requests import ApiRequest
from mmbatch.store.base import GARBAGE_TAG_KEY, GARBAGE_TAG_VALUE

GC_RULE_ID = "mmbatch-gc-marked"
UPLOADS_RULE_ID = "mmbatch-incomplete-uploads"
_SSE_HEADER = "s3:x-amz-server-side-encryption"
_KMS_HEADER = "s3:x-amz-server-side-encryption-aws-kms-key-id"


def _owner(params: Dict[str, Any], account: Optional[str]) -> Dict[str, Any]:
    if account:
        params["ExpectedBucketOwner"] = check_account(account)
    return params


def sse_mode(kms_key_arn: Optional[str]) -> str:
    """The store's server-side encryption: SSE-KMS with a key, else SSE-S3."""
    return "aws:kms" if kms_key_arn else "AES256"


def bucket_policy(store: str, partition: str = "aws", kms_key_arn: Optional[str] = None) -> Dict[str, Any]:
    """The bucket policy document: TLS only; the store's encryption on its prefix."""
    check_partition(partition)
    loc = S3Location.parse(store)
    sse = sse_mode(kms_key_arn)
    statements: List[Dict[str, Any]] = [
        {"Sid": "MmbatchTlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": [loc.bucket_arn(partition), f"{loc.bucket_arn(partition)}/*"],
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        {"Sid": "MmbatchNoOtherEncryption", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
         "Resource": loc.objects_arn(partition),
         "Condition": {"StringNotEquals": {_SSE_HEADER: sse}, "Null": {_SSE_HEADER: "false"}}},
    ]
    if kms_key_arn:
        check_kms_key_arn(kms_key_arn)
        statements.append(
            {"Sid": "MmbatchNoOtherKmsKey", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
             "Resource": loc.objects_arn(partition),
             "Condition": {"StringNotEquals": {_KMS_HEADER: kms_key_arn}, "Null": {_KMS_HEADER: "false"}}})
    return {"Version": "2012-10-17", "Statement": statements}


def put_bucket_policy(store: str, partition: str = "aws", kms_key_arn: Optional[str] = None,
                      account: Optional[str] = None) -> ApiRequest:
    loc = S3Location.parse(store)
    policy = bucket_policy(store, partition, kms_key_arn)
    return ApiRequest("s3", "PutBucketPolicy", _owner(
        {"Bucket": loc.bucket, "Policy": json.dumps(policy, separators=(",", ":"))}, account)).validate()


def put_bucket_encryption(store: str, kms_key_arn: Optional[str] = None,
                          account: Optional[str] = None) -> ApiRequest:
    loc = S3Location.parse(store)
    default: Dict[str, Any] = {"SSEAlgorithm": "AES256"}
    if kms_key_arn:
        default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": check_kms_key_arn(kms_key_arn)}
    return ApiRequest("s3", "PutBucketEncryption", _owner({
        "Bucket": loc.bucket,
        "ServerSideEncryptionConfiguration": {
            "Rules": [{"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": True}]},
    }, account)).validate()


def put_public_access_block(store: str, account: Optional[str] = None) -> ApiRequest:
    loc = S3Location.parse(store)
    return ApiRequest("s3", "PutPublicAccessBlock", _owner({
        "Bucket": loc.bucket,
        "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                                           "BlockPublicPolicy": True, "RestrictPublicBuckets": True},
    }, account)).validate()


def put_bucket_ownership_controls(store: str, account: Optional[str] = None) -> ApiRequest:
    loc = S3Location.parse(store)
    return ApiRequest("s3", "PutBucketOwnershipControls", _owner({
        "Bucket": loc.bucket,
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
    }, account)).validate()


def lifecycle_rules(store: str, garbage_days: int = 1, versioned: bool = False) -> List[Dict[str, Any]]:
    """The two rules; see the module docstring."""
    if not 1 <= garbage_days <= 365:
        raise KitError(f"{garbage_days} is not 1-365", option="--garbage-days")
    loc = S3Location.parse(store)
    tag = {"Key": GARBAGE_TAG_KEY, "Value": GARBAGE_TAG_VALUE}
    # S3 wants And only with two or more conditions: a whole-bucket store has no prefix.
    gc_filter: Dict[str, Any] = ({"And": {"Prefix": loc.key_prefix, "Tags": [tag]}} if loc.key_prefix
                                 else {"Tag": tag})
    gc_rule: Dict[str, Any] = {"ID": GC_RULE_ID, "Status": "Enabled", "Filter": gc_filter,
                               "Expiration": {"Days": garbage_days}}
    # AbortIncompleteMultipartUpload and ExpiredObjectDeleteMarker cannot go with a tag filter.
    uploads_rule: Dict[str, Any] = {"ID": UPLOADS_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": loc.key_prefix},
                                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
    if versioned:
        uploads_rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": 1}
        uploads_rule["Expiration"] = {"ExpiredObjectDeleteMarker": True}
    return [gc_rule, uploads_rule]


def put_bucket_lifecycle_configuration(store: str, garbage_days: int = 1, versioned: bool = False,
                                       account: Optional[str] = None) -> ApiRequest:
    loc = S3Location.parse(store)
    return ApiRequest("s3", "PutBucketLifecycleConfiguration", _owner({
        "Bucket": loc.bucket,
        "LifecycleConfiguration": {"Rules": lifecycle_rules(store, garbage_days, versioned)},
    }, account)).validate()
