"""`mmbatch aws ...`: print (or write) the deployment kit's requests and files.

Each request subcommand prints the JSON input of one API call, ready for
`aws SERVICE OPERATION --cli-input-json file://FILE` (the command is shown
on stderr); `user-data`, `nextflow` and `cromwell` print text; `kit` writes
everything into a directory with an apply script. Nothing calls AWS.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, List

from mmbatch.aws import batch, iam, kit, launch_template, s3_bucket, user_data, workflows
from mmbatch.aws.errors import KitError
from mmbatch.aws.requests import ApiRequest


def _csv(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _emit(req: ApiRequest, file_hint: str) -> int:
    sys.stdout.write(req.to_json())
    print(f"# apply: {req.cli_command(file_hint)}", file=sys.stderr)
    return 0


def _store_args(p: argparse.ArgumentParser, kms: bool = True) -> None:
    p.add_argument("--store", required=True, help="the checkpoint store, s3://bucket/prefix")
    p.add_argument("--partition", default="aws", help="aws | aws-cn | aws-us-gov")
    if kms:
        p.add_argument("--kms-key-arn", default="", help="SSE-KMS with this key (default: SSE-S3)")


def cmd_user_data(args: argparse.Namespace, _cfg: Any) -> int:
    opts = user_data.UserDataOptions(
        store=args.store, source=args.source, source_sha256=args.source_sha256, mode=args.mode, gpu=args.gpu,
        region=args.region, sse=s3_bucket.sse_mode(args.kms_key_arn), kms_key_id=args.kms_key_arn,
        expected_bucket_owner=args.account, stop_timeout=args.stop_timeout, start_timeout=args.start_timeout,
        spot_draining=args.spot_draining)
    sys.stdout.write(user_data.render(opts))
    return 0


def cmd_iam_policy(args: argparse.Namespace, _cfg: Any) -> int:
    policy = iam.instance_role_policy(args.store, args.partition, args.kms_key_arn or None, args.source or None)
    if args.instance_role:
        return _emit(iam.put_role_policy(args.instance_role, policy), "iam-put-role-policy.json")
    print(json.dumps(policy, indent=2))
    return 0


def cmd_bucket_policy(args: argparse.Namespace, _cfg: Any) -> int:
    req = s3_bucket.put_bucket_policy(args.store, args.partition, args.kms_key_arn or None, args.account or None)
    return _emit(req, "s3-put-bucket-policy.json")


def cmd_lifecycle(args: argparse.Namespace, _cfg: Any) -> int:
    req = s3_bucket.put_bucket_lifecycle_configuration(args.store, args.garbage_days, args.versioned,
                                                       args.account or None)
    return _emit(req, "s3-put-bucket-lifecycle-configuration.json")


def cmd_launch_template(args: argparse.Namespace, _cfg: Any) -> int:
    try:
        with open(args.user_data, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise KitError(f"cannot read {args.user_data}: {e}", option="--user-data") from None
    return _emit(launch_template.create_launch_template(args.name, text, args.imds_hop_limit),
                 "ec2-create-launch-template.json")


def cmd_compute_environment(args: argparse.Namespace, _cfg: Any) -> int:
    req = batch.create_compute_environment(
        args.name, args.launch_template, _csv(args.subnets), _csv(args.security_groups), args.instance_profile,
        args.max_vcpus, _csv(args.instance_types), gpu=args.gpu)
    return _emit(req, "batch-create-compute-environment.json")


def cmd_job_queue(args: argparse.Namespace, _cfg: Any) -> int:
    return _emit(batch.create_job_queue(args.name, args.compute_environment, args.priority),
                 "batch-create-job-queue.json")


def cmd_job_definition(args: argparse.Namespace, _cfg: Any) -> int:
    req = batch.register_job_definition(args.name, args.image, args.vcpus, args.memory, args.attempts,
                                        args.command or None)
    return _emit(req, "batch-register-job-definition.json")


def cmd_nextflow(args: argparse.Namespace, _cfg: Any) -> int:
    sys.stdout.write(workflows.nextflow_config(args.queue, args.region, args.max_spot_attempts, args.work_dir))
    return 0


def cmd_cromwell(args: argparse.Namespace, _cfg: Any) -> int:
    sys.stdout.write(workflows.cromwell_config(args.queue_arn, args.region, args.root, args.attempts))
    return 0


def cmd_kit(args: argparse.Namespace, _cfg: Any) -> int:
    opts = kit.KitOptions(
        store=args.store, source=args.source, region=args.region, account=args.account,
        subnets=_csv(args.subnets), security_groups=_csv(args.security_groups), instance_role=args.instance_role,
        instance_profile=args.instance_profile, name=args.name, partition=args.partition,
        source_sha256=args.source_sha256, kms_key_arn=args.kms_key_arn, mode=args.mode, gpu=args.gpu,
        max_vcpus=args.max_vcpus, instance_types=_csv(args.instance_types), image=args.image,
        attempts=args.attempts, garbage_days=args.garbage_days, versioned=args.versioned)
    for path in kit.write(opts, args.out, force=args.force):
        print(path)
    print(f"# next: read {args.out}/apply.sh, then run it (docs/aws.md)", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add `mmbatch aws` and its subcommands to the main parser's subparsers."""
    top = subparsers.add_parser("aws", help="AWS Batch deployment kit: user data, IAM, bucket, Batch, workflows")
    sub = top.add_subparsers(dest="aws_command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace, Any], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        return p

    def node_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--source", required=True,
                       help="the mmbatch source tarball: s3://bucket/key.tar.gz (read with the instance role) "
                            "or https://...")
        p.add_argument("--source-sha256", default="", help="refuse a tarball with another SHA-256")
        p.add_argument("--region", required=True, help="the store bucket's (and the source bucket's) region")
        p.add_argument("--mode", default="iterative", choices=("iterative", "none"))
        p.add_argument("--gpu", default="auto", choices=("auto", "yes", "no"))

    p = add("user-data", cmd_user_data, "launch-template user data (MIME multipart) that installs mmbatch at boot")
    p.add_argument("--store", required=True, help="s3://bucket/prefix, or file:///path mounted on every node")
    node_args(p)
    p.add_argument("--kms-key-arn", default="", help="the store uses SSE-KMS with this key")
    p.add_argument("--account", default="", help="the bucket owner's account id (checked on every S3 call)")
    p.add_argument("--stop-timeout", default="120s", help="ECS_CONTAINER_STOP_TIMEOUT (>= 120s)")
    p.add_argument("--start-timeout", default="11m", help="ECS_CONTAINER_START_TIMEOUT (> a restore's 10m)")
    p.add_argument("--no-spot-draining", dest="spot_draining", action="store_false",
                   help="leave ECS_ENABLE_SPOT_INSTANCE_DRAINING unset")

    p = add("iam-policy", cmd_iam_policy, "the instance role's least-privilege policy for the store")
    _store_args(p)
    p.add_argument("--source", default="", help="also allow reading this s3:// source tarball")
    p.add_argument("--instance-role", default="", help="print iam PutRolePolicy input for this role instead")

    p = add("bucket-policy", cmd_bucket_policy, "s3 PutBucketPolicy: TLS only, the store's encryption")
    _store_args(p)
    p.add_argument("--account", default="", help="ExpectedBucketOwner")

    p = add("lifecycle", cmd_lifecycle, "s3 PutBucketLifecycleConfiguration: expire only what gc marked")
    _store_args(p, kms=False)
    p.add_argument("--garbage-days", type=int, default=1, help="expire gc-marked objects after this many days")
    p.add_argument("--versioned", action="store_true", help="the bucket has versioning on")
    p.add_argument("--account", default="", help="ExpectedBucketOwner")

    p = add("launch-template", cmd_launch_template, "ec2 CreateLaunchTemplate: the user data, IMDSv2 required")
    p.add_argument("--name", default="mmbatch-node")
    p.add_argument("--user-data", required=True, help="the file `mmbatch aws user-data` wrote")
    p.add_argument("--imds-hop-limit", type=int, default=1)

    p = add("compute-environment", cmd_compute_environment, "batch CreateComputeEnvironment: Spot, the template")
    p.add_argument("--name", default="mmbatch-spot")
    p.add_argument("--launch-template", default="mmbatch-node")
    p.add_argument("--subnets", required=True, help="comma-separated subnet ids")
    p.add_argument("--security-groups", required=True, help="comma-separated security group ids")
    p.add_argument("--instance-profile", required=True, help="the instance profile's name or ARN")
    p.add_argument("--max-vcpus", type=int, default=256)
    p.add_argument("--instance-types", default=",".join(batch.DEFAULT_INSTANCE_TYPES),
                   help="comma-separated; keep to one CPU generation (checkpoints check CPU flags)")
    p.add_argument("--gpu", action="store_true", help="the ECS_AL2023_NVIDIA image")

    p = add("job-queue", cmd_job_queue, "batch CreateJobQueue on the compute environment")
    p.add_argument("--name", default="mmbatch-spot")
    p.add_argument("--compute-environment", default="mmbatch-spot")
    p.add_argument("--priority", type=int, default=1)

    p = add("job-definition", cmd_job_definition, "batch RegisterJobDefinition with the Host EC2* retryStrategy")
    p.add_argument("--name", default="mmbatch-job")
    p.add_argument("--image", required=True)
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--memory", type=int, default=2048, help="MiB")
    p.add_argument("--attempts", type=int, default=5)
    p.add_argument("command", nargs="*", help="the container's command")

    p = add("nextflow", cmd_nextflow, "nextflow.config for the queue (maxSpotAttempts above 0)")
    p.add_argument("--queue", default="mmbatch-spot")
    p.add_argument("--region", required=True)
    p.add_argument("--max-spot-attempts", type=int, default=5)
    p.add_argument("--work-dir", default="", help="s3://bucket/work")

    p = add("cromwell", cmd_cromwell, "cromwell.conf AWS Batch backend with Batch-level retries")
    p.add_argument("--queue-arn", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--root", required=True, help="s3://bucket/cromwell-execution")
    p.add_argument("--attempts", type=int, default=5)

    p = add("kit", cmd_kit, "all of the above into a directory, with apply.sh")
    _store_args(p)
    node_args(p)
    p.add_argument("--account", required=True, help="the account id (bucket owner, ARNs)")
    p.add_argument("--subnets", required=True)
    p.add_argument("--security-groups", required=True)
    p.add_argument("--instance-role", required=True, help="the instance role's name")
    p.add_argument("--instance-profile", default="", help="its instance profile's name (default: the role's)")
    p.add_argument("--name", default="mmbatch", help="prefix of the resource names")
    p.add_argument("--max-vcpus", type=int, default=256)
    p.add_argument("--instance-types", default=",".join(batch.DEFAULT_INSTANCE_TYPES))
    p.add_argument("--image", default="public.ecr.aws/amazonlinux/amazonlinux:2023",
                   help="the example job definition's image")
    p.add_argument("--attempts", type=int, default=5, help="Batch attempts (job definition, Nextflow, Cromwell)")
    p.add_argument("--garbage-days", type=int, default=1)
    p.add_argument("--versioned", action="store_true")
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument("--force", action="store_true", help="replace files already there")
