"""Node configuration: /etc/mmbatch/config.toml, validated at load.

Every key is known; an unknown key, a wrong type or a bad value is a
ConfigError that names the file, the key and the reason. `MMBATCH_CONFIG`
points at another file. A missing file means the embedded defaults.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from mmbatch.durations import parse_duration
from mmbatch.errors import ConfigError

DEFAULT_PATH = "/etc/mmbatch/config.toml"

MODES = ("iterative", "none")
SSE_MODES = ("AES256", "aws:kms", "none")


@dataclass
class RuntimeSection:
    delegate: str = "runc"
    state_dir: str = "/run/mmbatch"
    docker_socket: str = "/var/run/docker.sock"


@dataclass
class CheckpointSection:
    mode: str = "iterative"
    interval: float = 900.0
    keep: int = 2
    diagnosis: bool = False
    staging_dir: str = "/var/lib/mmbatch/staging"
    # A tmpfs for dumps and restores that fit in free memory ("" = always disk).
    memory_staging_dir: str = "/dev/shm"
    # CRIU behaviour for batch jobs (written to the CRIU config file runc reads).
    tcp_close: bool = True
    file_locks: bool = True
    ext_unix_sk: bool = True
    ghost_limit: str = "64M"
    max_restore_failures: int = 3
    # The longest `runc restore` of restore-on-create (ECS_CONTAINER_START_TIMEOUT must exceed it).
    restore_timeout: float = 600.0
    # Per-job MMBATCH_CHECKPOINT_IMAGE_PATH is only honoured under these roots.
    allowed_image_paths: List[str] = field(default_factory=list)
    # mmbatchd's schedule: periodic checkpoints in flight at once on the node,
    # an average upload cap (megabits/s, 0 = none), the random spread of each
    # interval (fraction of it) and the first retry delay after a failure.
    parallel: int = 2
    bandwidth_mbps: float = 0.0
    jitter: float = 0.1
    retry_seconds: float = 30.0
    # Pre-dump passes while the job runs, where the kernel tracks dirty pages
    # (mmbatch/predump.py): "auto" uses them when `criu check --feature
    # mem_dirty_track` succeeds, "off" never.
    pre_dump: str = "auto"
    pre_dump_iterations: int = 1


@dataclass
class StoreSection:
    url: str = "file:///var/lib/mmbatch/checkpoints"
    endpoint_url: str = ""
    region: str = ""
    sse: str = "AES256"
    kms_key_id: str = ""
    expected_bucket_owner: str = ""
    chunk_size: int = 256 * 1024
    pack_size: int = 16 * 1024 * 1024
    parallel: int = 8


@dataclass
class SpotSection:
    imds_endpoint: str = "http://169.254.169.254"
    poll_seconds: float = 5.0
    grace_seconds: float = 60.0
    enabled: bool = True
    # Final checkpoints run this many at a time (0 = one per CPU).
    final_parallel: int = 0
    # During an interruption the runtime holds SIGTERM/SIGKILL of a managed
    # container this long for its final checkpoint (keep it below
    # ECS_CONTAINER_STOP_TIMEOUT and the two minutes' notice).
    kill_wait_seconds: float = 100.0


@dataclass
class ApiSection:
    # HTTP for scripts and the management server: served only when token_file
    # names a file holding the token ("" listen = no TCP at all).
    listen: str = "127.0.0.1:8080"
    token_file: str = ""
    # The unix socket (0600, no token); "" = mmbatchd.sock next to hook_socket.
    socket: str = ""
    # mmbatch-hook and the runtime tell mmbatchd about containers here
    # (MMBATCH_HOOK_SOCKET overrides it).
    hook_socket: str = "/run/mmbatch/hook.sock"


@dataclass
class ServerSection:
    """The management server (`mmbatch server`, docs/server.md)."""

    listen: str = "127.0.0.1:8090"
    # How browsers reach the server (the Cognito callback URL is built from
    # it; https makes the session cookie Secure). "" = http://<listen>.
    public_url: str = ""
    dev: bool = False  # no login at all; only on a loopback address
    admin_token_file: str = ""
    cache_path: str = "/var/lib/mmbatch/server.sqlite3"
    sync_interval: float = 60.0
    session_lifetime: float = 8 * 3600.0
    # Prices per vCPU-hour; instance_prices lines "TYPE ON_DEMAND SPOT" override them per instance type.
    on_demand_vcpu_hour: float = 0.0
    spot_vcpu_hour: float = 0.0
    instance_prices: List[str] = field(default_factory=list)
    cognito_region: str = ""
    cognito_user_pool_id: str = ""
    cognito_client_id: str = ""
    cognito_client_secret_file: str = ""
    cognito_domain: str = ""  # hosted UI: a prefix, a host name or a URL
    cognito_idp_endpoint: str = ""  # default https://cognito-idp.<region>.amazonaws.com


def parse_instance_price(line: str) -> tuple:
    """("m5.large", on_demand, spot) from "m5.large 0.048 0.019" (per vCPU-hour); ValueError if bad."""
    parts = line.split()
    if len(parts) != 3:
        raise ValueError(f"{line!r} is not 'TYPE ON_DEMAND SPOT'")
    on_demand, spot = float(parts[1]), float(parts[2])
    if not (on_demand >= 0 and spot >= 0):
        raise ValueError(f"{line!r}: prices must not be negative")
    return parts[0], on_demand, spot


@dataclass
class LogSection:
    dir: str = "/var/log/mmbatch"
    level: str = "info"


@dataclass
class GpuSection:
    """GPU jobs (mmbatch/gpu.py, docs/gpu.md): what CRIU's CUDA plugin needs."""

    cuda_checkpoint: str = "cuda-checkpoint"  # NVIDIA's tool: a name on PATH or an absolute path
    criu_plugin_dir: str = ""  # holds cuda_plugin.so; "" = /opt/criu4/usr/lib/criu, /usr/lib/criu, ...
    nvidia_smi: str = "nvidia-smi"
    lock_timeout: float = 30.0  # CRIU --timeout for GPU jobs: the plugin's lock waits this long for GPU work


