"""mmbatchd's logs: JSON lines under [log] dir, and optional shipping to
CloudWatch Logs.

- `JsonFormatter` / `setup_daemon_logging`: every log record of the daemon
  becomes one JSON object per line in `<log dir>/mmbatchd.jsonl` (a
  WatchedFileHandler: logrotate may move it), besides the human lines on
  stderr (journald).
- `CloudWatchShipper`: a bounded queue that never blocks the daemon. When
  it is full the oldest event is dropped and counted. One thread ships
  batches with `PutLogEvents` (at most 10,000 events and 1 MiB each, in time
  order, per stream), creates the group and streams when missing, and
  retries throttling, 5xx and connection errors with capped exponential
  backoff and jitter. Errors it cannot fix (access denied) drop the batch,
  count it and say so once.
"""

from __future__ import annotations

import collections
import json
import logging
import logging.handlers
import os
import random
import socket
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

MAX_BATCH_EVENTS = 10000
MAX_BATCH_BYTES = 1048576
EVENT_OVERHEAD = 26
MAX_MESSAGE_BYTES = 200 * 1024
MAX_SPAN_MS = 24 * 3600 * 1000 - 60000
RETRYABLE = {"ThrottlingException", "ServiceUnavailableException", "InternalFailure", "ServiceUnavailable",
             "RequestTimeout", "RequestTimeoutException", "LimitExceededException"}
_QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "mmbatch.logs")

log = logging.getLogger("mmbatch.logs")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, msg (+ exc, thread)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: Dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, sort_keys=True, default=str)


class CloudWatchShipper:
    """A bounded, non-blocking queue of (stream, timestamp ms, message), shipped by one thread."""

    def __init__(self, client: Any, log_group: str, queue_size: int = 10000, batch_seconds: float = 5.0,
                 on_drop: Optional[Callable[[int], None]] = None, max_backoff: float = 30.0,
                 base_backoff: float = 0.2) -> None:
        self.client = client
        self.log_group = log_group
        self.batch_seconds = batch_seconds
        self.on_drop = on_drop
        self.max_backoff = max_backoff
        self.base_backoff = base_backoff
        self._queue: Deque[Tuple[str, int, str]] = collections.deque(maxlen=queue_size)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._give_up_at = 0.0
        self._ready: set = set()
        self._complained: set = set()
        self.sent = 0
        self.dropped = 0
        self.retries = 0
        self.failed = 0

    # -- producers (any thread, never blocks) ------------------------------------------------

    def submit(self, stream: str, message: str, timestamp: Optional[float] = None) -> None:
        ts = int((time.time() if timestamp is None else timestamp) * 1000)
        data = message.encode("utf-8", errors="replace")
        if len(data) > MAX_MESSAGE_BYTES:
            message = data[:MAX_MESSAGE_BYTES].decode("utf-8", errors="ignore") + "...(truncated)"
        with self._lock:
            dropped = len(self._queue) == self._queue.maxlen
            self._queue.append((stream, ts, message))  # a full deque drops its oldest
            if dropped:
                self.dropped += 1
        if dropped and self.on_drop is not None:
            self.on_drop(1)
        if len(self._queue) >= MAX_BATCH_EVENTS:
            self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    # -- the shipping thread ----------------------------------------------------------------------

    def start(self) -> CloudWatchShipper:
        self._thread = threading.Thread(target=self._run, name="cloudwatch", daemon=True)
        self._thread.start()
        return self

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Ship what is queued (for at most flush_timeout), then stop."""
        deadline = time.monotonic() + flush_timeout
        self._give_up_at = deadline
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.batch_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception as e:  # never let the thread die
                log.warning("CloudWatch shipping: %s", e)
        try:
            self.flush(give_up_at=self._give_up_at)
        except Exception:
            pass

    def _take(self) -> Dict[str, List[Tuple[int, str]]]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
        by_stream: Dict[str, List[Tuple[int, str]]] = {}
        for stream, ts, msg in items:
            by_stream.setdefault(stream, []).append((ts, msg))
        return by_stream

    def flush(self, give_up_at: Optional[float] = None) -> int:
        """Ship everything queued now; returns the events accepted."""
        n = 0
        for stream, events in self._take().items():
            events.sort(key=lambda e: e[0])  # PutLogEvents wants time order (stable: same-ms order kept)
            for batch in batches(events):
                if self._put(stream, batch, give_up_at):
                    n += len(batch)
        return n

    def _put(self, stream: str, batch: List[Tuple[int, str]], give_up_at: Optional[float]) -> bool:
        attempt = 0
        while True:
            attempt += 1
            try:
                self._ensure_stream(stream)
                resp = self.client.put_log_events(
                    logGroupName=self.log_group, logStreamName=stream,
                    logEvents=[{"timestamp": ts, "message": msg} for ts, msg in batch])
                rejected = (resp or {}).get("rejectedLogEventsInfo")
                if rejected:
                    log.debug("CloudWatch rejected some events of %s: %s", stream, rejected)
                self.sent += len(batch)
                return True
            except Exception as e:
                code = _error_code(e)
                if code == "ResourceNotFoundException":
                    self._ready.discard(stream)
                    if attempt <= 2:
                        continue
                if code in ("DataAlreadyAcceptedException",):
                    return True
                retryable = code in RETRYABLE or code in ("ResourceNotFoundException",
                                                          "InvalidSequenceTokenException") or _is_connection(e)
                now = time.monotonic()
                # once stop() is called, a batch in flight gets the same drain time as the queue
                deadline = give_up_at if give_up_at is not None else \
                    (self._give_up_at if self._stop.is_set() else None)
                if not retryable or (deadline is not None and now >= deadline):
                    self.failed += len(batch)
                    if code not in self._complained:
                        self._complained.add(code)
                        log.warning("CloudWatch Logs: dropping %d events of %s: %s", len(batch), stream, e)
                    return False
                self.retries += 1
                delay = min(self.max_backoff, self.base_backoff * (2 ** min(attempt - 1, 10)))
                delay *= random.uniform(0.5, 1.0)
                if deadline is None:
                    self._stop.wait(delay)  # stop() cuts the wait short; the deadline then applies
                else:
                    time.sleep(min(delay, max(0.0, deadline - now)))

    def _ensure_stream(self, stream: str) -> None:
        if stream in self._ready:
            return
        for call, kwargs in ((self.client.create_log_group, {"logGroupName": self.log_group}),
                             (self.client.create_log_stream, {"logGroupName": self.log_group,
                                                              "logStreamName": stream})):
            try:
                call(**kwargs)
            except Exception as e:
                if _error_code(e) != "ResourceAlreadyExistsException":
                    raise
        self._ready.add(stream)


def batches(events: List[Tuple[int, str]]) -> List[List[Tuple[int, str]]]:
    """Cut time-ordered events into PutLogEvents batches (count, bytes, 24 h span)."""
    out: List[List[Tuple[int, str]]] = []
    cur: List[Tuple[int, str]] = []
    size = 0
    for ts, msg in events:
        n = len(msg.encode("utf-8", errors="replace")) + EVENT_OVERHEAD
        if cur and (len(cur) >= MAX_BATCH_EVENTS or size + n > MAX_BATCH_BYTES or ts - cur[0][0] > MAX_SPAN_MS):
            out.append(cur)
            cur, size = [], 0
        cur.append((ts, msg))
        size += n
    if cur:
        out.append(cur)
    return out


def _error_code(e: Exception) -> str:
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        return str((resp.get("Error") or {}).get("Code") or "")
    return ""


def _is_connection(e: Exception) -> bool:
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:
        return isinstance(e, OSError)
    if isinstance(e, (BotoConnectionError, HTTPClientError, OSError)):
        return True
    status = ((getattr(e, "response", None) or {}).get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
    return int(status) >= 500


class CloudWatchHandler(logging.Handler):
    """Log records (as JSON lines) into a shipper's stream; never blocks."""

    def __init__(self, shipper: CloudWatchShipper, stream: str) -> None:
        super().__init__()
        self.shipper = shipper
        self.stream = stream
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_QUIET_LOGGERS):
            return  # the shipper's own HTTP traffic would feed itself
        try:
            self.shipper.submit(self.stream, self.format(record), record.created)
        except Exception:
            self.handleError(record)


