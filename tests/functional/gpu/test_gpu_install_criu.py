"""deploy/install-criu.sh builds CRIU's CUDA plugin for the CRIU it installs
(Debian's package has none): from the same version's source, offline too,
and refuses a source of another version (the plugin uses CRIU's internal
headers)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "deploy" / "install-criu.sh"
APT_LEFTOVERS = [Path("/etc/apt/sources.list.d/mmbatch-criu.list"), Path("/etc/apt/preferences.d/mmbatch-criu")]

pytestmark = [pytest.mark.root, pytest.mark.slow]


def run(*args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    if check:
        assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    for p in APT_LEFTOVERS:
        assert not p.exists(), f"{p} left behind"
    return r


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory) -> str:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        unavailable("needs root and apt-get (Debian's packages)")
    d = tmp_path_factory.mktemp("offline")
    os.chmod(d, 0o755)
    run("--download-only", str(d), "--cuda-plugin")
    return str(d)


def test_download_only_with_the_plugin_fetches_the_source(offline_dir):
    names = os.listdir(offline_dir)
    assert any(n.startswith("criu_") and n.endswith(".deb") for n in names)
    assert any(n.startswith("criu_") and ".orig.tar." in n for n in names), names


def test_offline_install_builds_the_plugin_into_the_prefix(offline_dir, tmp_path):
    prefix = tmp_path / "criu4"
    r = run("--debs", offline_dir, "--prefix", str(prefix), "--wrapper", "none", "--cuda-plugin")
    plugin = prefix / "usr" / "lib" / "criu" / "cuda_plugin.so"
    assert plugin.is_file() and os.access(plugin, os.X_OK)
    assert "CUDA plugin in" in r.stderr
    # the plugin registers itself to CRIU as "cuda_plugin" and uses CRIU's own symbols
    nm = subprocess.run(["nm", "-D", str(plugin)], capture_output=True, text=True).stdout
    assert "CR_PLUGIN_DESC" in nm and " U opts" in nm


def test_a_source_of_another_version_is_refused(offline_dir, tmp_path):
    src = next(n for n in os.listdir(offline_dir) if ".orig.tar." in n)
    other = tmp_path / ("criu_9.9.9.orig.tar." + src.split(".orig.tar.")[1])
    shutil.copy(os.path.join(offline_dir, src), other)
    r = run("--build-cuda-plugin", str(tmp_path / "libs"), "--criu-source", str(other), check=False)
    assert r.returncode == 1 and "does not match the installed CRIU" in r.stderr
    assert not (tmp_path / "libs" / "cuda_plugin.so").exists()
