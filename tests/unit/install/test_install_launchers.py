"""Fast launchers: their exact text, root stripping, and a real run with -I -S."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmbatch.install import launchers


def test_render_is_the_documented_launcher() -> None:
    text = launchers.render(
        "/opt/mmbatch/bin/python3", "/opt/mmbatch/lib/python3.9/site-packages",
        ["/opt/mmbatch/lib/python3.9/site-packages"], "shim.main",
    )
    assert text == (
        "#!/opt/mmbatch/bin/python3 -IS\n"
        "import sys\n"
        'sys.path[:0] = ["/opt/mmbatch/lib/python3.9/site-packages"]\n'
        'sys.path.append("/opt/mmbatch/lib/python3.9/site-packages")\n'
        "try:\n"
        "    from shim.main import main\n"
        "except Exception:  # fail open\n"
        "    import os\n"
        '    os.execvp("runc", ["runc"] + sys.argv[1:])\n'
        "sys.exit(main())\n"
    )


def test_a_broken_install_still_runs_containers(tmp_path: Path) -> None:
    """When the package cannot be imported the runtime launcher execs runc
    with argv unchanged, and the hook launcher exits 0."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "runc").write_text("#!/bin/sh\necho \"runc $*\"\nexit 3\n")
    os.chmod(fake_bin / "runc", 0o755)
    for module, expect_rc, expect_out in (("shim.main", 3, "runc --root /r state x"), ("hooks.main", 0, "")):
        text = launchers.render(sys.executable, str(tmp_path / "nowhere"), [], module)
        text = text.replace("from shim.main", "from no_such_pkg.main").replace("from hooks.main",
                                                                               "from no_such_pkg.main")
        script = tmp_path / f"launcher-{module}"
        script.write_text(text)
        os.chmod(script, 0o755)
        out = subprocess.run([str(script), "--root", "/r", "state", "x"], capture_output=True, text=True,
                             env={"PATH": f"{fake_bin}:/usr/bin:/bin"})
        assert out.returncode == expect_rc and out.stdout.strip() == expect_out, (module, out)


@pytest.mark.parametrize("path,root,expected", [
    ("/tmp/hr/opt/mmbatch/lib", "/tmp/hr", "/opt/mmbatch/lib"),
    ("/tmp/hr/opt/mmbatch/lib", "/tmp/hr/", "/opt/mmbatch/lib"),
    ("/tmp/hrx/opt", "/tmp/hr", "/tmp/hrx/opt"),
    ("/work/main", "/tmp/hr", "/work/main"),
    ("/opt/mmbatch", None, "/opt/mmbatch"),
    ("/opt/mmbatch", "/", "/opt/mmbatch"),
])
def test_strip_root(path: str, root, expected: str) -> None:
    assert launchers.strip_root(path, root) == expected


def test_package_parent_of_a_missing_package() -> None:
    with pytest.raises(launchers.InstallError, match="not importable"):
        launchers.package_parent("no_such_package_mmbatch_test")


def test_launcher_runs_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written for this interpreter, a launcher starts its module's main() under
    -I -S with only our directory prepended, and passes argv and exit status."""
    pkg_root = tmp_path / "src"
    (pkg_root / "fakeshim").mkdir(parents=True)
    (pkg_root / "fakeshim" / "__init__.py").write_text("")
    (pkg_root / "fakeshim" / "main.py").write_text(
        "import sys\n"
        "def main():\n"
        "    print(sys.flags.isolated, sys.flags.no_site, 'site' in sys.modules, sys.path[0], sys.argv[1:])\n"
        "    return 7\n"
    )
    monkeypatch.syspath_prepend(str(pkg_root))
    monkeypatch.setattr(launchers, "LAUNCHERS", {"mmbatch-runtime": ("fakeshim", "fakeshim.main")})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mmbatch-runtime").write_text("#!/bin/sh\necho pip wrapper\n")
    written = launchers.write_launchers(str(bin_dir), sys.executable)
    path = bin_dir / "mmbatch-runtime"
    assert written == [str(path)]
    assert os.stat(path).st_mode & 0o777 == 0o755
    assert path.read_text().startswith(f"#!{sys.executable} -IS\n")
    assert launchers.write_launchers(str(bin_dir), sys.executable) == [], "unchanged: not rewritten"
    assert sorted(os.listdir(bin_dir)) == ["mmbatch-runtime"], "no temp file left"

    out = subprocess.run([str(path), "create", "--bundle", "b"], capture_output=True, text=True,
                         env={"PATH": os.environ.get("PATH", "")})
    assert out.returncode == 7, out.stderr
    assert out.stdout.strip() == f"1 1 False {pkg_root} ['create', '--bundle', 'b']"
