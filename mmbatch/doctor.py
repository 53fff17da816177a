"""`mmbatch doctor`: is this node ready to checkpoint and restore jobs?

Each check says pass, warn or fail, what it saw, and the fix. Host files are
read under a configurable root (`host_root`) so tests use fixtures, never
the real host. Nothing here talks to an address outside this node unless the
node is an EC2 instance (its IMDS) or the config points IMDS at loopback.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

from mmbatch.compat import parse_version
from mmbatch.config import Config

PASS, WARN, FAIL = "pass", "warn", "fail"
SPOT_NOTICE_SECONDS = 120
SAFETY_SECONDS = 20  # notice handling, process start, manifest, the node shutting down


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


class Doctor:
    def __init__(self, cfg: Config, host_root: str = "/", run: Callable = subprocess.run) -> None:
        self.cfg = cfg
        self.root = host_root
        self.run = run
        self.results: List[Check] = []
        self.speeds: Dict[str, float] = {}

    def path(self, p: str) -> str:
        return os.path.join(self.root, p.lstrip("/"))

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.results.append(Check(name, status, detail, fix))

    # -- kernel and cgroups ----------------------------------------------------------

    def check_kernel(self) -> None:
        release = platform.release() if self.root == "/" else _read(self.path("/proc/sys/kernel/osrelease")).strip()
        version = parse_version(release)
        if version and version < (5, 9):
            self.add("kernel", WARN, release, "CRIU 4 wants Linux >= 5.9 (clone3 set_tid); use a newer AMI")
        else:
            self.add("kernel", PASS, release)

    def cgroup_version(self) -> str:
        mounts = _read(self.path("/proc/self/mounts"))
        v1 = v2 = False
        for line in mounts.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1].startswith("/sys/fs/cgroup"):
                if parts[2] == "cgroup2":
                    v2 = True
                elif parts[2] == "cgroup":
                    v1 = True
        return "hybrid" if v1 and v2 else "v2" if v2 else "v1" if v1 else "unknown"

    def check_cgroups(self) -> None:
        v = self.cgroup_version()
        if v == "unknown":
            self.add("cgroups", FAIL, "no cgroup file system mounted", "mount cgroups (the ECS AMIs do)")
        else:
            self.add("cgroups", PASS, v)

    def check_time_namespace(self, runc_version: str) -> None:
        has_ns = os.path.exists(self.path("/proc/self/ns/time"))
        new_runc = parse_version(runc_version) >= (1, 2)
        if has_ns and new_runc:
            self.add("time namespace", PASS, "kernel and runc support it")
        else:
            why = "kernel lacks time namespaces" if not has_ns else f"runc {runc_version or '?'} < 1.2"
            self.add("time namespace", WARN, f"{why}: a restored job sees CLOCK_MONOTONIC jump",
                     "use runc >= 1.2 so restored jobs keep their monotonic clock")

    # -- CRIU and runc -----------------------------------------------------------------

    def check_criu(self) -> None:
        try:
            from criu_bindings import criu_report

            rep = criu_report()
        except Exception as e:  # never let doctor crash
            self.add("criu", FAIL, f"cannot query CRIU: {e}", "run install.sh (it installs CRIU 4.x)")
            return
        v = rep.get("version") or {}
        text = v.get("text") or ".".join(str(v.get(k, "")) for k in ("major", "minor", "sublevel"))
        version = (v.get("major") or 0, v.get("minor") or 0, v.get("sublevel") or 0)
        if not v:
            self.add("criu", FAIL, "; ".join(rep.get("errors") or ["not found"]),
                     "run install.sh (it installs CRIU 4.x)")
            return
        if version < (4, 0, 0):
            self.add("criu", FAIL, f"CRIU {text} is older than 4", "run deploy/install-criu.sh")
        elif version < (4, 2, 0) and parse_version(platform.release()) >= (6, 16):
            self.add("criu", WARN, f"CRIU {text} cannot dump TCP sockets on kernels >= 6.16",
                     "run deploy/install-criu.sh (CRIU 4.2)")
        else:
            self.add("criu", PASS, f"CRIU {text} at {rep.get('criu')}")
        check = rep.get("check") or {}
        if check.get("ok"):
            self.add("criu check", PASS, "Looks good")
        else:
            self.add("criu check", FAIL, str(check.get("error") or "failed"), "see `criu check` output")
        feats = rep.get("features") or {}
        if feats.get("mem_dirty_track"):
            self.add("soft-dirty tracking", PASS, "pre-dumps make final dumps incremental")
        else:
            self.add("soft-dirty tracking", WARN, "kernel has no soft-dirty tracking",
                     "final dumps are full; dedup keeps uploads incremental (AL2023 kernels have it)")
        self.add("pidfd_store", PASS if feats.get("pidfd_store") else WARN,
                 "supported" if feats.get("pidfd_store") else "unsupported: PID reuse checks are weaker")

    def runc_version(self) -> str:
        runc = shutil.which(self.cfg.runtime.delegate) or self.cfg.runtime.delegate
        try:
            out = self.run([runc, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            self.add("runtime", FAIL, f"delegate {self.cfg.runtime.delegate!r} not runnable",
                     "install runc or fix [runtime] delegate")
            return ""
        first = out.splitlines()[0] if out else ""
        self.add("runtime", PASS, f"{self.cfg.runtime.delegate}: {first}")
        return first.split("version", 1)[-1].strip() if "version" in first else first

    # -- Docker and ECS ------------------------------------------------------------------

    def check_docker(self) -> None:
        path = self.path("/etc/docker/daemon.json")
        try:
            data = json.loads(_read(path) or "{}")
        except ValueError as e:
            self.add("docker config", FAIL, f"{path}: {e}", "fix the JSON, then run install.sh")
            return
        rt = (data.get("runtimes") or {}).get("mmbatch") or {}
        exe = rt.get("path", "")
        if not exe:
            self.add("docker runtime", FAIL, "no runtime 'mmbatch' in daemon.json", "run install.sh")
        elif not os.access(self.path(exe), os.X_OK):
            self.add("docker runtime", FAIL, f"{exe} is not executable", "run install.sh")
        else:
            self.add("docker runtime", PASS, f"mmbatch -> {exe}")
        default = data.get("default-runtime", "runc")
        if default == "mmbatch":
            self.add("default runtime", PASS, "mmbatch (ECS tasks go through it)")
        else:
            self.add("default runtime", WARN, f"{default}: ECS tasks will not go through mmbatch",
                     "install.sh --default-runtime (task definitions cannot name a runtime)")

    def check_docker_engine(self, engine: Optional[object] = None) -> None:
        """The running dockerd, not only its file: daemon.json may name mmbatch
        while the engine was never reloaded. Skipped for a fixture host root."""
        if engine is None:
            if self.root != "/":
                return
            from mmbatch.engine import DockerEngine

            engine = DockerEngine(self.cfg.runtime.docker_socket, timeout=5.0)
        try:
            info = engine.info()  # type: ignore[attr-defined]
        except Exception as e:
            self.add("docker engine", FAIL, f"{self.cfg.runtime.docker_socket}: {e}",
                     "start dockerd (systemctl start docker)")
            return
        runtimes = sorted((info.get("Runtimes") or {}).keys())
        default = info.get("DefaultRuntime") or "runc"
        if "mmbatch" not in runtimes:
            self.add("docker engine", FAIL, f"dockerd {info.get('ServerVersion', '?')} has runtimes "
                     f"{', '.join(runtimes) or 'none'}, not mmbatch",
                     "reload dockerd after install.sh (kill -HUP $(cat /var/run/docker.pid) or systemctl reload "
                     "docker)")
        else:
            self.add("docker engine", PASS, f"dockerd {info.get('ServerVersion', '?')} knows runtime mmbatch "
                     f"(default {default})")

    def check_ecs(self) -> None:
        path = self.path("/etc/ecs/ecs.config")
        if not os.path.exists(path):
            self.add("ecs agent", WARN, "no /etc/ecs/ecs.config (not an ECS node?)")
            return
        env = dict(line.split("=", 1) for line in _read(path).splitlines() if "=" in line and
                   not line.lstrip().startswith("#"))
        stop = env.get("ECS_CONTAINER_STOP_TIMEOUT", "")
        from mmbatch.durations import parse_duration

        try:
            seconds = parse_duration(stop) if stop else 30.0
        except ValueError:
            seconds = 0.0
        if seconds >= SPOT_NOTICE_SECONDS - SAFETY_SECONDS:
            self.add("ecs stop timeout", PASS, f"ECS_CONTAINER_STOP_TIMEOUT={stop}")
        else:
            self.add("ecs stop timeout", WARN, f"ECS_CONTAINER_STOP_TIMEOUT={stop or 'unset (30s)'}",
                     "set ECS_CONTAINER_STOP_TIMEOUT=120s so a final checkpoint can finish")
        if shutil.which("nvidia-smi") and env.get("ECS_NVIDIA_RUNTIME") != "mmbatch":
            self.add("ecs gpu runtime", WARN, f"ECS_NVIDIA_RUNTIME={env.get('ECS_NVIDIA_RUNTIME', 'unset')}",
                     "install.sh --gpu yes")

    # -- store and speed -------------------------------------------------------------------

    def check_store(self, probe_mib: int = 64) -> None:
        from mmbatch.store import open_store

        try:
            store = open_store(self.cfg.store.url, self.cfg.store)
            key = f"doctor/probe-{os.getpid()}"
            data = os.urandom(1 << 20) * probe_mib
            t0 = time.monotonic()
            store.put_bytes(key, data)
            self.speeds["store_write"] = len(data) / max(time.monotonic() - t0, 1e-6)
            ok = store.get_bytes(key) == data
            store.delete(key)
        except Exception as e:
            self.add("store", FAIL, f"{self.cfg.store.url}: {e}", "check the URL, mount and permissions")
            return
        if not ok:
            self.add("store", FAIL, "read back different bytes", "check the store's integrity")
            return
        detail = f"{self.cfg.store.url}: write {self.speeds['store_write'] / 1e6:.0f} MB/s"
        root = getattr(store, "root", None)
        if root and os.stat(root).st_mode & 0o077:
            self.add("store", WARN, detail + f"; {root} is readable by others",
                     f"chmod 0700 {root} (images hold job memory)")
        else:
            self.add("store", PASS, detail)

    def check_staging_speed(self, probe_mib: int = 256) -> None:
        d = self.cfg.checkpoint.staging_dir
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            path = os.path.join(d, f".doctor-{os.getpid()}")
            block = os.urandom(1 << 20)
            t0 = time.monotonic()
            with open(path, "wb") as f:
                for _ in range(probe_mib):
                    f.write(block)
                f.flush()
                os.fdatasync(f.fileno())
            self.speeds["dump"] = probe_mib * (1 << 20) / max(time.monotonic() - t0, 1e-6)
            os.unlink(path)
        except OSError as e:
            self.add("staging", FAIL, f"{d}: {e}", "make checkpoint.staging_dir writable with free space")
            return
        self.add("staging", PASS, f"{d}: write {self.speeds['dump'] / 1e6:.0f} MB/s")

    def check_spot_budget(self) -> None:
        dump, store = self.speeds.get("dump"), self.speeds.get("store_write")
        if not dump or not store:
            return
        budget = SPOT_NOTICE_SECONDS - SAFETY_SECONDS
        per_byte = 1 / dump + 1 / store  # the final dump, then its upload
        gib = budget / per_byte / (1 << 30)
        self.add("spot budget", PASS if gib >= 4 else WARN,
                 f"about {gib:.1f} GiB of job memory can be dumped and stored inside the 2-minute notice "
                 f"(dump {dump / 1e6:.0f} MB/s, store {store / 1e6:.0f} MB/s; dedup makes repeat uploads smaller)",
                 "" if gib >= 4 else "stage on tmpfs or a faster disk, or use a faster store")

    def check_gpu(self) -> None:
        """GPU nodes: driver new enough for CRIU's CUDA plugin, cuda-checkpoint,
        the plugin, host RAM for the device memory (mmbatch/gpu.py)."""
        from mmbatch.gpu import doctor_checks

        for name, status, detail, fix in doctor_checks(self.cfg.gpu, self.cfg.runtime.delegate,
                                                       _read(self.path("/proc/meminfo")), run=self.run):
            self.add(name, status, detail, fix)

    def check_imds(self) -> None:
        endpoint = self.cfg.spot.imds_endpoint
        loopback = endpoint.startswith(("http://127.", "http://localhost", "http://[::1]"))
        vendor = _read(self.path("/sys/devices/virtual/dmi/id/sys_vendor")).strip()
        if not loopback and "Amazon" not in vendor:
            self.add("imds", WARN, f"not an EC2 instance (DMI vendor {vendor or 'unknown'}): IMDS not probed",
                     "Spot notices need IMDSv2 on the instance")
            return
        import urllib.request

        try:
            req = urllib.request.Request(f"{endpoint}/latest/api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                resp.read()
            self.add("imds", PASS, f"IMDSv2 token from {endpoint}")
        except Exception as e:
            self.add("imds", FAIL, f"{endpoint}: {e}",
                     "enable IMDSv2 (hop limit 2 for containers in bridge mode) in the launch template")

    def run_all(self, quick: bool = False) -> List[Check]:
        self.check_kernel()
        self.check_cgroups()
        runc_version = self.runc_version()
        self.check_time_namespace(runc_version)
        self.check_criu()
        self.check_docker()
        self.check_docker_engine()
        self.check_ecs()
        self.check_gpu()
        if not quick:
            self.check_staging_speed()
        self.check_store(probe_mib=8 if quick else 64)
        self.check_spot_budget()
        self.check_imds()
        return self.results


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def report(checks: List[Check], as_json: bool = False) -> str:
    if as_json:
        return json.dumps([asdict(c) for c in checks], indent=1)
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"[{c.status.upper():4}] {c.name.ljust(width)}  {c.detail}")
        if c.fix and c.status != PASS:
            lines.append(f"       {' ' * width}  fix: {c.fix}")
    return "\n".join(lines)


def exit_code(checks: List[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def run(cfg: Config, as_json: bool = False, quick: bool = False, host_root: Optional[str] = None) -> int:
    checks = Doctor(cfg, host_root or "/").run_all(quick=quick)
    print(report(checks, as_json))
    return exit_code(checks)