@dataclass
class CloudwatchSection:
    """Optional shipping of mmbatchd's log and the node's events to CloudWatch Logs (mmbatch/logs.py)."""

    enabled: bool = False
    log_group: str = "/mmbatch/nodes"
    stream_prefix: str = ""  # "" = the instance id (or host name); streams <prefix>/mmbatchd and <prefix>/events
    region: str = ""
    endpoint_url: str = ""
    queue_size: int = 10000  # events held while CloudWatch is slow; the oldest are dropped (and counted) beyond
    batch_seconds: float = 5.0


@dataclass
class Config:
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    store: StoreSection = field(default_factory=StoreSection)
    spot: SpotSection = field(default_factory=SpotSection)
    api: ApiSection = field(default_factory=ApiSection)
    log: LogSection = field(default_factory=LogSection)
    cloudwatch: CloudwatchSection = field(default_factory=CloudwatchSection)
    gpu: GpuSection = field(default_factory=GpuSection)
    server: ServerSection = field(default_factory=ServerSection)
    path: str = ""

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("path", None)
        return out


_SECTIONS = {
    "runtime": RuntimeSection,
    "checkpoint": CheckpointSection,
    "store": StoreSection,
    "spot": SpotSection,
    "api": ApiSection,
    "log": LogSection,
    "cloudwatch": CloudwatchSection,
    "gpu": GpuSection,
    "server": ServerSection,
}

_DURATION_KEYS = {
    ("checkpoint", "interval"),
    ("checkpoint", "restore_timeout"),
    ("spot", "poll_seconds"),
    ("spot", "grace_seconds"),
    ("spot", "kill_wait_seconds"),
    ("checkpoint", "retry_seconds"),
    ("cloudwatch", "batch_seconds"),
    ("gpu", "lock_timeout"),
    ("server", "sync_interval"),
    ("server", "session_lifetime"),
}
_SIZE_RE = re.compile(r"^\d+[KMG]?$")


def config_path() -> str:
    return os.environ.get("MMBATCH_CONFIG") or DEFAULT_PATH


def _toml_loads(text: str) -> Dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found]
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def load(path: Optional[str] = None) -> Config:
    """Load and validate the config file; defaults when it does not exist."""
    path = path or config_path()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        cfg = Config()
        cfg.path = path
        return cfg
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", path=path) from e
    return loads(text, path=path)


