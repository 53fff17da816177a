"""The one error hierarchy of criu_bindings.

Everything this package raises on purpose derives from `CriuBindingsError`,
so a caller (the checkpointer, `mmbatch doctor`) can fail open on a single
type and still tell the cases apart:

- `WireError` and its subclasses: bytes that are not a valid protobuf
  message for the definition at hand (truncated, oversized, bad wire type).
  They are `ValueError`s too.
- `ImageError` and its subclasses: a CRIU image file that cannot be read
  (wrong magic, truncated, inconsistent with its pages file). They carry
  the file's path.
- `TransportError`: the conversation with CRIU broke (the process died,
  the socket closed, a timeout).
- `CriuError`: CRIU answered and said no. It carries CRIU's errno
  (`cr_errno`), its first error message (`cr_errmsg`) and the log path.
"""

from __future__ import annotations

import errno
from typing import Sequence


class CriuBindingsError(Exception):
    """Base class of every error raised by criu_bindings."""


# --- protobuf wire codec -------------------------------------------------


class WireError(CriuBindingsError, ValueError):
    """Bytes that do not decode (or values that do not encode) as declared.

    `offset` is the byte offset in the buffer where decoding failed, when known.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        if offset is not None:
            message = f"{message} (at byte {offset})"
        super().__init__(message)
        self.offset = offset


class TruncatedError(WireError):
    """The input ends in the middle of a varint, a fixed-size value or a tag."""


class OversizedError(WireError):
    """A length prefix claims more bytes than the input holds (or than allowed)."""


class MalformedVarintError(WireError):
    """A varint longer than 10 bytes."""


class WireTypeError(WireError):
    """An invalid wire type (3, 4, 6, 7) or one that contradicts the field's type."""


class MissingFieldError(WireError):
    """A proto2 `required` field is absent (on decode or on encode)."""


class EncodeError(WireError):
    """A value cannot be encoded as its field's declared type (wrong type, out of range, unknown name)."""


# --- image files -----------------------------------------------------------


class ImageError(CriuBindingsError):
    """A CRIU image file that cannot be read; `path` names it."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class BadMagicError(ImageError):
    """The file does not start with the magic of the expected image type."""


class TruncatedImageError(ImageError):
    """The file ends inside its magic or inside an entry (size prefix or payload)."""


class CorruptImageError(ImageError):
    """An entry does not decode, or the image contradicts itself or its pages file."""


# --- talking to CRIU -------------------------------------------------------


class CriuNotFoundError(CriuBindingsError, FileNotFoundError):
    """No criu binary: not given, not in $MMBATCH_CRIU, not on PATH."""


class TransportError(CriuBindingsError):
    """The RPC conversation with CRIU broke: process died, socket closed, timeout, bad framing."""


class CriuError(CriuBindingsError):
    """CRIU served the request and reported failure.

    Attributes:
        request: the request type name ("DUMP", "RESTORE", ...).
        cr_errno: CRIU's errno for the failure (0 or None when it gave none).
        cr_errmsg: the first error line of CRIU's log, as CRIU reported it
            (often harmless noise such as "Can't setup RLIMIT_NOFILE").
        log_path: where CRIU wrote its log for this request, when known.
        log_errors: the "Error" lines of that log, known-harmless ones left
            out; the first of them is what the message shows.
    """

    def __init__(
        self,
        message: str,
        *,
        request: str = "",
        cr_errno: int | None = None,
        cr_errmsg: str | None = None,
        log_path: str | None = None,
        log_errors: Sequence[str] = (),
    ) -> None:
        parts = [message]
        if cr_errno:
            parts.append(f"errno {cr_errno} ({errno.errorcode.get(cr_errno, '?')})")
        detail = log_errors[0] if log_errors else cr_errmsg
        if detail:
            parts.append(f"criu: {detail.strip()}")
        if log_path:
            parts.append(f"see {log_path}")
        super().__init__("; ".join(parts))
        self.request = request
        self.cr_errno = cr_errno
        self.cr_errmsg = cr_errmsg
        self.log_path = log_path
        self.log_errors = list(log_errors)


class CriuNotifyError(CriuError):
    """A notify callback raised: we told CRIU the notification failed and it rolled back.

    `script` is the notification name ("post-dump", ...); the callback's
    exception is the `__cause__`.
    """

    def __init__(self, message: str, *, script: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.script = script


class CriuUnsupportedError(CriuError):
    """The request needs a feature this CRIU or kernel lacks (`feature` names it); nothing was done."""

    def __init__(self, message: str, *, feature: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.feature = feature
