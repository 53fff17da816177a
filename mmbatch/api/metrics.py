"""mmbatchd's metrics, rendered in Prometheus text format (version 0.0.4).

Fed by the daemon from its own results (checkpoints, failures, freeze times,
bytes, interruptions) and, for restores, from the events the runtime writes
to the node's event log (`EventLogFollower`: the runtime is another process,
the event log is where it reports). Counters start at zero with the daemon,
as Prometheus expects of a process's counters.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

FREEZE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RESTORE_KINDS = {"restore": "restored", "cold-start": "cold", "restore-fallback": "fallback"}

log = logging.getLogger("mmbatchd.api")

Labels = Tuple[Tuple[str, str], ...]


def _labels(values: Dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in values.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: Sequence[Tuple[str, str]] = ()) -> str:
    items = list(labels) + list(extra)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help, self.type = name, help_text, "counter"
        self._values: Dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = _labels(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(_labels(labels), 0.0)

    def total(self) -> float:
        with self._lock:
            return sum(self._values.values())

    def samples(self) -> List[Tuple[str, Labels, float]]:
        with self._lock:
            return [(self.name, k, v) for k, v in sorted(self._values.items())]


class Gauge:
    def __init__(self, name: str, help_text: str, read: Callable[[], Iterable[Tuple[Dict[str, str], float]]]) -> None:
        self.name, self.help, self.type = name, help_text, "gauge"
        self._read = read

    def samples(self) -> List[Tuple[str, Labels, float]]:
        return [(self.name, _labels(lbl), float(v)) for lbl, v in self._read()]


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float] = FREEZE_BUCKETS) -> None:
        self.name, self.help, self.type = name, help_text, "histogram"
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1
            self._sum += value
            self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def samples(self) -> List[Tuple[str, Labels, float]]:
        with self._lock:
            out = [(f"{self.name}_bucket", (("le", _fmt_value(b)),), float(c)) for b, c in zip(self.buckets,
                                                                                            self._counts)]
            out.append((f"{self.name}_bucket", (("le", "+Inf"),), float(self._count)))
            out.append((f"{self.name}_sum", (), self._sum))
            out.append((f"{self.name}_count", (), float(self._count)))
        return out


class Metrics:
    """Every metric mmbatchd exports. Thread-safe."""

    def __init__(self) -> None:
        self.checkpoints = Counter("mmbatch_checkpoints_total", "Committed checkpoints, by reason")
        self.checkpoint_failures = Counter("mmbatch_checkpoint_failures_total",
                                           "Checkpoints that failed, by reason")
        self.restores = Counter("mmbatch_restores_total",
                                "Restore decisions of the runtime: restored, cold (no usable checkpoint), fallback "
                                "(a checkpoint skipped)")
        self.freeze = Histogram("mmbatch_freeze_seconds", "How long a job was frozen for one checkpoint")
        self.bytes_total = Counter("mmbatch_checkpoint_bytes_total", "Bytes of committed checkpoints")
        self.bytes_uploaded = Counter("mmbatch_uploaded_bytes_total",
                                      "Bytes uploaded to the store (new chunks only)")
        self.interruptions = Counter("mmbatch_interruptions_total", "Spot interruption notices acted on")
        self.rebalances = Counter("mmbatch_rebalance_recommendations_total", "Rebalance recommendations")
        self.log_drops = Counter("mmbatch_log_events_dropped_total",
                                 "Log events dropped by the CloudWatch shipper's full queue")
        self._gauges: List[Gauge] = []

    def dedup_ratio(self) -> float:
        """The share of checkpoint bytes that did not need uploading (0 before any checkpoint)."""
        total = self.bytes_total.total()
        if total <= 0:
            return 0.0
        return max(0.0, 1.0 - self.bytes_uploaded.total() / total)

    def add_gauge(self, name: str, help_text: str,
                  read: Callable[[], Iterable[Tuple[Dict[str, str], float]]]) -> None:
        self._gauges.append(Gauge(name, help_text, read))

    def checkpoint_committed(self, reason: str, freeze_seconds: float, bytes_total: int, bytes_uploaded: int) -> None:
        self.checkpoints.inc(reason=reason)
        self.freeze.observe(max(0.0, float(freeze_seconds)))
        self.bytes_total.inc(max(0, int(bytes_total)))
        self.bytes_uploaded.inc(max(0, int(bytes_uploaded)))

    def checkpoint_failed(self, reason: str) -> None:
        self.checkpoint_failures.inc(reason=reason)

    def observe_event(self, event: Dict[str, object]) -> None:
        """An event of the node's event log (written by any mmbatch process)."""
        outcome = RESTORE_KINDS.get(str(event.get("kind", "")))
        if outcome:
            self.restores.inc(outcome=outcome)

    def render(self) -> str:
        families: List = [self.checkpoints, self.checkpoint_failures, self.restores, self.freeze, self.bytes_total,
                          self.bytes_uploaded, self.interruptions, self.rebalances, self.log_drops]
        families.append(Gauge("mmbatch_dedup_ratio", "Share of checkpoint bytes not uploaded again (0..1)",
                              lambda: [({}, self.dedup_ratio())]))
        families.extend(self._gauges)
        lines: List[str] = []
        for fam in families:
            lines.append(f"# HELP {fam.name} {fam.help}")
            lines.append(f"# TYPE {fam.name} {fam.type}")
            for name, labels, value in fam.samples():
                lines.append(f"{name}{_fmt_labels(labels)} {_fmt_value(value)}")
        return "\n".join(lines) + "\n"


