"""install.sh against a temporary host root (--host-root): real bash, real files.

Nothing here touches the machine's own /etc, /opt or dockerd: every host path
is under a temp dir, and --host-root implies --no-packages and --no-reload.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest

from mmbatch import config
from mmbatch.install import launchers

ROOT = Path(__file__).resolve().parents[3]
INSTALL = ROOT / "install.sh"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")

DEBIAN_OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
# What an ECS GPU AMI ships, plus keys of others (formatting is kept byte for byte on uninstall).
ORIGINAL_DAEMON_JSON = (
    '{\n'
    '    "log-driver": "json-file",\n'
    '    "log-opts": {"max-size": "10m", "max-file": "3"},\n'
    '    "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 65536, "Soft": 1024}},\n'
    '    "runtimes": {\n'
    '        "nvidia": {"path": "/usr/bin/nvidia-container-runtime", "runtimeArgs": []},\n'
    '        "crun": {"path": "/usr/local/bin/crun"}\n'
    '    },\n'
    '    "default-runtime": "nvidia"\n'
    '}\n'
)
ORIGINAL_ECS_CONFIG = "ECS_CLUSTER=batch-gpu\nECS_ENABLE_GPU_SUPPORT=true\nECS_NVIDIA_RUNTIME=nvidia\n"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    hr = tmp_path / "host"
    (hr / "etc" / "docker").mkdir(parents=True)
    (hr / "etc" / "ecs").mkdir()
    (hr / "etc" / "os-release").write_text(DEBIAN_OS_RELEASE)
    (hr / "etc" / "docker" / "daemon.json").write_text(ORIGINAL_DAEMON_JSON)
    (hr / "etc" / "ecs" / "ecs.config").write_text(ORIGINAL_ECS_CONFIG)
    return hr


def install(hr: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), "--host-root", str(hr), *args],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def snapshot(hr: Path) -> Dict[str, Tuple[bytes, int, int]]:
    """Every file under the root: content, mode and inode (a rewrite changes the inode)."""
    out = {}
    for p in sorted(hr.rglob("*")):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            out[str(p.relative_to(hr))] = (p.read_bytes(), stat.S_IMODE(st.st_mode), st.st_ino)
    return out


# --- no root needed -----------------------------------------------------------------


def test_bash_syntax() -> None:
    subprocess.run(["bash", "-n", str(INSTALL)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", ["install.sh", "deploy/install-criu.sh"])
def test_shellcheck(script: str) -> None:
    out = subprocess.run(["shellcheck", str(ROOT / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_help() -> None:
    out = subprocess.run(["bash", str(INSTALL), "-h"], capture_output=True, text=True)
    assert out.returncode == 0
    for option in ("--store", "--mode", "--default-runtime", "--gpu", "--editable", "--offline", "--no-packages",
                   "--venv", "--no-venv", "--no-reload", "--restart-docker", "--host-root", "--uninstall",
                   "--purge"):
        assert option in out.stdout


@pytest.mark.parametrize("args,words", [
    (["--bogus"], "unknown option: --bogus"),
    (["--gpu", "maybe"], "--gpu takes auto, yes or no"),
    (["--mode", "sometimes"], "--mode takes iterative or none"),
    (["--purge"], "--purge goes with --uninstall"),
    (["--store"], "--store needs a value"),
])
def test_bad_options(args, words: str) -> None:
    out = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True)
    assert out.returncode != 0
    assert words in out.stderr


# --- against a host root ------------------------------------------------------------


@needs_root
def test_merge_keeps_others_and_second_run_changes_nothing(host: Path) -> None:
    out = ok(install(host, "--no-venv", "--default-runtime", "--store", "s3://ckpt-bucket/nodes"))
    daemon = json.loads((host / "etc/docker/daemon.json").read_text())
    original = json.loads(ORIGINAL_DAEMON_JSON)
    assert daemon == {**original, "runtimes": {**original["runtimes"],
                                               "mmbatch": {"path": "/opt/mmbatch/bin/mmbatch-runtime"}},
                      "default-runtime": "mmbatch"}
    assert (host / "etc/docker/daemon.json.mmbatch-backup").read_text() == ORIGINAL_DAEMON_JSON
    assert "not reloading dockerd" in out.stdout, "--host-root implies --no-reload"

    cfg = config.load(str(host / "etc/mmbatch/config.toml"))
    assert cfg.store.url == "s3://ckpt-bucket/nodes"
    assert cfg.runtime.delegate == "/usr/bin/nvidia-container-runtime", "chained to the previous default"
    assert stat.S_IMODE(os.stat(host / "etc/mmbatch/config.toml").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(host / "etc/mmbatch").st_mode) == 0o700

    unit = (host / "etc/systemd/system/mmbatchd.service").read_text()
    assert "ExecStart=/opt/mmbatch/bin/mmbatchd\n" in unit
    assert (host / "etc/ecs/ecs.config").read_text() == ORIGINAL_ECS_CONFIG, "--gpu auto without nvidia-smi"

    before = snapshot(host)
    again = ok(install(host, "--no-venv", "--default-runtime", "--store", "s3://ckpt-bucket/nodes"))
    assert snapshot(host) == before, "byte-identical files, same inodes, no new backup"
    assert "daemon.json: unchanged" in again.stdout
    assert "exists, kept" in again.stdout


@needs_root
def test_uninstall_restores_the_original_byte_for_byte(host: Path) -> None:
    os.chmod(host / "etc/docker/daemon.json", 0o600)
    ok(install(host, "--no-venv", "--default-runtime", "--gpu", "yes"))
    assert "ECS_NVIDIA_RUNTIME=mmbatch\n" in (host / "etc/ecs/ecs.config").read_text()
    out = ok(install(host, "--uninstall", "--purge"))
    assert "restored from" in out.stdout
    assert (host / "etc/docker/daemon.json").read_text() == ORIGINAL_DAEMON_JSON
    assert stat.S_IMODE(os.stat(host / "etc/docker/daemon.json").st_mode) == 0o600
    assert (host / "etc/ecs/ecs.config").read_text() == ORIGINAL_ECS_CONFIG
    assert sorted(str(p.relative_to(host)) for p in host.rglob("*") if p.is_file()) == [
        "etc/docker/daemon.json", "etc/ecs/ecs.config", "etc/os-release",
    ]
    again = ok(install(host, "--uninstall"))
    assert "nothing of mmbatch" in again.stdout


@needs_root
def test_uninstall_keeps_changes_made_since_install(host: Path) -> None:
    ok(install(host, "--no-venv", "--default-runtime"))
    path = host / "etc/docker/daemon.json"
    doc = json.loads(path.read_text())
    doc["debug"] = True
    path.write_text(json.dumps(doc))
    ok(install(host, "--uninstall"))
    assert json.loads(path.read_text()) == {**json.loads(ORIGINAL_DAEMON_JSON), "debug": True}
    assert not (host / "etc/docker/daemon.json.mmbatch-backup").exists()


@needs_root
def test_install_without_daemon_json(host: Path) -> None:
    (host / "etc/docker/daemon.json").unlink()
    ok(install(host, "--no-venv"))
    assert json.loads((host / "etc/docker/daemon.json").read_text()) == {
        "runtimes": {"mmbatch": {"path": "/opt/mmbatch/bin/mmbatch-runtime"}}}
    assert not (host / "etc/docker/daemon.json.mmbatch-backup").exists()
    assert config.load(str(host / "etc/mmbatch/config.toml")).runtime.delegate == "runc"
    ok(install(host, "--uninstall"))
    assert not (host / "etc/docker/daemon.json").exists()


@needs_root
def test_malformed_daemon_json_fails_and_changes_nothing(host: Path) -> None:
    bad = '{\n    "log-driver": "json-file",\n    "runtimes": {"nvidia": {"path": "/x"}\n}\n'
    path = host / "etc/docker/daemon.json"
    path.write_text(bad)
    before = snapshot(host)
    out = install(host, "--no-venv", "--default-runtime", "--gpu", "yes")
    assert out.returncode != 0
    assert f"{path}: not valid JSON" in out.stderr
    assert "line 5 column 1" in out.stderr
    assert snapshot(host) == before, "daemon.json untouched, no backup, no config, no ecs.config change"
    assert not (host / "etc/mmbatch").exists()


@needs_root
def test_config_written_once(host: Path) -> None:
    ok(install(host, "--no-venv", "--store", "file:///mnt/fsx/ckpt", "--mode", "none"))
    path = host / "etc/mmbatch/config.toml"
    first = path.read_bytes()
    cfg = config.load(str(path))
    assert (cfg.store.url, cfg.checkpoint.mode, cfg.runtime.delegate) == ("file:///mnt/fsx/ckpt", "none", "runc")
    out = ok(install(host, "--no-venv", "--store", "s3://other/prefix"))
    assert path.read_bytes() == first
    assert "exists and is kept" in out.stderr and "s3://other/prefix" in out.stderr


@needs_root
def test_bad_store_url_is_refused_before_anything_changes(host: Path) -> None:
    before = snapshot(host)
    out = install(host, "--no-venv", "--store", "ftp://nope")
    assert out.returncode != 0
    assert "store.url" in out.stderr
    assert snapshot(host) == before


@needs_root
def test_gpu_node_sets_ecs_nvidia_runtime(host: Path) -> None:
    ok(install(host, "--no-venv", "--gpu", "yes"))
    assert (host / "etc/ecs/ecs.config").read_text() == (
        "ECS_CLUSTER=batch-gpu\nECS_ENABLE_GPU_SUPPORT=true\n"
        "# mmbatch-previous: ECS_NVIDIA_RUNTIME=nvidia\nECS_NVIDIA_RUNTIME=mmbatch\n"
    )
    # GPU containers reach mmbatch through the ECS agent: it must chain to nvidia.
    assert config.load(str(host / "etc/mmbatch/config.toml")).runtime.delegate == "/usr/bin/nvidia-container-runtime"
    before = snapshot(host)
    out = ok(install(host, "--no-venv", "--gpu", "yes"))
    assert "ecs.config: unchanged" in out.stdout
    assert snapshot(host) == before


@needs_root
def test_gpu_auto_detects_nvidia_smi(host: Path) -> None:
    smi = host / "usr/bin/nvidia-smi"
    smi.parent.mkdir(parents=True)
    smi.write_text("#!/bin/sh\n")
    smi.chmod(0o755)
    ok(install(host, "--no-venv"))
    assert "ECS_NVIDIA_RUNTIME=mmbatch\n" in (host / "etc/ecs/ecs.config").read_text()


@needs_root
def test_gpu_no_leaves_ecs_config(host: Path) -> None:
    (host / "usr/bin").mkdir(parents=True)
    (host / "usr/bin/nvidia-smi").write_text("")
    ok(install(host, "--no-venv", "--gpu", "no"))
    assert (host / "etc/ecs/ecs.config").read_text() == ORIGINAL_ECS_CONFIG


@needs_root
@pytest.mark.parametrize("os_release,family", [
    ('ID="amzn"\nVERSION_ID="2023"\nID_LIKE="fedora"\n', "amzn 2023 (dnf)"),
    ('ID="amzn"\nVERSION_ID="2"\nID_LIKE="centos rhel fedora"\n', "amzn 2 (yum)"),
    ('ID=ubuntu\nID_LIKE=debian\nVERSION_ID="22.04"\n', "ubuntu 22.04 (apt)"),
    ('ID=debian\nVERSION_ID="12"\n', "debian 12 (apt)"),
    ('ID=alpine\nVERSION_ID=3.19\n', "alpine 3.19 (unknown)"),
])
def test_detects_distribution(host: Path, os_release: str, family: str) -> None:
    (host / "etc/os-release").write_text(os_release)
    out = ok(install(host, "--no-venv"))
    assert f"host: {family}" in out.stdout


def _existing_venv(tmp_path: Path) -> Path:
    """A venv in which mmbatch is importable from the source tree (like `pip install -e`)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin/python3"), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "mmbatch-src.pth").write_text(f"{ROOT}\n")
    return venv


