#!/usr/bin/env python3
"""The peer: Podman's checkpoint and restore of the same workload, measured as bench/checkpoint.py does.

The job is bench/checkpoint.py's (a Python process holding --sizes MiB and
printing any gap over 20 ms in a timestamp loop) from the same image
(mmbatch-test/python:1, copied from Docker with `docker save | podman load`).
For each size, alternated --runs times:

- checkpoint: `podman container checkpoint --leave-running --export FILE`
  vs a bare `runc checkpoint --leave-running` of the same Podman container,
  both to the same disk: the freeze the job sees (its largest gap) and the
  wall time of the command; Podman's own `--print-stats` are kept;
- restore: `podman container restore --import FILE --name NEW` (the whole
  command) vs a bare `runc restore` of the same job from local disk (the
  same plain runc bundle bench/checkpoint.py uses).

Podman runs with its own storage (/var/lib/containers, not dockerd's),
`--network none`, and runc found on PATH with CRIU from PATH, so the same
CRIU 4.x as mmbatch when /usr/local/sbin comes first. When Podman cannot
checkpoint here, the exact error is the result (`error` in the JSON), and the
exit status is still 0 so bench/run reports it.

Usage: python3 bench/podman.py [--sizes 256,1024,4096] [--runs 3] [--restore-sizes 256,1024]
                                [--compress zstd|gzip|none] [--fill rotated|random] [--staging DIR]
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
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.checkpoint import JOB, _bare_images, _runc_restore, gaps_in, wait_ready  # noqa: E402
from bench.common import machine, median_ratio, median_ratio_or_none, positive_int, save  # noqa: E402
from mmbatch import config as config_mod  # noqa: E402
from tests.lib.docker import ensure_python  # noqa: E402

# Podman's default rlimits (nofile/nproc 1048576) exceed this host's hard
# limits and runc cannot set them without CAP_SYS_RESOURCE: ask for less.
RUN_FLAGS = ["--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


class PodmanError(RuntimeError):
    """A podman command failed; `argv` and its stderr are kept for the report."""

    def __init__(self, argv: List[str], stderr: str) -> None:
        super().__init__(f"{' '.join(argv)}: {stderr.strip()[-1500:]}")
        self.argv = argv
        self.stderr = stderr


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    argv = ["podman", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise PodmanError(argv, proc.stderr or proc.stdout)
    return proc


def timed_podman(*args: str) -> float:
    t0 = time.perf_counter()
    podman(*args)
    return time.perf_counter() - t0


def unavailable() -> Optional[str]:
    """None when podman answers, else why not."""
    if not shutil.which("podman"):
        return "podman is not installed (apt-get install -y --no-install-recommends podman)"
    try:
        podman("info", "--format", "json", timeout=60)
    except (PodmanError, OSError, subprocess.TimeoutExpired) as e:
        return f"podman info failed: {e}"
    return None


def versions() -> Dict[str, str]:
    """Podman, the OCI runtime it uses, and the CRIU that runtime finds on PATH."""
    info = json.loads(podman("info", "--format", "json").stdout)
    host = info.get("host", {})
    runtime = host.get("ociRuntime", {})
    criu = shutil.which("criu") or "absent"
    try:
        criu_version = subprocess.run([criu, "--version"], capture_output=True, text=True,
                                      timeout=20).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        criu_version = "unknown"
    return {
        "podman": info.get("version", {}).get("Version", "unknown"),
        "oci_runtime": f"{runtime.get('name', '?')} {runtime.get('path', '?')} "
                       f"({(runtime.get('version') or '').splitlines()[0] if runtime.get('version') else '?'})",
        "criu_on_path": f"{criu} ({criu_version})",
        "cgroups": f"{host.get('cgroupVersion', '?')} {host.get('cgroupManager', '?')}",
        "graph_root": info.get("store", {}).get("graphRoot", "?"),
    }


def criu_podman_uses(image: str) -> str:
    """The CRIU version line of a real Podman checkpoint's dump.log (a probe container)."""
    name = f"mmbatch-bench-pm-probe-{uuid.uuid4().hex[:8]}"
    try:
        podman("run", "-d", "--name", name, *RUN_FLAGS, image, "sleep", "600")
        podman("container", "checkpoint", "--keep", "--leave-running", name)
        userdata = podman("inspect", "-f", "{{.StaticDir}}", name).stdout.strip()
        with open(os.path.join(userdata, "dump.log"), errors="replace") as f:
            for line in f:
                if "Version:" in line:
                    return line.split("Version:", 1)[1].strip()
        return "unknown (no Version line in dump.log)"
    finally:
        remove(name)