def stream_prefix(configured: str, node_json: Optional[str] = None) -> str:
    if configured:
        return configured
    try:
        with open(node_json or os.environ.get("MMBATCH_NODE_INFO", "/run/mmbatch/node.json"),
                  encoding="utf-8") as f:
            iid = json.load(f).get("instance_id")
        if isinstance(iid, str) and iid:
            return iid
    except (OSError, ValueError, AttributeError):
        pass
    return socket.gethostname()


def logs_client(region: str = "", endpoint_url: str = "") -> Any:
    """A boto3 CloudWatch Logs client whose own retries are off (the shipper retries)."""
    import boto3
    from botocore.config import Config as BotoConfig

    kwargs: Dict[str, Any] = {"config": BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=5,
                                                   read_timeout=15)}
    if region:
        kwargs["region_name"] = region
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return boto3.client("logs", **kwargs)


def setup_daemon_logging(cfg: Any, level: str) -> None:
    """stderr (human) and <log dir>/mmbatchd.jsonl (JSON lines) for the daemon's process."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    stderr = logging.StreamHandler()
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(stderr)
    try:
        os.makedirs(cfg.log.dir, mode=0o750, exist_ok=True)
        old = os.umask(0o027)
        try:
            fh = logging.handlers.WatchedFileHandler(os.path.join(cfg.log.dir, "mmbatchd.jsonl"),
                                                     encoding="utf-8")
        finally:
            os.umask(old)
        fh.setFormatter(JsonFormatter())
        root.addHandler(fh)
    except OSError as e:
        root.warning("no JSON log file in %s: %s", cfg.log.dir, e)
    for name in _QUIET_LOGGERS[:-1]:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def start_cloudwatch(cfg: Any, on_drop: Optional[Callable[[int], None]] = None
                     ) -> Optional[Tuple[CloudWatchShipper, str]]:
    """When [cloudwatch] enabled: a running shipper whose handler takes the
    daemon's log; returns (shipper, stream prefix) for the events stream."""
    cw = cfg.cloudwatch
    if not cw.enabled:
        return None
    region = cw.region
    if not region:
        try:
            with open(os.environ.get("MMBATCH_NODE_INFO", "/run/mmbatch/node.json"), encoding="utf-8") as f:
                az = json.load(f).get("availability_zone") or ""
            region = az[:-1] if az else ""
        except (OSError, ValueError, AttributeError):
            region = ""
    client = logs_client(region, cw.endpoint_url)
    shipper = CloudWatchShipper(client, cw.log_group, cw.queue_size, cw.batch_seconds, on_drop).start()
    prefix = stream_prefix(cw.stream_prefix)
    logging.getLogger().addHandler(CloudWatchHandler(shipper, f"{prefix}/mmbatchd"))
    log.info("shipping logs to CloudWatch Logs group %s, streams %s/*", cw.log_group, prefix)
    return shipper, prefix
