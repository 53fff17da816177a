"""The `mmbatch` command: operators' tools.

Tables for people, `--json` for scripts; progress bars of long transfers on
stderr, only on a terminal. `status` and `jobs` ask mmbatchd (its unix
socket, or TCP with the token); without it they show what the node's state
directory says and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from mmbatch import config as config_mod
from mmbatch import events
from mmbatch.aws.cli import register as register_aws
from mmbatch.errors import MmbatchError
from mmbatch.server.cli import register as register_server


def _print_table(rows: List[Dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def _human_bytes(n: float) -> str:
    from mmbatch.progress import human_bytes

    return human_bytes(n)


def human_duration(seconds: Optional[float]) -> str:
    """`90` -> `1m30s`; negative -> `overdue 5s`; None -> `-`."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "overdue " + human_duration(-seconds)
    s = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    if s or not parts:
        parts.append(f"{s}s")
    return "".join(parts[:2])


def _when(t: Optional[float], now: float) -> str:
    if t is None:
        return "-"
    d = t - now
    return f"in {human_duration(d)}" if d >= 0 else f"{human_duration(-d)} ago"


def job_state(job: Dict[str, Any]) -> str:
    """One word for a job row: stopped, checkpointing, frozen, final <status> or running."""
    if job.get("stopped_at") is not None:
        return "stopped"
    if job.get("checkpointing"):
        return "checkpointing"
    if job.get("final_status"):
        return f"final {job['final_status']}"
    if job.get("frozen"):
        return "frozen"
    return "running"


def job_rows(jobs: List[Dict[str, Any]], now: float) -> List[Dict[str, Any]]:
    rows = []
    for j in jobs:
        rows.append({
            "container": j["container_id"][:12],
            "job": j.get("job_key", ""),
            "attempt": j.get("attempt", ""),
            "state": job_state(j),
            "start": j.get("decision", ""),
            "last checkpoint": _when(j.get("last_checkpoint_at"), now),
            "next": _when(j.get("next_checkpoint_at"), now),
            "interval": human_duration(j.get("interval")),
            "failures": j.get("failures", 0) or "",
        })
    return rows


def local_jobs(cfg: config_mod.Config) -> List[Dict[str, Any]]:
    """Managed containers from the state directory (what the runtime wrote), for when mmbatchd is down."""
    out = []
    try:
        names = sorted(os.listdir(cfg.runtime.state_dir))
    except OSError:
        return out
    for cid in names:
        path = os.path.join(cfg.runtime.state_dir, cid, "state.json")
        try:
            with open(path, encoding="utf-8") as f:
                st = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(st, dict) or not st.get("managed") or not isinstance(st.get("job"), dict):
            continue
        job = st["job"]
        out.append({
            "container_id": cid, "job_key": str(job.get("job_key") or ""), "attempt": str(job.get("attempt") or ""),
            "decision": str(st.get("decision") or ""), "interval": float(job.get("interval") or 0),
            "started_at": float(st.get("restored_at") or st.get("created_at") or 0),
            "frozen": bool(st.get("frozen_by")), "stopped_at": None, "checkpointing": False,
            "last_checkpoint_at": None, "next_checkpoint_at": None, "failures": 0, "final_status": None,
            "job": job,
        })
    return out


def _client(cfg: config_mod.Config):
    from mmbatch.api.client import NodeClient

    return NodeClient.from_config(cfg)


def resolve_container(ref: str, cfg: config_mod.Config) -> str:
    """A full container id from an id, an id prefix or a container name."""
    state_dir = cfg.runtime.state_dir
    if os.path.isfile(os.path.join(state_dir, ref, "state.json")):
        return ref
    try:
        ids = [d for d in os.listdir(state_dir) if os.path.isfile(os.path.join(state_dir, d, "state.json"))]
    except OSError:
        ids = []
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    try:
        from mmbatch.engine import DockerEngine

        info = DockerEngine(cfg.runtime.docker_socket).inspect(ref)
    except MmbatchError:
        info = None
    if info and info.get("Id"):
        return str(info["Id"])
    raise MmbatchError(f"no managed container {ref!r} on this node",
                       hint="give a container id or name; `docker ps` lists them")


