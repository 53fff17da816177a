"""The numbers the pages show, read from the cache: totals, queues, jobs, nodes, cost.

Each function returns plain dicts and lists, so the HTML pages, the CSV
exports and the JSON endpoints show the same numbers.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional

from mmbatch.server.cache import JOB_COLUMNS, Cache
from mmbatch.server.model import STATES, Prices, cost_of, success_rate

MAX_JOBS = 1000


def totals(cache: Cache) -> Dict[str, Any]:
    row = cache.query(
        "SELECT COUNT(*) AS jobs, COALESCE(SUM(attempts), 0) AS attempts, COALESCE(SUM(checkpoints), 0) AS checkpoints,"
        " COALESCE(SUM(restores), 0) AS restores, COALESCE(SUM(spot_protections), 0) AS spot_protections,"
        " COALESCE(SUM(fallbacks), 0) AS fallbacks,"
        " COALESCE(SUM(state = 'succeeded'), 0) AS succeeded, COALESCE(SUM(state = 'failed'), 0) AS failed,"
        " COALESCE(SUM(state = 'running'), 0) AS running, COALESCE(SUM(state = 'interrupted'), 0) AS interrupted"
        " FROM jobs")[0]
    out = dict(row)
    out["success_rate"] = success_rate(out["succeeded"], out["failed"])
    return out


def queues(cache: Cache) -> List[Dict[str, Any]]:
    rows = cache.query(
        "SELECT COALESCE(job_queue, '') AS job_queue, COUNT(*) AS jobs, SUM(state = 'succeeded') AS succeeded,"
        " SUM(state = 'failed') AS failed, SUM(state IN ('running', 'interrupted')) AS active,"
        " SUM(restores) AS restores, SUM(spot_protections) AS spot_protections, SUM(checkpoints) AS checkpoints"
        " FROM jobs GROUP BY COALESCE(job_queue, '') ORDER BY job_queue")
    out = []
    for r in rows:
        d = dict(r)
        d["success_rate"] = success_rate(d["succeeded"], d["failed"])
        out.append(d)
    return out


def jobs(cache: Cache, queue: Optional[str] = None, state: Optional[str] = None,
         limit: int = MAX_JOBS) -> List[Dict[str, Any]]:
    where, args = [], []
    if queue is not None:
        where.append("COALESCE(job_queue, '') = ?")
        args.append(queue)
    if state in STATES:
        where.append("state = ?")
        args.append(state)
    sql = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY last_seen DESC, job_key LIMIT ?"
    args.append(max(1, min(limit, MAX_JOBS)))
    return [dict(r) for r in cache.query(sql, args)]


def job(cache: Cache, job_key: str) -> Optional[Dict[str, Any]]:
    rows = cache.query(f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE job_key = ?", (job_key,))
    if not rows:
        return None
    out = dict(rows[0])
    out["attempt_list"] = [dict(r) for r in cache.query(
        "SELECT * FROM attempts WHERE job_key = ? ORDER BY started_at", (job_key,))]
    out["checkpoint_list"] = [dict(r) for r in cache.query(
        "SELECT * FROM checkpoints WHERE job_key = ? ORDER BY created_at", (job_key,))]
    out["event_list"] = [json.loads(r["body"]) for r in cache.query(
        "SELECT body FROM events WHERE job_key = ? ORDER BY time, name", (job_key,))]
    for d in (out["attempt_list"], out["checkpoint_list"]):
        for r in d:
            r.pop("object_key", None)
    return out


NODE_COLUMNS = ("hostname", "instance_id", "instance_type", "availability_zone", "lifecycle", "jobs", "attempts",
                "checkpoints", "restores", "spot_protections", "cpu_hours", "first_seen", "last_seen")


def nodes(cache: Cache) -> List[Dict[str, Any]]:
    """One row per node (host name and instance), from the attempts it ran and the events it wrote."""
    rows = cache.query(
        "SELECT COALESCE(hostname, '') AS hostname, COALESCE(instance_id, '') AS instance_id,"
        " MAX(COALESCE(instance_type, '')) AS instance_type, MAX(COALESCE(availability_zone, '')) AS availability_zone,"
        " MAX(COALESCE(lifecycle, '')) AS lifecycle, COUNT(DISTINCT job_key) AS jobs, COUNT(*) AS attempts,"
        " COALESCE(SUM(cpu_seconds), 0) / 3600.0 AS cpu_hours, MIN(started_at) AS first_seen,"
        " MAX(COALESCE(ended_at, started_at)) AS last_seen"
        " FROM attempts GROUP BY COALESCE(hostname, ''), COALESCE(instance_id, '') ORDER BY hostname, instance_id")
    counts: Dict[str, Dict[str, int]] = {}
    for r in cache.query(
            "SELECT COALESCE(node, '') AS node, SUM(kind = 'checkpoint') AS checkpoints,"
            " SUM(kind = 'restore') AS restores,"
            " SUM(kind = 'checkpoint' AND reason = 'spot-final') AS spot_protections"
            " FROM events GROUP BY COALESCE(node, '')"):
        counts[r["node"]] = dict(r)
    out = []
    seen_hosts = set()
    for r in rows:
        d = dict(r)
        host = d["hostname"]
        c = counts.get(host, {}) if host not in seen_hosts else {}
        seen_hosts.add(host)  # events name the host only: count them once per host
        for k in ("checkpoints", "restores", "spot_protections"):
            d[k] = int(c.get(k) or 0)
        out.append({k: d.get(k) for k in NODE_COLUMNS})
    return out


def cost(cache: Cache, prices: Prices) -> Dict[str, Any]:
    attempts = [dict(r) for r in cache.query(
        "SELECT cpu_seconds, instance_type, lifecycle, job_queue FROM attempts")]
    c = cost_of(attempts, prices)
    return {
        "cpu_hours": c.cpu_hours, "spot_cpu_hours": c.spot_cpu_hours, "on_demand_cpu_hours": c.on_demand_cpu_hours,
        "cost": c.cost, "on_demand_cost": c.on_demand_cost, "saved": c.saved,
        "by_queue": [{"job_queue": q, **v, "saved": v["on_demand_cost"] - v["cost"]}
                     for q, v in sorted(c.by_queue.items())],
        "prices": {"on_demand_vcpu_hour": prices.on_demand, "spot_vcpu_hour": prices.spot,
                   "by_type": {k: {"on_demand": v[0], "spot": v[1]} for k, v in sorted(prices.by_type.items())}},
    }


def activity(cache: Cache, days: int = 14, now: Optional[float] = None) -> List[Dict[str, Any]]:
    """Checkpoints, restores and Spot protections per UTC day, the last `days` days (oldest first)."""
    now = time.time() if now is None else now
    today = int(now // 86400)
    rows = cache.query(
        "SELECT CAST(time / 86400 AS INTEGER) AS day, SUM(kind = 'checkpoint') AS checkpoints,"
        " SUM(kind = 'restore') AS restores, SUM(kind = 'checkpoint' AND reason = 'spot-final') AS spot_protections"
        " FROM events WHERE time >= ? GROUP BY day", ((today - days + 1) * 86400,))
    by_day = {r["day"]: dict(r) for r in rows}
    out = []
    for day in range(today - days + 1, today + 1):
        r = by_day.get(day, {})
        out.append({"date": time.strftime("%Y-%m-%d", time.gmtime(day * 86400)),
                    "checkpoints": int(r.get("checkpoints") or 0), "restores": int(r.get("restores") or 0),
                    "spot_protections": int(r.get("spot_protections") or 0)})
    return out
