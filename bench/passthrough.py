#!/usr/bin/env python3
"""Passthrough overhead of mmbatch-runtime.

1. `docker run --rm --network none IMAGE true` with --runtime=mmbatch vs
   --runtime=runc, alternated (goal: ratio <= 1.10).
2. Per call through the exact path registered in /etc/docker/daemon.json:
   `<mmbatch path> --root R state ID` vs `runc --root R state ID`, next to
   the interpreter's own floor (`<its python> -I -S -c pass`), all
   alternated (goal: overhead within 2 ms of the floor).

Usage: python3 bench/passthrough.py [--pairs 20] [--calls 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import alternate, machine, median_ratio, positive_int, run_quiet, save, summary  # noqa: E402
from mmbatch.demo import ensure_image  # noqa: E402

DOCKER_ROOT = "/var/run/docker/runtime-runc/moby"


def registered_path(name: str = "mmbatch") -> str:
    with open("/etc/docker/daemon.json") as f:
        return json.load(f)["runtimes"][name]["path"]


def interpreter_of(script: str) -> str:
    with open(script, "rb") as f:
        first = f.readline().decode().strip()
    if not first.startswith("#!"):
        raise SystemExit(f"{script} has no shebang")
    return first[2:].split()[0]


def parser() -> argparse.ArgumentParser:
    """The command line (tests check bench/run's plans against it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=positive_int, default=20, help="alternated docker run pairs")
    ap.add_argument("--calls", type=positive_int, default=60, help="alternated runtime state calls")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    image = ensure_image()
    runtime_path = registered_path()
    runc = shutil.which("runc") or "runc"
    python = interpreter_of(runtime_path)

    docker = alternate({
        "mmbatch": lambda: run_quiet(["docker", "run", "--rm", "--network", "none", "--runtime", "mmbatch", image,
                                      "true"]),
        "runc": lambda: run_quiet(["docker", "run", "--rm", "--network", "none", "--runtime", "runc", image,
                                   "true"]),
    }, args.pairs)

    name = "mmbatch-bench-passthrough"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    subprocess.run(["docker", "run", "-d", "--name", name, "--network", "none", "--runtime", "runc", image,
                    "sleep", "3600"], check=True, capture_output=True)
    try:
        cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True,
                             check=True).stdout.strip()
        calls = alternate({
            "mmbatch": lambda: run_quiet([runtime_path, "--root", DOCKER_ROOT, "state", cid]),
            "runc": lambda: run_quiet([runc, "--root", DOCKER_ROOT, "state", cid]),
            "floor": lambda: run_quiet([python, "-I", "-S", "-c", "pass"]),
        }, args.calls)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)

    d = {k: summary(v) for k, v in docker.items()}
    c = {k: summary(v) for k, v in calls.items()}
    ratio = median_ratio(docker["mmbatch"], docker["runc"])
    overhead = c["mmbatch"]["median"] - c["runc"]["median"]
    result = {
        "machine": machine(),
        "runtime_path": runtime_path,
        "docker_run": d,
        "docker_run_ratio_median": ratio,
        "state_call": c,
        "per_call_overhead_ms": overhead * 1000,
        "floor_ms": c["floor"]["median"] * 1000,
        "overhead_minus_floor_ms": (overhead - c["floor"]["median"]) * 1000,
        "goals": {"docker_run_ratio<=1.10": ratio <= 1.10,
                  "overhead_within_2ms_of_floor": (overhead - c["floor"]["median"]) * 1000 <= 2.0},
    }
    path = save("passthrough", result)
    print("| measure | mmbatch | runc | floor (python -I -S) |")
    print("|---|---|---|---|")
    print(f"| docker run --rm true (median ms, {args.pairs} pairs) | {d['mmbatch']['median'] * 1000:.1f} | "
          f"{d['runc']['median'] * 1000:.1f} | |")
    print(f"| runtime `state` call (median ms, {args.calls} runs) | {c['mmbatch']['median'] * 1000:.2f} | "
          f"{c['runc']['median'] * 1000:.2f} | {c['floor']['median'] * 1000:.2f} |")
    print(f"\ndocker run ratio (median of pairwise mmbatch/runc): {ratio:.3f} (goal <= 1.10)")
    print(f"per-call overhead: {overhead * 1000:.2f} ms; floor {c['floor']['median'] * 1000:.2f} ms; "
          f"overhead - floor = {(overhead - c['floor']['median']) * 1000:.2f} ms (goal <= 2)")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
