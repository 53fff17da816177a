"""deploy/install-criu.sh on its own: the portable CRIU 4 in a temporary prefix.

These fetch Debian packages with apt (a temporary source for a newer suite,
forky by default, that the script must remove again) and take about 10 s each.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "deploy" / "install-criu.sh"
APT_LEFTOVERS = [Path("/etc/apt/sources.list.d/mmbatch-criu.list"), Path("/etc/apt/preferences.d/mmbatch-criu")]
TEMPORARY_SUITES = ("trixie", "forky")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (apt, criu check)"),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get to fetch the packages"),
]


def run(args, env=None) -> subprocess.CompletedProcess:
    out = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL, env=env)
    assert out.returncode == 0, f"rc={out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def assert_no_apt_leftovers() -> None:
    for path in APT_LEFTOVERS:
        assert not path.exists(), f"{path} left behind"
    sources = subprocess.run(["apt-get", "indextargets", "--format", "$(CODENAME)"], capture_output=True,
                             text=True).stdout.split()
    for suite in TEMPORARY_SUITES:
        assert suite not in sources, f"apt still has {suite} indexes"


def criu_check(criu: Path) -> None:
    out = subprocess.run([str(criu), "check"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Looks good" in out.stdout + out.stderr


def test_portable_criu_into_a_temporary_prefix(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    prefix, wrapper = tmp_path / "criu4", tmp_path / "bin" / "criu"
    tmp_mode = stat.S_IMODE(os.stat("/tmp").st_mode)
    try:
        run(["--prefix", str(prefix), "--wrapper", str(wrapper)], env={**os.environ, "TMPDIR": str(tmpdir)})
    finally:
        assert_no_apt_leftovers()
    criu_check(wrapper)
    version = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True).stdout
    assert version.startswith("Version: 4.")
    assert stat.S_IMODE(wrapper.stat().st_mode) == 0o755
    assert list(tmpdir.iterdir()) == [], "the work dir (downloaded .debs) is removed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "criu4", "tmp"], "no stage or old prefix left"
    assert stat.S_IMODE(os.stat("/tmp").st_mode) == tmp_mode

    # Again over the existing prefix: replaced whole, still working.
    run(["--prefix", str(prefix), "--wrapper", str(wrapper)], env={**os.environ, "TMPDIR": str(tmpdir)})
    assert_no_apt_leftovers()
    criu_check(wrapper)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "criu4", "tmp"]


def test_offline_debs_without_dpkg(tmp_path: Path) -> None:
    """--download-only on a Debian machine, then --debs where there is no dpkg-deb
    (Amazon Linux): the .debs are unpacked with python3's standard library."""
    debs = tmp_path / "debs"
    try:
        run(["--download-only", str(debs)])
    finally:
        assert_no_apt_leftovers()
    assert any(p.name.startswith("criu_4") for p in debs.iterdir())

    # A PATH with every tool of this machine but dpkg and apt.
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/usr/sbin"):
        for entry in os.scandir(d):
            if not entry.name.startswith(("dpkg", "apt")) and not (fakebin / entry.name).exists():
                (fakebin / entry.name).symlink_to(entry.path)
    env = {**os.environ, "PATH": str(fakebin)}
    assert subprocess.run(["bash", "-c", "command -v dpkg-deb"], env=env).returncode != 0

    prefix, wrapper = tmp_path / "criu4", tmp_path / "criu"
    run(["--debs", str(debs), "--prefix", str(prefix), "--wrapper", str(wrapper)], env=env)
    criu_check(wrapper)
