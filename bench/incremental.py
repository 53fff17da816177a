#!/usr/bin/env python3
"""Incremental checkpoints: bytes a second checkpoint uploads when part of memory changed.

A job container (Docker, runtime mmbatch, a Batch job id in its env) holds a
buffer of random data (--mib). The bench checkpoints it once (the full
upload), then, for each fraction (--fractions, percent), signals the job,
which rewrites that fraction of the buffer in scattered 1 MiB blocks, and
checkpoints it again. The store is a local S3-compatible server (SeaweedFS on
127.0.0.1, tests/lib/s3server.py) that this bench starts.

Bytes are counted twice: at the server (growth of the store's prefix in the
bucket: chunks, packs, manifest, records) and by the checkpointer
(`bytes_uploaded`). Each is reported as a ratio to the full checkpoint of the
same round. --rounds rounds, each with a new job; the fraction order
alternates (ascending, then descending). Goal: incremental <= changed
fraction + 5% of the full size.

Usage: python3 bench/incremental.py [--mib 1024] [--fractions 1,10,50] [--rounds 3]
                                     [--chunk-size 2M]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import MiB, machine, parse_bytes, positive_int, save  # noqa: E402
from mmbatch import config as config_mod  # noqa: E402
from mmbatch.checkpointer import checkpoint_container  # noqa: E402
from tests.lib import s3server  # noqa: E402
from tests.lib.docker import ensure_python  # noqa: E402

GOAL_SLACK = 0.05  # incremental / full <= fraction + 5%

# Fills its buffer from /dev/urandom (readinto: no temporary copies that would
# dirty other memory), then on each SIGUSR1 rewrites the next fraction of PLAN
# in randomly chosen 1 MiB blocks and prints "rewrote STEP PCT BLOCKS".
JOB = r"""
import os, random, signal, time
mib = int(os.environ["MIB"]); plan = [float(x) for x in os.environ["PLAN"].split(",")]
buf = bytearray(mib << 20)
def fill(blocks):
    with open("/dev/urandom", "rb", buffering=0) as f, memoryview(buf) as mv:
        for b in blocks:
            view = mv[b << 20:(b + 1) << 20]
            got = 0
            while got < len(view):
                got += f.readinto(view[got:])
            view.release()