def ensure_image(docker_image: str) -> str:
    """The same image in Podman's storage, copied from Docker (no registry)."""
    name = f"localhost/{docker_image}"
    if podman("image", "exists", name, check=False).returncode == 0:
        return name
    save = subprocess.Popen(["docker", "save", docker_image], stdout=subprocess.PIPE)
    try:
        proc = subprocess.run(["podman", "load"], stdin=save.stdout, capture_output=True, text=True, timeout=600)
    finally:
        assert save.stdout is not None
        save.stdout.close()
        save.wait()
    if proc.returncode != 0:
        raise PodmanError(["podman", "load"], proc.stderr)
    return name


def runc_root_of(container_id: str) -> str:
    """Where runc keeps the state of a Podman container (runc's default root for root: /run/runc)."""
    for root in ("/run/runc", "/run/user/0/runc"):
        if os.path.isfile(os.path.join(root, container_id, "state.json")):
            return root
    raise RuntimeError(f"no runc state for podman container {container_id[:12]} under /run/runc")


def start_job(image: str, mib: int, fill: str) -> str:
    name = f"mmbatch-bench-pm-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, *RUN_FLAGS, "-e", f"MIB={mib}", "-e", "ROOTFS_MIB=0", "-e", f"FILL={fill}",
           image,
           "python3", "-c", JOB)
    return name


def remove(*names: str) -> None:
    for name in names:
        podman("rm", "-f", "-t", "0", name, check=False, timeout=120)


def bench_checkpoint(image: str, mib: int, runs: int, staging: str, compress: str,
                     fill: str) -> Dict[str, List[Dict]]:
    name = start_job(image, mib, fill)
    try:
        wait_ready(name, engine="podman")
        cid = podman("inspect", "-f", "{{.Id}}", name).stdout.strip()
        root = runc_root_of(cid)
        rows: Dict[str, List[Dict]] = {"podman": [], "runc": []}
        for i in range(runs):
            for which in (["podman", "runc"] if i % 2 == 0 else ["runc", "podman"]):
                time.sleep(1.0)
                d = os.path.join(staging, f"pm-{uuid.uuid4().hex[:8]}")
                os.makedirs(d)
                extra: Dict = {}
                try:
                    t0 = time.time()
                    if which == "podman":
                        out = podman("container", "checkpoint", "--leave-running", "--print-stats",
                                     "--compress", compress, "--export", os.path.join(d, "export.tar"), name).stdout
                        t1 = time.time()
                        extra = {"export_bytes": os.path.getsize(os.path.join(d, "export.tar")),
                                 "stats": _stats(out)}
                    else:
                        os.makedirs(d + "/img")
                        os.makedirs(d + "/work")
                        subprocess.run(["runc", "--root", root, "checkpoint", "--leave-running", "--image-path",
                                        d + "/img", "--work-path", d + "/work", cid], check=True,
                                       capture_output=True)
                        t1 = time.time()
                finally:
                    shutil.rmtree(d, ignore_errors=True)
                time.sleep(1.2)
                freeze = gaps_in(podman("logs", name).stdout, t0, t1)
                rows[which].append(dict(wall=t1 - t0, freeze=freeze, **extra))
        return rows
    finally:
        remove(name)


def _stats(out: str) -> Dict:
    """Podman's --print-stats JSON (the output's last JSON object), or {}."""
    start = out.find("{")
    try:
        return json.loads(out[start:]) if start >= 0 else {}
    except ValueError:
        return {}


