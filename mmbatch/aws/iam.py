"""The instance role's policy: exactly the S3 (and KMS) actions the store uses, on its prefix.

Every node of the compute environment runs mmbatchd and mmbatch-runtime
with the instance role (boto3's default chain on EC2). What the S3 store
calls (mmbatch/store/s3.py, plus s3transfer's multipart uploads and
downloads) and the IAM action that authorizes each call are in
`STORE_OPERATIONS`; the policy allows those actions and nothing else:
- object actions on `arn:aws:s3:::BUCKET/PREFIX/*` only;
- s3:ListBucket on the bucket, only for listings under `PREFIX/`
  (the `s3:prefix` condition);
- with SSE-KMS, kms:GenerateDataKey and kms:Decrypt on the one key, and
  only through S3 in its region (`kms:ViaService`);
- optionally s3:GetObject on the one object the user data fetches the
  mmbatch source from.
The role keeps AWS's AmazonEC2ContainerServiceforEC2Role for ECS itself.
"""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional

from mmbatch.aws.arns import S3Location, check_kms_key_arn, check_partition, kms_key_region, split_s3_object_url
from mmbatch.aws.errors import KitError
from mmbatch.aws.requests import ApiRequest

# S3 API operation -> the IAM action that authorizes it.
STORE_OPERATIONS: Dict[str, str] = {
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",  # s3transfer, when an upload fails
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "ListObjectsV2": "s3:ListBucket",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",  # authorized per key as s3:DeleteObject
    "PutObjectTagging": "s3:PutObjectTagging",  # gc's garbage mark (lifecycle rule)
}
BUCKET_ACTIONS = frozenset({"s3:ListBucket"})
OBJECT_ACTIONS = sorted(set(STORE_OPERATIONS.values()) - BUCKET_ACTIONS)
KMS_ACTIONS = ["kms:Decrypt", "kms:GenerateDataKey"]
POLICY_NAME = "mmbatch-checkpoint-store"
_ROLE_RE = re.compile(r"^[\w+=,.@-]{1,64}$")


def _dns_suffix(partition: str) -> str:
    return "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com"


def instance_role_policy(
    store: str,
    partition: str = "aws",
    kms_key_arn: Optional[str] = None,
    source: Optional[str] = None,
) -> Dict[str, Any]:
    """The policy document (a dict) for an S3 store `s3://bucket/prefix`."""
    check_partition(partition)
    loc = S3Location.parse(store)
    statements: List[Dict[str, Any]] = [
        {"Sid": "MmbatchCheckpointObjects", "Effect": "Allow", "Action": OBJECT_ACTIONS,
         "Resource": loc.objects_arn(partition)},
    ]
    listing: Dict[str, Any] = {"Sid": "MmbatchListCheckpoints", "Effect": "Allow", "Action": "s3:ListBucket",
                               "Resource": loc.bucket_arn(partition)}
    if loc.prefix:
        listing["Condition"] = {"StringLike": {"s3:prefix": [f"{loc.key_prefix}*"]}}
    statements.append(listing)
    if kms_key_arn:
        check_kms_key_arn(kms_key_arn)
        region = kms_key_region(kms_key_arn)
        statements.append({
            "Sid": "MmbatchCheckpointKmsKey", "Effect": "Allow", "Action": KMS_ACTIONS, "Resource": kms_key_arn,
            "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.{_dns_suffix(partition)}"}},
        })
    if source and source.startswith("s3://"):
        bucket, key = split_s3_object_url(source, "--source")
        statements.append({"Sid": "MmbatchSource", "Effect": "Allow", "Action": "s3:GetObject",
                           "Resource": f"arn:{partition}:s3:::{bucket}/{key}"})
    return {"Version": "2012-10-17", "Statement": statements}


def put_role_policy(role_name: str, policy: Dict[str, Any], policy_name: str = POLICY_NAME) -> ApiRequest:
    """iam PutRolePolicy: the policy inline on the instance role (its name, not the instance profile's)."""
    if not _ROLE_RE.match(role_name):
        raise KitError(f"{role_name!r} is not a role name", option="--instance-role",
                       hint="the role's name (e.g. ecsInstanceRole), not an ARN")
    return ApiRequest("iam", "PutRolePolicy", {
        "RoleName": role_name,
        "PolicyName": policy_name,
        "PolicyDocument": json.dumps(policy, separators=(",", ":")),
    }).validate()
