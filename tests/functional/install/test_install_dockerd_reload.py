"""install.sh's dockerd reload against a private dockerd under a temporary host root.

The private daemon has its own config file, data-root, exec-root, pid file,
socket and containerd, no bridge and no iptables: the machine's dockerd is
never touched. `--reload` lets install.sh signal the daemon whose pid is in
HOST_ROOT/var/run/docker.pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[3]
INSTALL = ROOT / "install.sh"
ORIGINAL = '{\n  "runtimes": {\n    "crun": {\n      "path": "/usr/bin/true"\n    }\n  }\n}\n'

pytestmark = [
    pytest.mark.slow,
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("dockerd") is None or shutil.which("docker") is None,
                       reason="needs dockerd and the docker CLI"),
]


class PrivateDockerd:
    def __init__(self, hr: Path) -> None:
        self.hr = hr
        self.sock = hr / "var/run/docker.sock"
        self.log = hr / "dockerd.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        hr = self.hr
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--config-file", str(hr / "etc/docker/daemon.json"), "--data-root", str(hr / "data"),
                 "--exec-root", str(hr / "exec"), "--pidfile", str(hr / "var/run/docker.pid"),
                 "-H", f"unix://{self.sock}", "--iptables=false", "--ip-masq=false", "--bridge=none"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"private dockerd exited: {self.log.read_text()[-2000:]}")
            if self.info("{{.ID}}"):
                return
            time.sleep(0.3)
        pytest.fail("private dockerd did not answer in 60 s")

    def info(self, fmt: str) -> str:
        out = subprocess.run(["docker", "-H", f"unix://{self.sock}", "info", "--format", fmt],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else ""

    def runtimes(self) -> List[str]:
        return sorted(json.loads(self.info("{{json .Runtimes}}") or "{}"))

    def reloads(self) -> int:
        return self.log.read_text().count("Got signal to reload configuration")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # dockerd bind-mounts its data-root onto itself; a crashed one leaves it.
        data = str(self.hr / "data")
        with open("/proc/mounts") as f:
            if any(line.split()[1] == data for line in f):
                subprocess.run(["umount", "-l", data], check=False)


@pytest.fixture
def dockerd() -> Iterator[PrivateDockerd]:
    hr = Path(tempfile.mkdtemp(prefix="mmbd", dir="/tmp"))  # short: unix socket paths are limited
    (hr / "etc/docker").mkdir(parents=True)
    (hr / "var/run").mkdir(parents=True)
    (hr / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (hr / "etc/docker/daemon.json").write_text(ORIGINAL)
    d = PrivateDockerd(hr)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(hr, ignore_errors=True)


def install(hr: Path, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(["bash", str(INSTALL), "--host-root", str(hr), "--no-venv", *args],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    return out


def test_reload_only_when_changed_and_never_a_crashing_one(dockerd: PrivateDockerd) -> None:
    hr = dockerd.hr
    assert dockerd.runtimes() == ["crun", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux", "runc"]

    out = install(hr, "--no-reload", "--default-runtime")
    assert dockerd.reloads() == 0, "--no-reload"
    assert "not reloading dockerd" in out.stdout

    out = install(hr, "--reload", "--default-runtime")
    assert dockerd.reloads() == 0, "daemon.json unchanged: no reload"
    assert "daemon.json: unchanged" in out.stdout

    # The real path: a fresh install that dockerd picks up on SIGHUP.
    install(hr, "--uninstall", "--no-reload")
    assert (hr / "etc/docker/daemon.json").read_text() == ORIGINAL
    out = install(hr, "--reload", "--default-runtime")
    assert "reloaded dockerd (SIGHUP" in out.stdout
    assert dockerd.reloads() == 1
    assert "mmbatch" in dockerd.runtimes()
    assert dockerd.info("{{.DefaultRuntime}}") == "mmbatch"
    assert "dockerd's default runtime is now mmbatch" in out.stdout

    # Taking the default-runtime out: dockerd would keep "mmbatch" as its
    # default across a reload and (Docker 20.10) crash on the missing runtime,
    # so install.sh does not reload and asks for a restart.
    out = install(hr, "--uninstall", "--reload")
    assert (hr / "etc/docker/daemon.json").read_text() == ORIGINAL
    assert "NOT reloading dockerd" in out.stderr and "restart" in out.stderr
    assert dockerd.reloads() == 1
    assert dockerd.alive() and dockerd.info("{{.ID}}")

    dockerd.stop()   # the restart the operator was asked for
    dockerd.start()
    assert dockerd.info("{{.DefaultRuntime}}") == "runc"

    # Without a default-runtime change, a reload is enough both ways.
    install(hr, "--reload")
    assert dockerd.reloads() == 2
    assert "mmbatch" in dockerd.runtimes()
    out = install(hr, "--uninstall", "--reload")
    assert "reloaded dockerd" in out.stdout
    assert dockerd.reloads() == 3
    assert "mmbatch" not in dockerd.runtimes()
    assert dockerd.alive()
