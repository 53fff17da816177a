#!/usr/bin/env python3
"""Spot interruption fan-out: time from the notice to the last final
checkpoint committed, for N containers of M MiB each, to a local S3 server.

Each run is a private node (its own dockerd and mmbatchd, as in the daemon
integration tests), a fake IMDS that announces the interruption, and a
SeaweedFS S3 server on 127.0.0.1 as the store (`--store file` uses a local
directory instead). Goal: 10 x 512 MiB within 90 s on a 2-core machine.

With --repeat N each count runs N times (each on a fresh node) and the
median is reported.

Usage: python3 bench/interruption.py [--counts 1,5,10] [--mib 512] [--store s3|file] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine, positive_int, save  # noqa: E402
from mmbatch.imds_fake import FakeImds  # noqa: E402
from tests.integration.daemon import daemon_jobs as jobs  # noqa: E402
from tests.integration.daemon.node import Node  # noqa: E402
from tests.lib import s3server  # noqa: E402
from tests.lib.docker import ensure_python  # noqa: E402


def final_time(node: Node, cid: str):
    path = os.path.join(node.state_dir, cid, "final.json")
    try:
        with open(path) as f:
            data = json.load(f)
        return data, os.stat(path).st_mtime
    except (OSError, ValueError):
        return None


def one_run(n: int, mib: int, image: str, store: str, server, bucket: str) -> dict:
    store_dir = tempfile.mkdtemp(prefix="mmbt-bench-store-", dir="/var/tmp")
    imds = FakeImds(instance_id="i-0" + os.urandom(8).hex()).start()
    node = Node(f"bench{n}", store_dir)
    try:
        if store == "s3":
            node.extra_env.update({"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
                                   "AWS_DEFAULT_REGION": "us-east-1"})
            node.write_config(imds=imds.url, grace=600, poll=0.5, store_url=f"s3://{bucket}/run-{n}",
                              store_settings={"endpoint_url": server.endpoint, "region": "us-east-1"})
        else:
            node.write_config(imds=imds.url, grace=600, poll=0.5)
        node.start_dockerd()
        node.load_images(image)
        node.start_mmbatchd()
        names = [f"job{i}" for i in range(n)]
        cids = [jobs.run_job(node, name, jobs.unique(f"bench{i}"), "-e", f"MIB={mib}", image=image,
                             argv=("python3", "-u", "-c", jobs.BIG_PYTHON)) for i, name in enumerate(names)]
        jobs.wait_for(lambda: all("ready" in node.logs(x) for x in names), 60 + 10 * n, "jobs ready",
                      interval=0.5, node=node)
        t_notice = time.time()
        imds.schedule_interruption(120)
        finals = jobs.wait_for(lambda: (lambda fs: fs if all(fs) else None)([final_time(node, c) for c in cids]),
                               300, "all final checkpoints", interval=0.2, node=node)
        fan_out = max(t for _, t in finals) - t_notice
        ok = all(f["status"] == "committed" for f, _ in finals)
        return {"containers": n, "mib": mib, "seconds": fan_out, "all_committed": ok,
                "per_job": [round(f.get("seconds", 0), 2) for f, _ in finals]}
    finally:
        node.stop()
        imds.stop()
        shutil.rmtree(store_dir, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    """The command line (tests check bench/run's plans against it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="1,5,10", help="jobs on the node, one run (or --repeat) per count")
    ap.add_argument("--mib", type=int, default=512, help="each job's memory, MiB")
    ap.add_argument("--store", choices=("s3", "file"), default="s3")
    ap.add_argument("--repeat", type=positive_int, default=1, help="runs per count; the median is reported")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    image = ensure_python()
    server = bucket = None
    if args.store == "s3":
        server = s3server.new_server()
        bucket = server.create_bucket()
    results = []
    try:
        for n in [int(x) for x in args.counts.split(",") if x]:
            runs = []
            for _ in range(args.repeat):
                runs.append(one_run(n, args.mib, image, args.store, server, bucket))
                print(json.dumps(runs[-1]), flush=True)
            r = dict(runs[0], seconds=statistics.median(x["seconds"] for x in runs),
                     all_committed=all(x["all_committed"] for x in runs), samples=[x["seconds"] for x in runs])
            results.append(r)
    finally:
        if server is not None:
            server.stop()
            server.cleanup()
    path = save("interruption", {"machine": machine(), "store": args.store, "results": results})
    print(f"\n| containers x {args.mib} MiB | notice -> last final checkpoint committed (s) | all committed |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['containers']} | {r['seconds']:.1f} | {r['all_committed']} |")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
