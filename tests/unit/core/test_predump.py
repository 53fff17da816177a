"""The pre-dump chain's pure logic, and its runc calls through a fake runtime that records argv."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from mmbatch import config as config_mod
from mmbatch import predump
from mmbatch.errors import CheckpointError, ConfigError, RestoreError
from mmbatch.runc import Runc

# A runtime that records each call's argv as a JSON line and does what CRIU
# does to the images directory: creates it, writes a pagemap, and links
# `parent` to --parent-path. FAIL_ON=<n> makes call n fail like runc does.
FAKE_RUNTIME = r"""#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
with open(os.environ["FAKE_LOG"]) as f:
    n = sum(1 for _ in f)
if os.environ.get("FAKE_FAIL_ON") == str(n):
    sys.stderr.write("criu failed: type PRE_DUMP errno 0\n")
    sys.exit(1)
img = args[args.index("--image-path") + 1]
os.makedirs(img, exist_ok=True)
open(os.path.join(img, "pagemap-1.img"), "wb").close()
if "--parent-path" in args:
    os.symlink(args[args.index("--parent-path") + 1], os.path.join(img, "parent"))
"""


@pytest.fixture
def fake_runtime(tmp_path, monkeypatch):
    path = tmp_path / "fake-runc"
    path.write_text(FAKE_RUNTIME)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "argv.log"
    monkeypatch.setenv("FAKE_LOG", str(log))

    def calls():
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    return str(path), calls


def test_plan_chains_each_pass_to_the_previous():
    assert predump.plan(0) == [predump.Step("criu", "", False)]
    assert predump.plan(2) == [
        predump.Step("criu-pre0", "", True),
        predump.Step("criu-pre1", "../criu-pre0", True),
        predump.Step("criu", "../criu-pre1", False),
    ]
    with pytest.raises(ValueError):
        predump.plan(6)
    with pytest.raises(ValueError):
        predump.plan(-1)


def test_chain_label_round_trip_and_hostile_labels():
    assert predump.chain_label(0) == ""
    assert predump.parse_chain_label(predump.chain_label(3)) == ["criu-pre0", "criu-pre1", "criu-pre2"]
    assert predump.parse_chain_label("") == []
    for bad in ("../etc", "criu-pre1", "criu-pre0,criu-pre0", "criu-pre0,/abs", "criu-pre0,criu-pre1,",
                ",".join(predump.pre_dir(n) for n in range(6)), "criu"):
        with pytest.raises(RestoreError):
            predump.parse_chain_label(bad)


def test_relink_recreates_crius_parent_links(tmp_path):
    for d in ("criu-pre0", "criu-pre1", "criu"):
        (tmp_path / d).mkdir()
    predump.relink(str(tmp_path), ["criu-pre0", "criu-pre1"])
    assert os.readlink(tmp_path / "criu" / "parent") == "../criu-pre1"
    assert os.readlink(tmp_path / "criu-pre1" / "parent") == "../criu-pre0"
    assert not os.path.lexists(tmp_path / "criu-pre0" / "parent")
    assert (tmp_path / "criu" / "parent").resolve() == (tmp_path / "criu-pre1").resolve()
    predump.relink(str(tmp_path), ["criu-pre0", "criu-pre1"])  # idempotent
    predump.relink(str(tmp_path), [])  # no chain: nothing to do
    assert sorted(os.listdir(tmp_path / "criu")) == ["parent"]


def test_relink_refuses_a_foreign_link_or_a_missing_pass(tmp_path):
    (tmp_path / "criu").mkdir()
    with pytest.raises(RestoreError, match="incomplete"):
        predump.relink(str(tmp_path), ["criu-pre0"])
    (tmp_path / "criu-pre0").mkdir()
    os.symlink("/etc", tmp_path / "criu" / "parent")
    with pytest.raises(RestoreError, match="not the chain's link"):
        predump.relink(str(tmp_path), ["criu-pre0"])


@pytest.mark.parametrize("mode,iterations,supported,status,expected", [
    ("auto", 1, True, "running", 1),
    ("auto", 3, True, "running", 3),
    ("auto", 1, False, "running", 0),   # no soft-dirty tracking (this kernel)
    ("auto", 1, True, "paused", 0),     # frozen by the user or for a Spot notice: nothing to gain
    ("off", 1, True, "running", 0),
])
def test_wanted(mode, iterations, supported, status, expected):
    assert predump.wanted(mode, iterations, supported, status) == expected


def test_feature_probe_is_cached_per_criu_binary(tmp_path):
    cache = str(tmp_path / "features.json")
    calls = []

    def run(argv, **kw):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0 if len(calls) == 1 else 1)

    criu = "sh"  # any binary on PATH: the cache key is its identity
    assert predump.mem_dirty_track(criu, cache, run=run) is True
    assert calls == [["sh", "check", "--feature", "mem_dirty_track"]]
    assert predump.mem_dirty_track(criu, cache, run=run) is True and len(calls) == 1
    with open(cache) as f:
        data = json.load(f)
    data["criu"] = "another-binary"
    with open(cache, "w") as f:
        json.dump(data, f)
    assert predump.mem_dirty_track(criu, cache, run=run) is False and len(calls) == 2


def test_feature_probe_failing_to_run_is_not_cached(tmp_path):
    cache = str(tmp_path / "features.json")

    def boom(argv, **kw):
        raise subprocess.TimeoutExpired(argv, 30)

    assert predump.mem_dirty_track("sh", cache, run=boom) is False
    assert not os.path.exists(cache)
    assert predump.mem_dirty_track("no-such-criu-binary", cache) is False


def test_pre_dump_argv(fake_runtime, tmp_path):
    runtime, calls = fake_runtime
    runc = Runc(runtime, ["--root", "/run/docker/runtime-runc/moby"], log_file=str(tmp_path / "runc.log"))
    ck, work = str(tmp_path / "out"), str(tmp_path / "work")
    parent = predump.run_pre_dumps(runc, "c1", ck, work, 2)
    assert parent == "../criu-pre1"
    common = ["--root", "/run/docker/runtime-runc/moby", "--log", str(tmp_path / "runc.log"), "--log-format", "json"]
    assert calls() == [
        common + ["checkpoint", "--pre-dump", "--image-path", f"{ck}/criu-pre0", "--work-path", f"{work}/pre0", "c1"],
        common + ["checkpoint", "--pre-dump", "--image-path", f"{ck}/criu-pre1", "--work-path", f"{work}/pre1",
                  "--parent-path", "../criu-pre0", "c1"],
    ]
    # the final dump, as the checkpointer makes it
    runc.checkpoint("c1", f"{ck}/criu", work, leave_running=True, extra=("--parent-path", parent))
    assert calls()[-1] == common + ["checkpoint", "--image-path", f"{ck}/criu", "--work-path", work,
                                    "--leave-running", "--parent-path", "../criu-pre1", "c1"]
    # what CRIU left is exactly what the restorer rebuilds from the label
    assert os.readlink(f"{ck}/criu/parent") == "../criu-pre1"
    assert os.readlink(f"{ck}/criu-pre1/parent") == "../criu-pre0"


def test_failed_pass_discards_the_chain(fake_runtime, tmp_path, monkeypatch):
    runtime, calls = fake_runtime
    monkeypatch.setenv("FAKE_FAIL_ON", "2")
    runc = Runc(runtime)
    ck = str(tmp_path / "out")
    with pytest.raises(CheckpointError, match="pre-dump failed.*PRE_DUMP") as ei:
        predump.run_pre_dumps(runc, "c1", ck, str(tmp_path / "work"), 3)
    assert ei.value.container_id == "c1"
    assert len(calls()) == 2
    assert not os.path.exists(f"{ck}/criu-pre0") and not os.path.exists(f"{ck}/criu-pre1")


def test_config_keys(tmp_path):
    assert config_mod.loads("").checkpoint.pre_dump == "auto"
    c = config_mod.loads('[checkpoint]\npre_dump = "off"\npre_dump_iterations = 3\n')
    assert (c.checkpoint.pre_dump, c.checkpoint.pre_dump_iterations) == ("off", 3)
    with pytest.raises(ConfigError, match="checkpoint.pre_dump"):
        config_mod.loads('[checkpoint]\npre_dump = "always"\n')
    with pytest.raises(ConfigError, match="checkpoint.pre_dump_iterations"):
        config_mod.loads("[checkpoint]\npre_dump_iterations = 9\n")
