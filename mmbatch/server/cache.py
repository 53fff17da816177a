"""The server's local SQLite cache of the checkpoint store's job records.

A mirror, not a second source of truth: `sync` fills it from the store and
removes what the store no longer has; deleting the file only costs a full
re-read. It remembers each object's size and modification time so a sync
reads only what changed. One connection per thread (sqlite3 objects are
not shared across threads); WAL lets pages read while a sync writes.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from mmbatch.server.errors import ServerError
from mmbatch.server.model import JobSummary

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime REAL NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    job_key TEXT NOT NULL, container_id TEXT NOT NULL, attempt TEXT, job_queue TEXT,
    started_at REAL, ended_at REAL, end_state TEXT, exit_code INTEGER, signal TEXT, oom_kills INTEGER,
    cpu_seconds REAL, restored_from TEXT, hostname TEXT, instance_id TEXT, instance_type TEXT,
    availability_zone TEXT, lifecycle TEXT, object_key TEXT NOT NULL,
    PRIMARY KEY (job_key, container_id));
CREATE TABLE IF NOT EXISTS events (
    job_key TEXT NOT NULL, name TEXT NOT NULL, time REAL, kind TEXT, container_id TEXT, node TEXT,
    reason TEXT, checkpoint_id TEXT, body TEXT NOT NULL, object_key TEXT NOT NULL,
    PRIMARY KEY (job_key, name));
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_key TEXT NOT NULL, checkpoint_id TEXT NOT NULL, created_at REAL, container_id TEXT, attempt TEXT,
    size INTEGER, rootfs_bytes INTEGER, reason TEXT, hostname TEXT, freeze_seconds REAL,
    object_key TEXT NOT NULL, PRIMARY KEY (job_key, checkpoint_id));
CREATE TABLE IF NOT EXISTS jobs (
    job_key TEXT PRIMARY KEY, job_queue TEXT, state TEXT, attempts INTEGER, checkpoints INTEGER,
    stored_checkpoints INTEGER, restores INTEGER, spot_protections INTEGER, fallbacks INTEGER,
    max_rootfs_bytes INTEGER, cpu_seconds REAL, first_seen REAL, last_seen REAL, exit_code INTEGER);
"""

JOB_COLUMNS = ("job_key", "job_queue", "state", "attempts", "checkpoints", "stored_checkpoints", "restores",
               "spot_protections", "fallbacks", "max_rootfs_bytes", "cpu_seconds", "first_seen", "last_seen",
               "exit_code")


def _str(v: Any) -> Optional[str]:
    return None if v is None else str(v)


