"""Parsing of runc's command line: global flags, subcommand, its flags, id.

Pure logic. runc (urfave/cli) accepts `-flag`, `--flag`, `--flag=value` and
`--flag value`. Anything this parser does not understand makes the
invocation `opaque`: the shim then passes it through untouched and lets the
delegate runtime judge it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import on the hot path
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple

# runc's global flags: name -> takes a value.
GLOBAL_FLAGS = {
    "debug": False,
    "log": True,
    "log-format": True,
    "root": True,
    "criu": True,
    "systemd-cgroup": False,
    "rootless": True,
}

# Flags of the subcommands we intercept: name -> takes a value. Aliases map to
# the long name.
COMMAND_FLAGS = {
    "create": {
        "bundle": True,
        "console-socket": True,
        "pid-file": True,
        "no-pivot": False,
        "no-new-keyring": False,
        "preserve-fds": True,
    },
    "restore": {
        "bundle": True,
        "console-socket": True,
        "pid-file": True,
        "image-path": True,
        "work-path": True,
        "manage-cgroups-mode": True,
        "empty-ns": True,
        "lsm-profile": True,
        "lsm-mount-context": True,
        "tcp-established": False,
        "ext-unix-sk": False,
        "shell-job": False,
        "file-locks": False,
        "detach": False,
        "no-subreaper": False,
        "no-pivot": False,
        "auto-dedup": False,
        "lazy-pages": False,
    },
    "start": {},
    "kill": {"all": False},
    "delete": {"force": False},
    "state": {},
}
ALIASES = {"create": {"b": "bundle"}, "restore": {"b": "bundle", "d": "detach"}, "kill": {"a": "all"},
           "delete": {"f": "force"}}


class Invocation:
    """One runtime call, split into its parts. `opaque` when not understood."""

    __slots__ = ("argv", "globals", "command", "command_index", "flags", "args", "opaque")

    def __init__(self, argv: List[str]) -> None:
        self.argv = argv
        self.globals: Dict[str, str] = {}
        self.command: Optional[str] = None
        self.command_index = -1
        self.flags: Dict[str, str] = {}
        self.args: List[str] = []
        self.opaque = False

    @property
    def container_id(self) -> Optional[str]:
        if self.command == "kill":  # kill ID [SIGNAL]
            return self.args[0] if 1 <= len(self.args) <= 2 else None
        return self.args[0] if len(self.args) == 1 else None

    @property
    def log_path(self) -> Optional[str]:
        return self.globals.get("log") or None

    @property
    def log_format(self) -> str:
        return self.globals.get("log-format") or "text"

    @property
    def root(self) -> str:
        return self.globals.get("root") or "/run/runc"

    def global_argv(self) -> List[str]:
        """The global flags exactly as given, for calling the delegate again."""
        return self.argv[: self.command_index] if self.command_index >= 0 else list(self.argv)


def _split_flag(token: str) -> Tuple[Optional[str], Optional[str]]:
    """("name", "value"|None) for -name / --name[=value]; (None, None) otherwise."""
    if len(token) < 2 or token[0] != "-" or token == "--":
        return None, None
    name = token[2:] if token.startswith("--") else token[1:]
    if not name or name.startswith("-"):
        return None, None
    if "=" in name:
        name, value = name.split("=", 1)
        return name, value
    return name, None


def _parse_flags(
    tokens: List[str], start: int, known: Dict[str, bool], aliases: Dict[str, str], out: Dict[str, str]
) -> Tuple[int, bool]:
    """Consume flags from tokens[start:]. Returns (next index, understood)."""
    i = start
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            return i + 1, True
        name, value = _split_flag(token)
        if name is None:
            return i, True
        name = aliases.get(name, name)
        if name not in known:
            return i, False
        if known[name]:
            if value is None:
                if i + 1 >= len(tokens):
                    return i, False
                value = tokens[i + 1]
                i += 1
        elif value is None:
            value = "true"
        out[name] = value
        i += 1
    return i, True


def parse(argv: List[str]) -> Invocation:
    """Parse runtime argv (without argv[0])."""
    inv = Invocation(argv)
    i, ok = _parse_flags(argv, 0, GLOBAL_FLAGS, {}, inv.globals)
    if not ok or i >= len(argv):
        inv.opaque = True
        return inv
    inv.command = argv[i]
    inv.command_index = i
    known = COMMAND_FLAGS.get(inv.command)
    if known is None:
        inv.opaque = True
        return inv
    # urfave/cli v1 (runc) moves flags given after the positionals in front of
    # them ("runc delete ID --force" is a forced delete); "--" ends flags.
    aliases = ALIASES.get(inv.command, {})
    j = i + 1
    while j < len(argv):
        j, ok = _parse_flags(argv, j, known, aliases, inv.flags)
        if not ok:
            inv.opaque = True
            return inv
        if j < len(argv) and argv[j - 1] == "--":
            inv.args.extend(argv[j:])
            break
        if j < len(argv):
            inv.args.append(argv[j])
            j += 1
    return inv


def is_valid_container_id(cid: str) -> bool:
    """runc's own rule (^[\\w+-\\.]+$), minus names that are path tricks."""
    if not cid or len(cid) > 1024 or cid in (".", ".."):
        return False
    for ch in cid:
        if not (ch.isascii() and (ch.isalnum() or ch in "_+-.")):
            return False
    return True
