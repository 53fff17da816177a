"""Store → cache: read the job records nodes wrote into the SQLite cache.

One listing of `jobs/` (with sizes and times: one request per thousand keys
on S3), then only the records that are new or changed are read:
`jobs/<job>/attempts/*.json` (rewritten as an attempt ends),
`jobs/<job>/events/*.json` (written once) and
`jobs/<job>/manifests/*.json` (the stored checkpoints). What the store no
longer has is removed from the cache; the summary row of every job that
changed is computed again (model.summarize_job).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Set, Tuple

from mmbatch.errors import ManifestError, MmbatchError, ObjectNotFound
from mmbatch.manifest import Manifest
from mmbatch.server.cache import Cache
from mmbatch.server.model import summarize_job
from mmbatch.store.base import ObjectStore

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^jobs/([A-Za-z0-9][A-Za-z0-9._-]{0,199})/(attempts|events|manifests)/([^/]+)\.json$")


@dataclass
class SyncResult:
    read: int = 0
    removed: int = 0
    skipped: int = 0  # unreadable objects (logged)
    jobs_changed: int = 0
    seconds: float = 0.0


def classify(key: str) -> Optional[Tuple[str, str]]:
    """(job key, kind) of a record key the server reads, else None."""
    m = _KEY_RE.match(key)
    return (m.group(1), m.group(2)) if m else None


def sync(store: ObjectStore, cache: Cache) -> SyncResult:
    """Bring the cache up to date with the store (one pass)."""
    t0 = time.monotonic()
    result = SyncResult()
    with cache.write_lock:
        cache.reset_for(store.url)
        known = cache.known_objects()
        listing: Dict[str, Tuple[str, str, int, float]] = {}
        for key, info in store.list_info("jobs"):
            what = classify(key)
            if what:
                listing[key] = (what[0], what[1], info.size, info.mtime)
        changed_jobs: Set[str] = set()
        gone = [k for k in known if k not in listing]
        db = cache.connect()
        with db:
            for key in gone:
                what = classify(key)
                if what:
                    changed_jobs.add(what[0])
            cache.forget(db, gone)
            result.removed = len(gone)
            for key, (job_key, kind, size, mtime) in sorted(listing.items()):
                if known.get(key) == (size, mtime) or (kind != "attempts" and key in known):
                    continue  # events and manifests are written once
                try:
                    data = store.get_bytes(key)
                    if kind == "manifests":
                        cache.put_checkpoint(db, key, size, mtime, job_key, Manifest.from_json(data))
                    else:
                        doc = json.loads(data)
                        if not isinstance(doc, dict):
                            raise ValueError("not a JSON object")
                        put = cache.put_attempt if kind == "attempts" else cache.put_event
                        put(db, key, size, mtime, job_key, doc)
                except ObjectNotFound:
                    continue  # deleted since the listing
                except (ValueError, TypeError, OverflowError, RecursionError, ManifestError) as e:
                    # one odd record (not JSON, NaN, a number too large) must not stop the whole sync
                    log.warning("skipping unreadable %s: %s", key, e)
                    result.skipped += 1
                    continue
                result.read += 1
                changed_jobs.add(job_key)
            for job_key in sorted(changed_jobs):
                cache.put_job(db, summarize_job(job_key, *cache.job_records(db, job_key)))
            cache.set_meta(db, "synced_at", repr(time.time()))
        result.jobs_changed = len(changed_jobs)
    result.seconds = time.monotonic() - t0
    log.info("sync: %d read, %d removed, %d jobs changed in %.2fs", result.read, result.removed,
             result.jobs_changed, result.seconds)
    return result


class Syncer:
    """Runs `sync` every `interval` seconds on a thread; the last error is kept for the pages."""

    def __init__(self, store: ObjectStore, cache: Cache, interval: float) -> None:
        self.store = store
        self.cache = cache
        self.interval = interval
        self.last_error = ""
        self.last: Optional[SyncResult] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def run_once(self) -> Optional[SyncResult]:
        try:
            self.last = sync(self.store, self.cache)
            self.last_error = ""
        except MmbatchError as e:
            self.last_error = str(e)
            log.error("sync from %s failed: %s", self.store.url, e)
        except Exception as e:  # a sync failure must not stop the server
            self.last_error = f"{type(e).__name__}: {e}"
            log.exception("sync from %s failed", self.store.url)
        return self.last

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.run_once()
            self.cache.close()

        self._thread = threading.Thread(target=loop, name="mmbatch-server-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
