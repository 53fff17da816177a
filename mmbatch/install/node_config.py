"""The node's first /etc/mmbatch/config.toml, written once and never replaced.

`render` applies the installer's choices (store URL, checkpoint mode, the
runtime mmbatch chains to) to `mmbatch.config.DEFAULT_TOML`, keeping its
comments, and validates the result. The CLI creates the file (0600, in a
0700 directory) only when it does not exist; an existing file is validated
and left as it is, with a warning for each choice it does not reflect.

    python -m mmbatch.install.node_config write --file F [--store URL] [--mode M] [--delegate D]
"""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import List, Optional, Sequence

from mmbatch import config
from mmbatch.errors import ConfigError, MmbatchError
from mmbatch.install.atomic import create_exclusive
from mmbatch.install.errors import InstallError, run_reporting


def toml_string(value: str) -> str:
    """A TOML basic string holding `value` (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


_SECTION_RE = re.compile(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$")


def set_value(text: str, section: str, key: str, value: str) -> str:
    """`text` with `key = "value"` in `[section]`, keeping the line's comment;
    the key (or the section) is added when missing."""
    lines = text.splitlines(keepends=True)
    key_re = re.compile(rf'^(\s*{re.escape(key)}\s*=\s*)("(?:[^"\\]|\\.)*"|\S+)(.*)$', re.DOTALL)
    current = None
    header_at = None
    for i, line in enumerate(lines):
        m = _SECTION_RE.match(line)
        if m:
            current = m.group(1)
            if current == section:
                header_at = i
            continue
        if current == section:
            km = key_re.match(line)
            if km:
                lines[i] = km.group(1) + toml_string(value) + km.group(3)
                return "".join(lines)
    new_line = f"{key} = {toml_string(value)}\n"
    if header_at is not None:
        lines.insert(header_at + 1, new_line)
        return "".join(lines)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return "".join(lines) + f"\n[{section}]\n" + new_line


def render(
    store_url: Optional[str] = None,
    mode: Optional[str] = None,
    delegate: Optional[str] = None,
    path: str = config.DEFAULT_PATH,
) -> str:
    """The default config text with the given choices; ConfigError names a bad one."""
    text = config.DEFAULT_TOML
    if delegate is not None:
        text = set_value(text, "runtime", "delegate", delegate)
    if mode is not None:
        text = set_value(text, "checkpoint", "mode", mode)
    if store_url is not None:
        text = set_value(text, "store", "url", store_url)
    cfg = config.loads(text, path=path)
    for got, want, key in (
        (cfg.runtime.delegate, delegate, "runtime.delegate"),
        (cfg.checkpoint.mode, mode, "checkpoint.mode"),
        (cfg.store.url, store_url, "store.url"),
    ):
        if want is not None and got != want:  # the default text changed shape under us
            raise MmbatchError(f"{path}: {key} came out as {got!r}, not {want!r}")
    return text


def differences(
    cfg: config.Config, store_url: Optional[str], mode: Optional[str], delegate: Optional[str],
) -> List[str]:
    """What an existing config does not reflect of the installer's choices."""
    notes = []
    if store_url is not None and cfg.store.url != store_url:
        notes.append(f"store.url is {cfg.store.url!r}; to use {store_url!r} set "
                     f"url = {toml_string(store_url)} under [store]")
    if mode is not None and cfg.checkpoint.mode != mode:
        notes.append(f"checkpoint.mode is {cfg.checkpoint.mode!r}, not {mode!r}")
    if delegate is not None and cfg.runtime.delegate != delegate:
        notes.append(f"runtime.delegate is {cfg.runtime.delegate!r}, but this node needs {delegate!r}: "
                     f"set delegate = {toml_string(delegate)} under [runtime]")
    return notes


def write_if_absent(
    path: str, store_url: Optional[str] = None, mode: Optional[str] = None, delegate: Optional[str] = None,
) -> bool:
    """Create the config file; False (and a validated existing file) when it exists."""
    if os.path.lexists(path):
        try:
            config.load(path)
        except ConfigError as e:
            raise InstallError(
                f"the existing config is not valid: {e}",
                hint=f"fix it, or move {path} away to get a fresh one",
            ) from e
        return False
    text = render(store_url, mode, delegate, path=path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
        os.chmod(directory, 0o700)  # makedirs' mode is filtered by the umask
    return create_exclusive(path, text.encode("utf-8"), 0o600, check=_load_check)


def _load_check(path: str) -> None:
    """Read back what was written, through the loader mmbatchd and the shim use."""
    config.load(path)


_SUMMARY = (__doc__ or "").split("\n")[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmbatch.install.node_config", description=_SUMMARY)
    p.add_argument("command", choices=("write",))
    p.add_argument("--file", default=config.DEFAULT_PATH)
    p.add_argument("--store")
    p.add_argument("--mode", choices=config.MODES)
    p.add_argument("--delegate")
    args = p.parse_args(argv)

    def write() -> int:
        try:
            written = write_if_absent(args.file, args.store, args.mode, args.delegate)
            if not written:
                for note in differences(config.load(args.file), args.store, args.mode, args.delegate):
                    print(f"mmbatch-install: warning: {args.file} exists and is kept: {note}", file=sys.stderr)
        except ImportError as e:  # tomli, on Python < 3.11 outside the venv
            print(f"mmbatch-install: error: cannot validate {args.file}: {e} (run with the venv's python)",
                  file=sys.stderr)
            return 1
        print(f"written={int(written)}")
        return 0

    return run_reporting(write, args.file)


if __name__ == "__main__":
    sys.exit(main())
