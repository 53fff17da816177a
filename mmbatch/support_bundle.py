"""`mmbatch support-bundle`: one tarball for a bug report.

It holds the effective configuration with secrets redacted, doctor's
report, the daemon's view (node, jobs, metrics) when it answers, recent
events, the tails of mmbatchd's log and the newest kept CRIU logs, the
runtime states of managed containers, and the node's Docker and ECS
settings. Text is scrubbed of secret-looking values (AWS keys, bearer
tokens, the API token, ECS registry credentials). The archive is 0600:
even redacted, it describes the node.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import socket
import subprocess
import tarfile
import time
from typing import Any, Callable, Dict, List, Optional

from mmbatch import config as config_mod
from mmbatch.api.node_view import package_version, redacted_config

EVENT_LINES = 2000
LOG_TAIL_BYTES = 5 * 1024 * 1024
CRIU_LOGS = 20
CRIU_LOG_BYTES = 2 * 1024 * 1024
REDACTED = "<redacted>"

# A name that says its value is secret, from its secret word on: AWS_SECRET_ACCESS_KEY,
# SecretAccessKey, aws_session_token, X-Amz-Security-Token, client_secret, password, api_key...
# (the match starts at the word, so the cost stays linear). Names of files holding a secret
# (token_file) are not secrets.
_SECRET_NAME = (r"(?:secret|token|passw(?:or)?d|credential|access[_-]?key|private[_-]?key|api[_-]?key|"
                r"auth[_-]?data)[A-Za-z0-9_.-]{0,64}")
_NOT_SECRET_SUFFIXES = ("_file", "_path", "_dir", "-file", "-path", "-dir")
_NAMED_VALUE = re.compile(
    r"(?i)(?P<name>" + _SECRET_NAME + r")(?P<close>[\"']?)(?P<sep>\s*[=:]\s*)"
    r"(?P<value>\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|[^\s\"',;&}\]]+)")

_PATTERNS = [
    (re.compile(r"(?im)^(\s*(?:export\s+)?ECS_ENGINE_AUTH_DATA\s*=).*$"), r"\1" + REDACTED),
    (re.compile(r"\b(A3T[A-Z0-9]|AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA)[A-Z0-9]{16}\b"), REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),  # a JWT
    (re.compile(r"(://)[^/\s:@]*:[^/\s@]+@"), r"\1" + REDACTED + "@"),  # user:password@ and :password@
]


def _named_value(m: re.Match[str]) -> str:
    if m.group("name").lower().endswith(_NOT_SECRET_SUFFIXES) or REDACTED in m.group("value"):
        return m.group(0)
    value = m.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{m.group('name')}{m.group('close')}{m.group('sep')}{quote}{REDACTED}{quote}"


def redact_text(text: str, secrets: Optional[List[str]] = None) -> str:
    """`text` with secret-looking values replaced by <redacted>: the given secrets, AWS key ids,
    bearer and basic credentials, JWTs, passwords in URLs, and the values of secret-named keys
    (KEY=value, KEY: value, "Key": "value", quoted or not)."""
    for s in secrets or []:
        if s and len(s) >= 8:
            text = text.replace(s, REDACTED)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return _NAMED_VALUE.sub(_named_value, text)


def tail_bytes(path: str, limit: int) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return None
    if size > limit:
        data = data.split(b"\n", 1)[-1]  # start at a whole line
    return data


def tail_lines(path: str, lines: int) -> Optional[str]:
    data = tail_bytes(path, LOG_TAIL_BYTES)
    if data is None:
        return None
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:]) + "\n"


def _run(argv: List[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({' '.join(argv)}: {e})"


class Bundle:
    """Files collected in memory, written as one tar.gz."""

    def __init__(self, secrets: List[str]) -> None:
        self.secrets = secrets
        self.files: Dict[str, bytes] = {}
        self.notes: List[str] = []

    def add_text(self, name: str, text: str) -> None:
        self.files[name] = redact_text(text, self.secrets).encode("utf-8")

    def add_json(self, name: str, data: Any) -> None:
        self.add_text(name, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")

    def note(self, what: str) -> None:
        self.notes.append(what)

    def write(self, path: str) -> str:
        self.add_json("MANIFEST.json", {"created_at": time.time(), "host": socket.gethostname(),
                                        "files": sorted(self.files) + ["MANIFEST.json"], "notes": self.notes})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: make it private first
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            top = os.path.basename(path).split(".tar")[0]
            for name in sorted(self.files):
                data = self.files[name]
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size = len(data)
                info.mtime = int(time.time())
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(data))
        return path


def collect(cfg: config_mod.Config, doctor: bool = True, event_lines: int = EVENT_LINES,
            daemon: Optional[Callable[[str], Any]] = None, host_root: str = "/") -> Bundle:
    """Gather everything; each part that fails becomes a note, never an error."""
    secrets: List[str] = []
    if cfg.api.token_file:
        try:
            from mmbatch.api.server import read_token

            secrets.append(read_token(cfg.api.token_file))
        except Exception:
            pass
    b = Bundle(secrets)
    b.add_json("config.json", {"path": cfg.path, "effective": redacted_config(cfg)})
    b.add_text("system.txt", "\n".join([
        f"host: {socket.gethostname()}",
        f"kernel: {platform.release()} {platform.version()}",
        f"python: {platform.python_version()}",
        f"mmbatch: {package_version()}",
        f"criu: {_run(['criu', '--version'])}",
        f"runtime ({cfg.runtime.delegate}): {_run([cfg.runtime.delegate, '--version'])}",
        "",
    ]))
    for src, name in (("/etc/docker/daemon.json", "docker-daemon.json"), ("/etc/ecs/ecs.config", "ecs.config")):
        path = os.path.join(host_root, src.lstrip("/"))
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                b.add_text(name, f.read())
        except OSError as e:
            b.note(f"{src}: {e.strerror}")
    if doctor:
        try:
            from mmbatch.doctor import Doctor, report

            checks = Doctor(cfg, host_root).run_all(quick=True)
            b.add_text("doctor.txt", report(checks) + "\n")
            b.add_text("doctor.json", report(checks, as_json=True) + "\n")
        except Exception as e:
            b.note(f"doctor failed: {type(e).__name__}: {e}")
    if daemon is not None:
        for path, name in (("/api/v1/node", "daemon/node.json"), ("/api/v1/jobs", "daemon/jobs.json"),
                           ("/api/v1/config", "daemon/config.json")):
            try:
                b.add_json(name, daemon(path))
            except Exception as e:
                b.note(f"mmbatchd {path}: {e}")
        try:
            b.add_text("daemon/metrics.txt", daemon("/metrics"))
        except Exception as e:
            b.note(f"mmbatchd /metrics: {e}")
    log_dir = os.environ.get("MMBATCH_LOG_DIR") or cfg.log.dir
    text = tail_lines(os.path.join(log_dir, "events.log"), event_lines)
    if text is None:
        b.note(f"no {os.path.join(log_dir, 'events.log')}")
    else:
        b.add_text("logs/events.log", text)
    data = tail_bytes(os.path.join(log_dir, "mmbatchd.jsonl"), LOG_TAIL_BYTES)
    if data is None:
        b.note(f"no {os.path.join(log_dir, 'mmbatchd.jsonl')}")
    else:
        b.add_text("logs/mmbatchd.jsonl", data.decode("utf-8", errors="replace"))
    criu_dir = os.path.join(log_dir, "criu")
    try:
        names = sorted(os.listdir(criu_dir), key=lambda n: os.path.getmtime(os.path.join(criu_dir, n)))
    except OSError:
        names = []
    for n in names[-CRIU_LOGS:]:
        data = tail_bytes(os.path.join(criu_dir, n), CRIU_LOG_BYTES)
        if data is not None:
            b.add_text(f"logs/criu/{n}", data.decode("utf-8", errors="replace"))
    try:
        ids = sorted(os.listdir(cfg.runtime.state_dir))
    except OSError:
        ids = []
    for cid in ids:
        path = os.path.join(cfg.runtime.state_dir, cid, "state.json")
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    b.add_text(f"state/{cid[:12]}.json", f.read())
            except OSError:
                continue
    return b


def default_path(directory: str = ".") -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())
    return os.path.join(directory, f"mmbatch-support-{host}-{stamp}.tar.gz")
