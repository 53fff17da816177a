"""A memory-heavy Batch job for the store tests, and how a test drives it.

The job fills a buffer of BUF_MIB MiB (one anonymous mapping, page-aligned
but on no larger grid) with random data in 1 MiB blocks, and saves each block's sha256 on its volume
(/data/digests.<gen>.json, written before it says "ready <gen>"). Asked by
/data/rewrite.<gen>, it rewrites REWRITE_PCT percent of the blocks, chosen
at random (scattered), and saves the new digests. Asked by /data/verify, it
checks every byte of its buffer against the digests of its current
generation and writes /data/verified.json. So a restored job proves that
its whole buffer came back, and a test knows exactly which blocks changed.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

from tests.integration.daemon.node import Node

MiB = 1024 * 1024

MEMJOB = r'''
import hashlib, json, mmap, os, random, time
MiB = 1 << 20
N = int(os.environ.get("BUF_MIB", "1024"))
PCT = float(os.environ.get("REWRITE_PCT", "10"))
buf = memoryview(mmap.mmap(-1, N * MiB))
digests = [""] * N

def fill(i):
    data = os.urandom(MiB)
    buf[i * MiB:(i + 1) * MiB] = data
    digests[i] = hashlib.sha256(data).hexdigest()

def save(gen, changed):
    tmp = "/data/.digests.tmp"
    with open(tmp, "w") as f:
        json.dump({"gen": gen, "digests": digests, "changed": changed}, f)
    os.rename(tmp, "/data/digests.%d.json" % gen)
    print("ready %d %d" % (gen, os.getpid()), flush=True)

for i in range(N):
    fill(i)
gen = 0
save(gen, N)
while True:
    time.sleep(0.05)
    if os.path.exists("/data/rewrite.%d" % (gen + 1)):
        gen += 1
        blocks = random.sample(range(N), max(1, int(N * PCT / 100)))
        for i in blocks:
            fill(i)
        save(gen, len(blocks))
    if os.path.exists("/data/verify"):
        with open("/data/digests.%d.json" % gen) as f:
            want = json.load(f)["digests"]
        bad = sum(1 for i in range(N) if hashlib.sha256(buf[i * MiB:(i + 1) * MiB]).hexdigest() != want[i])
        with open("/data/.verified.tmp", "w") as f:
            json.dump({"gen": gen, "blocks": N, "bad": bad, "pid": os.getpid()}, f)
        os.rename("/data/.verified.tmp", "/data/verified.json")
        os.remove("/data/verify")
'''


def wait_ready(vol: str, gen: int, timeout: float = 180, node: Optional[Node] = None,
               name: str = "") -> Dict[str, Any]:
    path = os.path.join(vol, f"digests.{gen}.json")
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if node is not None and not node.container_state(name).get("Running"):
            raise AssertionError(f"the job stopped before generation {gen}: {node.logs(name)[-2000:]!r} "
                                 f"{node.docker('logs', name, check=False).stderr[-2000:]!r}")
        if time.time() > deadline:
            raise AssertionError(f"the job did not reach generation {gen} in {timeout}s")
        time.sleep(0.1)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rewrite(vol: str, gen: int, node: Optional[Node] = None, name: str = "") -> Dict[str, Any]:
    """Ask for generation `gen` (REWRITE_PCT of the blocks rewritten) and wait for it."""
    open(os.path.join(vol, f"rewrite.{gen}"), "w").close()
    return wait_ready(vol, gen, node=node, name=name)


def verify(vol: str, timeout: float = 180) -> Dict[str, Any]:
    """Have the (restored) job check every byte of its buffer; its report."""
    out = os.path.join(vol, "verified.json")
    if os.path.exists(out):
        os.remove(out)
    open(os.path.join(vol, "verify"), "w").close()
    deadline = time.time() + timeout
    while not os.path.exists(out):
        if time.time() > deadline:
            raise AssertionError(f"the job did not verify its buffer in {timeout}s")
        time.sleep(0.1)
    with open(out, encoding="utf-8") as f:
        return json.load(f)


def ready_lines(node: Node, name: str) -> List[str]:
    return [ln for ln in node.logs(name).splitlines() if ln.startswith("ready ")]
