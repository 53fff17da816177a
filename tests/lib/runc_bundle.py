"""Busybox OCI bundles run by the real runc, without Docker (functional tests).

Each Bundle has its own runc --root in a temp dir, so nothing it starts is
seen by dockerd's runc state. Everything started is killed and deleted at
cleanup().
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from typing import List, Optional

from mmbatch.demo import build_busybox_rootfs

RUNC = shutil.which("runc") or "/usr/sbin/runc"


def unavailable_reason() -> Optional[str]:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists(RUNC):
        return "runc is not installed"
    if not (shutil.which("busybox") or os.path.exists("/bin/busybox")):
        return "busybox-static is not installed"
    return None


class Bundle:
    def __init__(self, args: List[str], base: Optional[str] = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="mmbt-bundle-", dir=base)
        self.root = os.path.join(self.dir, "runc-root")
        self.id = f"mmbt-{uuid.uuid4().hex[:10]}"
        self.rootfs = rootfs = os.path.join(self.dir, "rootfs")
        self._pipes: List[int] = []
        os.makedirs(rootfs)
        build_busybox_rootfs(rootfs)
        subprocess.run([RUNC, "spec", "--bundle", self.dir], check=True)
        with open(os.path.join(self.dir, "config.json"), encoding="utf-8") as f:
            spec = json.load(f)
        spec["process"]["terminal"] = False
        spec["process"]["args"] = args
        spec["root"]["readonly"] = False
        with open(os.path.join(self.dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f)
        self.started = False

    def runc(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([RUNC, "--root", self.root, *args], capture_output=True, text=True,
                              timeout=timeout, check=check)

    def start(self) -> None:
        """Run it detached with pipes for stdio, as an engine does (CRIU cannot
        dump a host file outside the container's mounts); the write ends go to
        the container, the read ends stay open here until cleanup()."""
        (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
        self._pipes = [in_w, out_r, err_r]
        try:
            proc = subprocess.run([RUNC, "--root", self.root, "run", "--detach", "--bundle", self.dir, self.id],
                                  stdin=in_r, stdout=out_w, stderr=err_w, timeout=60)
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        if proc.returncode != 0:
            raise RuntimeError(f"runc run {self.id} failed (exit {proc.returncode})")
        self.started = True

    def status(self) -> str:
        proc = self.runc("state", self.id, check=False)
        if proc.returncode != 0:
            return ""
        return json.loads(proc.stdout).get("status", "")

    def read(self, path: str) -> str:
        """A file the job wrote in its rootfs ("" if not there yet)."""
        try:
            with open(os.path.join(self.rootfs, path.lstrip("/")), encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        if self.started:
            self.runc("kill", self.id, "KILL", check=False)
            self.runc("delete", "--force", self.id, check=False)
        for fd in self._pipes:
            os.close(fd)
        self._pipes = []
        shutil.rmtree(self.dir, ignore_errors=True)
