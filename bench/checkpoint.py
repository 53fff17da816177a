#!/usr/bin/env python3
"""Freeze and checkpoint time: mmbatch vs bare `runc checkpoint --leave-running`.

For jobs of several RSS sizes (and one with a large rootfs diff), alternating
A (mmbatch's checkpointer: pause, dump, rootfs diff, resume, store) and B
(bare `runc checkpoint --leave-running` of the same container to the same
disk), it measures:
- the freeze as the job itself sees it: the largest gap in a timestamp loop
  running inside the job (it prints any gap over 20 ms);
- the wall time of the whole operation.
Restore: `docker run` restoring on create (fetch from the local store, verify,
rootfs diff, runc restore) vs `docker start --checkpoint` (runc restore from
local disk, same engine; needs dockerd --experimental), alternated.

Usage: python3 bench/checkpoint.py [--sizes 256,1024,4096] [--runs 3] [--rootfs-mib 500]
                                    [--staging /var/lib/mmbatch/staging] [--no-restore]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine, save  # noqa: E402
from mmbatch import config as config_mod  # noqa: E402
from mmbatch.checkpointer import checkpoint_container  # noqa: E402
from tests.lib.docker import ensure_python  # noqa: E402

ROOT = "/var/run/docker/runtime-runc/moby"

JOB = r"""
import os, sys, time
mib = int(os.environ.get("MIB", "0")); rootfs_mib = int(os.environ.get("ROOTFS_MIB", "0"))
block = os.urandom(1 << 20)
buf = bytearray(mib << 20)
for i in range(mib):
    buf[i << 20:(i + 1) << 20] = block[i % 7:] + block[:i % 7]
if rootfs_mib:
    with open("/big-output.bin", "wb") as f:
        for i in range(rootfs_mib):
            f.write(os.urandom(1 << 20))
print("ready", flush=True)
last = time.monotonic()
while True:
    time.sleep(0.002)
    now = time.monotonic()
    if now - last > 0.02:
        print("gap %.6f %.6f" % (now - last, time.time()), flush=True)
    last = now
"""


def sh(*argv, check=True, **kw):
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, **kw)


def gaps_between(name, t0, t1):
    out = sh("docker", "logs", name).stdout
    gaps = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "gap":
            gap, at = float(parts[1]), float(parts[2])
            if t0 - 0.05 <= at <= t1 + 1.0:
                gaps.append(gap)
    return max(gaps) if gaps else 0.0


def wait_ready(name, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "ready" in sh("docker", "logs", name, check=False).stdout:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{name} never got ready")


def bench_checkpoint(image, cfg, mib, rootfs_mib, runs, staging):
    name = f"mmbatch-bench-{uuid.uuid4().hex[:8]}"
    job_id = f"bench-{uuid.uuid4().hex[:8]}"
    sh("docker", "run", "-d", "--name", name, "--runtime", "mmbatch", "--network", "none",
       "-e", f"AWS_BATCH_JOB_ID={job_id}", "-e", f"MIB={mib}", "-e", f"ROOTFS_MIB={rootfs_mib}",
       image, "python3", "-c", JOB)
    try:
        wait_ready(name)
        cid = sh("docker", "inspect", "-f", "{{.Id}}", name).stdout.strip()
        cfg.checkpoint.staging_dir = staging
        rows = {"mmbatch": [], "runc": []}
        for i in range(runs):
            order = ["mmbatch", "runc"] if i % 2 == 0 else ["runc", "mmbatch"]
            for which in order:
                time.sleep(1.0)
                t0 = time.time()
                if which == "mmbatch":
                    r = checkpoint_container(cid, cfg, cfg.runtime.state_dir, reason="bench")
                    extra = {"internal_freeze": r.freeze_seconds, "dump": r.dump_seconds,
                             "bytes_uploaded": r.bytes_uploaded}
                else:
                    d = os.path.join(staging, f"bare-{uuid.uuid4().hex[:8]}")
                    os.makedirs(d + "/img")
                    os.makedirs(d + "/work")
                    sh("runc", "--root", ROOT, "checkpoint", "--leave-running", "--image-path", d + "/img",
                       "--work-path", d + "/work", cid)
                    shutil.rmtree(d)
                    extra = {}
                t1 = time.time()
                time.sleep(1.2)
                rows[which].append(dict(wall=t1 - t0, freeze=gaps_between(name, t0, t1), **extra))
        return rows, job_id
    finally:
        sh("docker", "rm", "-f", name, check=False)


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,1024,4096")
    ap.add_argument("--rootfs-mib", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--staging", default="")
    ap.add_argument("--tmpfs", action="store_true", help="also measure with staging on a tmpfs")
    args = ap.parse_args()
    cfg = config_mod.load()
    image = ensure_python()
    stagings = [("disk", args.staging or cfg.checkpoint.staging_dir)]
    tmpfs_dir = None
    if args.tmpfs:
        tmpfs_dir = "/run/mmbatch-bench-tmpfs"
        os.makedirs(tmpfs_dir, exist_ok=True)
        sh("mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", tmpfs_dir)
        stagings.append(("tmpfs", tmpfs_dir))
    cases = [(int(s), 0) for s in args.sizes.split(",") if s] + ([(64, args.rootfs_mib)] if args.rootfs_mib else [])
    results = []
    try:
        for label, staging in stagings:
            os.makedirs(staging, exist_ok=True)
            for mib, rootfs_mib in cases:
                rows, _ = bench_checkpoint(image, cfg, mib, rootfs_mib, args.runs, staging)
                res = {
                    "staging": label, "rss_mib": mib, "rootfs_mib": rootfs_mib,
                    "mmbatch_freeze": med(rows["mmbatch"], "freeze"), "runc_freeze": med(rows["runc"], "freeze"),
                    "mmbatch_wall": med(rows["mmbatch"], "wall"), "runc_wall": med(rows["runc"], "wall"),
                    "runs": rows,
                }
                res["freeze_ratio"] = res["mmbatch_freeze"] / res["runc_freeze"] if res["runc_freeze"] else None
                results.append(res)
                print(json.dumps({k: v for k, v in res.items() if k != "runs"}), flush=True)
    finally:
        if tmpfs_dir:
            sh("umount", tmpfs_dir, check=False)
    path = save("checkpoint", {"machine": machine(), "results": results})
    print("\n| staging | RSS MiB | rootfs MiB | freeze mmbatch s | freeze runc s | ratio | wall mmbatch s "
          "| wall runc s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['freeze_ratio']:.2f}" if r["freeze_ratio"] else "n/a"
        print(f"| {r['staging']} | {r['rss_mib']} | {r['rootfs_mib']} | {r['mmbatch_freeze']:.3f} | "
              f"{r['runc_freeze']:.3f} | {ratio} | {r['mmbatch_wall']:.2f} | {r['runc_wall']:.2f} |")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
