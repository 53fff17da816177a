#!/usr/bin/env python3
"""Freeze and checkpoint time: mmbatch vs bare `runc checkpoint --leave-running`.

For jobs of several RSS sizes (and one with a large rootfs diff), alternating
A (mmbatch's checkpointer: pause, dump, rootfs diff, resume, store) and B
(bare `runc checkpoint --leave-running` of the same container to the same
disk), it measures:
- the freeze as the job itself sees it: the largest gap in a timestamp loop
  running inside the job (it prints any gap over 20 ms);
- the wall time of the whole operation.
Restore: the restore inside the runtime's create (fetch from the local store,
verify, rootfs diff, runc restore; staged as the node config says, on tmpfs
when it fits) vs a bare `runc restore` of the same job from local disk (a
plain runc bundle of the same image, its images in the page cache),
alternated; the whole `docker run` time is reported too.

Usage: python3 bench/checkpoint.py [--sizes 256,1024,4096] [--runs 3] [--rootfs-mib 500]
                                    [--staging /var/lib/mmbatch/staging] [--tmpfs]
                                    [--restore-sizes 256,1024] [--fill rotated|random]
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

from bench.common import machine, median_ratio, median_ratio_or_none, positive_int, save  # noqa: E402
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
    if os.environ.get("FILL") == "random":  # incompressible: nothing for a compressor or dedup to find
        buf[i << 20:(i + 1) << 20] = os.urandom(1 << 20)
    else:
        buf[i << 20:(i + 1) << 20] = block[i % 7:] + block[:i % 7]
if rootfs_mib:
    with open("/big-output.bin", "wb") as f:
        for i in range(rootfs_mib):
            f.write(os.urandom(1 << 20))
print("ready", flush=True)
if os.environ.get("READY_FILE"):
    open(os.environ["READY_FILE"], "w").close()
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


def gaps_between(name, t0, t1, engine="docker"):
    return gaps_in(sh(engine, "logs", name).stdout, t0, t1)


def gaps_in(out, t0, t1):
    """The largest gap the JOB's timestamp loop printed between t0 and t1 (0.0 when none)."""
    gaps = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "gap":
            gap, at = float(parts[1]), float(parts[2])
            if t0 - 0.05 <= at <= t1 + 1.0:
                gaps.append(gap)
    return max(gaps) if gaps else 0.0


def wait_ready(name, timeout=600, engine="docker"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "ready" in sh(engine, "logs", name, check=False).stdout:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{name} never got ready")


def bench_checkpoint(image, cfg, mib, rootfs_mib, runs, staging, fill="rotated"):
    name = f"mmbatch-bench-{uuid.uuid4().hex[:8]}"
    job_id = f"bench-{uuid.uuid4().hex[:8]}"
    sh("docker", "run", "-d", "--name", name, "--runtime", "mmbatch", "--network", "none",
       "-e", f"AWS_BATCH_JOB_ID={job_id}", "-e", f"MIB={mib}", "-e", f"ROOTFS_MIB={rootfs_mib}",
       "-e", f"FILL={fill}", image, "python3", "-c", JOB)
    try:
        wait_ready(name)
        cid = sh("docker", "inspect", "-f", "{{.Id}}", name).stdout.strip()
        cfg.checkpoint.staging_dir = staging
        cfg.checkpoint.memory_staging_dir = ""  # both sides dump to the same place: `staging`
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
        _forget_job(cfg, job_id)


def _forget_job(cfg, job_id):
    """Delete the bench job's checkpoints from the store (GiBs each: nothing else removes them)."""
    from mmbatch.checkpointer import open_repository
    from mmbatch.errors import MmbatchError

    try:
        open_repository(cfg, {"job_key": job_id}).delete_all()
    except MmbatchError as e:
        print(f"could not delete the checkpoints of {job_id}: {e}", file=sys.stderr)


def timed(*argv):
    t0 = time.perf_counter()
    sh(*argv)
    return time.perf_counter() - t0


def _bare_images(image, work, mib, fill, root, bare_id):
    """Run the job's bare runc twin until it is ready and dump it once (it
    exits): its bundle and images, the baseline every restore is timed against."""
    bundle = _bare_bundle(image, work, mib, fill)
    subprocess.run(["runc", "--root", root, "run", "-d", "--bundle", bundle, bare_id],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(bundle, "rootfs", "ready")):
        if time.time() > deadline:
            raise RuntimeError("bare job never got ready")
        time.sleep(0.2)
    images = os.path.join(work, "images")
    os.makedirs(images)
    sh("runc", "--root", root, "checkpoint", "--image-path", images, "--work-path", images + "-dump", bare_id)
    return bundle, images


def _bare_bundle(image, workdir, mib, fill="rotated"):
    """A plain runc bundle running the same job from the same image, no engine."""
    bundle = os.path.join(workdir, "bundle")
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(rootfs)
    cid = sh("docker", "create", "--network", "none", image, "true").stdout.strip()
    try:
        exp = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-C", rootfs, "-x"], stdin=exp.stdout, check=True)
        exp.wait()
    finally:
        sh("docker", "rm", "-f", cid, check=False)
    sh("runc", "spec", "-b", bundle)
    with open(os.path.join(bundle, "config.json")) as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["python3", "-c", JOB]
    spec["process"]["env"] = ["PATH=/usr/bin:/bin", f"MIB={mib}", "ROOTFS_MIB=0", "READY_FILE=/ready",
                               f"FILL={fill}"]
    spec["root"]["readonly"] = False
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f)
    return bundle


