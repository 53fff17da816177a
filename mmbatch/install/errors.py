"""Errors of the installer helpers."""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

import sys
from typing import Callable, Optional

from mmbatch.errors import MmbatchError


class InstallError(MmbatchError):
    """A host file cannot be edited as asked; nothing was changed."""

    def __init__(self, message: str, *, path: str = "", hint: Optional[str] = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path


class DaemonJsonError(InstallError):
    """daemon.json is not valid JSON or has a value of the wrong type."""

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        line: Optional[int] = None,
        column: Optional[int] = None,
        hint: Optional[str] = None,
    ) -> None:
        super().__init__(message, path=path, hint=hint)
        self.line = line
        self.column = column


def run_reporting(action: Callable[[], int], path: str) -> int:
    """Run an installer command: its exit code, or 1 with the error on stderr
    (an OSError names its file, else `path`)."""
    try:
        return action()
    except MmbatchError as e:
        print(f"mmbatch-install: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mmbatch-install: error: {e.filename or path}: {e.strerror}", file=sys.stderr)
        return 1
