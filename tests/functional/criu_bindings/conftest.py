"""Functional tests of criu_bindings against the real CRIU (root and CRIU >= 4 needed).

Process trees under test are started here and torn down by PID. While the
tests run, the pytest process is a child subreaper (PR_SET_CHILD_SUBREAPER)
so that processes orphaned by a dump (killed by CRIU) or by a restore
(``criu swrk`` exits) are reparented to us and reaped at once: on this
machine init takes over a second to reap them, and a restore needs their
pids free.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tempfile
from typing import Callable, Iterator, List, Optional

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
for _p in (REPO, HERE):  # criu_bindings, and criu_procs even with --import-mode=importlib
    if _p not in sys.path:
        sys.path.insert(0, _p)

from criu_procs import Trees, alive, children, reap  # noqa: E402

from criu_bindings import CriuBindingsError, CriuClient, find_criu  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36


def _skip_reason() -> Optional[str]:
    if os.geteuid() != 0:
        return "needs root (CRIU dumps and restores processes)"
    try:
        criu = find_criu()
    except CriuBindingsError as e:
        return f"no criu: {e}"
    try:
        version = CriuClient(criu, query_timeout=30).version()
    except CriuBindingsError as e:
        return f"criu at {criu} does not answer RPC: {e}"
    if version.major < 4:
        return f"needs CRIU >= 4, found {version} at {criu}"
    return None


SKIP_REASON = _skip_reason()
# As in tests/conftest.py: CI sets MMBATCH_TEST_STRICT=1 and then a missing
# prerequisite fails the tests instead of skipping them.
STRICT = os.environ.get("MMBATCH_TEST_STRICT") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if str(item.fspath).startswith(HERE):
            item.add_marker(pytest.mark.root)
            item.add_marker(pytest.mark.criu)
            if SKIP_REASON and not STRICT:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(autouse=True)
def _prerequisites() -> None:
    if SKIP_REASON and STRICT:
        pytest.fail(f"prerequisite missing in strict mode: {SKIP_REASON}")


@pytest.fixture(scope="session")
def criu_bin() -> str:
    return find_criu()


@pytest.fixture(scope="session")
def client(criu_bin: str) -> CriuClient:
    return CriuClient(criu_bin, timeout=60)


@pytest.fixture(scope="package", autouse=True)
def subreaper() -> Iterator[None]:
    # Package scope: the rest of the session (private dockerds, detached
    # finalizers) must not have its orphans adopted, and left unreaped, by pytest.
    if SKIP_REASON:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    # orphans adopted meanwhile that already died: reap them (by pid)
    reap([p for p in children(os.getpid()) if not alive(p)])


@pytest.fixture
def trees() -> Iterator[Trees]:
    t = Trees()
    try:
        yield t
    finally:
        t.cleanup()


@pytest.fixture
def images() -> Iterator[Callable[[str], str]]:
    """images("name") -> a fresh 0700 directory; all are removed after the test (they hold memory)."""
    made: List[str] = []

    def make(name: str) -> str:
        d = tempfile.mkdtemp(prefix=f"mmbatch-criu-{name}-")
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
