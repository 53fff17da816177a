"""Requests to answers: method, path, query and body in; status, content type
and body out. No sockets here (mmbatch.api.server does those); the node
comes in as a `DaemonView`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs

from mmbatch.api import openapi
from mmbatch.errors import ConfigError, MmbatchError
from mmbatch.manifest import JOB_KEY_RE

JSON = "application/json"
PROM = "text/plain; version=0.0.4; charset=utf-8"
MAX_BODY = 64 * 1024


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def ok(data: Any, status: int = 200) -> Answer:
    return Answer(status, JSON, (json.dumps(data, sort_keys=True, allow_nan=False, default=str) + "\n").encode())


def error(status: int, message: str, hint: str = "") -> Answer:
    body: Dict[str, str] = {"error": message}
    if hint:
        body["hint"] = hint
    return ok(body, status)


def checkpoint_row(m: Any) -> Dict[str, Any]:
    freeze = m.stats.get("freeze_seconds")
    return {
        "job_key": m.job_key,
        "checkpoint_id": m.checkpoint_id,
        "created_at": float(m.created_at),
        "container_id": m.container_id,
        "attempt": str(m.attempt or ""),
        "size": int(m.total_size),
        "bytes_uploaded": int(m.stats.get("bytes_uploaded", 0)),
        "freeze_seconds": float(freeze) if isinstance(freeze, (int, float)) else None,
        "reason": str(m.labels.get("reason", "")),
        "node": {k: str(v) for k, v in (m.node or {}).items()},
    }


_JOB_PATH = re.compile(r"^/api/v1/jobs/([A-Za-z0-9][A-Za-z0-9._-]{0,199})$")


def handle(view: Any, method: str, target: str, body: bytes = b"") -> Answer:
    path, _, query = target.partition("?")
    params = parse_qs(query)
    try:
        if path == "/metrics":
            if method != "GET":
                return error(405, "method not allowed")
            return Answer(200, PROM, view.metrics_text().encode())
        if path == "/api/v1/openapi.json" and method == "GET":
            return ok(openapi.document())
        if path == "/api/v1/node" and method == "GET":
            return ok(view.node())
        if path == "/api/v1/jobs" and method == "GET":
            return ok({"jobs": view.jobs()})
        m = _JOB_PATH.match(path)
        if m and method == "GET":
            return _job(view, m.group(1))
        if path == "/api/v1/checkpoints" and method == "GET":
            return _checkpoints(view, (params.get("job") or [""])[0])
        if path == "/api/v1/config":
            if method == "GET":
                return ok(view.config())
            if method == "PUT":
                return _put_config(view, body)
            return error(405, "method not allowed", "GET or PUT")
        if path.startswith("/api/") or path == "/metrics":
            return error(404 if method == "GET" else 405, f"no {method} {path}")
        return error(404, f"no such path {path}", "see /api/v1/openapi.json")
    except MmbatchError as e:
        return error(503, e.message, e.hint or "")


def _job(view: Any, ref: str) -> Answer:
    job = view.find_job(ref)
    if job is None:
        return error(404, f"no job {ref!r} on this node", "GET /api/v1/jobs lists them")
    out: Dict[str, Any] = {"job": job, "checkpoints": []}
    settings = view.job_settings(job["container_id"]) or {"job_key": job["job_key"]}
    try:
        out["checkpoints"] = [checkpoint_row(m) for m in view.repository(settings).list()]
    except MmbatchError as e:
        out["store_error"] = str(e)
    return ok(out)


def _checkpoints(view: Any, job_key: str) -> Answer:
    targets: Dict[str, Dict[str, Any]] = {}
    if job_key:
        if not JOB_KEY_RE.match(job_key):
            return error(400, f"invalid job key {job_key!r}", "1-200 of A-Z a-z 0-9 . _ -")
        targets[job_key] = {"job_key": job_key}
    else:
        for settings in view.all_job_settings().values():
            if settings.get("job_key"):
                targets.setdefault(str(settings["job_key"]), settings)
    rows: List[Dict[str, Any]] = []
    errors: Dict[str, str] = {}
    for key, settings in sorted(targets.items()):
        try:
            rows.extend(checkpoint_row(m) for m in view.repository(settings).list())
        except MmbatchError as e:
            errors[key] = str(e)
    return ok({"checkpoints": rows, "errors": errors})


def _put_config(view: Any, body: bytes) -> Answer:
    if len(body) > MAX_BODY:
        return error(413, "body too large")
    try:
        changes = json.loads(body or b"null", parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        return error(400, f"body is not JSON: {e}")
    try:
        openapi.validate(changes, openapi.schema("ConfigUpdate"))
    except openapi.SchemaError as e:
        return error(400, f"invalid change: {e}", 'e.g. {"interval": "10m", "mode": "iterative"}')
    try:
        return ok(view.update_config(changes))
    except ConfigError as e:
        return error(400, e.message, e.hint or "")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; RFC 8259 has neither


def parse_body_length(value: Optional[str]) -> int:
    try:
        n = int(value or "0")
    except ValueError:
        return -1
    return n if n >= 0 else -1
