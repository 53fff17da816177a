"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.lib import docker as dk  # noqa: E402

RUNTIME = os.environ.get("MMBATCH_TEST_RUNTIME", "mmbatch")
# CI sets MMBATCH_TEST_STRICT=1: a missing prerequisite is then a failure,
# never a silent skip that would make a green run mean nothing.
STRICT = os.environ.get("MMBATCH_TEST_STRICT") == "1"


def unavailable(why: str) -> None:
    if STRICT:
        pytest.fail(f"prerequisite missing in strict mode: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def docker_engine():
    why = dk.available()
    if why:
        unavailable(why)
    if RUNTIME not in dk.runtimes():
        unavailable(f"runtime {RUNTIME!r} is not registered with dockerd (run install.sh)")
    return dk


@pytest.fixture(scope="session")
def busybox_image(docker_engine):
    return dk.ensure_busybox()


@pytest.fixture(scope="session")
def python_image(docker_engine):
    return dk.ensure_python()


@pytest.fixture
def containers(docker_engine):
    c = dk.Containers()
    yield c
    c.cleanup()


@pytest.fixture
def needs_root():
    if os.geteuid() != 0:
        unavailable("needs root")


def _host_store_jobs() -> str:
    """The jobs directory of this node's file store (/etc/mmbatch/config.toml), or ""."""
    from mmbatch import config as config_mod
    from mmbatch.errors import MmbatchError

    try:
        url = config_mod.load().store.url
    except MmbatchError:
        return ""
    path = url[len("file://"):] if url.startswith("file://") else url if url.startswith("/") else ""
    return os.path.join(path, "jobs") if path else ""


@pytest.fixture(scope="session", autouse=True)
def host_store_cleanup():
    """Jobs that tests run through the host's dockerd checkpoint into the node's
    store; a job that never succeeds keeps its checkpoints there. Remove the
    job directories this session created (only those), so repeated runs do
    not fill the disk."""
    import shutil

    jobs_dir = _host_store_jobs() if os.geteuid() == 0 else ""
    try:
        before = set(os.listdir(jobs_dir)) if jobs_dir else set()
    except OSError:
        before = set()
    yield
    if not jobs_dir:
        return
    try:
        created = set(os.listdir(jobs_dir)) - before
    except OSError:
        return
    for name in created:
        shutil.rmtree(os.path.join(jobs_dir, name), ignore_errors=True)
