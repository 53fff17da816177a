"""The delegate runtime: which one, and handing the call over to it.

The delegate comes from `[runtime] delegate` in the node config. Reading the
TOML file needs a parser import on every call, so the two values the hot
path needs (delegate, state_dir) are cached in a one-line file keyed on the
config file's identity (path, mtime, size, inode); the TOML is parsed only
when the config changes.

Hot path: this module imports only `sys` and `posix` (both built in); `os`
and `typing` cost milliseconds per container call and are imported only on
the rare paths that need them.
"""

from __future__ import annotations

import posix
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional, Tuple

DEFAULT_CONFIG = "/etc/mmbatch/config.toml"
DEFAULT_DELEGATE = "runc"
DEFAULT_STATE_DIR = "/run/mmbatch"
CACHE_VERSION = "mmbatch-config-cache-1"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class DelegateNotFound(Exception):
    def __init__(self, name: str, searched: str) -> None:
        super().__init__(
            f"delegate runtime {name!r} not found (searched {searched}); "
            "install runc or set [runtime] delegate in the mmbatch config"
        )
        self.name = name


def _env(name: str) -> str:
    value = posix.environ.get(name.encode())
    return value.decode(errors="surrogateescape") if value else ""


def config_file() -> str:
    return _env("MMBATCH_CONFIG") or DEFAULT_CONFIG


def cache_file() -> str:
    return _env("MMBATCH_CONFIG_CACHE") or "/run/mmbatch/config.cache"


def _identity(st: posix.stat_result, path: str) -> str:
    return f"{path}\t{st.st_mtime_ns}\t{st.st_size}\t{st.st_ino}"


def runtime_settings() -> Tuple[str, str, Optional[str]]:
    """(delegate, state_dir, problem). Never raises: a broken config falls back
    to the defaults and names the problem, so a container still starts."""
    path = config_file()
    try:
        st = posix.stat(path)
    except OSError:
        return DEFAULT_DELEGATE, DEFAULT_STATE_DIR, None
    ident = _identity(st, path)
    cache = cache_file()
    try:
        with open(cache, encoding="utf-8") as f:
            parts = f.read().rstrip("\n").split("\t")
        if len(parts) == 7 and parts[0] == CACHE_VERSION and "\t".join(parts[1:5]) == ident:
            return parts[5], parts[6], None
    except OSError:
        pass
    return _load_and_cache(path, ident, cache)


def _load_and_cache(path: str, ident: str, cache: str) -> Tuple[str, str, Optional[str]]:
    import os

    try:
        from mmbatch.config import load

        cfg = load(path)
    except Exception as e:  # fail open: defaults, and say why
        return DEFAULT_DELEGATE, DEFAULT_STATE_DIR, f"config ignored, using defaults: {e}"
    line = "\t".join([CACHE_VERSION, ident, cfg.runtime.delegate, cfg.runtime.state_dir])
    try:
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        tmp = f"{cache}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(line + "\n")
        os.replace(tmp, cache)
    except OSError:
        pass
    return cfg.runtime.delegate, cfg.runtime.state_dir, None


def _is_executable_file(path: str) -> bool:
    try:
        st = posix.stat(path)
    except OSError:
        return False
    return (st.st_mode & 0o170000) == 0o100000 and posix.access(path, posix.X_OK)


def _same_file_as_self(path: str) -> bool:
    try:
        a, b = posix.stat(path), posix.stat(sys.argv[0])
    except (OSError, IndexError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def resolve(name: str) -> str:
    """Absolute path of the delegate runtime; searches PATH for bare names."""
    if "/" in name:
        if _is_executable_file(name):
            return name
        raise DelegateNotFound(name, name)
    search = _env("PATH") or DEFAULT_PATH
    for d in search.split(":"):
        if not d:
            continue
        candidate = f"{d.rstrip('/')}/{name}"
        if _is_executable_file(candidate) and not _same_file_as_self(candidate):
            return candidate
    raise DelegateNotFound(name, search)


def exec_delegate(path: str, argv: List[str]) -> None:
    """Replace this process with the delegate, argv unchanged but argv[0]."""
    posix.execv(path, [path] + argv)
