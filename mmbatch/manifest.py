"""The checkpoint manifest: what one checkpoint is, as one JSON document.

A checkpoint exists when, and only when, its manifest is in the store
(`jobs/<job_key>/manifests/<checkpoint_id>.json`, written last). It lists
every file of the checkpoint directory with its size, mode and sha256, and
the content-addressed chunks the file is made of, in order. It also records
where the checkpoint was taken (`node`), what a restore must match
(`compat`), files the job had open for writing on volumes (`open_files`,
checked by size on restore), numbers about the checkpoint (`stats`) and
free-form `labels`.

Validation is strict in both directions: an unknown format version, an
unknown or missing key, a wrong type, a path that could escape the
checkpoint directory or chunks that do not add up to the file are all
ManifestError. A newer mmbatch that adds a field bumps `format`, so an
older reader refuses the manifest (and falls back) instead of restoring
something it does not fully understand.

Format 1, chunk objects: `ChunkRef.object` is a store key relative to the
job's directory (`chunks/<sha[:2]>/<sha>` or `packs/<pack id>`) and
`ChunkRef.offset` is where the chunk starts in that object.
"""

from __future__ import annotations

import calendar
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

from mmbatch.errors import ManifestError, StoreError
from mmbatch.store.base import validate_key

FORMAT = 1

CHECKPOINT_ID_RE = re.compile(r"^(\d{8}T\d{6})\.(\d{3})Z-([0-9a-f]{8})$")
JOB_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

NODE_KEYS: Tuple[str, ...] = ("hostname", "instance_id", "instance_type", "availability_zone", "lifecycle")
_COMPAT_STR_KEYS: Tuple[str, ...] = ("image_id", "job_hash", "criu_version", "runc_version", "arch", "kernel")
COMPAT_KEYS: Tuple[str, ...] = _COMPAT_STR_KEYS + ("cpu_flags", "gpu")
GPU_KEYS: Tuple[str, ...] = ("model", "count", "driver", "cuda", "memory_mib")
OPEN_FILE_KEYS: Tuple[str, ...] = ("path", "size", "append", "writable")
CHUNK_OBJECT_DIRS: Tuple[str, ...] = ("chunks/", "packs/")

_TOP_KEYS = (
    "format", "checkpoint_id", "job_key", "container_id", "created_at", "attempt", "node", "compat",
    "files", "open_files", "stats", "labels",
)


# -- identifiers -------------------------------------------------------------

def new_checkpoint_id(now: Optional[float] = None) -> str:
    """A sortable id: UTC time to the millisecond plus a random suffix."""
    if now is None:
        now = time.time()
    ms = int(round(now * 1000))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms // 1000))
    return f"{stamp}.{ms % 1000:03d}Z-{os.urandom(4).hex()}"


def checkpoint_id_time(checkpoint_id: str) -> float:
    """The epoch time encoded in a checkpoint id (ManifestError if it is not one)."""
    m = CHECKPOINT_ID_RE.match(validate_checkpoint_id(checkpoint_id))
    assert m is not None
    secs = calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H%M%S"))
    return secs + int(m.group(2)) / 1000.0


def validate_checkpoint_id(value: Any) -> str:
    if not isinstance(value, str) or not CHECKPOINT_ID_RE.match(value):
        raise ManifestError(
            f"invalid checkpoint id {value!r}", hint="expected e.g. 20261127T110601.123Z-1a2b3c4d",
        )
    return value


def validate_job_key(value: Any) -> str:
    if not isinstance(value, str) or not JOB_KEY_RE.match(value):
        raise ManifestError(
            f"invalid job key {value!r}", hint="1-200 of A-Z a-z 0-9 . _ -, starting alphanumeric"
        )
    return value


def validate_relpath(value: Any, what: str = "path") -> str:
    """A relative path with no way out: no '', '.', '..' components, no NUL, not absolute."""
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{what} must be a non-empty string, got {value!r}")
    if "\0" in value or value.startswith("/"):
        raise ManifestError(f"{what} {value!r} must be relative and contain no NUL")
    for part in value.split("/"):
        if part in ("", ".", ".."):
            raise ManifestError(f"{what} {value!r} has an empty, '.' or '..' component")
    return value


# -- field checks ------------------------------------------------------------

