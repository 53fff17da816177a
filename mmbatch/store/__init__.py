"""Checkpoint stores: one interface (ObjectStore), one class per backend.

`open_store(url)` picks the backend from the URL:
- `file:///path` or `/path`: FsObjectStore (local disk, FSx for Lustre, EFS,
  JuiceFS: anything mounted);
- `s3://bucket/prefix`: `mmbatch.store.s3.S3ObjectStore(url, store_cfg)`
  (AWS S3, or an S3-compatible server through `store_cfg.endpoint_url`),
  imported only then, so the file store never pulls in boto3.

docs/stores.md says how to set up each one.

A new backend is one module with one ObjectStore subclass plus one branch
here; the checkpoint repository and the store test suite need no change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional
from urllib.parse import unquote, urlsplit

from mmbatch.errors import StoreError
from mmbatch.store.base import ObjectInfo, ObjectStore, validate_key, validate_prefix
from mmbatch.store.fs import FsObjectStore

if TYPE_CHECKING:
    from mmbatch.config import StoreSection

__all__ = [
    "FsObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "open_store",
    "validate_key",
    "validate_prefix",
]

_HINT = "use file:///path (a local or mounted file system), /path, or s3://bucket/prefix"


def open_store(url: str, store_cfg: Optional[StoreSection] = None) -> ObjectStore:
    """Open the store `url` names; StoreError when it cannot be used."""
    if not isinstance(url, str) or not url or "\0" in url:
        raise StoreError(f"invalid store URL {url!r}", hint=_HINT)
    if url.startswith("/"):
        return FsObjectStore(url)
    if url.startswith("file:"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise StoreError(f"unsupported file URL {url!r}", hint="use file:///absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise StoreError(f"file URL {url!r} needs an absolute path", hint="use file:///absolute/path")
        return FsObjectStore(path)
    if url.startswith("s3://"):
        try:
            from mmbatch.store.s3 import S3ObjectStore
        except ImportError as e:
            raise StoreError(
                f"s3 store not available in this build ({url})",
                hint="install a build with S3 support (boto3), or use a mounted file system",
            ) from e
        return S3ObjectStore(url, store_cfg)
    raise StoreError(f"unsupported store URL {url!r}", hint=_HINT)