def parse_text(text: str) -> Dict[str, Dict[Labels, float]]:
    """Samples of a Prometheus text exposition: {name: {labels: value}}.
    Strict about the line format (what a scraper would reject raises ValueError)."""
    out: Dict[str, Dict[Labels, float]] = {}
    typed: Dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                if parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped"):
                    raise ValueError(f"line {lineno}: bad type {parts[3]!r}")
                typed[parts[2]] = parts[3]
            continue
        name_part, _, value_part = line.rpartition(" ")
        if not name_part:
            raise ValueError(f"line {lineno}: no value")
        labels: Labels = ()
        name = name_part
        if "{" in name_part:
            if not name_part.endswith("}"):
                raise ValueError(f"line {lineno}: unterminated labels")
            name, body = name_part[:-1].split("{", 1)
            labels = _parse_labels(body, lineno)
        if not name or not (name[0].isalpha() or name[0] in "_:") or \
                not all(ch.isalnum() or ch in "_:" for ch in name):
            raise ValueError(f"line {lineno}: bad metric name {name!r}")
        base = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in typed:
                base = name[: -len(suffix)]
        if base not in typed:
            raise ValueError(f"line {lineno}: {name} has no TYPE line before it")
        out.setdefault(name, {})[labels] = float(value_part)
    return out


def _parse_labels(body: str, lineno: int) -> Labels:
    items = []
    i = 0
    while i < len(body):
        eq = body.index("=", i)
        key = body[i:eq]
        if body[eq + 1] != '"':
            raise ValueError(f"line {lineno}: label value must be quoted")
        j = eq + 2
        val = []
        while body[j] != '"':
            if body[j] == "\\":
                j += 1
                val.append({"n": "\n"}.get(body[j], body[j]))
            else:
                val.append(body[j])
            j += 1
        items.append((key, "".join(val)))
        i = j + 1
        if i < len(body):
            if body[i] != ",":
                raise ValueError(f"line {lineno}: labels must be separated by commas")
            i += 1
    return tuple(sorted(items))


class EventLogFollower:
    """Follows the node's events.log from its current end (events written
    before the daemon started are not counted again) and hands each new event
    to `on_event`. Survives the file being rotated or created later."""

    def __init__(self, path: str, on_event: Callable[[Dict[str, object]], None], from_start: bool = False) -> None:
        self.path = path
        self.on_event = on_event
        self._inode: Optional[int] = None
        self._offset = 0
        self._partial = b""
        if not from_start:
            try:
                st = os.stat(path)
                self._inode, self._offset = st.st_ino, st.st_size
            except OSError:
                pass

    def poll(self) -> int:
        """Read what was appended since the last call; returns the events handled."""
        try:
            st = os.stat(self.path)
        except OSError:
            return 0
        if st.st_ino != self._inode or st.st_size < self._offset:
            self._inode, self._offset, self._partial = st.st_ino, 0, b""  # rotated or truncated
        if st.st_size == self._offset:
            return 0
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(st.st_size - self._offset)
        except OSError:
            return 0
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        n = 0
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                n += 1
                try:
                    self.on_event(ev)
                except Exception:  # one odd event must not cost the rest of the chunk (the offset moved on)
                    log.debug("event not handled: %r", ev, exc_info=True)
        return n

    def run(self, stop: threading.Event, every: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.poll()
            except Exception:  # a follower never takes the daemon down
                pass
            stop.wait(every)
