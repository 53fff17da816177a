"""Nextflow and Cromwell configuration: Batch-level retries, so checkpoints apply."""

from __future__ import annotations

import re

import pytest

from mmbatch.aws import workflows
from mmbatch.aws.errors import KitError


def _balanced(text: str) -> bool:
    depth = 0
    for c in re.sub(r"(//|#).*", "", text):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth < 0:
            return False
    return depth == 0


def test_nextflow_sets_max_spot_attempts_above_zero_and_says_why():
    text = workflows.nextflow_config("mmbatch-spot", "us-east-1", 3, "s3://work-bucket/work")
    assert re.search(r"^\s*maxSpotAttempts = 3$", text, re.M)
    assert "process {\n    executor = 'awsbatch'\n    queue = 'mmbatch-spot'\n}" in text
    assert "workDir = 's3://work-bucket/work'" in text
    assert "24.10" in text and "new job" in text.lower()
    assert _balanced(text)
    with pytest.raises(KitError, match="no checkpoint can serve"):
        workflows.nextflow_config("q", "us-east-1", 0)
    arn = "arn:aws:batch:us-east-1:111122223333:job-queue/mmbatch-spot"
    assert f"queue = '{arn}'" in workflows.nextflow_config(arn, "us-east-1")


@pytest.mark.parametrize("call,option", [
    (lambda: workflows.nextflow_config("it's", "us-east-1"), "--queue"),
    (lambda: workflows.nextflow_config("q\n}\nprocess.executor = 'local'", "us-east-1"), "--queue"),
    (lambda: workflows.nextflow_config("q", "us-east-1'\nx"), "--region"),
    (lambda: workflows.nextflow_config("q", "us-east-1", work_dir="/local/work"), "--work-dir"),
    (lambda: workflows.cromwell_config("mmbatch-spot", "us-east-1", "s3://b-1/c"), "--queue-arn"),
    (lambda: workflows.cromwell_config("arn:aws:batch:us-east-1:111122223333:job-queue/q", "moon", "s3://b-1/c"),
     "--region"),
    (lambda: workflows.cromwell_config("arn:aws:batch:us-east-1:111122223333:job-queue/q", "us-east-1",
                                       's3://b-1/c"\n}'), "--root"),
])
def test_values_that_would_break_the_config_are_refused(call, option):
    with pytest.raises(KitError, match=f"^{option}: "):
        call()


def test_cromwell_uses_batch_retries():
    arn = "arn:aws:batch:us-east-1:111122223333:job-queue/mmbatch-spot"
    text = workflows.cromwell_config(arn, "us-east-1", "s3://b/cromwell-execution", 4)
    assert f'queueArn = "{arn}"' in text
    assert re.search(r"^\s*awsBatchRetryAttempts = 4$", text, re.M)
    assert _balanced(text)
    with pytest.raises(KitError, match="--root"):
        workflows.cromwell_config(arn, "us-east-1", "/local")
    with pytest.raises(KitError):
        workflows.cromwell_config(arn, "us-east-1", "s3://b/c", 11)
