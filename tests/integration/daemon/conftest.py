"""Fixtures of mmbatchd's integration tests: private nodes (own dockerd and
mmbatchd, see node.py), a fake IMDS per node, a checkpoint store dir."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional

import pytest

from mmbatch.imds_fake import FakeImds
from tests.conftest import unavailable
from tests.integration.daemon.node import Node


@pytest.fixture
def daemon_prereqs(docker_engine, needs_root):
    if not shutil.which("dockerd") or not shutil.which("runc"):
        unavailable("dockerd and runc are needed for private nodes")
    if not shutil.which("criu"):
        unavailable("criu is not installed")
    return docker_engine


@pytest.fixture
def store_dir():
    d = tempfile.mkdtemp(prefix="mmbt-store-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def imds_factory():
    started: List[FakeImds] = []

    def make() -> FakeImds:
        f = FakeImds(instance_id="i-0" + os.urandom(8).hex()).start()
        started.append(f)
        return f

    yield make
    for f in started:
        f.stop()


@pytest.fixture
def node_factory(daemon_prereqs, store_dir) -> Callable[..., Node]:
    nodes: List[Node] = []

    def make(name: str, images=(), store: str = "", extra_env: Optional[Dict[str, str]] = None,
             **config: Any) -> Node:
        """A started node; `config`: Node.write_config's keywords, `extra_env`: for its runtime and daemon."""
        n = Node(name, store or store_dir)
        nodes.append(n)
        n.extra_env.update(extra_env or {})
        n.write_config(**config)
        n.start_dockerd()
        if images:
            n.load_images(*images)
        return n

    yield make
    for n in reversed(nodes):
        n.stop()
