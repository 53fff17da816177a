"""Registering the `mmbatch` runtime in Docker's daemon.json, and taking it out.

Pure functions over the parsed document: `merge` adds
`runtimes.mmbatch = {"path": ...}` (and, when asked, `default-runtime`),
`unmerge` takes exactly that out again, `chained_delegate` says which runtime
mmbatch must hand containers to, and `plan_uninstall` decides between
restoring the backup byte for byte and removing only our keys. Every other
key and runtime is kept, in its order.

The CLI is what install.sh calls:

    python -m mmbatch.install.daemon_json delegate --file F [--backup B] [--default-runtime] [--gpu]
    python -m mmbatch.install.daemon_json merge --file F --runtime-path P [--backup B] [--default-runtime]
    python -m mmbatch.install.daemon_json unmerge --file F [--backup B]
    python -m mmbatch.install.daemon_json default --file F

It prints `key=value` lines on stdout for the shell and messages on stderr.
A file that cannot be used (malformed JSON, wrong types) is an error naming
the file and the position, exit status 1, and the file is left untouched.
Files are written atomically (temp, fsync, rename) and only when their
content changes, so a second run writes nothing.
"""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmbatch.install.atomic import write_atomic
from mmbatch.install.errors import DaemonJsonError, InstallError, run_reporting

RUNTIME_NAME = "mmbatch"
# Names under which dockerd knows plain runc without a `runtimes` entry.
RUNC_NAMES = frozenset({"runc", "io.containerd.runc.v2"})
NVIDIA_RUNTIME = "nvidia"
NVIDIA_DEFAULT_PATH = "nvidia-container-runtime"
BACKUP_SUFFIX = ".mmbatch-backup"

Doc = Dict[str, Any]


@dataclass(frozen=True)
class Change:
    """A new document and what differs from the one it came from."""

    doc: Doc
    changed: bool
    default_runtime_changed: bool


@dataclass(frozen=True)
class UninstallPlan:
    """What `--uninstall` does to daemon.json.

    action: "none" (nothing of ours in it), "restore-backup" (put the
    pre-install file back byte for byte), "unmerge" (others changed the file
    since: take out only our keys), "remove" (we created the file: delete it).
    """

    action: str
    text: Optional[str]
    changed: bool
    default_runtime_changed: bool
    # dockerd keeps a default-runtime that disappears from the file across a
    # reload (Docker 20.10 then crashes on the missing runtime): restart it.
    default_runtime_removed: bool = False


def parse(text: str, path: str = "daemon.json") -> Doc:
    """The daemon.json document; DaemonJsonError names the file and position.

    Like dockerd, an empty file is an empty configuration and a UTF-8 BOM is
    ignored.
    """
    body = text[1:] if text.startswith("\ufeff") else text
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as e:
        raise DaemonJsonError(
            f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
            path=path, line=e.lineno, column=e.colno,
            hint="fix the file and run again; it was left untouched",
        ) from e
    if not isinstance(doc, dict):
        raise DaemonJsonError(
            f"must be a JSON object ({{...}}), found {type(doc).__name__}", path=path,
            hint="fix the file and run again; it was left untouched",
        )
    _check_types(doc, path)
    return doc


def _check_types(doc: Doc, path: str) -> None:
    runtimes = doc.get("runtimes")
    if runtimes is not None:
        if not isinstance(runtimes, dict):
            raise DaemonJsonError('"runtimes" must be an object', path=path)
        for name, entry in runtimes.items():
            if not isinstance(entry, dict):
                raise DaemonJsonError(f'"runtimes.{name}" must be an object', path=path)
    default = doc.get("default-runtime")
    if default is not None and not isinstance(default, str):
        raise DaemonJsonError('"default-runtime" must be a string', path=path)


def _runtimes(doc: Optional[Doc]) -> Dict[str, Any]:
    runtimes = (doc or {}).get("runtimes")
    return runtimes if isinstance(runtimes, dict) else {}


def merge(doc: Doc, runtime_path: str, make_default: bool = False) -> Change:
    """`doc` with runtime mmbatch registered (and made the default when asked)."""
    new = copy.deepcopy(doc)
    runtimes = new.get("runtimes")
    if runtimes is None:
        runtimes = new["runtimes"] = {}
    runtimes[RUNTIME_NAME] = {"path": runtime_path}
    if make_default:
        new["default-runtime"] = RUNTIME_NAME
    return Change(
        doc=new,
        changed=new != doc,
        default_runtime_changed=new.get("default-runtime") != doc.get("default-runtime"),
    )


