"""Calls of the runc-compatible runtime that mmbatch makes itself.

Global flags the container was created with (--root, --systemd-cgroup,
--criu, --rootless) are kept; the runtime log goes to a file of ours, not to
containerd's log.json of the container.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Dict, List, Optional, Sequence

from mmbatch.errors import RuntimeCommandError


def identity_flags(globals_: Dict[str, str]) -> List[str]:
    """The global flags that identify a container's runtime state (--root and
    friends), from the flags the engine gave at create; never --log."""
    out: List[str] = []
    for name in ("root", "criu", "rootless"):
        if globals_.get(name):
            out += [f"--{name}", globals_[name]]
    if globals_.get("systemd-cgroup") in ("true", "1"):
        out.append("--systemd-cgroup")
    return out


class Runc:
    """One runtime binary plus the global flags of one container."""

    def __init__(self, binary: str, global_flags: Sequence[str] = (), log_file: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.binary = binary
        self.global_flags = list(global_flags)
        self.log_file = log_file
        self.env = env  # runc hands it to CRIU (GPU jobs: mmbatch.gpu.criu_environment)

    def argv(self, *args: str) -> List[str]:
        out = [self.binary] + self.global_flags
        if self.log_file:
            out += ["--log", self.log_file, "--log-format", "json"]
        return out + list(args)

    def run(self, *args: str, timeout: Optional[float] = None, check: bool = True,
            capture: bool = True, **kw) -> subprocess.CompletedProcess:
        argv = self.argv(*args)
        if self.env is not None:
            kw.setdefault("env", self.env)
        try:
            proc = subprocess.run(
                argv,
                stdin=kw.pop("stdin", subprocess.DEVNULL),
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.PIPE if capture else None,
                timeout=timeout,
                **kw,
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeCommandError(f"{args[0]} timed out after {timeout}s", argv=argv) from e
        except OSError as e:
            raise RuntimeCommandError(f"cannot run {self.binary}: {e.strerror}", argv=argv) from e
        if check and proc.returncode != 0:
            err = (proc.stderr or b"").decode(errors="replace") if capture else ""
            err = err or self.last_log_error()
            raise RuntimeCommandError(f"runtime {args[0]} failed (exit {proc.returncode})", argv=argv, stderr=err)
        return proc

    def last_log_error(self) -> str:
        if not self.log_file:
            return ""
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()[-50:]
        except OSError:
            return ""
        for line in reversed(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("level") == "error":
                return str(rec.get("msg", ""))
        return ""

    def state(self, cid: str) -> Optional[Dict]:
        proc = self.run("state", cid, check=False)
        if proc.returncode != 0:
            return None
        try:
            return json.loads(proc.stdout)
        except ValueError:
            return None

    def pause(self, cid: str) -> None:
        self.run("pause", cid, timeout=60)

    def resume(self, cid: str) -> None:
        self.run("resume", cid, timeout=60)

    def checkpoint(self, cid: str, image_path: str, work_path: str, leave_running: bool = True,
                   extra: Sequence[str] = (), timeout: Optional[float] = None) -> None:
        args = ["checkpoint", "--image-path", image_path, "--work-path", work_path]
        if leave_running:
            args.append("--leave-running")
        args += list(extra)
        self.run(*args, cid, timeout=timeout)

    def delete_force(self, cid: str) -> None:
        self.run("delete", "--force", cid, check=False, timeout=60)


def runtime_state_file(root: str, cid: str) -> str:
    """runc's own state.json of a container (cgroup paths, rootfs)."""
    return os.path.join(root, cid, "state.json")


def read_runtime_state(root: str, cid: str) -> Optional[Dict]:
    try:
        with open(runtime_state_file(root, cid), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
