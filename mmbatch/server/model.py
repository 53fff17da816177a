"""What the dashboard says about jobs, from the records nodes write: pure logic.

- A job's state comes from its newest attempt (attempts.py writes them):
  `running` (no end yet), `interrupted` (stopped from outside: a retry will
  restore it), `succeeded`, `failed` (a non-zero exit or an OOM kill) or
  `exited` (ended on its own, exit code not known yet).
- Checkpoints, restores and Spot protections are counted from the job's
  events, which outlive its checkpoints (those are deleted when the job
  succeeds): a `checkpoint` event is a committed checkpoint, one with reason
  `spot-final` is a Spot protection (the final checkpoint taken at an
  interruption notice), a `restore` event a restore.
- The largest rootfs usage is the largest rootfs diff (the container's
  writable layer) seen at a checkpoint.
- Cost: each attempt's CPU time (from its cgroup) at the configured price
  per vCPU-hour for its instance type and life cycle; the saving is what
  the Spot attempts would have cost on demand, less what they cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

STATE_RUNNING = "running"
STATE_INTERRUPTED = "interrupted"
STATE_SUCCEEDED = "succeeded"
STATE_FAILED = "failed"
STATE_EXITED = "exited"
STATES = (STATE_RUNNING, STATE_INTERRUPTED, STATE_SUCCEEDED, STATE_FAILED, STATE_EXITED)

SPOT_FINAL_REASON = "spot-final"


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def attempt_state(attempt: Mapping[str, Any]) -> str:
    end = attempt.get("end")
    if not end:
        return STATE_RUNNING
    if end == "killed":
        return STATE_INTERRUPTED
    if end == "succeeded":
        return STATE_SUCCEEDED
    if end == "oom":
        return STATE_FAILED
    code = attempt.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool):
        return STATE_SUCCEEDED if code == 0 else STATE_FAILED
    return STATE_EXITED


def newest_attempt(attempts: Iterable[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    best = None
    for a in attempts:
        if best is None or (_num(a.get("started_at")) or 0) >= (_num(best.get("started_at")) or 0):
            best = a
    return best


@dataclass
class JobSummary:
    job_key: str
    job_queue: str = ""
    state: str = STATE_RUNNING
    attempts: int = 0
    checkpoints: int = 0
    stored_checkpoints: int = 0
    restores: int = 0
    spot_protections: int = 0
    fallbacks: int = 0
    max_rootfs_bytes: int = 0
    cpu_seconds: float = 0.0
    first_seen: float = 0.0
    last_seen: float = 0.0
    exit_code: Optional[int] = None


def summarize_job(job_key: str, attempts: List[Mapping[str, Any]], events: List[Mapping[str, Any]],
                  manifests: List[Mapping[str, Any]]) -> JobSummary:
    """One job's row. `manifests` are the stored checkpoints ({"rootfs_bytes": ...})."""
    s = JobSummary(job_key=job_key, attempts=len(attempts), stored_checkpoints=len(manifests))
    newest = newest_attempt(attempts)
    if newest is not None:
        s.state = attempt_state(newest)
        code = newest.get("exit_code")
        s.exit_code = code if isinstance(code, int) and not isinstance(code, bool) else None
    elif events:
        s.state = STATE_EXITED if any(e.get("kind") == "job-exit" for e in events) else STATE_RUNNING
    for a in sorted(attempts, key=lambda a: _num(a.get("started_at")) or 0):
        if a.get("job_queue"):
            s.job_queue = str(a["job_queue"])
        s.cpu_seconds += _num(a.get("cpu_seconds")) or 0.0
    rootfs = [int(_num(m.get("rootfs_bytes")) or 0) for m in manifests]
    for e in events:
        kind = e.get("kind")
        if kind == "checkpoint":
            s.checkpoints += 1
            if e.get("reason") == SPOT_FINAL_REASON:
                s.spot_protections += 1
            rootfs.append(int(_num(e.get("rootfs_bytes")) or 0))
        elif kind == "restore":
            s.restores += 1
        elif kind == "restore-fallback":
            s.fallbacks += 1
    s.max_rootfs_bytes = max(rootfs, default=0)
    times = [t for a in attempts for t in (_num(a.get("started_at")), _num(a.get("ended_at"))) if t]
    times += [t for e in events if (t := _num(e.get("time")))]
    if times:
        s.first_seen, s.last_seen = min(times), max(times)
    return s


def success_rate(succeeded: int, failed: int) -> Optional[float]:
    """Succeeded jobs over finished jobs (None when none finished)."""
    finished = succeeded + failed
    return succeeded / finished if finished else None


# -- cost --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prices:
    """Prices per vCPU-hour: defaults and per instance type (on demand, Spot)."""

    on_demand: float = 0.0
    spot: float = 0.0
    by_type: Mapping[str, Tuple[float, float]] = field(default_factory=dict)

    def for_type(self, instance_type: str) -> Tuple[float, float]:
        return self.by_type.get(instance_type, (self.on_demand, self.spot))

    @classmethod
    def from_config(cls, server_cfg: Any) -> Prices:
        from mmbatch.config import parse_instance_price

        table = {}
        for line in server_cfg.instance_prices:
            name, od, spot = parse_instance_price(line)
            table[name] = (od, spot)
        return cls(on_demand=server_cfg.on_demand_vcpu_hour, spot=server_cfg.spot_vcpu_hour, by_type=table)


@dataclass
class Cost:
    cpu_hours: float = 0.0
    spot_cpu_hours: float = 0.0
    on_demand_cpu_hours: float = 0.0  # on-demand or unknown life cycle (priced on demand)
    cost: float = 0.0  # what the CPU time cost
    on_demand_cost: float = 0.0  # what it would have cost all on demand
    by_queue: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @property
    def saved(self) -> float:
        return self.on_demand_cost - self.cost


def cost_of(attempts: Iterable[Mapping[str, Any]], prices: Prices) -> Cost:
    """`attempts`: rows with cpu_seconds, instance_type, lifecycle, job_queue."""
    out = Cost()
    for a in attempts:
        hours = (_num(a.get("cpu_seconds")) or 0.0) / 3600.0
        od, spot = prices.for_type(str(a.get("instance_type") or ""))
        is_spot = a.get("lifecycle") == "spot"
        paid = hours * (spot if is_spot else od)
        out.cpu_hours += hours
        if is_spot:
            out.spot_cpu_hours += hours
        else:
            out.on_demand_cpu_hours += hours
        out.cost += paid
        out.on_demand_cost += hours * od
        q = out.by_queue.setdefault(str(a.get("job_queue") or ""),
                                    {"cpu_hours": 0.0, "cost": 0.0, "on_demand_cost": 0.0})
        q["cpu_hours"] += hours
        q["cost"] += paid
        q["on_demand_cost"] += hours * od
    return out
