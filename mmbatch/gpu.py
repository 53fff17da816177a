"""GPU jobs: which containers use NVIDIA GPUs, what this node's GPUs are, and
what CRIU's CUDA plugin needs from mmbatch.

CRIU 4.x checkpoints CUDA processes through its plugin `cuda_plugin.so`
(plugins/cuda/cuda_plugin.c), which runs NVIDIA's `cuda-checkpoint` itself:
`--get-restore-tid`, `--get-state`, `--action lock [--timeout MS]` before the
process is seized, `--action checkpoint` once it is (device memory is copied
into host memory, which CRIU then dumps like any other), and on restore (or
after a dump with --leave-running) `--action restore` and `--action unlock`.
mmbatch never runs cuda-checkpoint. It only makes sure CRIU can:

- CRIU loads plugins from its libdir (`--libdir`, else `$CRIU_LIBS_DIR`, else
  the compiled-in /usr/lib/criu/): `criu_environment` sets CRIU_LIBS_DIR to
  the directory holding cuda_plugin.so;
- the plugin finds cuda-checkpoint with execvp, i.e. on CRIU's PATH:
  `criu_environment` puts the configured tool's directory first on PATH;
- the plugin's lock timeout is CRIU's own `--timeout` (seconds, times 1000 as
  cuda-checkpoint's milliseconds): `criu_config_lines` writes `timeout N`
  into the CRIU config file that runc hands to CRIU.

runc passes its environment on to CRIU, so these reach the plugin through
`runc checkpoint` and `runc restore` alike. The node's GPUs come from
`nvidia-smi --query-gpu` (CSV) and its `--version` (the CUDA version). Pure
parsing apart from the few functions that run nvidia-smi or look at files.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from mmbatch.errors import MmbatchError

# plugins/cuda: cuda_plugin_init disables the plugin unless `cuda-checkpoint -h`
# lists --action: "an r555 or higher version driver is required" (README:
# "an r555 or higher GPU driver is required for CUDA CRIU integration").
MIN_DRIVER_MAJOR = 555
# NVIDIA's cuda-checkpoint README: r570 adds process-tree support with CRIU 4,
# NVML support and the lock timeout.
RECOMMENDED_DRIVER_MAJOR = 570
PLUGIN_NAME = "cuda_plugin"
PLUGIN_FILE = "cuda_plugin.so"
CUDA_CHECKPOINT = "cuda-checkpoint"
# Where install-criu.sh --cuda-plugin puts the plugin, then where CRIU's own
# packages do (the compiled-in default is /usr/lib/criu/).
DEFAULT_PLUGIN_DIRS: Tuple[str, ...] = ("/opt/criu4/usr/lib/criu", "/usr/lib/criu", "/usr/local/lib/criu")
NVIDIA_HOOK = "nvidia-container-runtime-hook"
NVIDIA_HOOK_NAMES = frozenset({NVIDIA_HOOK, "nvidia-container-toolkit"})
QUERY_FIELDS = ("name", "count", "driver_version", "memory.total")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMPAT_KEYS = ("model", "count", "driver", "cuda", "memory_mib")

_NVIDIA_DEVICE_RE = re.compile(r"^/dev/nvidia\d+$")
# CRIU log lines: "(00.020701) cuda_plugin: pausing devices on pid 1801089"
_LOG_LINE_RE = re.compile(r"^\((\d+)\.(\d+)\)\s?(.*)$")
# resume_device() logs this between "resuming devices on pid" and its cuda-checkpoint calls.
_RESTORE_TID_LINE = "cuda_plugin: Restore thread pid "


class GpuError(MmbatchError):
    """The node's GPUs cannot be read, or CRIU lacks what GPU jobs need."""


# -- which containers are GPU jobs ---------------------------------------------------

