"""AWS Batch requests: a Spot compute environment, its job queue, a job definition.

- Compute environment: MANAGED, Spot, SPOT_PRICE_CAPACITY_OPTIMIZED (the
  pools least likely to be reclaimed among the cheapest), from 0 vCPUs,
  started from the mmbatch launch template on the ECS-optimized AL2023
  image (ECS_AL2023_NVIDIA for GPUs). Instance types: a checkpoint restores
  only on a CPU with the flags it was taken with (checked; otherwise a cold
  start), so the default list keeps to one CPU generation (Intel Ice Lake:
  c6i, m6i, r6i) rather than "optimal".
- Job queue: the compute environment, order 1.
- Job definition: a container job whose retryStrategy retries only what the
  host did (`onStatusReason: "Host EC2*"`, a Spot reclaim or a lost
  instance), and exits on anything else: the job's own failure would fail
  again, and mmbatch never restores a job that ended on its own.
"""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

from mmbatch.aws.errors import KitError
from mmbatch.aws.requests import ApiRequest

DEFAULT_INSTANCE_TYPES = ("c6i", "m6i", "r6i")
HOST_EC2_REASON = "Host EC2*"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def _name(value: str, option: str) -> str:
    if not _NAME_RE.match(value):
        raise KitError(f"{value!r}: 1-128 letters, digits, - and _, starting alphanumeric", option=option)
    return value


def _nonempty(values: Sequence[str], option: str) -> List[str]:
    out = [v for v in values if v]
    if not out:
        raise KitError("at least one is needed", option=option)
    return out


def create_compute_environment(
    name: str,
    launch_template: str,
    subnets: Sequence[str],
    security_groups: Sequence[str],
    instance_role: str,
    max_vcpus: int = 256,
    instance_types: Sequence[str] = DEFAULT_INSTANCE_TYPES,
    gpu: bool = False,
    service_role: Optional[str] = None,
) -> ApiRequest:
    """batch CreateComputeEnvironment: Spot, price-capacity-optimized, the launch template."""
    if max_vcpus < 1:
        raise KitError(f"{max_vcpus} is not a positive number of vCPUs", option="--max-vcpus")
    resources = {
        "type": "SPOT",
        "allocationStrategy": "SPOT_PRICE_CAPACITY_OPTIMIZED",
        "minvCpus": 0,
        "maxvCpus": max_vcpus,
        "instanceTypes": _nonempty(instance_types, "--instance-types"),
        "subnets": _nonempty(subnets, "--subnets"),
        "securityGroupIds": _nonempty(security_groups, "--security-groups"),
        "instanceRole": instance_role,
        "launchTemplate": {"launchTemplateName": launch_template, "version": "$Latest"},
        "ec2Configuration": [{"imageType": "ECS_AL2023_NVIDIA" if gpu else "ECS_AL2023"}],
        "tags": {"mmbatch": "node"},
    }
    params: Dict[str, object] = {
        "computeEnvironmentName": _name(name, "--compute-environment"),
        "type": "MANAGED",
        "state": "ENABLED",
        "computeResources": resources,
    }
    if service_role:
        params["serviceRole"] = service_role
    return ApiRequest("batch", "CreateComputeEnvironment", params).validate()


def create_job_queue(name: str, compute_environment: str, priority: int = 1) -> ApiRequest:
    """batch CreateJobQueue on the one compute environment."""
    return ApiRequest("batch", "CreateJobQueue", {
        "jobQueueName": _name(name, "--job-queue"),
        "state": "ENABLED",
        "priority": priority,
        "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": _name(compute_environment,
                                                                               "--compute-environment")}],
    }).validate()


def retry_strategy(attempts: int) -> Dict[str, object]:
    """Retry what the host did (Spot reclaim, lost instance); exit on the job's own failures."""
    if not 2 <= attempts <= 10:
        raise KitError(f"{attempts} is not 2-10 (Batch allows 1-10; 1 would never retry)", option="--attempts")
    return {
        "attempts": attempts,
        "evaluateOnExit": [
            {"onStatusReason": HOST_EC2_REASON, "action": "RETRY"},
            {"onReason": "*", "action": "EXIT"},
        ],
    }


def register_job_definition(
    name: str,
    image: str,
    vcpus: int = 1,
    memory_mib: int = 2048,
    attempts: int = 5,
    command: Optional[Sequence[str]] = None,
    environment: Optional[Dict[str, str]] = None,
) -> ApiRequest:
    """batch RegisterJobDefinition: a container job with mmbatch's retryStrategy."""
    if not image:
        raise KitError("an image is needed", option="--image")
    # botocore checks only that the values are strings; Batch refuses these when the job is registered.
    if vcpus < 1:
        raise KitError(f"{vcpus} is not a positive number of vCPUs", option="--vcpus")
    if memory_mib < 4:
        raise KitError(f"{memory_mib} MiB: Batch needs at least 4 MiB for a job on EC2", option="--memory")
    props: Dict[str, object] = {
        "image": image,
        "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)},
                                 {"type": "MEMORY", "value": str(memory_mib)}],
    }
    if command:
        props["command"] = list(command)
    if environment:
        props["environment"] = [{"name": k, "value": v} for k, v in sorted(environment.items())]
    return ApiRequest("batch", "RegisterJobDefinition", {
        "jobDefinitionName": _name(name, "--job-definition"),
        "type": "container",
        "platformCapabilities": ["EC2"],
        "containerProperties": props,
        "retryStrategy": retry_strategy(attempts),
    }).validate()