@needs_root
def test_existing_venv_gets_launchers(host: Path, tmp_path: Path) -> None:
    venv = _existing_venv(tmp_path)
    site = subprocess.run([str(venv / "bin/python3"), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ok(install(host, "--venv", str(venv)))
    daemon = json.loads((host / "etc/docker/daemon.json").read_text())
    assert daemon["runtimes"]["mmbatch"] == {"path": f"{venv}/bin/mmbatch-runtime"}
    assert f"ExecStart={venv}/bin/mmbatchd\n" in (host / "etc/systemd/system/mmbatchd.service").read_text()
    for name, module in (("mmbatch-runtime", "shim.main"), ("mmbatch-hook", "hooks.main")):
        launcher = venv / "bin" / name
        assert stat.S_IMODE(launcher.stat().st_mode) == 0o755
        assert launcher.read_text() == launchers.render(f"{venv}/bin/python3", str(ROOT), [site], module)
        assert launcher.read_text().startswith(
            f'#!{venv}/bin/python3 -IS\nimport sys\nsys.path[:0] = ["{ROOT}"]\nsys.path.append("{site}")\n'
        )
        # Run the launcher's own path setup under its own #! line: the package
        # comes from the source tree, and `site` was never imported.
        package = module.split(".")[0]
        setup = launcher.read_text().split("try:\n", 1)[0]  # the path set-up, before the import
        probe = setup + (
            f"import importlib.util\nspec = importlib.util.find_spec({package!r})\n"
            "print(list(spec.submodule_search_locations)[0], 'site' in sys.modules)\n"
        )
        out = subprocess.run([str(venv / "bin/python3"), "-IS", "-c", probe], capture_output=True, text=True,
                             check=True)
        assert out.stdout.split() == [str(ROOT / package), "False"]
    before = snapshot(venv)
    ok(install(host, "--venv", str(venv)))
    assert snapshot(venv) == before, "launchers not rewritten when unchanged"
    ok(install(host, "--venv", str(venv), "--uninstall", "--purge"))
    assert (venv / "bin/python3").exists(), "--purge keeps a venv it did not create"


@needs_root
@pytest.mark.slow
def test_real_venv_editable(host: Path) -> None:
    """The full venv step: /usr/bin/python3 -m venv under the host root, then
    pip install -e SRC[test] from the machine's configured index."""
    out = ok(install(host, "--editable"))
    venv = host / "opt/mmbatch"
    assert "pip install -e" in out.stdout
    py = str(venv / "bin/python3")
    site = subprocess.run([py, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                          text=True, check=True).stdout.strip()
    host_site = site[len(str(host)):]
    text = (venv / "bin/mmbatch-runtime").read_text()
    assert text == launchers.render("/opt/mmbatch/bin/python3", str(ROOT), [host_site], "shim.main")
    assert text.startswith(
        "#!/opt/mmbatch/bin/python3 -IS\nimport sys\n"
        f'sys.path[:0] = ["{ROOT}"]\nsys.path.append("{host_site}")\n'
    )
    # The other entry points stay pip's; the package and its deps import in the venv.
    assert "mmbatch.daemon" in (venv / "bin/mmbatchd").read_text()
    subprocess.run([py, "-c", "import mmbatch.install, psutil, boto3, pyroute2, pytest"], check=True, cwd="/")
    before = snapshot(host / "etc")
    ok(install(host, "--editable"))
    assert (venv / "bin/mmbatch-runtime").read_text() == text
    assert snapshot(host / "etc") == before
