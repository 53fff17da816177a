"""Errors of the deployment kit: a choice that cannot make a valid request."""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

from typing import Optional

from mmbatch.errors import MmbatchError


class KitError(MmbatchError):
    """An option of `mmbatch aws ...` is invalid; the message names it."""

    def __init__(self, message: str, *, option: str = "", hint: Optional[str] = None) -> None:
        super().__init__(f"{option}: {message}" if option else message, hint=hint)
        self.option = option


class InvalidRequest(KitError):
    """A generated request fails botocore's parameter validation (a bug, or a bad value)."""

    def __init__(self, service: str, operation: str, report: str) -> None:
        super().__init__(f"{service} {operation}: the request is not valid for the API: {report}")
        self.service = service
        self.operation = operation
        self.report = report
