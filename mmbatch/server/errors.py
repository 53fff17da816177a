"""Errors of the management server, under mmbatch's one hierarchy."""

from __future__ import annotations

from mmbatch.errors import MmbatchError


class ServerError(MmbatchError):
    """The management server cannot start or serve (bad settings, port taken)."""


class AuthError(MmbatchError):
    """A login failed: a wrong admin token, a refused or failed OIDC exchange."""


class TokenInvalid(AuthError):
    """A JWT was refused: malformed, bad signature, expired, wrong issuer or audience.

    `reason` is a short machine-readable word (malformed, algorithm, key,
    signature, expired, not-yet-valid, issuer, audience, token-use, nonce).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
