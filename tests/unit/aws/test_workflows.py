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
    assert "queue = 'it\\'s'" in workflows.nextflow_config("it's", "us-east-1")


def test_cromwell_uses_batch_retries():
    arn = "arn:aws:batch:us-east-1:111122223333:job-queue/mmbatch-spot"
    text = workflows.cromwell_config(arn, "us-east-1", "s3://b/cromwell-execution", 4)
    assert f'queueArn = "{arn}"' in text
    assert re.search(r"^\s*awsBatchRetryAttempts = 4$", text, re.M)
    assert _balanced(text)
    with pytest.raises(KitError, match="--cromwell-root"):
        workflows.cromwell_config(arn, "us-east-1", "/local")
    with pytest.raises(KitError):
        workflows.cromwell_config(arn, "us-east-1", "s3://b/c", 11)
