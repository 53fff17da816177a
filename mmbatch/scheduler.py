"""When each managed container on the node gets its next checkpoint.

Pure logic, driven by the caller's clock (mmbatchd passes time.time(); tests
a fake one). No threads, no I/O: the daemon asks `due(now)` what to start,
reports `completed`/`failed`, and sleeps until `next_wakeup(now)`.

- Interval: each job's own (from its state: node config or the job's env),
  counted from its *base*, the time of its last committed checkpoint, or the
  time it started (or was restored) when that is later. A daemon that
  restarts recomputes the same base from the store, so the schedule goes on
  where it was: no duplicate and no lost checkpoint.
- Jitter: every interval varies by up to +-jitter of itself, so jobs started
  together do not freeze together forever. The spread is a pure function of
  (job, base): a restarted daemon arrives at exactly the same due time.
- Concurrency: at most `parallel` checkpoints in flight; the longest overdue
  goes first. 50 containers never all freeze at once.
- Bandwidth: an optional average cap. Each checkpoint's uploaded bytes are
  charged against it; the next start waits until the cap has "paid" for them.
  It shapes starts, not the bytes inside one upload.
- Failures: retried with exponential backoff (retry_seconds, doubling, capped
  at the interval or retry_max); a busy container (another checkpoint of it
  in progress) is retried shortly without counting as a failure.
- Hold: during a Spot interruption nothing periodic starts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, List, Optional

BUSY_RETRY_SECONDS = 5.0


@dataclass
class ScheduledJob:
    key: str
    interval: float
    base: float
    next_due: float
    reason: str = "periodic"
    failures: int = 0
    running: bool = False
    started_at: Optional[float] = None
    last_error: str = ""


def schedule_base(last_checkpoint_at: Optional[float], started_at: Optional[float]) -> float:
    """What a job's interval counts from: its last committed checkpoint, or
    when this container started or was restored, whichever is later (a
    restored job's latest checkpoint is older than the restore)."""
    times = [t for t in (last_checkpoint_at, started_at) if t is not None]
    if not times:
        raise ValueError("a job needs a start time or a checkpoint time")
    return max(times)


def spread(key: str, base: float, jitter: float) -> float:
    """A factor in [1 - jitter, 1 + jitter], fixed for (job, base)."""
    if jitter <= 0:
        return 1.0
    u = random.Random(f"{key}|{base:.3f}").uniform(-1.0, 1.0)
    return 1.0 + jitter * u


class Scheduler:
    def __init__(
        self,
        parallel: int = 2,
        jitter: float = 0.1,
        bandwidth_bytes_per_second: float = 0.0,
        retry_seconds: float = 30.0,
        retry_max: float = 600.0,
        busy_retry: float = BUSY_RETRY_SECONDS,
    ) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.parallel = parallel
        self.jitter = jitter
        self.bandwidth = float(bandwidth_bytes_per_second)
        self.retry_seconds = retry_seconds
        self.retry_max = retry_max
        self.busy_retry = busy_retry
        self.held = False
        self._jobs: Dict[str, ScheduledJob] = {}
        self._bw_ready_at = 0.0

    # -- membership --------------------------------------------------------------

    def add(self, key: str, interval: float, base: float) -> ScheduledJob:
        """Schedule a job; a job already scheduled is kept as it is."""
        job = self._jobs.get(key)
        if job is None:
            job = ScheduledJob(key=key, interval=float(interval), base=float(base),
                               next_due=self.due_after(key, interval, base))
            self._jobs[key] = job
        return job

    def remove(self, key: str) -> Optional[ScheduledJob]:
        return self._jobs.pop(key, None)

    def get(self, key: str) -> Optional[ScheduledJob]:
        return self._jobs.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def keys(self) -> List[str]:
        return list(self._jobs)

    def running(self) -> List[str]:
        return [j.key for j in self._jobs.values() if j.running]

    # -- timing ------------------------------------------------------------------

    def due_after(self, key: str, interval: float, base: float) -> float:
        return base + interval * spread(key, base, self.jitter)

    def backoff(self, failures: int, interval: float) -> float:
        """Delay before retry number `failures` (1 = first retry)."""
        cap = max(self.retry_seconds, min(self.retry_max, interval))
        return min(self.retry_seconds * (2 ** max(0, failures - 1)), cap)

    def rebase(self, key: str, base: float) -> Optional[float]:
        """The job was checkpointed by someone else at `base`: count from there."""
        job = self._jobs.get(key)
        if job is None:
            return None
        job.base = base
        job.next_due = self.due_after(key, job.interval, base)
        job.reason = "periodic"
        job.failures = 0
        return job.next_due

    def request_now(self, key: str, now: float, reason: str) -> bool:
        """An early checkpoint (a rebalance recommendation). False when the job
        is unknown or already being checkpointed."""
        job = self._jobs.get(key)
        if job is None or job.running:
            return False
        job.next_due = min(job.next_due, now)
        job.reason = reason
        return True

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False

    # -- the loop ----------------------------------------------------------------

    def _slots(self) -> int:
        return self.parallel - sum(1 for j in self._jobs.values() if j.running)

    def due(self, now: float) -> List[ScheduledJob]:
        """Jobs to checkpoint now, marked running; never more than the free slots."""
        if self.held:
            return []
        if self.bandwidth > 0 and now < self._bw_ready_at:
            return []
        slots = self._slots()
        if slots <= 0:
            return []
        ready = sorted((j for j in self._jobs.values() if not j.running and j.next_due <= now),
                       key=lambda j: (j.next_due, j.key))
        out = ready[:slots]
        for j in out:
            j.running = True
            j.started_at = now
        return out

    def completed(self, key: str, now: float, checkpoint_time: Optional[float] = None,
                  bytes_uploaded: int = 0) -> Optional[float]:
        """A checkpoint was committed (taken at checkpoint_time); the next due time."""
        job = self._jobs.get(key)
        started = now
        if job is not None:
            started = job.started_at if job.started_at is not None else now
        if self.bandwidth > 0 and bytes_uploaded > 0:
            self._bw_ready_at = max(self._bw_ready_at, started) + bytes_uploaded / self.bandwidth
        if job is None:
            return None
        job.running = False
        job.started_at = None
        job.failures = 0
        job.last_error = ""
        job.reason = "periodic"
        job.base = checkpoint_time if checkpoint_time is not None else now
        job.next_due = self.due_after(key, job.interval, job.base)
        return job.next_due

    def failed(self, key: str, now: float, error: str = "", busy: bool = False) -> Optional[float]:
        """A checkpoint failed (or the container was busy); when to try again."""
        job = self._jobs.get(key)
        if job is None:
            return None
        job.running = False
        job.started_at = None
        job.last_error = error
        if busy:
            job.next_due = now + self.busy_retry
        else:
            job.failures += 1
            job.next_due = now + self.backoff(job.failures, job.interval)
        return job.next_due

    def next_wakeup(self, now: float) -> Optional[float]:
        """When `due` may next return something; None: only after a report."""
        if self.held or self._slots() <= 0:
            return None
        waiting = [j.next_due for j in self._jobs.values() if not j.running]
        if not waiting:
            return None
        t = min(waiting)
        if self.bandwidth > 0:
            t = max(t, self._bw_ready_at)
        return t
