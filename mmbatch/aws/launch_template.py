"""The EC2 launch template of the compute environment: mmbatch's user data and IMDSv2.

Batch starts its instances from this template (it adds its own user data
parts, and the instance role of the compute environment). Instance
metadata: IMDSv2 only (a token is required, so a request forged through a
server-side request bug cannot read the role's credentials), with a hop
limit of 1 by default: a container in bridge network mode is one hop
further than the host and gets no token, so it cannot use the instance role.
Containers with host networking (what Batch gives jobs on EC2) are not
stopped by the hop limit: see the threat model in docs/aws.md. mmbatchd
itself runs on the host and needs IMDS for Spot notices.
"""

from __future__ import annotations

import base64
import re

from mmbatch.aws.errors import KitError
from mmbatch.aws.requests import ApiRequest

_NAME_RE = re.compile(r"^[a-zA-Z0-9().\-/_]{3,128}$")


def create_launch_template(name: str, user_data: str, hop_limit: int = 1) -> ApiRequest:
    """ec2 CreateLaunchTemplate with base64 user data and IMDSv2 required."""
    if not _NAME_RE.match(name):
        raise KitError(f"{name!r}: 3-128 of letters, digits and ( ) . - / _", option="--launch-template")
    if not 1 <= hop_limit <= 64:
        raise KitError(f"{hop_limit} is not 1-64", option="--imds-hop-limit")
    return ApiRequest("ec2", "CreateLaunchTemplate", {
        "LaunchTemplateName": name,
        "VersionDescription": "mmbatch node: user data and IMDSv2",
        "LaunchTemplateData": {
            "UserData": base64.b64encode(user_data.encode("ascii")).decode("ascii"),
            "MetadataOptions": {
                "HttpEndpoint": "enabled",
                "HttpTokens": "required",
                "HttpPutResponseHopLimit": hop_limit,
            },
        },
        "TagSpecifications": [{"ResourceType": "launch-template",
                               "Tags": [{"Key": "mmbatch", "Value": "node"}]}],
    }).validate()
