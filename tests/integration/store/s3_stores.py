"""Building S3 stores on a test server, and watching the requests they send."""

from __future__ import annotations

import os
import secrets
import threading
from typing import Any, Dict, List, Tuple

from mmbatch.config import StoreSection
from tests.lib import s3server


def store_section(server: s3server.S3Server, **kw: Any) -> StoreSection:
    """[store] for `server`: SSE AES256 as in production when the server has an SSE key."""
    sse = kw.pop("sse", None) or ("AES256" if server.sse_kek else os.environ.get("MMBATCH_TEST_S3_SSE", "none"))
    return StoreSection(endpoint_url=server.endpoint, region=server.region, sse=sse, **kw)


def s3_store(server: s3server.S3Server, bucket: str, prefix: str = "", *, session: Any = None, **kw: Any):
    """An S3ObjectStore on `server` under s3://bucket/prefix (a fresh prefix by default).

    `max_attempts` goes to the store; everything else to its StoreSection.
    """
    from mmbatch.store.s3 import S3ObjectStore

    extra = {k: kw.pop(k) for k in ("max_attempts", "connect_timeout", "read_timeout") if k in kw}
    prefix = prefix or f"p-{secrets.token_hex(4)}"
    return S3ObjectStore(f"s3://{bucket}/{prefix}", store_section(server, **kw),
                         session=session or server.session(), **extra)


class Requests:
    """Operation names and headers of every request a botocore client sends (its event hooks)."""

    def __init__(self, client: Any) -> None:
        self.lock = threading.Lock()
        self.calls: List[str] = []
        self.sent: List[Tuple[str, Dict[str, str]]] = []
        client.meta.events.register("before-call.s3", self._on_call)
        client.meta.events.register("before-send.s3", self._on_send)

    def _on_call(self, model: Any, **_: Any) -> None:
        with self.lock:
            self.calls.append(model.name)

    def _on_send(self, request: Any, event_name: str = "", **_: Any) -> None:
        op = event_name.rsplit(".", 1)[-1]
        headers = {k.lower(): (v.decode() if isinstance(v, bytes) else str(v)) for k, v in request.headers.items()}
        with self.lock:
            self.sent.append((op, headers))

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()
            self.sent.clear()

    def count(self, name: str) -> int:
        with self.lock:
            return self.calls.count(name)

    def ops(self) -> List[str]:
        with self.lock:
            return list(self.calls)
