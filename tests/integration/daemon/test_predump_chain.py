"""The pre-dump chain end to end, on a kernel that cannot run it.

This kernel has no soft-dirty tracking (tests/functional/predump shows the
real runc refusing a pre-dump here). To carry the chain's plumbing through
the checkpointer, the store and the restorer anyway, two wrappers stand in
for exactly the missing kernel feature and nothing else:

- `criu` answers `criu check --feature mem_dirty_track` with success and
  execs the real CRIU for everything else;
- the node's runtime delegate execs the real runc, except that a pre-dump
  becomes a full `--leave-running` dump (all pages: what a first pre-dump
  writes) and a dump with `--parent-path` is made without it, followed by
  the `parent` link CRIU would have made. It records every call's argv and,
  at `restore`, where the images' `parent` link points.

The images are then complete on their own, so the restore does not depend
on a parent; what is tested is that mmbatch makes the right calls, stores
the chain, and recreates CRIU's links before `runc restore`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from tests.integration import jobs as host_jobs
from tests.integration.daemon import daemon_jobs as jobs

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.root, pytest.mark.slow]

FAKE_CRIU = """#!/bin/sh
if [ "$1" = check ] && [ "$2" = --feature ] && [ "$3" = mem_dirty_track ]; then exit 0; fi
exec {criu} "$@"
"""

WRAPPED_RUNC = r"""#!{python}
import json, os, sys
REAL = {runc!r}
LOG = {log!r}
args = sys.argv[1:]
def value(flag):
    return args[args.index(flag) + 1] if flag in args else None
entry = {{"argv": args}}
if "restore" in args:
    img = value("--image-path")
    link = os.path.join(img, "parent") if img else ""
    entry["parent"] = os.readlink(link) if link and os.path.islink(link) else None
    entry["parent_resolves"] = bool(link) and os.path.isdir(link)
with open(LOG, "a") as f:
    f.write(json.dumps(entry) + "\n")
if "checkpoint" not in args:
    os.execv(REAL, [REAL] + args)
parent = value("--parent-path")
if "--pre-dump" in args:
    args[args.index("--pre-dump")] = "--leave-running"
if parent is not None:
    i = args.index("--parent-path")
    del args[i:i + 2]
pid = os.fork()
if pid == 0:
    os.execv(REAL, [REAL] + args)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
if code == 0 and parent is not None:
    os.symlink(parent, os.path.join(value("--image-path"), "parent"))
sys.exit(code)
"""


def _write_exec(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_pre_dump_chain_is_stored_and_relinked_for_restore(node_factory, store_dir, busybox_image, tmp_path):
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    real_criu = subprocess.run(["sh", "-c", "command -v criu"], capture_output=True, text=True).stdout.strip()
    real_runc = subprocess.run(["sh", "-c", "command -v runc"], capture_output=True, text=True).stdout.strip()
    log = str(tmp_path / "runtime-calls.jsonl")
    _write_exec(str(fakes / "criu"), FAKE_CRIU.format(criu=real_criu))
    wrapper = str(fakes / "runc-wrapped")
    _write_exec(wrapper, WRAPPED_RUNC.format(python=sys.executable, runc=real_runc, log=log))
    path = f"{fakes}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"

    node = node_factory("predump", images=[busybox_image], spot_enabled=False, delegate=wrapper,
                        extra_env={"PATH": f"{fakes}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
    vol = os.path.join(node.dir, "vol")
    os.makedirs(vol)
    job_id = jobs.unique("predump")
    argv = ("sh", "-c", host_jobs.COUNTER)
    cid = jobs.run_job(node, "a1", job_id, "-v", f"{vol}:/data", image=busybox_image, argv=argv, attempt=1)
    jobs.wait_for(lambda: len(host_jobs.parse_lines(node.logs("a1"))) >= 10, 30, "ten lines")

    proc = subprocess.run([sys.executable, "-m", "mmbatch.cli", "--config", node.config, "checkpoint", cid, "--json"],
                          capture_output=True, text=True, timeout=300, env={**node.env(), "PATH": path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = json.loads(proc.stdout)["checkpoint_id"]
    last = host_jobs.parse_lines(node.logs("a1"))[-1]  # the job ran on after the dump: later lines are lost
    calls = [json.loads(x) for x in open(log)]
    dumps = [c["argv"] for c in calls if "checkpoint" in c["argv"]]
    assert len(dumps) == 2, dumps
    pre, final = dumps
    assert "--pre-dump" in pre and "--parent-path" not in pre and pre[-1] == cid
    assert pre[pre.index("--image-path") + 1].endswith("/out/criu-pre0")
    assert final[final.index("--parent-path") + 1] == "../criu-pre0" and "--leave-running" in final
    assert final[final.index("--image-path") + 1].endswith("/out/criu")

    m = jobs.repo(node, job_id).get(ck)
    assert m.labels["criu_parent_chain"] == "criu-pre0"
    assert m.stats["pre_dumps"] == 1
    paths = {f.path for f in m.files}
    assert any(p.startswith("criu-pre0/pages-") for p in paths) and any(p.startswith("criu/pages-") for p in paths)
    assert "criu/parent" not in paths  # a link, rebuilt from the label at restore

    node.docker("kill", "a1")
    node.docker("wait", "a1", check=False)
    jobs.run_job(node, "a2", job_id, "-v", f"{vol}:/data", image=busybox_image, argv=argv, attempt=2)
    lines = jobs.wait_for(lambda: (lambda ls: ls if len(ls) >= 3 else None)(host_jobs.parse_lines(node.logs("a2"))),
                          60, "the retry's output")
    restores = [c for c in (json.loads(x) for x in open(log)) if "restore" in c["argv"]]
    assert len(restores) == 1
    assert restores[0]["parent"] == "../criu-pre0" and restores[0]["parent_resolves"], restores[0]
    assert lines[0][1:] == last[1:], "the same process (pid and nonce), restored"
    assert lines[0][0] <= last[0] + 1