def loads(text: str, path: str = "<string>") -> Config:
    try:
        data = _toml_loads(text)
    except Exception as e:  # tomli's TOMLDecodeError names line and column
        raise ConfigError(f"not valid TOML: {e}", path=path, hint="fix the syntax at the position shown") from e
    return from_dict(data, path=path)


def from_dict(data: Dict[str, Any], path: str = "<dict>") -> Config:
    cfg = Config()
    cfg.path = path
    for section, values in data.items():
        cls = _SECTIONS.get(section)
        if cls is None:
            raise ConfigError(
                "unknown section", path=path, key=f"[{section}]",
                hint=f"known sections: {', '.join(sorted(_SECTIONS))}",
            )
        if not isinstance(values, dict):
            raise ConfigError("must be a table", path=path, key=section)
        target = getattr(cfg, section)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in values.items():
            full = f"{section}.{key}"
            if key not in fields:
                raise ConfigError(
                    "unknown key", path=path, key=full,
                    hint=f"known keys in [{section}]: {', '.join(sorted(fields))}",
                )
            setattr(target, key, _coerce(section, key, value, getattr(target, key), path))
    validate(cfg)
    return cfg


def _coerce(section: str, key: str, value: Any, default: Any, path: str) -> Any:
    full = f"{section}.{key}"
    if (section, key) in _DURATION_KEYS:
        try:
            return parse_duration(value)
        except ValueError as e:
            raise ConfigError(str(e), path=path, key=full) from e
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}", path=path, key=full)
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"must be a whole number, got {value!r}", path=path, key=full)
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"must be a number, got {value!r}", path=path, key=full)
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):  # TOML has nan and inf
            raise ConfigError(f"must be a finite number, got {value!r:.40}", path=path, key=full)
        return number
    if isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError("must be a list of strings", path=path, key=full)
        return list(value)
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, got {value!r}", path=path, key=full)
    return value


