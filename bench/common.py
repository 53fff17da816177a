"""Shared helpers for the benchmarks: alternated A/B timing, medians, results.

Stdlib only; each benchmark stands alone (no external timing tool).

Every bench writes one JSON file, bench/results/<name>.json, through
`save`, which adds the common fields the report reads: `bench` (the name),
`argv`, `run_id` (from $MMBATCH_BENCH_RUN, set by bench/run, so a report
tells results of this run from stale ones), `saved_at` and
`elapsed_seconds` (since this module was imported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

RESULTS = os.environ.get("MMBATCH_BENCH_RESULTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                   "results")
RUN_ENV = "MMBATCH_BENCH_RUN"
MiB = 1024 * 1024
_STARTED = time.time()
_UNITS = {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB}


def parse_bytes(text: str) -> int:
    """A byte count: 4096, 256K, 2M, 1.5G (binary units; a trailing B or iB is allowed)."""
    t = text.strip().upper()
    for suffix in ("IB", "B"):
        if t.endswith(suffix) and len(t) > len(suffix):
            t = t[:-len(suffix)]
            break
    unit = t[-1] if t and t[-1] in _UNITS else ""
    try:
        number = float(t[:-1] if unit else t)
    except ValueError:
        raise ValueError(f"not a size: {text!r}") from None
    return int(number * _UNITS[unit])


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of the pairwise ratios a[i] / b[i] of alternated runs."""
    ratios = sorted(x / y for x, y in zip(a, b) if y)
    if not ratios:
        raise ValueError("no pairs with a non-zero baseline")
    return statistics.median(ratios)


def median_ratio_or_none(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """`median_ratio`, or None when no pair has a non-zero baseline (a freeze too short to see)."""
    try:
        return median_ratio(a, b)
    except ValueError:
        return None


def positive_int(text: str) -> int:
    """argparse type for --runs, --rounds, --pairs...: a median needs at least one run."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def run_quiet(argv: Sequence[str], timeout: float = 120) -> float:
    """Wall seconds of one run of argv (output discarded); raises on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.decode(errors='replace')[-500:]}")
    return dt


def alternate(named: Dict[str, Callable[[], float]], pairs: int, warmup: int = 2) -> Dict[str, List[float]]:
    """Run each function in turn, A B A B ..., `pairs` times after a warm-up."""
    for _ in range(warmup):
        for fn in named.values():
            fn()
    samples: Dict[str, List[float]] = {k: [] for k in named}
    order = list(named)
    for i in range(pairs):
        seq = order if i % 2 == 0 else list(reversed(order))
        for k in seq:
            samples[k].append(named[k]())
    return samples


def summary(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def machine() -> Dict[str, str]:
    def version(argv: Sequence[str]) -> str:
        try:
            out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "absent"
        return out.strip().splitlines()[0] if out.strip() else "unknown"

    return {
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "runc": version(["runc", "--version"]),
        "criu": version(["criu", "--version"]),
        "criu_path": shutil.which("criu") or "absent",
        "docker": version(["docker", "version", "--format", "{{.Server.Version}}"]),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / (1 << 20):.1f}"
    except OSError:
        pass
    return "unknown"


def save(name: str, data: Dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    common = {"bench": name, "argv": sys.argv[1:], "run_id": os.environ.get(RUN_ENV, ""),
              "saved_at": time.time(), "elapsed_seconds": round(time.time() - _STARTED, 1)}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({**common, **data}, f, indent=1)
    os.replace(tmp, path)
    return path
