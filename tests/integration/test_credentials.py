"""A restored job keeps the credentials URI of the task that started it.

ECS gives each task its own AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, served by
the ECS agent of the node that runs the task. The restored process's
environment is its memory, so after a restore on another node it still names
the old task's path, which that node's agent does not serve: its AWS SDK
works until its cached credentials expire, then fails. This test shows that
behaviour (README: "Credentials of restored jobs" says what to do).
"""

from __future__ import annotations

import os

import pytest

from tests.integration import jobs
from tests.lib import docker as dk

pytestmark = [pytest.mark.docker, pytest.mark.criu]

ENV_VAR = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"


def _process_env(name: str) -> dict:
    raw = dk.docker("exec", name, "cat", "/proc/1/environ").stdout
    return dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)


def test_restored_job_still_holds_the_old_tasks_credentials_uri(containers, busybox_image, tmp_path):
    vol, job_id = str(tmp_path), f"creds-{os.urandom(4).hex()}"
    old_uri, new_uri = "/v2/credentials/task-1-aaaa", "/v2/credentials/task-2-bbbb"
    a1 = jobs.start_counter(containers, busybox_image, job_id, 1, vol, extra=("-e", f"{ENV_VAR}={old_uri}"))
    jobs.wait_lines(a1, 3)
    last, _ck = jobs.paused_checkpoint(a1)
    jobs.kill(a1)

    a2 = jobs.start_counter(containers, busybox_image, job_id, 2, vol, extra=("-e", f"{ENV_VAR}={new_uri}"))
    first = jobs.wait_lines(a2, 2)[0]
    assert first[0] == last[0] + 1, "the differing credentials URI must not prevent the restore"
    engine_env = dict(e.split("=", 1) for e in dk.inspect(a2)["Config"]["Env"])
    assert engine_env[ENV_VAR] == new_uri  # what the new task was given
    assert _process_env(a2)[ENV_VAR.encode()] == old_uri.encode()  # what the restored job uses
