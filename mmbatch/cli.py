"""The `mmbatch` command: operators' tools.

Tables for people, `--json` for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from mmbatch import config as config_mod
from mmbatch.errors import MmbatchError


def _print_table(rows: List[Dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


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

    cid = resolve_container(args.container, cfg)
    result = checkpoint_container(cid, cfg, cfg.runtime.state_dir, reason="manual",
                                  log=(lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr)))
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

    c = sub.add_parser("demo", help="checkpoint a counting job, kill it, and watch the retry continue")
    c.add_argument("--keep", action="store_true", help="keep the demo's containers and checkpoints")
    c.add_argument("--runtime", default="mmbatch", help="the Docker runtime name of mmbatch-runtime")
    c.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
        return int(args.func(args, cfg) or 0)
    except MmbatchError as e:
        print(f"mmbatch: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
