"""The node API's OpenAPI 3.1 document, and a validator for the part of JSON
Schema it uses.

The validator knows: type (one or a list), enum, properties, required,
additionalProperties (false or a schema), items, minimum, minLength,
minProperties and local $ref. It checks the API's answers in the tests and
the body of PUT /api/v1/config in the server, so the document and the code
cannot drift apart unnoticed. Anything else in a schema is an error, not a
silent pass.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

API_VERSION = "1"

_NUM = ["number", "null"]
_STR = ["string", "null"]

SCHEMAS: Dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "hint": {"type": "string"}},
        "additionalProperties": False,
    },
    "Node": {
        "type": "object",
        "required": ["hostname", "version", "pid", "started_at", "uptime_seconds", "node", "config", "jobs",
                     "interruption", "event_log"],
        "properties": {
            "hostname": {"type": "string"},
            "version": {"type": "string"},
            "pid": {"type": "integer", "minimum": 1},
            "started_at": {"type": "number"},
            "uptime_seconds": {"type": "number", "minimum": 0},
            "node": {"type": "object", "additionalProperties": {"type": "string"}},
            "config": {"$ref": "#/components/schemas/RuntimeConfig"},
            "jobs": {
                "type": "object",
                "required": ["active", "checkpointing", "frozen", "stopped"],
                "properties": {k: {"type": "integer", "minimum": 0}
                               for k in ("active", "checkpointing", "frozen", "stopped")},
                "additionalProperties": False,
            },
            "interruption": {"type": ["object", "null"]},
            "event_log": {"type": "string"},
        },
        "additionalProperties": False,
    },
    "RuntimeConfig": {
        "type": "object",
        "required": ["mode", "interval"],
        "properties": {
            "mode": {"type": "string", "enum": ["iterative", "none"]},
            "interval": {"type": "number", "minimum": 10},
        },
        "additionalProperties": False,
    },
    "Job": {
        "type": "object",
        "required": ["container_id", "job_key", "batch_job_id", "attempt", "decision", "restored_from",
                     "started_at", "stopped_at", "frozen", "interval", "mode", "last_checkpoint_at",
                     "next_checkpoint_at", "checkpointing", "failures", "last_error", "final_status"],
        "properties": {
            "container_id": {"type": "string", "minLength": 1},
            "job_key": {"type": "string"},
            "batch_job_id": {"type": "string"},
            "attempt": {"type": "string"},
            "decision": {"type": "string"},
            "restored_from": {"type": _STR},
            "started_at": {"type": "number"},
            "stopped_at": {"type": _NUM},
            "frozen": {"type": "boolean"},
            "interval": {"type": "number"},
            "mode": {"type": "string"},
            "last_checkpoint_at": {"type": _NUM},
            "next_checkpoint_at": {"type": _NUM},
            "checkpointing": {"type": "boolean"},
            "failures": {"type": "integer", "minimum": 0},
            "last_error": {"type": "string"},
            "final_status": {"type": _STR},
        },
        "additionalProperties": False,
    },
    "Checkpoint": {
        "type": "object",
        "required": ["job_key", "checkpoint_id", "created_at", "container_id", "attempt", "size",
                     "bytes_uploaded", "freeze_seconds", "reason", "node"],
        "properties": {
            "job_key": {"type": "string"},
            "checkpoint_id": {"type": "string", "minLength": 1},
            "created_at": {"type": "number"},
            "container_id": {"type": "string"},
            "attempt": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "bytes_uploaded": {"type": "integer", "minimum": 0},
            "freeze_seconds": {"type": _NUM},
            "reason": {"type": "string"},
            "node": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    },
    "JobDetail": {
        "type": "object",
        "required": ["job", "checkpoints"],
        "properties": {
            "job": {"$ref": "#/components/schemas/Job"},
            "checkpoints": {"type": "array", "items": {"$ref": "#/components/schemas/Checkpoint"}},
            "store_error": {"type": "string"},
        },
        "additionalProperties": False,
    },
    "JobList": {
        "type": "object",
        "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}},
        "additionalProperties": False,
    },
    "CheckpointList": {
        "type": "object",
        "required": ["checkpoints", "errors"],
        "properties": {
            "checkpoints": {"type": "array", "items": {"$ref": "#/components/schemas/Checkpoint"}},
            "errors": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    },
    "Config": {
        "type": "object",
        "required": ["path", "runtime", "overrides", "file"],
        "properties": {
            "path": {"type": "string"},
            "runtime": {"$ref": "#/components/schemas/RuntimeConfig"},
            "overrides": {
                "type": "object",
                "properties": {"mode": {"type": "string"}, "interval": {"type": "number"}},
                "additionalProperties": False,
            },
            "file": {"type": "object", "additionalProperties": {"type": "object"}},
        },
        "additionalProperties": False,
    },
    "ConfigUpdate": {
        "type": "object",
        "minProperties": 1,
        "properties": {
            "mode": {"type": "string", "enum": ["iterative", "none"]},
            "interval": {"type": ["string", "number"]},
        },
        "additionalProperties": False,
    },
}


def _json(schema_name: str, description: str) -> Dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}


_ERRORS = {"401": _json("Error", "no token, or a wrong one")}


def document() -> Dict[str, Any]:
    """The OpenAPI document served at /api/v1/openapi.json."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "mmbatchd node API", "version": API_VERSION,
                 "description": "One node's managed jobs, checkpoints and metrics. Over TCP every request needs "
                                "`Authorization: Bearer <token>` (the token file of [api] token_file); the unix "
                                "socket ([api] socket, mode 0600) is for root on the node."},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/node": {"get": {"summary": "The node and its daemon",
                                     "responses": {"200": _json("Node", "the node"), **_ERRORS}}},
            "/api/v1/jobs": {"get": {"summary": "Managed containers the daemon watches (stopped ones for 15 min)",
                                     "responses": {"200": _json("JobList", "the jobs"), **_ERRORS}}},
            "/api/v1/jobs/{id}": {"get": {
                "summary": "One job, by container id (or a unique prefix of it) or job key, with its checkpoints",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json("JobDetail", "the job"), "404": _json("Error", "no such job"),
                              **_ERRORS}}},
            "/api/v1/checkpoints": {"get": {
                "summary": "Committed checkpoints of the node's jobs, or of the job named by ?job=",
                "parameters": [{"name": "job", "in": "query", "required": False, "schema": {"type": "string"}}],
                "responses": {"200": _json("CheckpointList", "newest first per job"),
                              "400": _json("Error", "bad job key"), **_ERRORS}}},
            "/api/v1/config": {
                "get": {"summary": "The effective configuration",
                        "responses": {"200": _json("Config", "the configuration"), **_ERRORS}},
                "put": {"summary": "Change the checkpoint mode and interval at run time (not written to the file; "
                                   "a restart goes back to the file)",
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ConfigUpdate"}}}},
                        "responses": {"200": _json("Config", "the configuration after the change"),
                                      "400": _json("Error", "invalid change"), **_ERRORS}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document",
                                             "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/metrics": {"get": {"summary": "Prometheus text format 0.0.4",
                                 "responses": {"200": {"description": "metrics",
                                                       "content": {"text/plain": {}}}, **_ERRORS}}},
        },
    }