def unmerge(doc: Doc, previous_default: Optional[str] = None) -> Change:
    """`doc` without runtime mmbatch; a default-runtime of mmbatch goes back to
    `previous_default`, or is removed (dockerd then uses runc)."""
    new = copy.deepcopy(doc)
    runtimes = new.get("runtimes")
    if isinstance(runtimes, dict) and RUNTIME_NAME in runtimes:
        del runtimes[RUNTIME_NAME]
        if not runtimes:
            del new["runtimes"]
    if new.get("default-runtime") == RUNTIME_NAME:
        if previous_default and previous_default != RUNTIME_NAME:
            new["default-runtime"] = previous_default
        else:
            del new["default-runtime"]
    return Change(
        doc=new,
        changed=new != doc,
        default_runtime_changed=new.get("default-runtime") != doc.get("default-runtime"),
    )


def chained_delegate(
    doc: Doc, backup: Optional[Doc] = None, make_default: bool = False, gpu: bool = False,
) -> Tuple[str, List[str]]:
    """The runtime mmbatch must hand containers to (`[runtime] delegate`), with warnings.

    With `make_default`, mmbatch takes over Docker's default runtime and
    chains to the previous one (read from the backup when mmbatch already is
    the default). On a GPU node, containers reach mmbatch through
    ECS_NVIDIA_RUNTIME and must go on to the nvidia runtime, which passes
    containers without GPUs through to runc. Otherwise runc.
    """
    warnings: List[str] = []
    previous, source = doc.get("default-runtime"), doc
    if previous == RUNTIME_NAME:
        previous, source = (backup or {}).get("default-runtime"), (backup or {})
    if make_default and previous and previous not in RUNC_NAMES:
        return _runtime_path(source, previous, warnings), warnings
    if gpu:
        entry = _runtimes(doc).get(NVIDIA_RUNTIME) or _runtimes(backup).get(NVIDIA_RUNTIME)
        if entry:
            return _runtime_path({"runtimes": {NVIDIA_RUNTIME: entry}}, NVIDIA_RUNTIME, warnings), warnings
        return NVIDIA_DEFAULT_PATH, warnings
    return "runc", warnings


def _runtime_path(doc: Doc, name: str, warnings: List[str]) -> str:
    entry = _runtimes(doc).get(name)
    if entry is None:
        if name == NVIDIA_RUNTIME:
            return NVIDIA_DEFAULT_PATH
        raise InstallError(
            f"the previous default-runtime {name!r} is not defined under \"runtimes\"",
            hint="define it with its path, or install without --default-runtime",
        )
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        kind = entry.get("runtimeType", "no path")
        raise InstallError(
            f"runtime {name!r} has no \"path\" ({kind}): mmbatch can only chain to an OCI runtime binary",
            hint="install without --default-runtime, or set [runtime] delegate yourself",
        )
    if entry.get("runtimeArgs"):
        warnings.append(
            f"runtime {name!r} has runtimeArgs {entry['runtimeArgs']!r}: mmbatch calls {path} without them"
        )
    return path


def _normalized(doc: Doc) -> Doc:
    """For comparisons: an empty "runtimes" object means the same as none."""
    if doc.get("runtimes") == {}:
        doc = {k: v for k, v in doc.items() if k != "runtimes"}
    return doc


def plan_uninstall(
    current_text: Optional[str],
    backup_text: Optional[str],
    path: str = "daemon.json",
    backup_path: str = "daemon.json" + BACKUP_SUFFIX,
) -> UninstallPlan:
    """Decide how to take mmbatch out of daemon.json (see UninstallPlan)."""
    backup = parse(backup_text, backup_path) if backup_text is not None else None
    if current_text is None:
        if backup_text is not None:
            had_default = bool(backup and "default-runtime" in backup)
            return UninstallPlan("restore-backup", backup_text, True, had_default)
        return UninstallPlan("none", None, False, False)
    current = parse(current_text, path)
    removed = "default-runtime" in current
    previous = backup.get("default-runtime") if backup is not None else None
    stripped = unmerge(current, previous)
    if backup is not None and _normalized(stripped.doc) == _normalized(backup):
        changed = current_text != backup_text
        return UninstallPlan(
            "restore-backup" if changed else "none", backup_text, changed,
            current.get("default-runtime") != backup.get("default-runtime"),
            removed and "default-runtime" not in backup,
        )
    if not stripped.changed:
        return UninstallPlan("none", None, False, False)
    removed = removed and "default-runtime" not in stripped.doc
    if backup is None and not stripped.doc:
        return UninstallPlan("remove", None, True, stripped.default_runtime_changed, removed)
    text = dumps(stripped.doc, like=current_text)
    return UninstallPlan("unmerge", text, True, stripped.default_runtime_changed, removed)


