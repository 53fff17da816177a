"""ECS_NVIDIA_RUNTIME=mmbatch in the ECS agent's /etc/ecs/ecs.config.

On GPU nodes the ECS agent starts GPU containers with the runtime that
ECS_NVIDIA_RUNTIME names (default "nvidia"); naming mmbatch puts them through
mmbatch, which chains to the nvidia runtime. `set_runtime` and
`unset_runtime` are pure text edits that keep every other line byte for
byte. A different earlier value is kept as a comment
(`# mmbatch-previous: ECS_NVIDIA_RUNTIME=...`) and comes back on unset, so
set then unset gives the original text.

    python -m mmbatch.install.ecs_config set|unset --file F [--runtime mmbatch]
"""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional, Sequence, Tuple

from mmbatch.install.atomic import read_text, write_atomic

KEY = "ECS_NVIDIA_RUNTIME"
RUNTIME_NAME = "mmbatch"
MARKER = "# mmbatch-previous: "

_SETTING_RE = re.compile(rf"^\s*{KEY}\s*=(.*)$")


def setting_value(line: str) -> Optional[str]:
    """The value a line assigns to ECS_NVIDIA_RUNTIME (quotes removed), or None."""
    m = _SETTING_RE.match(line.rstrip("\r\n"))
    if not m:
        return None
    value = m.group(1).strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return value


def _split(text: str) -> Tuple[List[str], List[str]]:
    bodies, endings = [], []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        bodies.append(body)
        endings.append(line[len(body):])
    return bodies, endings


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _join(bodies: List[str], endings: List[str], nl: str, final_newline: bool) -> str:
    if not bodies:
        return ""
    endings = [e or nl for e in endings]
    if not final_newline:
        endings[-1] = ""
    return "".join(b + e for b, e in zip(bodies, endings))


def set_runtime(text: str, runtime: str = RUNTIME_NAME) -> Tuple[str, bool]:
    """`text` with ECS_NVIDIA_RUNTIME=runtime (where the last setting was, or
    appended); other values are commented out with a marker."""
    nl = _newline(text)
    final_newline = text == "" or text.endswith(("\n", "\r"))
    bodies, endings = _split(text)
    out_b: List[str] = []
    out_e: List[str] = []
    at: Optional[int] = None
    for body, ending in zip(bodies, endings):
        value = setting_value(body)
        if value is None:
            out_b.append(body)
            out_e.append(ending)
        elif value == runtime:
            at = len(out_b)
        else:
            out_b.append(MARKER + body)
            out_e.append(ending)
            at = len(out_b)
    if at is None:
        at = len(out_b)
    out_b.insert(at, f"{KEY}={runtime}")
    out_e.insert(at, nl)
    new = _join(out_b, out_e, nl, final_newline)
    return new, new != text


def unset_runtime(text: str, runtime: str = RUNTIME_NAME) -> Tuple[str, bool]:
    """`text` without ECS_NVIDIA_RUNTIME=runtime; values set_runtime commented
    out come back."""
    nl = _newline(text)
    final_newline = text.endswith(("\n", "\r"))
    out_b: List[str] = []
    out_e: List[str] = []
    for body, ending in zip(*_split(text)):
        if setting_value(body) == runtime:
            continue
        if body.startswith(MARKER) and setting_value(body[len(MARKER):]) is not None:
            body = body[len(MARKER):]
        out_b.append(body)
        out_e.append(ending)
    new = _join(out_b, out_e, nl, final_newline)
    return new, new != text


def _cmd(args: argparse.Namespace) -> int:
    text = read_text(args.file)
    if args.command == "set":
        new, changed = set_runtime(text or "", args.runtime)
        if changed or text is None:
            os.makedirs(os.path.dirname(os.path.abspath(args.file)), mode=0o755, exist_ok=True)
            write_atomic(args.file, new.encode("utf-8"))
            changed = True
    else:
        if text is None:
            new, changed = "", False
        else:
            new, changed = unset_runtime(text, args.runtime)
        if changed and new == "":
            # Only our line was in it: an absent ecs.config means the same to the agent.
            os.unlink(args.file)
        elif changed:
            write_atomic(args.file, new.encode("utf-8"))
    print(f"changed={int(changed)}")
    return 0


_SUMMARY = (__doc__ or "").split("\n")[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmbatch.install.ecs_config", description=_SUMMARY)
    p.add_argument("command", choices=("set", "unset"))
    p.add_argument("--file", required=True)
    p.add_argument("--runtime", default=RUNTIME_NAME)
    args = p.parse_args(argv)
    try:
        return _cmd(args)
    except (OSError, UnicodeDecodeError) as e:
        print(f"mmbatch-install: error: {args.file}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