class SchemaError(ValueError):
    """An instance does not match its schema; `path` says where."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{path or '$'}: {message}")
        self.path = path


_KNOWN = {"type", "enum", "properties", "required", "additionalProperties", "items", "minimum", "minLength",
          "minProperties", "$ref", "description"}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema(name: str) -> Dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def validate(instance: Any, sch: Dict[str, Any], root: Optional[Dict[str, Any]] = None, path: str = "") -> None:
    """Raise SchemaError unless `instance` matches `sch` (refs resolve in `root`, default this document)."""
    if root is None:
        root = {"components": {"schemas": SCHEMAS}}
    unknown = set(sch) - _KNOWN
    if unknown:
        raise SchemaError(f"schema uses unsupported keywords {sorted(unknown)}", path)
    if "$ref" in sch:
        ref = sch["$ref"]
        if not ref.startswith("#/"):
            raise SchemaError(f"only local refs are supported, got {ref}", path)
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        validate(instance, target, root, path)
        return
    types = sch.get("type")
    if types is not None:
        names: List[str] = [types] if isinstance(types, str) else list(types)
        if not any(_TYPES[t](instance) for t in names):
            raise SchemaError(f"expected {' or '.join(names)}, got {type(instance).__name__} {instance!r:.80}", path)
    if "enum" in sch and instance not in sch["enum"]:
        raise SchemaError(f"{instance!r} is not one of {sch['enum']}", path)
    if "minimum" in sch and _TYPES["number"](instance) and instance < sch["minimum"]:
        raise SchemaError(f"{instance} is less than {sch['minimum']}", path)
    if "minLength" in sch and isinstance(instance, str) and len(instance) < sch["minLength"]:
        raise SchemaError(f"shorter than {sch['minLength']}", path)
    if isinstance(instance, dict):
        if len(instance) < sch.get("minProperties", 0):
            raise SchemaError(f"needs at least {sch['minProperties']} properties", path)
        for key in sch.get("required", []):
            if key not in instance:
                raise SchemaError(f"missing required property {key!r}", path)
        props = sch.get("properties", {})
        extra = sch.get("additionalProperties", True)
        for key, value in instance.items():
            sub = f"{path}.{key}" if path else key
            if key in props:
                validate(value, props[key], root, sub)
            elif extra is False:
                raise SchemaError(f"unexpected property {key!r}", path)
            elif isinstance(extra, dict):
                validate(value, extra, root, sub)
    if isinstance(instance, list) and "items" in sch:
        for i, value in enumerate(instance):
            validate(value, sch["items"], root, f"{path}[{i}]")