def _int(value: Any, what: str, minimum: int = 0, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ManifestError(f"{what} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ManifestError(f"{what} must be at most {maximum}, got {value!r}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{what} must be a string, got {value!r}")
    return value


def _number(value: Any, what: str) -> Union[int, float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError(f"{what} must be a finite number, got {value!r}")
    return value


def _dict(value: Any, what: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{what} must be an object, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise ManifestError(f"{what} has a non-string key {k!r}")
    return value


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise ManifestError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _exact_keys(d: Dict[str, Any], keys: Sequence[str], what: str, *, allow_missing: bool = False) -> None:
    unknown = sorted(set(d) - set(keys))
    if unknown:
        raise ManifestError(f"{what} has unknown key(s) {', '.join(map(repr, unknown))}")
    if not allow_missing:
        missing = [k for k in keys if k not in d]
        if missing:
            raise ManifestError(f"{what} lacks key(s) {', '.join(map(repr, missing))}")


def _sha(value: Any, what: str) -> str:
    if not isinstance(value, str) or not SHA256_RE.match(value):
        raise ManifestError(f"{what} must be 64 lowercase hex digits, got {value!r}")
    return value


# -- the document --------------------------------------------------------------

@dataclass
class ChunkRef:
    """One chunk of a file: `size` bytes with `sha256`, at `offset` in store object `object`."""

    sha256: str
    size: int
    object: str
    offset: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "object": self.object, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: Any, what: str = "chunk") -> ChunkRef:
        _exact_keys(_dict(d, what), ("sha256", "size", "object", "offset"), what)
        ref = cls(sha256=d["sha256"], size=d["size"], object=d["object"], offset=d["offset"])
        ref.validate(what)
        return ref

    def validate(self, what: str = "chunk") -> None:
        _sha(self.sha256, f"{what} sha256")
        _int(self.size, f"{what} size", minimum=1)
        _int(self.offset, f"{what} offset")
        obj = _str(self.object, f"{what} object")
        try:
            validate_key(obj)
        except StoreError as e:
            raise ManifestError(f"{what} object: {e.message}") from None
        if not obj.startswith(CHUNK_OBJECT_DIRS):
            raise ManifestError(f"{what} object {obj!r} is not under {' or '.join(CHUNK_OBJECT_DIRS)}")


@dataclass
class FileEntry:
    """One file of the checkpoint directory and the chunks it is made of."""

    path: str
    size: int
    mode: int
    sha256: str
    chunks: List[ChunkRef] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "path": self.path, "size": self.size, "mode": self.mode, "sha256": self.sha256,
            "chunks": [c.to_dict() for c in self.chunks],
        }

    @classmethod
    def from_dict(cls, d: Any, what: str = "file") -> FileEntry:
        _exact_keys(_dict(d, what), ("path", "size", "mode", "sha256", "chunks"), what)
        chunks = [ChunkRef.from_dict(c, f"{what} chunk {i}") for i, c in enumerate(_list(d["chunks"], what))]
        entry = cls(path=d["path"], size=d["size"], mode=d["mode"], sha256=d["sha256"], chunks=chunks)
        entry.validate(what)
        return entry

    def validate(self, what: str = "file") -> None:
        validate_relpath(self.path, f"{what} path")
        what = f"file {self.path!r}"
        _int(self.size, f"{what} size")
        _int(self.mode, f"{what} mode", maximum=0o7777)
        _sha(self.sha256, f"{what} sha256")
        total = 0
        for i, c in enumerate(_list(self.chunks, f"{what} chunks")):
            if not isinstance(c, ChunkRef):
                raise ManifestError(f"{what} chunk {i} is not a ChunkRef")
            c.validate(f"{what} chunk {i}")
            total += c.size
        if total != self.size:
            raise ManifestError(f"{what}: its chunks add up to {total} bytes, not its size {self.size}")


def default_node() -> Dict[str, str]:
    return {k: "" for k in NODE_KEYS}


def default_compat() -> Dict[str, Any]:
    d: Dict[str, Any] = {k: "" for k in _COMPAT_STR_KEYS}
    d["cpu_flags"] = []
    d["gpu"] = None
    return d


@dataclass
class Manifest:
    """One checkpoint; see the module docstring."""

    checkpoint_id: str = ""
    job_key: str = ""
    container_id: str = ""
    created_at: float = 0.0
    attempt: str = ""
    node: Dict[str, str] = field(default_factory=default_node)
    compat: Dict[str, Any] = field(default_factory=default_compat)
    files: List[FileEntry] = field(default_factory=list)
    open_files: List[Dict[str, Any]] = field(default_factory=list)
    stats: Dict[str, Union[int, float]] = field(default_factory=dict)
    labels: Dict[str, str] = field(default_factory=dict)
    format: int = FORMAT

    # -- derived ---------------------------------------------------------

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def chunk_objects(self) -> Set[str]:
        """The store objects (relative to the job directory) this checkpoint needs."""
        return {c.object for f in self.files for c in f.chunks}

    # -- validation -------------------------------------------------------

    def validate(self) -> None:
        """Raise ManifestError unless every field is well-formed."""
        if isinstance(self.format, bool) or self.format != FORMAT:
            raise ManifestError(
                f"unknown manifest format {self.format!r} (this version reads {FORMAT})",
                hint="the checkpoint was written by a different mmbatch version",
            )
        validate_checkpoint_id(self.checkpoint_id)
        validate_job_key(self.job_key)
        _str(self.container_id, "container_id")
        _number(self.created_at, "created_at")
        _str(self.attempt, "attempt")
        node = _dict(self.node, "node")
        _exact_keys(node, NODE_KEYS, "node", allow_missing=True)
        for k, v in node.items():
            _str(v, f"node.{k}")
        compat = _dict(self.compat, "compat")
        _exact_keys(compat, COMPAT_KEYS, "compat", allow_missing=True)
        for k in _COMPAT_STR_KEYS:
            _str(compat.get(k, ""), f"compat.{k}")
        for i, flag in enumerate(_list(compat.get("cpu_flags", []), "compat.cpu_flags")):
            _str(flag, f"compat.cpu_flags[{i}]")
        gpu = compat.get("gpu")
        if gpu is not None:  # mmbatch.gpu.GpuInfo.to_compat()
            _exact_keys(_dict(gpu, "compat.gpu"), GPU_KEYS, "compat.gpu", allow_missing=True)
            for k in ("model", "driver", "cuda"):
                _str(gpu.get(k, ""), f"compat.gpu.{k}")
            for k in ("count", "memory_mib"):
                _int(gpu.get(k, 0), f"compat.gpu.{k}")
        seen: Set[str] = set()
        for i, f in enumerate(_list(self.files, "files")):
            if not isinstance(f, FileEntry):
                raise ManifestError(f"files[{i}] is not a FileEntry")
            f.validate(f"files[{i}]")
            if f.path in seen:
                raise ManifestError(f"file {f.path!r} is listed twice")
            seen.add(f.path)
        for path in seen:
            parts = path.split("/")
            for n in range(1, len(parts)):
                if "/".join(parts[:n]) in seen:
                    raise ManifestError(f"file {path!r} lies under another file {'/'.join(parts[:n])!r}")
        for i, of in enumerate(_list(self.open_files, "open_files")):
            what = f"open_files[{i}]"
            _exact_keys(_dict(of, what), OPEN_FILE_KEYS, what)
            _str(of["path"], f"{what}.path")
            _int(of["size"], f"{what}.size")
            for flag in ("append", "writable"):
                if not isinstance(of[flag], bool):
                    raise ManifestError(f"{what}.{flag} must be true or false, got {of[flag]!r}")
        for k, v in _dict(self.stats, "stats").items():
            _number(v, f"stats.{k}")
        for k, v in _dict(self.labels, "labels").items():
            _str(v, f"labels.{k}")

    # -- (de)serialization -------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict; ManifestError when the manifest is not valid."""
        self.validate()
        node = default_node()
        node.update(self.node)
        compat = default_compat()
        compat.update(self.compat)
        compat["cpu_flags"] = list(compat["cpu_flags"])
        return {
            "format": self.format,
            "checkpoint_id": self.checkpoint_id,
            "job_key": self.job_key,
            "container_id": self.container_id,
            "created_at": float(self.created_at),
            "attempt": self.attempt,
            "node": node,
            "compat": compat,
            "files": [f.to_dict() for f in self.files],
            "open_files": [dict(of) for of in self.open_files],
            "stats": dict(self.stats),
            "labels": dict(self.labels),
        }

    def to_json(self) -> bytes:
        # ensure_ascii keeps non-UTF-8 file names (surrogate escapes) round-tripping.
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return text.encode("ascii")

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        d = _dict(d, "manifest")
        if "format" not in d:
            raise ManifestError("not a manifest: no format version")
        fmt = d["format"]
        if isinstance(fmt, bool) or fmt != FORMAT:
            raise ManifestError(
                f"unknown manifest format {fmt!r} (this version reads {FORMAT})",
                hint="the checkpoint was written by a different mmbatch version",
            )
        _exact_keys(d, _TOP_KEYS, "manifest")
        node = _dict(d["node"], "node")
        _exact_keys(node, NODE_KEYS, "node")
        compat = _dict(d["compat"], "compat")
        _exact_keys(compat, COMPAT_KEYS, "compat")
        files = [FileEntry.from_dict(f, f"files[{i}]") for i, f in enumerate(_list(d["files"], "files"))]
        created_at = _number(d["created_at"], "created_at")
        m = cls(
            format=fmt,
            checkpoint_id=d["checkpoint_id"],
            job_key=d["job_key"],
            container_id=d["container_id"],
            created_at=float(created_at),
            attempt=d["attempt"],
            node=dict(node),
            compat=dict(compat),
            files=files,
            open_files=[
                dict(of) if isinstance(of, dict) else of for of in _list(d["open_files"], "open_files")
            ],
            stats=dict(_dict(d["stats"], "stats")),
            labels=dict(_dict(d["labels"], "labels")),
        )
        if isinstance(m.compat.get("cpu_flags"), list):
            m.compat["cpu_flags"] = list(m.compat["cpu_flags"])
        m.validate()
        return m

    @classmethod
    def from_json(cls, data: Union[bytes, str]) -> Manifest:
        try:
            doc = json.loads(data, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
        except ManifestError:
            raise
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise ManifestError(f"manifest is not valid JSON: {e}") from None
        return cls.from_dict(doc)


def _no_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ManifestError(f"manifest has the key {k!r} twice")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ManifestError(f"manifest contains {name}, which is not JSON")