def _float(v: Any) -> Optional[float]:
    """A number of a record, or None (not a number, a boolean, NaN, infinite or too large)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> Optional[int]:
    f = _float(v)
    return None if f is None or abs(f) >= 2 ** 63 else int(f)  # SQLite integers are 64-bit


class Cache:
    """The SQLite file at `path` (":memory:" is not allowed: threads need a file)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self.write_lock = threading.Lock()  # one sync at a time
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # job records are not public
            os.close(fd)
        except OSError as e:
            raise ServerError(f"cannot create the cache {path}: {e.strerror}",
                              hint="set server.cache_path to a writable place") from e
        with self.connect() as db:
            db.executescript(_SCHEMA)

    def connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.Error as e:
                raise ServerError(f"cannot open the cache {self.path}: {e}",
                                  hint="delete the file; the next sync rebuilds it") from e
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- meta and objects ------------------------------------------------------------

    def meta(self, name: str) -> Optional[str]:
        row = self.connect().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, db: sqlite3.Connection, name: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def reset_for(self, store_url: str) -> None:
        """Empty the cache when it was built from another store or schema."""
        if self.meta("store_url") == store_url and self.meta("schema") == SCHEMA_VERSION:
            return
        with self.connect() as db:
            for table in ("objects", "attempts", "events", "checkpoints", "jobs", "meta"):
                db.execute(f"DELETE FROM {table}")
            self.set_meta(db, "store_url", store_url)
            self.set_meta(db, "schema", SCHEMA_VERSION)

    def known_objects(self) -> Dict[str, Tuple[int, float]]:
        return {r["key"]: (r["size"], r["mtime"]) for r in self.connect().execute("SELECT * FROM objects")}

    # -- writes (inside one transaction of sync) --------------------------------------

    @staticmethod
    def put_attempt(db: sqlite3.Connection, key: str, size: int, mtime: float, job_key: str,
                    rec: Mapping[str, Any]) -> None:
        node = rec.get("node") if isinstance(rec.get("node"), dict) else {}
        cid = str(rec.get("container_id") or key.rsplit("/", 1)[-1][: -len(".json")])
        db.execute(
            "INSERT OR REPLACE INTO attempts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (job_key, cid, _str(rec.get("attempt")), _str(rec.get("job_queue")), _float(rec.get("started_at")),
             _float(rec.get("ended_at")), _str(rec.get("end")), _int(rec.get("exit_code")), _str(rec.get("signal")),
             _int(rec.get("oom_kills")), _float(rec.get("cpu_seconds")), _str(rec.get("restored_from")),
             _str(node.get("hostname")), _str(node.get("instance_id")), _str(node.get("instance_type")),
             _str(node.get("availability_zone")), _str(node.get("lifecycle")), key))
        db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?)", (key, size, mtime))

    @staticmethod
    def put_event(db: sqlite3.Connection, key: str, size: int, mtime: float, job_key: str,
                  ev: Mapping[str, Any]) -> None:
        name = key.rsplit("/", 1)[-1][: -len(".json")]
        db.execute(
            "INSERT OR REPLACE INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
            (job_key, name, _float(ev.get("time")), _str(ev.get("kind")), _str(ev.get("container_id")),
             _str(ev.get("node")), _str(ev.get("reason")), _str(ev.get("checkpoint_id")),
             json.dumps(ev, sort_keys=True, default=str), key))
        db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?)", (key, size, mtime))

    @staticmethod
    def put_checkpoint(db: sqlite3.Connection, key: str, size: int, mtime: float, job_key: str,
                       m: Any) -> None:
        db.execute(
            "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (job_key, str(m.checkpoint_id), _float(m.created_at), _str(m.container_id), _str(m.attempt),
             _int(m.total_size), _int(m.stats.get("rootfs_bytes")) or 0, _str(m.labels.get("reason", "")),
             _str(m.node.get("hostname", "")), _float(m.stats.get("freeze_seconds")), key))
        db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?)", (key, size, mtime))

    @staticmethod
    def forget(db: sqlite3.Connection, keys: Iterable[str]) -> None:
        for key in keys:
            for table in ("attempts", "events", "checkpoints"):
                db.execute(f"DELETE FROM {table} WHERE object_key = ?", (key,))
            db.execute("DELETE FROM objects WHERE key = ?", (key,))

    @staticmethod
    def job_records(db: sqlite3.Connection, job_key: str) -> Tuple[List[Dict], List[Dict], List[Dict]]:
        """(attempt records, events, stored checkpoints) of one job, in the shapes model.summarize_job reads."""
        attempts = []
        for r in db.execute("SELECT * FROM attempts WHERE job_key = ?", (job_key,)):
            attempts.append({"started_at": r["started_at"], "ended_at": r["ended_at"], "end": r["end_state"],
                             "exit_code": r["exit_code"], "job_queue": r["job_queue"],
                             "cpu_seconds": r["cpu_seconds"]})
        events = [json.loads(r["body"]) for r in db.execute("SELECT body FROM events WHERE job_key = ?", (job_key,))]
        ckpts = [{"rootfs_bytes": r["rootfs_bytes"]}
                 for r in db.execute("SELECT rootfs_bytes FROM checkpoints WHERE job_key = ?", (job_key,))]
        return attempts, events, ckpts

    @staticmethod
    def put_job(db: sqlite3.Connection, s: JobSummary) -> None:
        if not s.attempts and not s.checkpoints and not s.stored_checkpoints and s.first_seen == 0:
            db.execute("DELETE FROM jobs WHERE job_key = ?", (s.job_key,))
            return
        db.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({', '.join('?' * 14)})",
                   tuple(getattr(s, c) for c in JOB_COLUMNS))

    # -- reads for the pages ----------------------------------------------------------

    def query(self, sql: str, args: Sequence[Any] = ()) -> List[sqlite3.Row]:
        return self.connect().execute(sql, tuple(args)).fetchall()