def cmd_checkpoint(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from mmbatch.checkpointer import checkpoint_container
    from mmbatch.progress import ProgressBar

    cid = resolve_container(args.container, cfg)
    with ProgressBar("upload") as bar:
        result = checkpoint_container(cid, cfg, cfg.runtime.state_dir, reason="manual",
                                      log=(lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr)),
                                      progress=bar)
    data = {
        "checkpoint_id": result.checkpoint_id,
        "job_key": result.job_key,
        "container_id": cid,
        "freeze_seconds": round(result.freeze_seconds, 4),
        "dump_seconds": round(result.dump_seconds, 4),
        "total_seconds": round(result.total_seconds, 4),
        "bytes_total": result.bytes_total,
        "bytes_uploaded": result.bytes_uploaded,
    }
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print(f"checkpoint {result.checkpoint_id} of job {result.job_key}: frozen {result.freeze_seconds:.3f}s, "
              f"{_human_bytes(result.bytes_total)} ({_human_bytes(result.bytes_uploaded)} new), "
              f"{result.total_seconds:.2f}s in all")
    return 0


def _job_repo(job: str, cfg: config_mod.Config):
    from mmbatch.checkpointer import open_repository
    from mmbatch.identity import sanitize_component

    return open_repository(cfg, {"job_key": sanitize_component(job)})


def cmd_checkpoints(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    repo = _job_repo(args.job, cfg)
    rows = []
    for m in repo.list():
        rows.append({
            "checkpoint": m.checkpoint_id,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created_at)),
            "container": m.container_id[:12],
            "attempt": m.attempt,
            "size": m.total_size,
            "uploaded": int(m.stats.get("bytes_uploaded", 0)),
            "freeze_s": m.stats.get("freeze_seconds", ""),
            "node": m.node.get("hostname", ""),
            "reason": m.labels.get("reason", ""),
        })
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        r["size"] = _human_bytes(r["size"])
        r["uploaded"] = _human_bytes(r["uploaded"])
    _print_table(rows, ["checkpoint", "created", "container", "attempt", "size", "uploaded", "freeze_s", "node",
                        "reason"])
    return 0


def cmd_events(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    repo = _job_repo(args.job, cfg)
    evs = sorted(repo.list_records("events"), key=lambda e: e.get("time", 0))
    if args.json:
        print(json.dumps(evs, indent=1))
        return 0
    rows = []
    for e in evs:
        detail = {k: v for k, v in e.items() if k not in ("time", "kind", "job_key", "container_id", "id", "node")}
        rows.append({
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("time", 0))),
            "kind": e.get("kind", ""),
            "container": str(e.get("container_id") or "")[:12],
            "detail": ", ".join(f"{k}={v}" for k, v in sorted(detail.items()))[:120],
        })
    _print_table(rows, ["time", "kind", "container", "detail"])
    return 0