_INDENT_RE = re.compile(r'^([ \t]+)"', re.MULTILINE)


def dumps(doc: Doc, like: Optional[str] = None) -> str:
    """JSON text of `doc`, indented like the file it replaces (2 spaces by default)."""
    indent: Any = 2
    if like:
        m = _INDENT_RE.search(like)
        if m:
            indent = m.group(1)
    return json.dumps(doc, indent=indent, ensure_ascii=False) + "\n"


# --- CLI -------------------------------------------------------------------


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InstallError(f"cannot read: {e.strerror}", path=path) from e


def _decode(data: Optional[bytes], path: str) -> Optional[str]:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DaemonJsonError(
            f"not UTF-8 text (byte {e.start})", path=path,
            hint="fix the file and run again; it was left untouched",
        ) from e


def _mode_of(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None


def _emit(**values: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            value = int(value)
        print(f"{key}={value}")


def _warn(message: str) -> None:
    print(f"mmbatch-install: warning: {message}", file=sys.stderr)


def _cmd_delegate(args: argparse.Namespace) -> int:
    doc = parse(_decode(_read(args.file), args.file) or "", args.file)
    backup_text = _decode(_read(args.backup), args.backup) if args.backup else None
    backup = parse(backup_text, args.backup) if backup_text is not None else None
    delegate, warnings = chained_delegate(doc, backup, make_default=args.default_runtime, gpu=args.gpu)
    for w in warnings:
        _warn(w)
    _emit(delegate=delegate)
    return 0


def _cmd_default(args: argparse.Namespace) -> int:
    doc = parse(_decode(_read(args.file), args.file) or "", args.file)
    _emit(default=doc.get("default-runtime") or "runc")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    data = _read(args.file)
    text = _decode(data, args.file)
    change = merge(parse(text or "", args.file), args.runtime_path, make_default=args.default_runtime)
    backup = "none"
    if change.changed:
        if data is not None and args.backup:
            if os.path.exists(args.backup):
                backup = "kept"
            else:
                write_atomic(args.backup, data, mode=_mode_of(args.file))
                backup = "written"
        os.makedirs(os.path.dirname(os.path.abspath(args.file)), mode=0o755, exist_ok=True)
        write_atomic(args.file, dumps(change.doc, like=text).encode("utf-8"))
    _emit(changed=change.changed, default_runtime_changed=change.default_runtime_changed, backup=backup)
    return 0


def _cmd_unmerge(args: argparse.Namespace) -> int:
    backup_path = args.backup or ""
    backup_data = _read(backup_path) if backup_path else None
    plan = plan_uninstall(
        _decode(_read(args.file), args.file), _decode(backup_data, backup_path), args.file, backup_path,
    )
    if plan.action == "restore-backup" and backup_data is not None:
        write_atomic(args.file, backup_data, mode=_mode_of(backup_path))
    elif plan.action == "unmerge" and plan.text is not None:
        write_atomic(args.file, plan.text.encode("utf-8"))
    elif plan.action == "remove":
        os.unlink(args.file)
    if backup_data is not None:
        if plan.action == "unmerge":
            _warn(f"{args.file} was changed since install: removed only mmbatch's keys, "
                  f"not restoring {backup_path}")
        os.unlink(backup_path)
    _emit(action=plan.action, changed=plan.changed, default_runtime_changed=plan.default_runtime_changed,
          default_runtime_removed=plan.default_runtime_removed)
    return 0


_SUMMARY = (__doc__ or "").split("\n")[0]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmbatch.install.daemon_json", description=_SUMMARY)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("delegate", help="print the runtime mmbatch must chain to")
    d.add_argument("--file", required=True)
    d.add_argument("--backup")
    d.add_argument("--default-runtime", action="store_true")
    d.add_argument("--gpu", action="store_true")
    d.set_defaults(func=_cmd_delegate)
    f = sub.add_parser("default", help="print the default runtime the file asks dockerd for")
    f.add_argument("--file", required=True)
    f.set_defaults(func=_cmd_default)
    m = sub.add_parser("merge", help="register runtime mmbatch")
    m.add_argument("--file", required=True)
    m.add_argument("--runtime-path", required=True)
    m.add_argument("--backup", help="copy of the original, written only if absent")
    m.add_argument("--default-runtime", action="store_true")
    m.set_defaults(func=_cmd_merge)
    u = sub.add_parser("unmerge", help="take runtime mmbatch out again")
    u.add_argument("--file", required=True)
    u.add_argument("--backup")
    u.set_defaults(func=_cmd_unmerge)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return run_reporting(lambda: int(args.func(args)), args.file)


if __name__ == "__main__":
    sys.exit(main())
