"""Hostile container ids and paths: never a file outside the state dir, and
always the delegate's call (runc judges the id; the shim only stays out of
the way). The bundle is a managed one, so every id gets the chance to make
the shim write state.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List

import pytest

from tests.unit.shim.shim_harness import ShimHarness, hexargs

VALID_LONG_MAX = "a" * 255  # the longest single path component: state is allowed


# "{T}" is the tmp world (an absolute id pointing at a decoy in it).
HOSTILE_IDS = {
    "dotdot-x": "../x",
    "dotdot-deep": "../../../../../../../../tmp/mmbatch-unit-escape",
    "dotdot-victim": "../victim",
    "absolute": "{T}/abs-target",
    "a-slash-b": "a/b",
    "trailing-slash": "abc/",
    "dot": ".",
    "dotdot": "..",
    "dot-slash": "./victim",
    "long-300": "b" * 300,
    "long-5000": "c" * 5000,
    "unicode": "контейнер-é",
    "unicode-lookalike-slash": "a\u2215b",
    "newline": "a\nb",
    "tab-space": "a\tb c",
    "leading-dash": "-x",
    "comma": "a,b",
    "star": "*",
    "backslash": "a\\b",
    "cache-file-name": "config.cache",
    "percent-dollar": "%s$HOME",
}


def _commands(shim: ShimHarness, cid: str, bundle: str, log: str) -> Dict[str, List[str]]:
    # start only reads state: create (writes), kill (updates), delete (removes)
    # are the calls a path trick could turn into a write outside.
    g = ["--root", shim.root, "--log", log, "--log-format", "json"]
    return {
        "create": g + ["create", "--bundle", bundle, "--pid-file", os.path.join(shim.tmp, "init.pid"), cid],
        "kill": g + ["kill", cid, "9"],
        "delete": g + ["delete", "--force", cid],
    }


def _plant_decoys(shim: ShimHarness) -> Dict[str, bytes]:
    """State-looking files outside the state dir that a path trick would hit."""
    decoys = {}
    for rel in ("victim/state.json", "x/state.json", "abs-target/state.json", "a/b/state.json"):
        path = os.path.join(shim.tmp, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = json.dumps({"managed": True, "decision": "cold", "job": {"job_key": "decoy"}}).encode()
        with open(path, "wb") as f:
            f.write(data)
        decoys[path] = data
    return decoys


@pytest.mark.parametrize("case", sorted(HOSTILE_IDS))
def test_hostile_id_writes_nothing_outside_state_dir(shim: ShimHarness, case: str) -> None:
    # The config cache inside the state dir, as with the defaults.
    shim.cache = os.path.join(shim.state_dir, "config.cache")
    os.makedirs(shim.state_dir)
    cid = HOSTILE_IDS[case].replace("{T}", shim.tmp)
    bundle = shim.bundle(["AWS_BATCH_JOB_ID=job-hostile"])
    decoys = _plant_decoys(shim)
    shim.run("state", "warm-up")  # writes the cache
    assert os.path.isfile(shim.cache)
    cache_before = open(shim.cache, "rb").read()
    log = os.path.join(shim.tmp, "logs-dir", "log.json")  # fail-open warnings may land here
    before = shim.tree(exclude=[shim.state_dir, os.path.dirname(log)])
    outside_tmp = "/tmp/mmbatch-unit-escape"
    for name, argv in _commands(shim, cid, bundle, log).items():
        res = shim.run(*argv, exit_code=0)
        assert res.returncode == 0, (name, res)
        assert res.call["argv_hex"][1:] == hexargs(argv), name
        assert b"Traceback" not in res.stderr, (name, res.stderr)
        # Nothing new outside the state dir (the bundle's config.json may be
        # rewritten for a managed create; it is not a new file).
        after = shim.tree(exclude=[shim.state_dir, os.path.dirname(log)])
        assert after == before, (name, sorted(set(after) ^ set(before)))
        for path, data in decoys.items():
            assert open(path, "rb").read() == data, (name, path)
        assert not os.path.exists(outside_tmp)
        assert open(shim.cache, "rb").read() == cache_before, name
    # Inside the state dir: only the cache and, at most, one proper entry.
    for entry in shim.state_entries():
        assert entry == "config.cache" or os.path.dirname(os.path.join(shim.state_dir, entry)) == shim.state_dir


def test_longest_valid_id_is_managed_inside_state_dir(shim: ShimHarness) -> None:
    bundle = shim.bundle(["AWS_BATCH_JOB_ID=job-long"])
    argv = ["--root", shim.root, "create", "--bundle", bundle, VALID_LONG_MAX]
    res = shim.run(*argv)
    assert res.returncode == 0, res
    assert res.call["argv"][1:] == argv
    assert shim.state_entries() == [VALID_LONG_MAX]
    res = shim.run("--root", shim.root, "delete", VALID_LONG_MAX)
    assert res.call["argv"][1:] == ["--root", shim.root, "delete", VALID_LONG_MAX]
    assert shim.state_entries() == []


@pytest.mark.parametrize("flag,value", [
    ("--bundle", "../bundle"),               # relative to the caller's cwd
    ("--pid-file", "../../etc/evil.pid"),
    ("--console-socket", "/nonexistent/console.sock"),
])
def test_hostile_paths_in_create_are_the_delegates_business(shim: ShimHarness, flag: str, value: str) -> None:
    shim.bundle(["AWS_BATCH_JOB_ID=job-paths"])
    cwd = os.path.join(shim.tmp, "cwd")
    os.makedirs(cwd)
    argv = ["--root", "../runc-root", "create", "--bundle", "../bundle", flag, value, "cid-paths"]
    if flag == "--bundle":
        argv = ["--root", "../runc-root", "create", flag, value, "cid-paths"]
    shim.run("state", "warm-up")
    ours = [shim.state_dir, shim.store, shim.staging, shim.log_dir, os.path.join(shim.tmp, "bundle")]
    before = shim.tree(exclude=ours)
    res = shim.run(*argv, cwd=cwd)
    assert res.returncode == 0, res
    assert res.call["argv"][1:] == argv
    assert res.call["cwd"] == cwd
    assert shim.tree(exclude=ours) == before
    assert os.listdir(shim.root) == []
