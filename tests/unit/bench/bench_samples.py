"""Sample bench results in the exact shapes the benches save (bench/common.py `save`).

The numbers are chosen so that the median of the pairwise ratios differs
from the ratio of the medians: a report that took the shortcut would show
another value than the one the tests expect.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from bench import incremental as incremental_bench
from bench import report

MiB = 1024 * 1024
RUN_ID = "0123456789ab"
MACHINE = {"kernel": "6.1.0-test", "cpus": "2", "cpu_model": "Test CPU", "memory_gib": "23.5",
           "python": "3.11.2", "runc": "runc version 1.1.5", "criu": "Version: 4.2.1",
           "criu_path": "/usr/local/sbin/criu", "docker": "20.10.24"}


def common(name: str, run_id: str = RUN_ID) -> Dict[str, Any]:
    return {"bench": name, "argv": [], "run_id": run_id, "saved_at": 1.0, "elapsed_seconds": 1.0,
            "machine": dict(MACHINE)}


def passthrough(run_id: str = RUN_ID) -> Dict[str, Any]:
    def stats(median: float) -> Dict[str, float]:
        return {"median": median, "min": median, "max": median, "n": 10}

    return dict(common("passthrough", run_id), runtime_path="/opt/mmbatch/bin/mmbatch-runtime",
                docker_run={"mmbatch": stats(0.250), "runc": stats(0.200)}, docker_run_ratio_median=1.25,
                state_call={"mmbatch": stats(0.020), "runc": stats(0.005), "floor": stats(0.012)},
                per_call_overhead_ms=15.0, floor_ms=12.0, overhead_minus_floor_ms=3.0)


def checkpoint(run_id: str = RUN_ID) -> Dict[str, Any]:
    # wall: pairwise 1.0, 2.0, 1.5 -> median 1.5 (ratio of medians: 2.0 / 1.0 = 2.0)
    # freeze: the first runc run saw no gap, so its pair is left out: 0.2/0.1, 0.4/0.2 -> 2.0
    runs = {"mmbatch": [{"wall": 1.0, "freeze": 0.3}, {"wall": 2.0, "freeze": 0.2}, {"wall": 3.0, "freeze": 0.4}],
            "runc": [{"wall": 1.0, "freeze": 0.0}, {"wall": 1.0, "freeze": 0.1}, {"wall": 2.0, "freeze": 0.2}]}
    return dict(common("checkpoint", run_id), fill="random", results=[
        {"staging": "disk", "rss_mib": 256, "rootfs_mib": 0, "mmbatch_freeze": 0.3, "runc_freeze": 0.1,
         "mmbatch_wall": 2.0, "runc_wall": 1.0, "runs": runs, "freeze_ratio": 2.0, "wall_ratio": 1.5},
    ], restores=[
        {"rss_mib": 256, "mmbatch_restore": 0.6, "runc_restore": 0.4, "ratio": 1.5, "docker_run": 1.2,
         "runs": {"mmbatch": [{"restore": 0.6, "docker_run": 1.2}], "runc": [{"restore": 0.4}]}},
    ])


def podman(run_id: str = RUN_ID, error: str = "") -> Dict[str, Any]:
    d = dict(common("podman", run_id), compress="zstd", fill="random",
             run_flags=["--network", "none"],
             versions={"podman": "4.3.1", "oci_runtime": "runc /usr/bin/runc (runc version 1.1.5)",
                       "criu_on_path": "/usr/local/sbin/criu (Version: 4.2.1)", "cgroups": "v1 cgroupfs",
                       "graph_root": "/var/lib/containers/storage"},
             criu_used="4.2.1",
             results=[{"rss_mib": 256, "podman_freeze": 0.15, "runc_freeze": 0.12, "podman_wall": 0.9,
                       "runc_wall": 0.6, "freeze_ratio": 1.25, "wall_ratio": 1.5, "export_bytes": 100 * MiB}],
             restores=[{"rss_mib": 256, "podman_restore": 0.8, "runc_restore": 0.4, "ratio": 2.0}])
    if error:
        d["error"] = error
    return d


def incremental_rounds() -> List[Dict[str, Any]]:
    """Two rounds as incremental.Round.run returns them (fraction order alternated)."""
    full_a = {"server_bytes": 1000 * MiB // 100, "bytes_uploaded": 990 * MiB // 100, "seconds": 4.0}
    full_b = {"server_bytes": 1020 * MiB // 100, "bytes_uploaded": 1000 * MiB // 100, "seconds": 6.0}
    return [
        {"job_id": "a", "plan": [1.0, 50.0], "full": full_a, "steps": [
            {"pct": 1.0, "blocks": 1, "server_bytes": full_a["server_bytes"] * 2 // 100,
             "bytes_uploaded": full_a["bytes_uploaded"] * 2 // 100, "seconds": 1.0},
            {"pct": 50.0, "blocks": 5, "server_bytes": full_a["server_bytes"] * 60 // 100,
             "bytes_uploaded": full_a["bytes_uploaded"] * 52 // 100, "seconds": 3.0}]},
        {"job_id": "b", "plan": [50.0, 1.0], "full": full_b, "steps": [
            {"pct": 50.0, "blocks": 5, "server_bytes": full_b["server_bytes"] * 58 // 100,
             "bytes_uploaded": full_b["bytes_uploaded"] * 54 // 100, "seconds": 5.0},
            {"pct": 1.0, "blocks": 1, "server_bytes": full_b["server_bytes"] * 4 // 100,
             "bytes_uploaded": full_b["bytes_uploaded"] * 4 // 100, "seconds": 2.0}]},
    ]


def incremental(results: List[Dict[str, Any]], run_id: str = RUN_ID) -> Dict[str, Any]:
    return dict(common("incremental", run_id), mib=10, fractions=[1.0, 50.0], rounds=2, block_mib=1,
                chunk_size=256 * 1024, store="SeaweedFS S3 on 127.0.0.1", results=results,
                runs=incremental_rounds())


def s3_throughput(run_id: str = RUN_ID) -> Dict[str, Any]:
    # upload pairwise 2.0/1.0, 2.0/2.0, 6.0/2.0 -> 1.0, 2.0, 3.0 -> 2.0 (ratio of medians 2.0/2.0 = 1.0)
    samples = {"mmbatch": [{"upload": 2.0, "download": 1.0, "ok": 1.0}, {"upload": 2.0, "download": 1.0, "ok": 1.0},
                           {"upload": 6.0, "download": 1.0, "ok": 1.0}],
               "boto3": [{"upload": 1.0, "download": 2.0, "ok": 1.0}, {"upload": 2.0, "download": 2.0, "ok": 1.0},
                         {"upload": 2.0, "download": 2.0, "ok": 1.0}]}
    return dict(common("s3_throughput", run_id), endpoint="SeaweedFS on 127.0.0.1 (started by the benchmark)",
                bytes=512 * MiB, files=8, rounds=3, sse="AES256",
                store={"chunk_size": 2 * MiB, "pack_size": 16 * MiB, "parallel": 8}, samples=samples,
                median_seconds={"mmbatch": {"upload": 2.0, "download": 1.0}, "boto3": {"upload": 2.0, "download": 2.0}},
                median_mib_per_s={"mmbatch": {"upload": 256.0, "download": 512.0},
                                  "boto3": {"upload": 256.0, "download": 256.0}},
                ratio_mmbatch_over_boto3_seconds={"upload": 2.0, "download": 0.5})


def interruption(run_id: str = RUN_ID, seconds: float = 60.0, committed: bool = True) -> Dict[str, Any]:
    return dict(common("interruption", run_id), store="s3", results=[
        {"containers": 10, "mib": 512, "seconds": seconds, "all_committed": committed, "per_job": [5.0] * 10,
         "samples": [seconds - 1, seconds, seconds + 2]},
    ])


def run_json(benches: List[Dict[str, Any]], mode: str = "quick", load_before: str = "0.10 0.20 0.30",
             run_id: str = RUN_ID) -> Dict[str, Any]:
    return {"run_id": run_id, "mode": mode, "command": f"bench/run --{mode}", "started": 0.0, "finished": 600.0,
            "seconds": 600.0, "load_before": load_before, "load_after": "0.40 0.30 0.20",
            "seaweedfs": "version 3.80", "benches": benches}


def bench_entry(name: str, status: str = "ok", error_tail: str = "") -> Dict[str, Any]:
    return {"name": name, "argv": ["--x", "1"], "status": status, "seconds": 12.0, "log": f"/logs/{name}.log",
            "error_tail": error_tail}


def write(results_dir: str, results: Dict[str, Dict[str, Any]], run: Optional[Dict[str, Any]]) -> None:
    os.makedirs(results_dir, exist_ok=True)
    for name, data in results.items():
        with open(os.path.join(results_dir, f"{name}.json"), "w") as f:
            json.dump(data, f)
    if run is not None:
        with open(os.path.join(results_dir, "run.json"), "w") as f:
            json.dump(run, f)


BENCHES = ("passthrough", "checkpoint", "podman", "incremental", "s3_throughput", "interruption")


def all_results(run_id: str = RUN_ID) -> Dict[str, Dict]:
    """A result for every bench, all of one run."""
    return {
        "passthrough": passthrough(run_id),
        "checkpoint": checkpoint(run_id),
        "podman": podman(run_id),
        "incremental": incremental(incremental_bench.summarize(incremental_rounds(), [1.0, 50.0]), run_id),
        "s3_throughput": s3_throughput(run_id),
        "interruption": interruption(run_id),
    }


def build(tmp_path: Any, results: Dict[str, Dict], run: Optional[Dict[str, Any]]) -> str:
    """report.md built from `results` (and run.json) in tmp_path; its text."""
    results_dir = str(tmp_path / "results")
    write(results_dir, results, run)
    out = report.build(results_dir, str(tmp_path / "out" / "report.md"))
    with open(out) as f:
        return f.read()