fill(range(mib))
signals = []
signal.signal(signal.SIGUSR1, lambda *_: signals.append(1))
print("ready", flush=True)
step = 0
while True:
    while signals and step < len(plan):
        signals.pop()
        pct = plan[step]
        step += 1
        k = max(1, round(mib * pct / 100))
        fill(sorted(random.sample(range(mib), k)))
        print("rewrote %d %g %d" % (step, pct, k), flush=True)
    time.sleep(0.05)
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def wait_log(name: str, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = sh("docker", "logs", name, check=False)
        if needle in proc.stdout:
            return
        state = sh("docker", "inspect", "-f", "{{.State.Status}}", name, check=False).stdout.strip()
        if state not in ("running", "paused", "created"):
            raise RuntimeError(f"job {name} is {state or 'gone'}: {proc.stdout[-500:]} {proc.stderr[-500:]}")
        time.sleep(0.2)
    raise RuntimeError(f"job {name}: no {needle!r} in its log after {timeout:.0f}s")


def goal_ratio(pct: float) -> float:
    return pct / 100 + GOAL_SLACK


def summarize(rounds: List[Dict], fractions: List[float]) -> List[Dict]:
    """Per fraction: medians over rounds of bytes and of ratios to the round's full checkpoint."""
    out = []
    for pct in fractions:
        rows = [(r["full"], s) for r in rounds for s in r["steps"] if s["pct"] == pct]
        if not rows:
            raise ValueError(f"no round measured the {pct:g}% step")
        server = [s["server_bytes"] / f["server_bytes"] for f, s in rows]
        uploaded = [s["bytes_uploaded"] / f["bytes_uploaded"] for f, s in rows]
        res = {
            "pct": pct,
            "n": len(rows),
            "blocks_rewritten": statistics.median(s["blocks"] for _, s in rows),
            "full_server_bytes": statistics.median(f["server_bytes"] for f, _ in rows),
            "full_bytes_uploaded": statistics.median(f["bytes_uploaded"] for f, _ in rows),
            "server_bytes": statistics.median(s["server_bytes"] for _, s in rows),
            "bytes_uploaded": statistics.median(s["bytes_uploaded"] for _, s in rows),
            "server_ratio": statistics.median(server),
            "uploaded_ratio": statistics.median(uploaded),
            "checkpoint_seconds": statistics.median(s["seconds"] for _, s in rows),
            "full_checkpoint_seconds": statistics.median(f["seconds"] for f, _ in rows),
            "goal_ratio": goal_ratio(pct),
        }
        res["goal_met"] = res["server_ratio"] <= res["goal_ratio"] and res["uploaded_ratio"] <= res["goal_ratio"]
        out.append(res)
    return out


class Round:
    """One job: a full checkpoint, then one per fraction of `plan`."""

    def __init__(self, image: str, cfg: config_mod.Config, server: s3server.S3Server, bucket: str,
                 prefix: str, mib: int, plan: List[float]) -> None:
        self.image, self.cfg, self.server, self.bucket, self.prefix = image, cfg, server, bucket, prefix
        self.mib, self.plan = mib, plan
        self.name = f"mmbatch-bench-incr-{uuid.uuid4().hex[:8]}"
        self.job_id = f"bench-incr-{uuid.uuid4().hex[:8]}"

    def checkpoint(self, cid: str) -> Dict:
        before = self.server.bucket_bytes(self.bucket, self.prefix)
        r = checkpoint_container(cid, self.cfg, self.cfg.runtime.state_dir, reason="bench")
        grown = self.server.bucket_bytes(self.bucket, self.prefix) - before
        return {"server_bytes": grown, "bytes_uploaded": r.bytes_uploaded, "bytes_total": r.bytes_total,
                "seconds": r.total_seconds, "freeze_seconds": r.freeze_seconds}

    def run(self) -> Dict:
        sh("docker", "run", "-d", "--name", self.name, "--runtime", "mmbatch", "--network", "none",
           "-e", f"AWS_BATCH_JOB_ID={self.job_id}", "-e", f"MIB={self.mib}",
           "-e", "PLAN=" + ",".join(f"{p:g}" for p in self.plan), self.image, "python3", "-c", JOB)
        try:
            wait_log(self.name, "ready", 120 + self.mib / 20)
            cid = sh("docker", "inspect", "-f", "{{.Id}}", self.name).stdout.strip()
            full = self.checkpoint(cid)
            print(f"  full: {full['bytes_uploaded'] / MiB:.1f} MiB uploaded, "
                  f"{full['server_bytes'] / MiB:.1f} MiB at the server", flush=True)
            steps = []
            for i, pct in enumerate(self.plan, start=1):
                sh("docker", "kill", "--signal", "USR1", self.name)
                wait_log(self.name, f"rewrote {i} ", 120)
                line = [ln for ln in sh("docker", "logs", self.name).stdout.splitlines()
                        if ln.startswith(f"rewrote {i} ")][0]
                step = dict(self.checkpoint(cid), pct=pct, blocks=int(line.split()[3]))
                steps.append(step)
                print(f"  {pct:g}% changed ({step['blocks']} MiB): {step['bytes_uploaded'] / MiB:.1f} MiB "
                      f"uploaded ({step['bytes_uploaded'] / full['bytes_uploaded']:.1%}), "
                      f"{step['server_bytes'] / MiB:.1f} MiB at the server "
                      f"({step['server_bytes'] / full['server_bytes']:.1%})", flush=True)
            return {"job_id": self.job_id, "plan": self.plan, "full": full, "steps": steps}
        finally:
            sh("docker", "rm", "-f", self.name, check=False)


def parser() -> argparse.ArgumentParser:
    """The command line (tests check bench/run's plans against it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024, help="the job's buffer, MiB")
    ap.add_argument("--fractions", default="1,10,50", help="percent of the buffer rewritten before each checkpoint")
    ap.add_argument("--rounds", type=positive_int, default=3, help="rounds, each with a new job")
    ap.add_argument("--chunk-size", type=parse_bytes, default=None,
                    help="store.chunk_size (default: the node config's)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    fractions = [float(x) for x in args.fractions.split(",") if x]
    if args.mib < 2 or not fractions or any(not 0 < p <= 100 for p in fractions):
        ap.error("--mib must be >= 2 and each fraction in (0, 100]")

    cfg = config_mod.load()
    image = ensure_python()
    print("starting SeaweedFS...", flush=True)
    server = s3server.new_server()
    rounds = []
    try:
        bucket = server.create_bucket()
        prefix = "incremental"
        # The checkpointer reads credentials from boto3's default chain.
        os.environ.update({"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
                           "AWS_DEFAULT_REGION": server.region})
        cfg.store.url = f"s3://{bucket}/{prefix}"
        cfg.store.endpoint_url = server.endpoint
        cfg.store.region = server.region
        if args.chunk_size:
            cfg.store.chunk_size = args.chunk_size
            cfg.store.pack_size = max(cfg.store.pack_size, args.chunk_size)
        for i in range(args.rounds):
            plan = fractions if i % 2 == 0 else fractions[::-1]
            print(f"round {i + 1}/{args.rounds}: {args.mib} MiB job, fractions {plan}", flush=True)
            rounds.append(Round(image, cfg, server, bucket, prefix, args.mib, plan).run())
    finally:
        server.cleanup()

    results = summarize(rounds, fractions)
    path = save("incremental", {
        "machine": machine(), "mib": args.mib, "fractions": fractions, "rounds": args.rounds,
        "block_mib": 1, "chunk_size": cfg.store.chunk_size, "store": "SeaweedFS S3 on 127.0.0.1",
        "goal": f"incremental / full <= fraction + {GOAL_SLACK:.0%}",
        "results": results, "runs": rounds,
    })
    print(f"\n{args.mib} MiB job, 1 MiB blocks, chunk size {cfg.store.chunk_size // 1024} KiB, "
          f"medians of {args.rounds} rounds\n")
    print("| changed | uploaded (checkpointer) | of full | at the server | of full | goal | met |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['pct']:g}% | {r['bytes_uploaded'] / MiB:.1f} MiB | {r['uploaded_ratio']:.1%} | "
              f"{r['server_bytes'] / MiB:.1f} MiB | {r['server_ratio']:.1%} | <= {r['goal_ratio']:.0%} | "
              f"{'yes' if r['goal_met'] else 'no'} |")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