def validate(cfg: Config) -> None:
    """Check values, not only types. Raises ConfigError naming the key."""
    p = cfg.path
    c = cfg.checkpoint
    if c.mode not in MODES:
        raise ConfigError(f"must be one of {', '.join(MODES)}, got {c.mode!r}", path=p, key="checkpoint.mode")
    if c.interval < 10:
        raise ConfigError(
            f"{c.interval:g}s is too short", path=p, key="checkpoint.interval",
            hint="use at least 10s (2m or more is recommended)",
        )
    if c.keep < 1:
        raise ConfigError("must be at least 1", path=p, key="checkpoint.keep")
    if c.max_restore_failures < 1:
        raise ConfigError("must be at least 1", path=p, key="checkpoint.max_restore_failures")
    if not os.path.isabs(c.staging_dir):
        raise ConfigError("must be an absolute path", path=p, key="checkpoint.staging_dir")
    if c.memory_staging_dir and not os.path.isabs(c.memory_staging_dir):
        raise ConfigError("must be an absolute path or empty", path=p, key="checkpoint.memory_staging_dir")
    if not _SIZE_RE.match(c.ghost_limit):
        raise ConfigError("must be a size such as 64M", path=p, key="checkpoint.ghost_limit")
    for root in c.allowed_image_paths:
        if not os.path.isabs(root):
            raise ConfigError(f"{root!r} must be an absolute path", path=p, key="checkpoint.allowed_image_paths")
    r = cfg.runtime
    if not r.delegate or "\0" in r.delegate:
        raise ConfigError("must name a runtime", path=p, key="runtime.delegate")
    if os.path.basename(r.delegate) in ("mmbatch-runtime",):
        raise ConfigError(
            "cannot delegate to mmbatch-runtime itself", path=p, key="runtime.delegate",
            hint="name runc, nvidia-container-runtime or another OCI runtime",
        )
    if not os.path.isabs(r.state_dir):
        raise ConfigError("must be an absolute path", path=p, key="runtime.state_dir")
    s = cfg.store
    if not (s.url.startswith("file://") or s.url.startswith("s3://") or s.url.startswith("/")):
        raise ConfigError(
            f"unsupported store URL {s.url!r}", path=p, key="store.url",
            hint="use file:///path (a local or mounted file system) or s3://bucket/prefix",
        )
    if s.url.startswith("s3://") and not s.url[5:].split("/", 1)[0]:
        raise ConfigError("s3 URL needs a bucket name", path=p, key="store.url")
    if s.sse not in SSE_MODES:
        raise ConfigError(f"must be one of {', '.join(SSE_MODES)}", path=p, key="store.sse")
    if s.sse == "aws:kms" and not s.kms_key_id:
        raise ConfigError("aws:kms needs store.kms_key_id", path=p, key="store.sse")
    if s.chunk_size < 4096 or s.chunk_size % 4096:
        raise ConfigError("must be a positive multiple of 4096", path=p, key="store.chunk_size")
    if s.pack_size < s.chunk_size:
        raise ConfigError("must be at least store.chunk_size", path=p, key="store.pack_size")
    if s.parallel < 1:
        raise ConfigError("must be at least 1", path=p, key="store.parallel")
    if cfg.spot.poll_seconds <= 0:
        raise ConfigError("must be positive", path=p, key="spot.poll_seconds")
    if c.parallel < 1:
        raise ConfigError("must be at least 1", path=p, key="checkpoint.parallel")
    if c.bandwidth_mbps < 0:
        raise ConfigError("must not be negative (0 means no cap)", path=p, key="checkpoint.bandwidth_mbps")
    if not 0 <= c.jitter <= 0.5:
        raise ConfigError(f"must be between 0 and 0.5, got {c.jitter:g}", path=p, key="checkpoint.jitter")
    if c.retry_seconds < 1:
        raise ConfigError("must be at least 1s", path=p, key="checkpoint.retry_seconds")
    if c.pre_dump not in ("auto", "off"):
        raise ConfigError(f"must be auto or off, got {c.pre_dump!r}", path=p, key="checkpoint.pre_dump")
    if not 1 <= c.pre_dump_iterations <= 5:
        raise ConfigError("must be between 1 and 5", path=p, key="checkpoint.pre_dump_iterations")
    if cfg.spot.final_parallel < 0:
        raise ConfigError("must not be negative (0 means one per CPU)", path=p, key="spot.final_parallel")
    if not 0 < cfg.spot.kill_wait_seconds <= 600:
        raise ConfigError(
            "must be more than 0s and at most 10m", path=p, key="spot.kill_wait_seconds",
            hint="keep it below ECS_CONTAINER_STOP_TIMEOUT; the default is 100s",
        )
    if not os.path.isabs(cfg.api.hook_socket):
        raise ConfigError("must be an absolute path", path=p, key="api.hook_socket")
    if cfg.log.level not in ("debug", "info", "warning", "error"):
        raise ConfigError("must be debug, info, warning or error", path=p, key="log.level")
    _validate_api_and_logs(cfg, p)
    _validate_server(cfg.server, p)
    g = cfg.gpu
    if not 1 <= g.lock_timeout <= 3600:
        raise ConfigError("must be between 1s and 1h", path=p, key="gpu.lock_timeout")
    if g.criu_plugin_dir and not os.path.isabs(g.criu_plugin_dir):
        raise ConfigError("must be an absolute path or empty", path=p, key="gpu.criu_plugin_dir")
    for key in ("cuda_checkpoint", "nvidia_smi"):
        if not getattr(g, key) or "\0" in getattr(g, key):
            raise ConfigError("must name a program", path=p, key=f"gpu.{key}")


def _validate_api_and_logs(cfg: Config, p: str) -> None:
    a = cfg.api
    if a.listen:
        host, sep, port = a.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"must be HOST:PORT or empty, got {a.listen!r}", path=p, key="api.listen")
    for key in ("token_file", "socket"):
        value = getattr(a, key)
        if value and not os.path.isabs(value):
            raise ConfigError("must be an absolute path", path=p, key=f"api.{key}")
    if not os.path.isabs(cfg.log.dir):
        raise ConfigError("must be an absolute path", path=p, key="log.dir")
    cw = cfg.cloudwatch
    if cw.enabled and not cw.log_group:
        raise ConfigError("must name a log group", path=p, key="cloudwatch.log_group")
    if cw.queue_size < 100:
        raise ConfigError("must be at least 100", path=p, key="cloudwatch.queue_size")
    if not 0.1 <= cw.batch_seconds <= 300:
        raise ConfigError("must be between 0.1s and 5m", path=p, key="cloudwatch.batch_seconds")