def bench_restore(image: str, docker_image: str, mib: int, runs: int, staging: str,
                  compress: str, fill: str) -> Dict[str, List[Dict]]:
    """`podman container restore --import` (a new container each time) vs a bare
    `runc restore` of the same job from local disk, alternated."""
    work = os.path.join(staging, f"pm-r-{uuid.uuid4().hex[:8]}")
    root = os.path.join(work, "runc-root")
    bare_id = f"bare-{uuid.uuid4().hex[:8]}"
    export = os.path.join(work, "export.tar")
    names: List[str] = []
    os.makedirs(work)
    try:
        name = start_job(image, mib, fill)
        names.append(name)
        wait_ready(name, engine="podman")
        podman("container", "checkpoint", "--compress", compress, "--export", export, name)
        remove(name)
        bundle, images = _bare_images(docker_image, work, mib, fill, root, bare_id)
        rows: Dict[str, List[Dict]] = {"podman": [], "runc": []}
        for i in range(runs):
            for which in (["podman", "runc"] if i % 2 == 0 else ["runc", "podman"]):
                time.sleep(0.5)
                if which == "podman":
                    new = f"mmbatch-bench-pm-r-{uuid.uuid4().hex[:8]}"
                    names.append(new)
                    t = timed_podman("container", "restore", "--import", export, "--name", new)
                    state = podman("inspect", "-f", "{{.State.Status}}", new).stdout.strip()
                    if state != "running":
                        raise RuntimeError(f"podman restored {new} but it is {state}")
                    remove(new)
                else:
                    t = _runc_restore(bundle, images, bare_id, root)
                    subprocess.run(["runc", "--root", root, "kill", bare_id, "KILL"], capture_output=True)
                    time.sleep(0.3)
                    subprocess.run(["runc", "--root", root, "delete", "-f", bare_id], capture_output=True)
                rows[which].append({"restore": t})
        return rows
    finally:
        remove(*names)
        subprocess.run(["runc", "--root", root, "delete", "-f", bare_id], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def med(rows: List[Dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def measure(args: argparse.Namespace, data: Dict) -> None:
    """Fill `data` as results come, so a failure part-way keeps what was measured."""
    staging = args.staging or config_mod.load().checkpoint.staging_dir
    os.makedirs(staging, exist_ok=True)
    docker_image = ensure_python()
    image = ensure_image(docker_image)
    data["criu_used"] = criu_podman_uses(image)
    print(f"podman checkpoints with CRIU {data['criu_used']}", flush=True)
    results: List[Dict] = data.setdefault("results", [])
    restores: List[Dict] = data.setdefault("restores", [])
    for mib in [int(x) for x in args.sizes.split(",") if x]:
        rows = bench_checkpoint(image, mib, args.runs, staging, args.compress, args.fill)
        r = {"rss_mib": mib, "podman_freeze": med(rows["podman"], "freeze"), "runc_freeze": med(rows["runc"], "freeze"),
             "podman_wall": med(rows["podman"], "wall"), "runc_wall": med(rows["runc"], "wall"),
             "freeze_ratio": median_ratio_or_none([x["freeze"] for x in rows["podman"]],
                                                  [x["freeze"] for x in rows["runc"]]),
             "wall_ratio": median_ratio([x["wall"] for x in rows["podman"]], [x["wall"] for x in rows["runc"]]),
             "export_bytes": med(rows["podman"], "export_bytes"), "runs": rows}
        frozen = [x["stats"].get("criu_statistics", {}).get("frozen_time") for x in rows["podman"]]
        if all(isinstance(v, (int, float)) for v in frozen):
            r["podman_criu_frozen_seconds"] = statistics.median(frozen) / 1e6
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "runs"}), flush=True)
    for mib in [int(x) for x in args.restore_sizes.split(",") if x]:
        rows = bench_restore(image, docker_image, mib, args.runs, staging, args.compress, args.fill)
        r = {"rss_mib": mib, "podman_restore": med(rows["podman"], "restore"),
             "runc_restore": med(rows["runc"], "restore"),
             "ratio": median_ratio([x["restore"] for x in rows["podman"]], [x["restore"] for x in rows["runc"]]),
             "runs": rows}
        restores.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "runs"}), flush=True)


def parser() -> argparse.ArgumentParser:
    """The command line (tests check bench/run's plans against it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,1024,4096", help="RSS sizes (MiB) for the checkpoint comparison")
    ap.add_argument("--runs", type=positive_int, default=3, help="alternated runs per size")
    ap.add_argument("--restore-sizes", default="256,1024", help="RSS sizes for the restore comparison; '' skips it")
    ap.add_argument("--compress", choices=("zstd", "gzip", "none"), default="zstd",
                    help="podman checkpoint --compress (podman's default: zstd)")
    ap.add_argument("--fill", choices=("rotated", "random"), default="rotated",
                    help="job memory, as bench/checkpoint.py --fill")
    ap.add_argument("--staging", default="", help="where both sides write (default: [checkpoint] staging_dir)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)

    data: Dict = {"machine": machine(), "compress": args.compress, "fill": args.fill, "run_flags": RUN_FLAGS}
    why = unavailable()
    if why:
        data["error"] = why
    else:
        data["versions"] = versions()
        try:
            measure(args, data)
        except subprocess.CalledProcessError as e:
            stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            data["error"] = f"{e}\n{stderr.strip()[-1500:]}"
        except (RuntimeError, OSError) as e:  # PodmanError included: its message has the command's stderr
            data["error"] = str(e)
    path = save("podman", data)
    if "error" in data:
        print(f"podman could not be measured here:\n{data['error']}")
        if not data.get("results"):
            print(f"results: {path}")
            return 0
    print("\n| RSS MiB | freeze podman s | freeze runc s | ratio | wall podman s | wall runc s | ratio | export MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in data["results"]:
        fr = f"{r['freeze_ratio']:.2f}" if r["freeze_ratio"] else "n/a"
        print(f"| {r['rss_mib']} | {r['podman_freeze']:.3f} | {r['runc_freeze']:.3f} | {fr} | {r['podman_wall']:.2f} "
              f"| {r['runc_wall']:.2f} | {r['wall_ratio']:.2f} | {r['export_bytes'] / 2**20:.0f} |")
    if data.get("restores"):
        print("\n| RSS MiB | podman restore --import s | bare runc restore s | ratio |")
        print("|---|---|---|---|")
        for r in data["restores"]:
            print(f"| {r['rss_mib']} | {r['podman_restore']:.2f} | {r['runc_restore']:.2f} | {r['ratio']:.2f} |")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