def _env(spec: Mapping[str, Any]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in (spec.get("process") or {}).get("env") or []:
        if isinstance(item, str) and "=" in item:
            k, v = item.split("=", 1)
            out[k] = v
    return out


def requests_gpu(spec: Mapping[str, Any]) -> bool:
    """Does the container ask for NVIDIA GPUs? NVIDIA_VISIBLE_DEVICES (unset,
    empty, "void" and "none" give no GPU, as in the NVIDIA container toolkit),
    /dev/nvidiaN devices or mounts, the nvidia prestart hook, or CDI
    annotations naming nvidia.com/gpu."""
    visible = _env(spec).get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if visible and visible not in ("void", "none"):
        return True
    linux = spec.get("linux") or {}
    for dev in linux.get("devices") or []:
        if isinstance(dev, dict) and _NVIDIA_DEVICE_RE.match(str(dev.get("path", ""))):
            return True
    for m in spec.get("mounts") or []:
        if isinstance(m, dict) and _NVIDIA_DEVICE_RE.match(str(m.get("destination", ""))):
            return True
    for hook in ((spec.get("hooks") or {}).get("prestart") or []):
        if isinstance(hook, dict) and os.path.basename(str(hook.get("path", ""))) in NVIDIA_HOOK_NAMES:
            return True
    for k, v in (spec.get("annotations") or {}).items():
        if str(k).startswith("cdi.k8s.io/") and "nvidia.com/gpu" in str(v):
            return True
    return False


def is_nvidia_runtime(runtime: str) -> bool:
    return os.path.basename(runtime).startswith("nvidia-container-runtime")


def ensure_nvidia_hook(spec: Dict[str, Any], hook_path: str) -> bool:
    """Add the NVIDIA prestart hook the way nvidia-container-runtime does on
    `create` (its stable modifier), unless one is there. The runtime modifies
    the spec only on `create`, so a restore-on-create of a GPU job needs it to
    get the GPU devices into the container. True when it was added."""
    hooks = spec.get("hooks")
    if hooks is None:
        hooks = spec["hooks"] = {}
    if not isinstance(hooks, dict):
        return False
    prestart = hooks.setdefault("prestart", [])
    if not isinstance(prestart, list):
        return False
    for h in prestart:
        if isinstance(h, dict) and os.path.basename(str(h.get("path", ""))) in NVIDIA_HOOK_NAMES:
            return False
    prestart.append({"path": hook_path, "args": [os.path.basename(hook_path), "prestart"]})
    return True


def find_nvidia_hook(runtime: str, path_env: Optional[str] = None) -> Optional[str]:
    """nvidia-container-runtime-hook next to the nvidia runtime, else on PATH."""
    dirs = [os.path.dirname(runtime)] if os.path.isabs(runtime) else []
    dirs += (path_env if path_env is not None else os.environ.get("PATH") or DEFAULT_PATH).split(":")
    return _search(NVIDIA_HOOK, dirs)


# -- the node's GPUs ---------------------------------------------------------------------

@dataclass
class GpuInfo:
    """The node's NVIDIA GPUs, as a checkpoint records them in compat.gpu."""

    model: str
    count: int
    driver: str
    cuda: str = ""
    memory_mib: int = 0  # all GPUs together

    def to_compat(self) -> Dict[str, Any]:
        return {"model": self.model, "count": self.count, "driver": self.driver, "cuda": self.cuda,
                "memory_mib": self.memory_mib}

    @property
    def driver_major(self) -> int:
        v = version_tuple(self.driver)
        return v[0] if v else 0


def version_tuple(text: str) -> Tuple[int, ...]:
    m = re.search(r"\d+(?:\.\d+)*", text or "")
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()


def _mib(text: str) -> int:
    """ "23028 MiB" or "23028" (nounits) -> 23028; "[N/A]" -> 0."""
    m = re.match(r"^\s*(\d+)\s*(MiB)?\s*$", text or "")
    return int(m.group(1)) if m else 0


def parse_query_gpu(text: str) -> GpuInfo:
    """Parse `nvidia-smi --query-gpu=name,count,driver_version,memory.total
    --format=csv,noheader[,nounits]`: one line per GPU, e.g.
    "NVIDIA A10G, 1, 570.86.15, 23028 MiB"."""
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if r and any(c.strip() for c in r)]
    if not rows:
        raise GpuError("nvidia-smi listed no GPU")
    names: List[str] = []
    drivers = set()
    memory = 0
    for row in rows:
        if len(row) != len(QUERY_FIELDS):
            raise GpuError(f"unexpected nvidia-smi output line {','.join(row)!r}",
                           hint=f"expected {len(QUERY_FIELDS)} fields: {','.join(QUERY_FIELDS)}")
        name, _count, driver, mem = (c.strip() for c in row)
        names.append(name)
        drivers.add(driver)
        memory += _mib(mem)
    if len(drivers) != 1:
        raise GpuError(f"nvidia-smi reports several driver versions: {', '.join(sorted(drivers))}")
    model = " + ".join(sorted(set(names)))
    return GpuInfo(model=model, count=len(rows), driver=drivers.pop(), memory_mib=memory)


def parse_cuda_version(text: str) -> str:
    """The CUDA version from `nvidia-smi --version` ("CUDA Version : 12.8")
    or from the header of plain `nvidia-smi` ("CUDA Version: 12.8")."""
    m = re.search(r"CUDA Version\s*:\s*([0-9][0-9.]*)", text or "")
    return m.group(1) if m else ""


