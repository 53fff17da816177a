"""The object store interface: a flat key/value store of immutable objects.

A key is a `/`-separated relative path (`jobs/<job>/manifests/<id>.json`).
Every key is validated before it reaches a backend, so no key can name
something outside the store (no empty, `.` or `..` components, no leading
`/`, no NUL or control characters, bounded length). Backends (fs, s3) only
implement the abstract methods; the checkpoint repository is written against
this interface alone, and the same test suite runs against every backend.

Semantics every backend keeps:
- every put is atomic: a reader sees the old object, the new one or none,
  never half of one;
- `delete` of a missing key is not an error (as with S3 DeleteObject);
- `list(prefix)` yields the keys below the "directory" `prefix`
  (recursively), in no particular order;
- a missing object is `ObjectNotFound`; any other failure is `StoreError`
  carrying the key and a hint that says what to do.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Tuple

from mmbatch.errors import ObjectNotFound, StoreError

# S3 allows 1024 bytes of UTF-8; file systems allow 255 bytes per name.
MAX_KEY_BYTES = 1024
MAX_COMPONENT_BYTES = 255

# Names starting with this are the store's own (temp files); keys cannot use it.
RESERVED_PREFIX = ".mmbatch-"

# The label garbage collection puts on an object it is about to delete (an S3
# object tag): a bucket lifecycle rule that expires only objects with this tag
# finishes a delete that never happened (the node died mid-gc), and cannot
# touch live data (`mmbatch aws bucket`, docs/aws.md).
GARBAGE_TAG_KEY = "mmbatch-gc"
GARBAGE_TAG_VALUE = "garbage"

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    size: int
    mtime: float  # seconds since the epoch, the store's clock


def validate_key(key: object) -> str:
    """Return `key` if it is a safe object key, else raise StoreError."""
    if not isinstance(key, str):
        raise StoreError(f"object key must be a string, got {type(key).__name__}")
    if not key:
        raise StoreError("object key is empty")
    if _CONTROL_RE.search(key):
        raise StoreError(f"object key {key!r} contains NUL or control characters")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise StoreError(f"object key {key!r} is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise StoreError(f"object key {key[:64]!r}... is {size} bytes long (at most {MAX_KEY_BYTES})")
    if key.startswith("/"):
        raise StoreError(f"object key {key!r} must be relative (no leading '/')")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise StoreError(f"object key {key!r} has an empty, '.' or '..' component")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise StoreError(
                f"object key {key[:64]!r}... has a component longer than {MAX_COMPONENT_BYTES} bytes"
            )
        if part.startswith(RESERVED_PREFIX):
            raise StoreError(f"object key {key!r} uses the reserved name prefix {RESERVED_PREFIX!r}")
    return key


def validate_prefix(prefix: object) -> str:
    """Normalize a listing prefix: "" (everything) or a valid key without trailing '/'."""
    if prefix == "":
        return ""
    if isinstance(prefix, str) and prefix.endswith("/"):
        prefix = prefix[:-1]
    return validate_key(prefix)


class ObjectStore(abc.ABC):
    """A flat key/value store; see the module docstring for the contract."""

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The store's URL (file:///path, s3://bucket/prefix)."""

    def describe(self) -> str:
        """A short human description for logs and error messages."""
        return f"store {self.url}"

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, atomically replacing any existing object."""

    @abc.abstractmethod
    def put_file(self, key: str, src_path: str) -> None:
        """Store the content of the local file `src_path` under `key`, atomically."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object. ObjectNotFound when it does not exist."""

    @abc.abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset`; fewer only where the object ends first."""

    @abc.abstractmethod
    def get_file(self, key: str, dest_path: str) -> None:
        """Copy the object to the local `dest_path` (written to a temp name, then renamed)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists under `key`."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys below `prefix` ("" for all), recursively, in no particular order."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time. ObjectNotFound when it does not exist."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove several objects (backends batch this where they can)."""
        for key in keys:
            self.delete(key)

    def mark_garbage(self, keys: Iterable[str]) -> int:
        """Label objects garbage collection is about to delete; returns how many were labelled.

        Best effort: a failure is logged, never raised, since the label only
        lets a store-side expiry rule finish an interrupted delete. Backends
        without labels (file systems, which have no expiry rules) do nothing.
        """
        return 0

    def list_info(self, prefix: str = "") -> Iterator[Tuple[str, ObjectInfo]]:
        """(key, ObjectInfo) below `prefix`; objects deleted meanwhile are skipped.

        Backends whose listing already returns sizes and times (S3) override
        this to avoid one request per object.
        """
        for key in self.list(prefix):
            try:
                yield key, self.stat(key)
            except ObjectNotFound:
                continue

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