def _runc_restore(bundle, images, cid, root):
    # stdio is /dev/null: a host file as the job's stdout cannot be dumped
    work = images + "-work"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    t0 = time.perf_counter()
    subprocess.run(["runc", "--root", root, "restore", "-d", "--image-path", images, "--work-path", work,
                    "--bundle", bundle, cid], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def bench_restore(image, cfg, mib, runs, staging, fill="rotated"):
    """Restore-on-create inside the runtime's create (fetch from the local store,
    verify, rootfs diff, runc restore: the `restore` event's seconds) vs a bare
    `runc restore` of the same job from local disk, alternated. The wall time
    of the whole `docker run` is reported beside them."""
    job_id = f"bench-r-{uuid.uuid4().hex[:8]}"
    env = ["-e", f"MIB={mib}", "-e", "ROOTFS_MIB=0", "-e", f"FILL={fill}"]
    ours = f"mmbatch-bench-r-{uuid.uuid4().hex[:8]}"
    names = [ours]
    work = os.path.join(staging, f"bare-{uuid.uuid4().hex[:8]}")
    root = os.path.join(work, "runc-root")
    bare_id = f"bare-{uuid.uuid4().hex[:8]}"
    try:
        sh("docker", "run", "-d", "--name", ours, "--runtime", "mmbatch", "--network", "none",
           "-e", f"AWS_BATCH_JOB_ID={job_id}", *env, image, "python3", "-c", JOB)
        wait_ready(ours)
        cfg.checkpoint.staging_dir = staging
        checkpoint_container(sh("docker", "inspect", "-f", "{{.Id}}", ours).stdout.strip(), cfg,
                             cfg.runtime.state_dir, reason="bench")
        sh("docker", "kill", ours)
        os.makedirs(work)
        bundle, images = _bare_images(image, work, mib, fill, root, bare_id)
        rows = {"mmbatch": [], "runc": []}
        for i in range(runs):
            order = ["mmbatch", "runc"] if i % 2 == 0 else ["runc", "mmbatch"]
            for which in order:
                time.sleep(0.5)
                if which == "mmbatch":
                    name = f"{ours}-{i}"
                    names.append(name)
                    t = timed("docker", "run", "-d", "--name", name, "--runtime", "mmbatch", "--network", "none",
                              "-e", f"AWS_BATCH_JOB_ID={job_id}", *env, image, "python3", "-c", JOB)
                    cid = sh("docker", "inspect", "-f", "{{.Id}}", name).stdout.strip()
                    from mmbatch.checkpointer import open_repository

                    evs = [e for e in open_repository(cfg, {"job_key": job_id}).list_records("events")
                           if e.get("kind") == "restore" and e.get("container_id") == cid]
                    if not evs:
                        raise RuntimeError("the mmbatch run cold-started instead of restoring")
                    rows[which].append({"restore": evs[0]["seconds"], "docker_run": t})
                    sh("docker", "kill", name)
                else:
                    t = _runc_restore(bundle, images, bare_id, root)
                    sh("runc", "--root", root, "kill", bare_id, "KILL", check=False)
                    time.sleep(0.3)
                    sh("runc", "--root", root, "delete", "-f", bare_id, check=False)
                    rows[which].append({"restore": t})
        return rows
    finally:
        sh("docker", "rm", "-f", *names, check=False)
        sh("runc", "--root", root, "delete", "-f", bare_id, check=False)
        shutil.rmtree(work, ignore_errors=True)
        _forget_job(cfg, job_id)


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def parser() -> argparse.ArgumentParser:
    """The command line (tests check bench/run's plans against it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,1024,4096", help="RSS sizes (MiB) for the checkpoint comparison")
    ap.add_argument("--rootfs-mib", type=int, default=500,
                    help="also a 64 MiB job that wrote this many MiB to its rootfs (0: none)")
    ap.add_argument("--runs", type=positive_int, default=3, help="alternated runs per size")
    ap.add_argument("--staging", default="", help="where both sides dump (default: [checkpoint] staging_dir)")
    ap.add_argument("--tmpfs", action="store_true", help="also measure with staging on a tmpfs")
    ap.add_argument("--restore-sizes", default="256,1024",
                    help="RSS sizes for the restore comparison; '' skips it")
    ap.add_argument("--fill", choices=("rotated", "random"), default="rotated",
                    help="job memory: 7 rotations of one random MiB (fast to make; compresses and dedups) "
                         "or all random (incompressible)")
    return ap


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
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
                rows, _ = bench_checkpoint(image, cfg, mib, rootfs_mib, args.runs, staging, args.fill)
                res = {
                    "staging": label, "rss_mib": mib, "rootfs_mib": rootfs_mib,
                    "mmbatch_freeze": med(rows["mmbatch"], "freeze"), "runc_freeze": med(rows["runc"], "freeze"),
                    "mmbatch_wall": med(rows["mmbatch"], "wall"), "runc_wall": med(rows["runc"], "wall"),
                    "runs": rows,
                }
                # Medians of the pairwise ratios, as the report computes them (None: no runc freeze was seen).
                res["freeze_ratio"] = median_ratio_or_none([x["freeze"] for x in rows["mmbatch"]],
                                                           [x["freeze"] for x in rows["runc"]])
                res["wall_ratio"] = median_ratio([x["wall"] for x in rows["mmbatch"]],
                                                 [x["wall"] for x in rows["runc"]])
                results.append(res)
                print(json.dumps({k: v for k, v in res.items() if k != "runs"}), flush=True)
    finally:
        if tmpfs_dir:
            sh("umount", tmpfs_dir, check=False)
    restores = []
    for mib in [int(x) for x in args.restore_sizes.split(",") if x]:
        rows = bench_restore(image, cfg, mib, args.runs, stagings[0][1], args.fill)
        r = {"rss_mib": mib, "mmbatch_restore": med(rows["mmbatch"], "restore"),
             "runc_restore": med(rows["runc"], "restore"),
             "ratio": median_ratio([x["restore"] for x in rows["mmbatch"]], [x["restore"] for x in rows["runc"]]),
             "docker_run": med(rows["mmbatch"], "docker_run"), "runs": rows}
        restores.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "runs"}), flush=True)
    path = save("checkpoint", {"machine": machine(), "fill": args.fill, "results": results, "restores": restores})
    print("\n| staging | RSS MiB | rootfs MiB | freeze mmbatch s | freeze runc s | ratio | wall mmbatch s "
          "| wall runc s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['freeze_ratio']:.2f}" if r["freeze_ratio"] else "n/a"
        print(f"| {r['staging']} | {r['rss_mib']} | {r['rootfs_mib']} | {r['mmbatch_freeze']:.3f} | "
              f"{r['runc_freeze']:.3f} | {ratio} | {r['mmbatch_wall']:.2f} | {r['runc_wall']:.2f} |")
    if restores:
        print("\n| RSS MiB | restore-on-create in create s | bare runc restore s | ratio (median of pairs) "
              "| whole docker run s |")
        print("|---|---|---|---|---|")
        for r in restores:
            print(f"| {r['rss_mib']} | {r['mmbatch_restore']:.2f} | {r['runc_restore']:.2f} | {r['ratio']:.2f} "
                  f"| {r['docker_run']:.2f} |")
    print(f"results: {path}")


if __name__ == "__main__":
    sys.exit(main() or 0)
