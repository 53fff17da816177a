"""Fast launchers for the hot-path entry points of the venv.

pip's console-script wrappers import `re` and run `site` (every .pth file of
the venv) before the entry point: several ms on each runtime call, and
containerd calls mmbatch-runtime several times per container. The launchers
that replace them start Python with -I -S and put on sys.path only the
directory holding our package and the venv's site-packages (in that order),
both computed by the venv's own python after installation, so they work for
normal and editable installs alike.

Run with the venv's python, without PYTHONPATH and outside the source tree
(install.sh does `cd / && env -u PYTHONPATH VENV/bin/python3 -I -m ...`):

    python -m mmbatch.install.launchers [--bin-dir D] [--python P] [--strip-root R]
"""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import site
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from mmbatch.errors import MmbatchError
from mmbatch.install.atomic import write_atomic
from mmbatch.install.errors import InstallError

# launcher name -> (top-level package, module whose main() it runs)
LAUNCHERS: Dict[str, Tuple[str, str]] = {
    "mmbatch-runtime": ("shim", "shim.main"),
    "mmbatch-hook": ("hooks", "hooks.main"),
}

# If the package cannot be imported (a half-finished upgrade, a broken venv),
# a launcher must still never stop a container: the runtime hands the call to
# runc as it is, the hook does nothing.
FALLBACKS: Dict[str, str] = {
    "shim.main": 'import os\n    os.execvp("runc", ["runc"] + sys.argv[1:])',
    "hooks.main": "sys.exit(0)",
}


def package_parent(package: str) -> str:
    """The sys.path directory from which `package` is imported in this interpreter."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise InstallError(
            f"package {package!r} is not importable from {sys.executable}",
            hint="install mmbatch into this venv first (pip install SRC or pip install -e SRC)",
        )
    if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        package_dir = os.path.dirname(spec.origin)
    else:
        locations = list(spec.submodule_search_locations or [])
        if not locations:
            raise InstallError(f"package {package!r} has no location in {sys.executable}")
        package_dir = locations[0]
    return os.path.dirname(os.path.abspath(package_dir))


def site_dirs() -> List[str]:
    """The interpreter's site-packages directories that exist, without duplicates
    (the venv's own, plus the system's when the venv includes them)."""
    out: List[str] = []
    seen = set()
    for d in site.getsitepackages():
        real = os.path.realpath(d)
        if os.path.isdir(d) and real not in seen:
            seen.add(real)
            out.append(d)
    return out


def strip_root(path: str, root: Optional[str]) -> str:
    """`path` as the host will see it when it was computed under a host root."""
    root = os.path.abspath(root).rstrip("/") if root else ""
    if not root:
        return path
    if path == root:
        return "/"
    if path.startswith(root + "/"):
        return path[len(root):]
    return path


def render(python: str, package_dir: str, site_packages: Sequence[str], module: str) -> str:
    """The launcher's text."""
    lines = [
        f"#!{python} -IS",
        "import sys",
        f"sys.path[:0] = [{json.dumps(package_dir)}]",
    ]
    lines += [f"sys.path.append({json.dumps(d)})" for d in site_packages]
    fallback = FALLBACKS.get(module)
    if fallback:
        lines += ["try:", f"    from {module} import main", "except Exception:  # fail open", f"    {fallback}"]
    else:
        lines += [f"from {module} import main"]
    lines += ["sys.exit(main())", ""]
    return "\n".join(lines)


def write_launchers(bin_dir: str, python: str, root: Optional[str] = None) -> List[str]:
    """Write (or rewrite, when different) every launcher into `bin_dir`; the paths written."""
    sites = [strip_root(d, root) for d in site_dirs()]
    written = []
    for name, (package, module) in LAUNCHERS.items():
        text = render(python, strip_root(package_parent(package), root), sites, module)
        path = os.path.join(bin_dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                same = f.read() == text
        except (FileNotFoundError, UnicodeDecodeError):
            same = False
        if same and os.stat(path).st_mode & 0o777 == 0o755:
            continue
        write_atomic(path, text.encode("utf-8"), mode=0o755)
        written.append(path)
    return written


_SUMMARY = (__doc__ or "").split("\n")[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmbatch.install.launchers", description=_SUMMARY)
    p.add_argument("--bin-dir", default=os.path.dirname(sys.executable),
                   help="where the launchers go (default: this python's directory)")
    p.add_argument("--python", help="interpreter for the #! line (default: BIN_DIR/python3)")
    p.add_argument("--strip-root", help="host root to strip from every path written")
    args = p.parse_args(argv)
    python = args.python or strip_root(os.path.join(args.bin_dir, "python3"), args.strip_root)
    try:
        for path in write_launchers(args.bin_dir, python, args.strip_root):
            print(f"written={path}")
    except MmbatchError as e:
        print(f"mmbatch-install: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mmbatch-install: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