def cmd_status(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from mmbatch.api.client import DaemonUnreachable

    now = time.time()
    try:
        node = _client(cfg).get_json("/api/v1/node")
    except DaemonUnreachable as e:
        jobs = local_jobs(cfg)
        if args.json:
            print(json.dumps({"daemon": {"running": False, "error": str(e)},
                              "local_jobs": len(jobs), "store": cfg.store.url}, indent=1))
        else:
            print(f"mmbatchd:    not reachable ({e.message})")
            print(f"jobs:        {len(jobs)} managed containers in {cfg.runtime.state_dir} (not checkpointed "
                  "while mmbatchd is down)")
            print(f"store:       {cfg.store.url}")
        return 1
    if args.json:
        print(json.dumps({"daemon": {"running": True}, **node}, indent=1, sort_keys=True))
        return 0
    facts = node.get("node") or {}
    conf = node["config"]
    jobs = node["jobs"]
    where = " ".join(facts.get(k, "") for k in ("instance_id", "instance_type", "availability_zone", "lifecycle"))
    print(f"mmbatchd:    running (pid {node['pid']}, up {human_duration(node['uptime_seconds'])}, "
          f"version {node['version']})")
    print(f"node:        {node['hostname']} {where}".rstrip())
    mode = "off (mode none)" if conf["mode"] == "none" else f"every {human_duration(conf['interval'])}"
    print(f"checkpoints: {mode}")
    print(f"jobs:        {jobs['active']} active ({jobs['frozen']} frozen, {jobs['checkpointing']} checkpointing), "
          f"{jobs['stopped']} recently stopped")
    intr = node.get("interruption")
    if intr:
        print(f"interruption: {intr.get('action')} at {intr.get('time_text')} "
              f"({_when(intr.get('time'), now)}); jobs stay frozen until {_when(intr.get('deadline'), now)}")
    else:
        print("interruption: none")
    print(f"store:       {cfg.store.url}")
    return 0


def cmd_jobs(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from mmbatch.api.client import DaemonUnreachable

    now = time.time()
    rc = 0
    try:
        jobs = _client(cfg).get_json("/api/v1/jobs")["jobs"]
        source = "mmbatchd"
    except DaemonUnreachable as e:
        jobs = [{k: v for k, v in j.items() if k != "job"} for j in local_jobs(cfg)]
        source = "state directory"
        print(f"mmbatch: {e.message}; showing {cfg.runtime.state_dir}", file=sys.stderr)
        rc = 1
    if not args.all:
        jobs = [j for j in jobs if j.get("stopped_at") is None]
    if args.json:
        print(json.dumps({"source": source, "jobs": jobs}, indent=1, sort_keys=True))
        return rc
    _print_table(job_rows(jobs, now), ["container", "job", "attempt", "state", "start", "last checkpoint", "next",
                                       "interval", "failures"])
    return rc


def gc_targets(cfg: config_mod.Config, jobs: Sequence[str], every: bool) -> List[Dict[str, Any]]:
    """Which jobs' repositories to collect: named ones, every one in the store, or the node's."""
    from mmbatch.identity import sanitize_component

    if jobs:
        return [{"job_key": sanitize_component(j)} for j in jobs]
    if every:
        from mmbatch.store import open_store

        keys = set()
        for key in open_store(cfg.store.url, cfg.store).list("jobs"):
            parts = key.split("/")
            if len(parts) > 2 and parts[0] == "jobs":
                keys.add(parts[1])
        return [{"job_key": k} for k in sorted(keys)]
    seen: Dict[str, Dict[str, Any]] = {}
    for j in local_jobs(cfg):
        job = j["job"]
        if job.get("job_key"):
            seen.setdefault(str(job["job_key"]), job)
    return [seen[k] for k in sorted(seen)]


def stale_staging(cfg: config_mod.Config, now: float, min_age: float) -> List[str]:
    """Staging dirs (`<container12>-<checkpoint>`) of containers the node no longer has, older than min_age."""
    try:
        live = {n[:12] for n in os.listdir(cfg.runtime.state_dir)}
    except OSError:
        live = set()
    from mmbatch.staging import roots

    out = []
    for root in roots(cfg.checkpoint):
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            path = os.path.join(root, name)
            prefix = name.split("-", 1)[0]
            if len(prefix) != 12 or prefix in live or not os.path.isdir(path):
                continue
            try:
                if now - os.stat(path).st_mtime >= min_age:
                    out.append(path)
            except OSError:
                continue
    return sorted(out)


def cmd_gc(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    import shutil

    from mmbatch.checkpointer import open_repository
    from mmbatch.durations import parse_duration

    try:
        grace = parse_duration(args.grace) if args.grace is not None else None
    except ValueError as e:
        raise MmbatchError(f"--grace: {e}", hint="e.g. 1h, 30m, 0") from e
    rows = []
    rc = 0
    for job in gc_targets(cfg, args.jobs, args.all):
        row: Dict[str, Any] = {"job": job["job_key"]}
        try:
            r = open_repository(cfg, job).prune(cfg.checkpoint.keep, grace)
            row.update({"pruned": r.manifests_pruned, "objects": r.objects_deleted, "bytes": r.bytes_deleted,
                        "trash": r.trash_deleted, "note": r.skipped})
        except MmbatchError as e:
            row.update({"pruned": 0, "objects": 0, "bytes": 0, "trash": 0, "note": f"error: {e}"})
            rc = 1
        rows.append(row)
    staging = stale_staging(cfg, time.time(), grace if grace is not None else 3600.0)
    for path in staging:
        shutil.rmtree(path, ignore_errors=True)
    if args.json:
        print(json.dumps({"jobs": rows, "staging_removed": staging, "keep": cfg.checkpoint.keep}, indent=1))
        return rc
    for r in rows:
        r["bytes"] = _human_bytes(r["bytes"])
    _print_table(rows, ["job", "pruned", "objects", "bytes", "trash", "note"])
    if staging:
        print(f"removed {len(staging)} stale staging directories")
    return rc


def cmd_support_bundle(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from mmbatch import support_bundle
    from mmbatch.api.client import DaemonUnreachable

    client = _client(cfg)

    def daemon(path: str) -> Any:
        if path == "/metrics":
            status, _ctype, body = client.request("GET", path)
            return body.decode(errors="replace")
        return client.get_json(path)

    try:
        client.request("GET", "/api/v1/node")
        source: Optional[Any] = daemon
    except DaemonUnreachable as e:
        source = None
        print(f"mmbatch: {e.message}; the bundle has no daemon view", file=sys.stderr)
    bundle = support_bundle.collect(cfg, doctor=not args.no_doctor, event_lines=args.events, daemon=source)
    if source is None:
        bundle.note("mmbatchd did not answer")
    path = args.output or support_bundle.default_path()
    try:
        bundle.write(path)
    except OSError as e:
        raise MmbatchError(f"cannot write {path}: {e.strerror}",
                           hint="name a new file in a directory you can write (-o)") from e
    if args.json:
        print(json.dumps({"path": path, "files": sorted(bundle.files), "notes": bundle.notes}, indent=1))
    else:
        print(f"{path}: {len(bundle.files)} files (secrets redacted; check before sharing)")
    return 0


def cmd_demo(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from mmbatch.demo import run_demo

    return run_demo(cfg, keep=args.keep, runtime=args.runtime)


def cmd_doctor(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from mmbatch.doctor import run

    return run(cfg, as_json=args.json, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmbatch", description="Transparent checkpoint/restore for AWS Batch jobs")
    p.add_argument("--config", help="config file (default $MMBATCH_CONFIG or /etc/mmbatch/config.toml)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("checkpoint", help="checkpoint a managed container now")
    c.add_argument("container", help="container id, id prefix or name")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_checkpoint)

    c = sub.add_parser("checkpoints", help="list a job's committed checkpoints")
    c.add_argument("job", help="job key (AWS_BATCH_JOB_ID, or MMBATCH_JOB_KEY)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_checkpoints)

    c = sub.add_parser("events", help="a job's events (checkpoints, restores, fallbacks)")
    c.add_argument("job")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_events)

    c = sub.add_parser("doctor", help="is this node ready? each check: pass, warn or fail, with the fix")
    c.add_argument("--json", action="store_true")
    c.add_argument("--quick", action="store_true", help="skip the disk speed probe")
    c.set_defaults(func=cmd_doctor)

    c = sub.add_parser("status", help="mmbatchd, the node, its checkpoint settings and jobs at a glance")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_status)

    c = sub.add_parser("jobs", help="managed jobs on this node and their checkpoint schedule")
    c.add_argument("--all", action="store_true", help="also jobs stopped in the last 15 minutes")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_jobs)

    c = sub.add_parser("gc", help="prune old checkpoints and collect unreferenced chunks in the store")
    c.add_argument("jobs", nargs="*", help="job keys (default: the jobs of this node)")
    c.add_argument("--all", action="store_true", help="every job in the store")
    c.add_argument("--grace", help="only objects older than this (default 1h; protects checkpoints in flight)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_gc)

    c = sub.add_parser("support-bundle", help="logs, redacted config, doctor and recent events in one tarball")
    c.add_argument("-o", "--output", help="the tarball (default ./mmbatch-support-<host>-<time>.tar.gz)")
    c.add_argument("--events", type=int, default=2000, help="recent event lines to include")
    c.add_argument("--no-doctor", action="store_true", help="leave doctor's checks out")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_support_bundle)

    c = sub.add_parser("demo", help="checkpoint a counting job, kill it, and watch the retry continue")
    c.add_argument("--keep", action="store_true", help="keep the demo's containers and checkpoints")
    c.add_argument("--runtime", default="mmbatch", help="the Docker runtime name of mmbatch-runtime")
    c.set_defaults(func=cmd_demo)
    register_server(sub)
    register_aws(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
        events.configure(cfg.log.dir)
        return int(args.func(args, cfg) or 0)
    except MmbatchError as e:
        print(f"mmbatch: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
