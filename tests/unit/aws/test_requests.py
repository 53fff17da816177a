"""Every request the kit makes passes botocore's own validation for its API (no AWS access)."""

from __future__ import annotations

import base64
import email
import json

import pytest
from botocore.validate import ParamValidator

from mmbatch.aws import batch, kit
from mmbatch.aws.errors import InvalidRequest, KitError
from mmbatch.aws.requests import ApiRequest, _service_model

KEY = "arn:aws:kms:us-east-1:111122223333:key/0123abcd-0123-0123-0123-0123456789ab"


def kit_options(**kw) -> kit.KitOptions:
    base = dict(store="s3://ckpt-bucket/mmbatch", source="s3://deploy-bucket/mmbatch.tar.gz", region="us-east-1",
                account="111122223333", subnets=["subnet-0a", "subnet-0b"], security_groups=["sg-01"],
                instance_role="ecsInstanceRole")
    base.update(kw)
    return kit.KitOptions(**base)


def _independent_check(req: ApiRequest) -> None:
    """botocore's validator on the operation's input shape, called here without the kit's code."""
    shape = _service_model(req.service).operation_model(req.operation).input_shape
    report = ParamValidator().validate(req.params, shape)
    assert not report.has_errors(), report.generate_report()


@pytest.mark.parametrize("kms", ["", KEY])
@pytest.mark.parametrize("versioned", [False, True])
def test_every_kit_request_is_valid_for_its_api(kms, versioned):
    reqs = kit.requests(kit_options(kms_key_arn=kms, versioned=versioned))
    assert {r.service for _, r in reqs} == {"batch", "ec2", "iam", "s3"}
    assert [r.operation for _, r in reqs] == [
        "PutPublicAccessBlock", "PutBucketOwnershipControls", "PutBucketEncryption", "PutBucketPolicy",
        "PutBucketLifecycleConfiguration", "PutRolePolicy", "CreateLaunchTemplate", "CreateComputeEnvironment",
        "CreateJobQueue", "RegisterJobDefinition"]
    for _, req in reqs:
        _independent_check(req)
        assert req.validate() is req
        # policy documents inside requests are JSON objects
        for field in ("Policy", "PolicyDocument"):
            if field in req.params:
                assert json.loads(req.params[field])["Version"] == "2012-10-17"
        assert all(ord(c) < 128 for c in req.to_json())


def test_validation_is_real():
    """A broken input is refused with botocore's report, not waved through."""
    bad = ApiRequest("batch", "CreateJobQueue", {"jobQueueName": "q", "priority": "high"})
    with pytest.raises(InvalidRequest, match="Invalid type for parameter priority"):
        bad.validate()
    with pytest.raises(InvalidRequest, match='Missing required parameter in input: "Policy"'):
        ApiRequest("s3", "PutBucketPolicy", {"Bucket": "b"}).validate()
    with pytest.raises(InvalidRequest, match="Unknown parameter"):
        ApiRequest("ec2", "CreateLaunchTemplate",
                   {"LaunchTemplateName": "x", "LaunchTemplateData": {}, "Bogus": 1}).validate()
    with pytest.raises(KitError, match="botocore has no"):
        ApiRequest("batch", "NoSuchOperation", {}).validate()


def test_cli_commands():
    reqs = dict(kit.requests(kit_options()))
    assert reqs["s3-put-bucket-policy.json"].cli_command("p.json") == \
        "aws s3api put-bucket-policy --cli-input-json file://p.json"
    assert reqs["batch-create-compute-environment.json"].cli_command("ce.json") == \
        "aws batch create-compute-environment --cli-input-json file://ce.json"


def test_compute_environment_is_spot_price_capacity_optimized_on_the_template():
    req = dict(kit.requests(kit_options(gpu="yes")))["batch-create-compute-environment.json"]
    res = req.params["computeResources"]
    assert res["type"] == "SPOT" and res["allocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert res["minvCpus"] == 0
    assert res["launchTemplate"] == {"launchTemplateName": "mmbatch-node", "version": "$Latest"}
    assert res["ec2Configuration"] == [{"imageType": "ECS_AL2023_NVIDIA"}]
    assert res["instanceRole"] == "arn:aws:iam::111122223333:instance-profile/ecsInstanceRole"
    assert res["instanceTypes"] == ["c6i", "m6i", "r6i"]


def test_job_definition_retries_host_failures_only():
    req = batch.register_job_definition("j", "img:1", attempts=4)
    assert req.params["retryStrategy"] == {"attempts": 4, "evaluateOnExit": [
        {"onStatusReason": "Host EC2*", "action": "RETRY"}, {"onReason": "*", "action": "EXIT"}]}
    for attempts in (0, 1, 11):
        with pytest.raises(KitError, match="--attempts"):
            batch.register_job_definition("j", "img:1", attempts=attempts)
    with pytest.raises(KitError, match="^--vcpus: "):
        batch.register_job_definition("j", "img:1", vcpus=0)
    with pytest.raises(KitError, match="^--memory: "):
        batch.register_job_definition("j", "img:1", memory_mib=0)


def test_job_queue_and_names_are_checked():
    assert batch.create_job_queue("q", "ce").params["computeEnvironmentOrder"] == [
        {"order": 1, "computeEnvironment": "ce"}]
    with pytest.raises(KitError, match="--job-queue"):
        batch.create_job_queue("bad name", "ce")
    with pytest.raises(KitError, match="--subnets"):
        batch.create_compute_environment("ce", "lt", [], ["sg"], "profile")


def test_launch_template_carries_the_user_data_and_imdsv2():
    reqs = dict(kit.requests(kit_options()))
    data = reqs["ec2-create-launch-template.json"].params["LaunchTemplateData"]
    assert data["MetadataOptions"] == {"HttpEndpoint": "enabled", "HttpTokens": "required",
                                       "HttpPutResponseHopLimit": 1}
    mime = email.message_from_bytes(base64.b64decode(data["UserData"]))
    assert mime.is_multipart()
    assert [p.get_content_type() for p in mime.get_payload()] == ["text/x-shellscript"]
