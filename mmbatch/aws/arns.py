"""ARNs and the names inside them, validated before they reach a policy."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple

from mmbatch.aws.errors import KitError

PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_KMS_KEY_ARN_RE = re.compile(
    r"^arn:(aws|aws-cn|aws-us-gov):kms:([a-z0-9-]+):(\d{12}):key/([A-Za-z0-9-]{1,128})$")


def check_partition(partition: str) -> str:
    if partition not in PARTITIONS:
        raise KitError(f"unknown partition {partition!r}", option="--partition", hint=" | ".join(PARTITIONS))
    return partition


def check_region(region: str, option: str = "--region") -> str:
    if not _REGION_RE.match(region or ""):
        raise KitError(f"not a region: {region!r}", option=option, hint="e.g. us-east-1")
    return region


def check_account(account: str, option: str = "--account") -> str:
    if not _ACCOUNT_RE.match(account or ""):
        raise KitError(f"not an account id: {account!r}", option=option, hint="12 digits")
    return account


def check_kms_key_arn(arn: str, option: str = "--kms-key-arn") -> str:
    """A KMS *key* ARN: IAM and key policies match keys by ARN, never by alias."""
    if not _KMS_KEY_ARN_RE.match(arn or ""):
        raise KitError(f"not a KMS key ARN: {arn!r}", option=option,
                       hint="arn:aws:kms:REGION:ACCOUNT:key/KEY-ID (an alias cannot scope a policy)")
    return arn


def kms_key_region(arn: str) -> str:
    m = _KMS_KEY_ARN_RE.match(arn)
    if not m:
        raise KitError(f"not a KMS key ARN: {arn!r}")
    return m.group(2)


@dataclass(frozen=True)
class S3Location:
    """`s3://bucket/prefix` as mmbatch's S3 store reads it (prefix without slashes at the ends)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str, option: str = "--store") -> S3Location:
        from mmbatch.errors import StoreError
        from mmbatch.store.s3 import parse_s3_url

        try:
            bucket, prefix = parse_s3_url(url)
        except StoreError as e:
            raise KitError(e.message, option=option, hint=e.hint) from None
        return cls(bucket, prefix)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def key_prefix(self) -> str:
        """The prefix of every object key the store writes: "prefix/" (or "" for a whole bucket)."""
        return f"{self.prefix}/" if self.prefix else ""

    def bucket_arn(self, partition: str = "aws") -> str:
        return f"arn:{partition}:s3:::{self.bucket}"

    def objects_arn(self, partition: str = "aws") -> str:
        return f"arn:{partition}:s3:::{self.bucket}/{self.key_prefix}*"


def split_s3_object_url(url: str, option: str) -> Tuple[str, str]:
    """(bucket, key) of `s3://bucket/key` naming one object."""
    loc = S3Location.parse(url, option=option)
    if not loc.prefix:
        raise KitError(f"{url!r} names a bucket, not an object", option=option, hint="s3://bucket/path/file.tar.gz")
    return loc.bucket, loc.prefix
