"""Shared helpers for the benchmarks: alternated A/B timing, medians, reports.

Stdlib only; each benchmark stands alone (no external timing tool).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Sequence

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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
        "python": platform.python_version(),
        "runc": version(["runc", "--version"]),
        "criu": version(["criu", "--version"]),
        "docker": version(["docker", "version", "--format", "{{.Server.Version}}"]),
    }


def save(name: str, data: Dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return path