RUNTIME_KEYS = ("mode", "interval")


def apply_changes(cfg: Config, changes: Dict[str, Any], path: str = "<runtime change>") -> Config:
    """A copy of `cfg` with `[checkpoint]` mode and interval changed, checked
    by the same rules as the file (mmbatchd's PUT /api/v1/config). ConfigError
    names the key."""
    import copy

    new = copy.deepcopy(cfg)
    new.path = path
    for key, value in changes.items():
        if key not in RUNTIME_KEYS:
            raise ConfigError("cannot be changed at run time", path=path, key=f"checkpoint.{key}",
                              hint=f"only {', '.join(RUNTIME_KEYS)}; edit the file and restart for the rest")
        default = getattr(CheckpointSection(), key)
        setattr(new.checkpoint, key, _coerce("checkpoint", key, value, default, path))
    validate(new)
    new.path = cfg.path
    return new


def _validate_server(sv: ServerSection, p: str) -> None:
    host, sep, port = sv.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"must be HOST:PORT, got {sv.listen!r}", path=p, key="server.listen")
    if sv.public_url and not sv.public_url.startswith(("http://", "https://")):
        raise ConfigError("must start with http:// or https://", path=p, key="server.public_url")
    for key in ("admin_token_file", "cache_path", "cognito_client_secret_file"):
        value = getattr(sv, key)
        if value and not os.path.isabs(value):
            raise ConfigError("must be an absolute path", path=p, key=f"server.{key}")
    if sv.sync_interval < 1:
        raise ConfigError("must be at least 1s", path=p, key="server.sync_interval")
    if sv.session_lifetime < 60:
        raise ConfigError("must be at least 1m", path=p, key="server.session_lifetime")
    if sv.on_demand_vcpu_hour < 0 or sv.spot_vcpu_hour < 0:
        raise ConfigError("prices must not be negative", path=p, key="server.on_demand_vcpu_hour")
    for line in sv.instance_prices:
        try:
            parse_instance_price(line)
        except ValueError as e:
            raise ConfigError(str(e), path=p, key="server.instance_prices",
                              hint='e.g. ["m5.large 0.048 0.019"]: per vCPU-hour, on-demand then Spot') from e
    cognito = [sv.cognito_region, sv.cognito_user_pool_id, sv.cognito_client_id, sv.cognito_domain]
    if any(cognito) and not all(cognito):
        raise ConfigError("Cognito needs cognito_region, cognito_user_pool_id, cognito_client_id and "
                          "cognito_domain together", path=p, key="server.cognito_user_pool_id")


DEFAULT_TOML = """\
# mmbatch node configuration. Every key is optional; shown are the defaults.
# Reference: README.md, "Configuration reference".

[runtime]
delegate = "runc"            # or "nvidia-container-runtime", or an absolute path
state_dir = "/run/mmbatch"   # per-container state (never under runc's --root)

[checkpoint]
mode = "iterative"           # iterative | none
interval = "15m"
keep = 2                     # committed checkpoints kept per job
diagnosis = false            # keep images after the job succeeds
staging_dir = "/var/lib/mmbatch/staging"
memory_staging_dir = "/dev/shm"   # tmpfs staging when the images fit in free memory; "" = disk only
parallel = 2                 # periodic checkpoints at once on this node
bandwidth_mbps = 0           # average upload cap in Mbit/s; 0 = none
jitter = 0.1                 # each interval varies by up to +-10%
pre_dump = "auto"            # pre-dump passes while the job runs, if the kernel tracks dirty pages | off
pre_dump_iterations = 1

[store]
url = "file:///var/lib/mmbatch/checkpoints"   # a mounted FSx/EFS/JuiceFS path, or s3://bucket/prefix
endpoint_url = ""            # S3-compatible endpoint
region = ""
sse = "AES256"               # AES256 | aws:kms | none
kms_key_id = ""

[spot]
imds_endpoint = "http://169.254.169.254"
poll_seconds = 5
grace_seconds = 60           # jobs frozen for a notice resume this long after its time
kill_wait_seconds = 100      # stop signals wait this long for the final checkpoint

[api]
listen = "127.0.0.1:8080"    # HTTP API, served only when token_file names the token (docs/api.md)
token_file = ""
"""