def _smi(run: Callable, nvidia_smi: str, args: Sequence[str], timeout: float) -> str:
    try:
        proc = run([nvidia_smi, *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GpuError(f"cannot run {nvidia_smi}: {e}") from e
    if proc.returncode != 0:
        first = ((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()
        raise GpuError(f"{nvidia_smi} {' '.join(args)} failed (exit {proc.returncode})"
                       + (f": {first[0]}" if first else ""),
                       hint="check that the NVIDIA driver is loaded")
    return proc.stdout or ""


def detect(nvidia_smi: str = "nvidia-smi", run: Callable = subprocess.run, timeout: float = 20.0) -> Optional[GpuInfo]:
    """This node's GPUs; None when there is no nvidia-smi (not a GPU node).
    GpuError when nvidia-smi exists but fails (driver not loaded...)."""
    try:
        text = _smi(run, nvidia_smi, [f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits"],
                    timeout)
    except FileNotFoundError:
        return None
    info = parse_query_gpu(text)
    try:
        info.cuda = parse_cuda_version(_smi(run, nvidia_smi, ["--version"], timeout))
    except (GpuError, FileNotFoundError):
        info.cuda = ""
    if not info.cuda:  # drivers older than --version: the table header has it
        try:
            info.cuda = parse_cuda_version(_smi(run, nvidia_smi, [], timeout))
        except (GpuError, FileNotFoundError):
            pass
    return info


# -- what CRIU needs ------------------------------------------------------------------------

def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _search(name: str, dirs: Sequence[str]) -> Optional[str]:
    for d in dirs:
        if d:
            candidate = os.path.join(d, name)
            if _is_executable(candidate):
                return os.path.abspath(candidate)
    return None


def find_cuda_checkpoint(setting: str = CUDA_CHECKPOINT, path_env: Optional[str] = None) -> Optional[str]:
    """The cuda-checkpoint CRIU's plugin will run: `[gpu] cuda_checkpoint` as
    an absolute path, or that name on PATH."""
    if os.path.isabs(setting):
        return setting if _is_executable(setting) else None
    return _search(setting, (path_env if path_env is not None else os.environ.get("PATH") or DEFAULT_PATH).split(":"))


def find_plugin_dir(setting: str = "", candidates: Sequence[str] = DEFAULT_PLUGIN_DIRS) -> Optional[str]:
    """The CRIU libdir holding cuda_plugin.so: `[gpu] criu_plugin_dir`, else
    the first of the usual places that has it."""
    for d in ([setting] if setting else list(candidates)):
        if os.path.isfile(os.path.join(d, PLUGIN_FILE)):
            return d
    return None


def criu_environment(cuda_checkpoint: str, plugin_dir: str, base: Optional[Mapping[str, str]] = None,
                     ) -> Dict[str, str]:
    """The environment for runc (which hands it to CRIU) so that CRIU loads
    the CUDA plugin and the plugin's execvp finds this cuda-checkpoint."""
    env = dict(os.environ if base is None else base)
    tool_dir = os.path.dirname(cuda_checkpoint)
    rest = [d for d in (env.get("PATH") or DEFAULT_PATH).split(":") if d and d != tool_dir]
    env["PATH"] = ":".join([tool_dir] + rest)
    env["CRIU_LIBS_DIR"] = plugin_dir
    return env


def criu_config_lines(lock_timeout: float) -> List[str]:
    """CRIU config-file lines for GPU jobs: CRIU's --timeout bounds the
    freezing stage and is the plugin's lock timeout (x1000 ms)."""
    return [f"timeout {max(1, int(round(lock_timeout)))}"]


@dataclass
class CriuGpuSetup:
    """Everything runc/CRIU need for one GPU job on this node."""

    gpu: GpuInfo
    cuda_checkpoint: str
    plugin_dir: str

    def environment(self, base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        return criu_environment(self.cuda_checkpoint, self.plugin_dir, base)


def setup_for(gpu_cfg: Any, spec: Mapping[str, Any], run: Callable = subprocess.run) -> Optional[CriuGpuSetup]:
    """None for a job that uses no GPU (it asks for none, or the node has
    none); else what CRIU needs, or GpuError saying what is missing."""
    if not requests_gpu(spec):
        return None
    info = detect(gpu_cfg.nvidia_smi, run=run)
    if info is None:
        return None
    return require_setup(gpu_cfg, info)


def require_setup(gpu_cfg: Any, info: GpuInfo) -> CriuGpuSetup:
    if info.driver_major and info.driver_major < MIN_DRIVER_MAJOR:
        raise GpuError(f"GPU driver {info.driver} is older than r{MIN_DRIVER_MAJOR}, which CRIU's CUDA plugin needs",
                       hint=f"install an NVIDIA driver >= {MIN_DRIVER_MAJOR} (>= {RECOMMENDED_DRIVER_MAJOR} "
                       "recommended)")
    tool = find_cuda_checkpoint(gpu_cfg.cuda_checkpoint)
    if not tool:
        raise GpuError(f"cuda-checkpoint not found ({gpu_cfg.cuda_checkpoint!r})",
                       hint="install NVIDIA's cuda-checkpoint and set [gpu] cuda_checkpoint or PATH")
    plugin_dir = find_plugin_dir(gpu_cfg.criu_plugin_dir)
    if not plugin_dir:
        where = gpu_cfg.criu_plugin_dir or ", ".join(DEFAULT_PLUGIN_DIRS)
        raise GpuError(f"CRIU's CUDA plugin ({PLUGIN_FILE}) not found in {where}",
                       hint="run deploy/install-criu.sh --cuda-plugin, or set [gpu] criu_plugin_dir")
    return CriuGpuSetup(gpu=info, cuda_checkpoint=tool, plugin_dir=plugin_dir)


# -- compatibility -------------------------------------------------------------------------

def compat_problem(recorded: Optional[Mapping[str, Any]], current: Optional[Mapping[str, Any]]) -> Optional[str]:
    """None when a checkpoint with GPU record `recorded` can restore on a
    node whose GPUs are `current`: the same model and count, a driver at
    least as new. A checkpoint without GPU state restores anywhere."""
    if not recorded:
        return None
    what = f"{recorded.get('count')}x {recorded.get('model')}"
    if not current:
        return f"the checkpoint holds GPU state ({what}) and this node has no NVIDIA GPU"
    if recorded.get("model") != current.get("model") or recorded.get("count") != current.get("count"):
        return f"GPU differs ({what} at dump, {current.get('count')}x {current.get('model')} here)"
    rec_driver = version_tuple(str(recorded.get("driver", "")))
    cur_driver = version_tuple(str(current.get("driver", "")))
    if not cur_driver or cur_driver < rec_driver:
        return (f"GPU driver here ({current.get('driver') or 'unknown'}) is older than at dump "
                f"({recorded.get('driver')})")
    return None


# -- what CRIU's log says about the device state --------------------------------------------

def device_stats(log_text: str) -> Dict[str, float]:
    """Numbers about the CUDA plugin's work from a CRIU log at debug level
    (dump.log or restore.log): how many processes it handled and how long its
    cuda-checkpoint calls took, measured from the plugin's log line to the
    next line. The plugin logs "resuming devices" before it looks up the
    restore thread ("Restore thread pid T found", a debug line) and runs
    `--action restore` and `unlock` only after that: the resume lasts until
    the line after it. Empty when the plugin did nothing."""
    entries: List[Tuple[float, str]] = []
    for line in log_text.splitlines():
        m = _LOG_LINE_RE.match(line)
        if m:
            entries.append((int(m.group(1)) + int(m.group(2)) / 10 ** len(m.group(2)), m.group(3)))
    marks = {
        "pausing devices on pid": "gpu_lock_seconds",
        "Checkpointing CUDA devices on pid": "gpu_checkpoint_seconds",
        "resuming devices on pid": "gpu_resume_seconds",
    }
    out: Dict[str, float] = {}
    pids = set()
    for i, (t, msg) in enumerate(entries):
        if "cuda_plugin: " not in msg:
            continue
        for mark, key in marks.items():
            if mark in msg:
                j = i + 1
                while j < len(entries) and _RESTORE_TID_LINE in entries[j][1]:
                    j += 1
                nxt = entries[j][0] if j < len(entries) else t
                out[key] = round(out.get(key, 0.0) + max(0.0, nxt - t), 6)
                m = re.search(r"pid (\d+)", msg)
                if m and key != "gpu_resume_seconds":
                    pids.add(m.group(1))
    if pids:
        out["gpu_processes"] = len(pids)
    return out


# -- doctor -----------------------------------------------------------------------------------

def meminfo_kib(text: str, key: str = "MemTotal") -> int:
    m = re.search(rf"^{key}:\s+(\d+)\s*kB", text or "", re.MULTILINE)
    return int(m.group(1)) if m else 0


def doctor_checks(gpu_cfg: Any, delegate: str, meminfo: str, run: Callable = subprocess.run,
                  ) -> List[Tuple[str, str, str, str]]:
    """(name, status, detail, fix) lines about GPU readiness; none on a node
    without nvidia-smi."""
    try:
        info = detect(gpu_cfg.nvidia_smi, run=run)
    except GpuError as e:
        return [("gpu", "fail", str(e.message), e.hint or "load the NVIDIA driver")]
    if info is None:
        return []
    out: List[Tuple[str, str, str, str]] = [
        ("gpu", "pass", f"{info.count}x {info.model}, {info.memory_mib} MiB, driver {info.driver}, "
         f"CUDA {info.cuda or '?'}", ""),
    ]
    major = info.driver_major
    if major < MIN_DRIVER_MAJOR:
        out.append(("gpu driver", "fail", f"driver {info.driver}: CRIU's CUDA plugin needs r{MIN_DRIVER_MAJOR} "
                    "or newer (cuda_plugin.c disables itself otherwise)",
                    f"install an NVIDIA driver >= {RECOMMENDED_DRIVER_MAJOR}"))
    elif major < RECOMMENDED_DRIVER_MAJOR:
        out.append(("gpu driver", "warn", f"driver {info.driver}: checkpoints work from r{MIN_DRIVER_MAJOR}; "
                    f"process trees, NVML and the lock timeout need r{RECOMMENDED_DRIVER_MAJOR}",
                    f"install an NVIDIA driver >= {RECOMMENDED_DRIVER_MAJOR}"))
    else:
        out.append(("gpu driver", "pass", f"{info.driver} (CRIU's CUDA plugin needs >= {MIN_DRIVER_MAJOR})", ""))
    tool = find_cuda_checkpoint(gpu_cfg.cuda_checkpoint)
    out.append(("cuda-checkpoint", "pass", tool, "") if tool else
               ("cuda-checkpoint", "fail", f"{gpu_cfg.cuda_checkpoint!r} not found",
                "install NVIDIA's cuda-checkpoint; set [gpu] cuda_checkpoint or put it on PATH"))
    plugin_dir = find_plugin_dir(gpu_cfg.criu_plugin_dir)
    out.append(("criu cuda plugin", "pass", os.path.join(plugin_dir, PLUGIN_FILE), "") if plugin_dir else
               ("criu cuda plugin", "fail", f"no {PLUGIN_FILE} in "
                f"{gpu_cfg.criu_plugin_dir or ', '.join(DEFAULT_PLUGIN_DIRS)}",
                "deploy/install-criu.sh --cuda-plugin (builds it for the installed CRIU)"))
    total_kib = meminfo_kib(meminfo)
    gpu_kib = info.memory_mib * 1024
    if not total_kib:
        out.append(("gpu memory", "warn", "cannot read MemTotal", ""))
    elif total_kib < gpu_kib:
        out.append(("gpu memory", "fail", f"host RAM {total_kib // 1024} MiB < GPU memory {info.memory_mib} MiB: "
                    "a checkpoint copies device memory into host memory",
                    "use an instance type with more RAM than GPU memory"))
    elif total_kib < 2 * gpu_kib:
        out.append(("gpu memory", "warn", f"host RAM {total_kib // 1024} MiB holds the GPU memory "
                    f"({info.memory_mib} MiB) only once: the job's own memory and tmpfs staging need room too",
                    "prefer instances with at least twice as much RAM as GPU memory"))
    else:
        out.append(("gpu memory", "pass", f"host RAM {total_kib // 1024} MiB >= 2x GPU memory {info.memory_mib} MiB",
                    ""))
    if not is_nvidia_runtime(delegate):
        out.append(("gpu delegate", "warn", f"runtime.delegate is {delegate!r}",
                    "install.sh --gpu yes (delegates to nvidia-container-runtime)"))
    return out


def log_stats(path: str) -> Dict[str, float]:
    """device_stats of a CRIU log file; empty when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return device_stats(f.read())
    except OSError:
        return {}


def node_setup(gpu_cfg: Any, run: Callable = subprocess.run,
               ) -> Tuple[Optional[Dict[str, Any]], Optional[CriuGpuSetup], str]:
    """For a restore: (this node's GPUs as a compat.gpu record or None, what
    CRIU needs or None, why GPU state cannot be restored here or "")."""
    try:
        info = detect(gpu_cfg.nvidia_smi, run=run)
    except GpuError as e:
        return None, None, str(e)
    if info is None:
        return None, None, "this node has no NVIDIA GPU (no nvidia-smi)"
    try:
        return info.to_compat(), require_setup(gpu_cfg, info), ""
    except GpuError as e:
        return info.to_compat(), None, str(e)
