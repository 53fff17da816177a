"""A job's checkpoints in an object store: commit, list, fetch, prune.

Layout under `jobs/<job_key>/` (keys relative to the store):

    manifests/<checkpoint_id>.json   one per committed checkpoint, written last
    LATEST                           the newest committed checkpoint id
    chunks/<sha256[:2]>/<sha256>     a big chunk, alone (content-addressed)
    packs/<checkpoint_id>-<n>        small chunks packed together, written whole
    trash/<checkpoint_id>.json       manifests pruned less than a grace period ago
    <kind>/<name>.json               job records (put_record / get_record)

A checkpoint exists when its manifest does. `commit` uploads every object a
manifest needs before it writes the manifest, so a failure at any point
leaves nothing that references partial data; objects of a failed commit are
orphans that garbage collection removes later. Chunks already referenced by
the job's committed manifests are reused, not uploaded again.

Garbage collection rule (`gc`, run by `prune`), safe against a concurrent
`commit` of the same job as long as a commit takes less than the grace
period (default 1 hour):
1. prune does not delete a manifest outright: it first copies it to
   `trash/`, then deletes it from `manifests/`;
2. an object is deleted only when no manifest in `manifests/` and no
   manifest in `trash/` younger than the grace period references it, and
   the object itself is older than the grace period (checked again just
   before the delete);
3. manifests listed first, trash second: a manifest moved meanwhile is
   seen in one or the other;
4. what it is about to delete it first marks as garbage
   (`ObjectStore.mark_garbage`: an S3 object tag), so a bucket lifecycle rule
   that expires only marked objects finishes a gc that was cut short, and
   never touches a chunk a manifest still needs.
A commit only reuses objects of manifests it saw in `manifests/`; if such
a manifest is pruned meanwhile, its trash copy protects those objects for a
grace period, by which time the commit's own manifest references them. New
objects of an in-flight commit are younger than the grace period. Ages use
the store's modification times against this node's clock, so the grace
period must also cover clock skew (seconds on EC2).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import stat as stat_mod
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, TypeVar

from mmbatch.chunking import DEFAULT_CHUNK_SIZE, PAGE_SIZE, Piece, plan_chunks, plan_fixed
from mmbatch.errors import (
    CorruptObject,
    JobIdentityError,
    ManifestError,
    MmbatchError,
    ObjectNotFound,
    StoreError,
)
from mmbatch.manifest import (
    CHECKPOINT_ID_RE,
    JOB_KEY_RE,
    ChunkRef,
    FileEntry,
    Manifest,
    checkpoint_id_time,
    new_checkpoint_id,
    validate_checkpoint_id,
)
from mmbatch.store.base import RESERVED_PREFIX, ObjectStore

log = logging.getLogger(__name__)

DEFAULT_PACK_SIZE = 16 * 1024 * 1024
DEFAULT_PARALLEL = 8
DEFAULT_GRACE_SECONDS = 3600.0

RECORD_KIND_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
RECORD_NAME_RE = JOB_KEY_RE
_RESERVED_KINDS = frozenset({"manifests", "chunks", "packs", "trash"})

LATEST = "LATEST"
_TMP_PREFIX = RESERVED_PREFIX + "tmp-"

ProgressFn = Callable[[int, int], None]
ExtentsFor = Callable[[str], Optional[list]]

_F = TypeVar("_F", bound=Callable[..., Any])


def _with_job_key(fn: _F) -> _F:
    """Errors raised through a repository method carry the job key."""

    @functools.wraps(fn)
    def wrapper(self: CheckpointRepository, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except MmbatchError as e:
            if e.job_key is None:
                e.job_key = self.job_key
            raise

    return wrapper  # type: ignore[return-value]


def _report(progress: Optional[ProgressFn], done: int, total: int) -> None:
    if progress is None:
        return
    try:
        progress(done, total)
    except Exception:  # a progress display must never fail a checkpoint
        log.debug("progress callback failed", exc_info=True)


@dataclass
class GcResult:
    """What `prune` / `gc` did."""

    manifests_pruned: int = 0
    objects_deleted: int = 0
    bytes_deleted: int = 0
    trash_deleted: int = 0
    skipped: str = ""  # why objects were not collected this time, if they were not


# A pack whose chunks the kept checkpoints use less than this share of is
# not reused (see CheckpointRepository._dedup_index): the store then holds
# at most about twice the live data, plus the checkpoints being pruned.
REPACK_BELOW = 0.5


class _Uploader:
    """Uploads new chunks in parallel: big ones alone, small ones packed.

    Memory is bounded: at most `parallel` objects (each at most
    max(pack_size, chunk_size) bytes) are in flight, plus the pack being
    filled; the caller blocks until a slot is free.
    """

    def __init__(self, repo: CheckpointRepository, checkpoint_id: str, total: int,
                 progress: Optional[ProgressFn]) -> None:
        self._repo = repo
        self._checkpoint_id = checkpoint_id
        self._pool = ThreadPoolExecutor(max_workers=repo.parallel, thread_name_prefix="mmbatch-upload")
        self._slots = threading.BoundedSemaphore(repo.parallel)
        self._lock = threading.Lock()
        self._futures: List[Future] = []
        self._error: Optional[BaseException] = None
        self._pack = bytearray()
        self._pack_rel = ""
        self._pack_seq = 0
        self._packs: List[str] = []
        self._total = total
        self._progress = progress
        self.done_bytes = 0
        self.bytes_uploaded = 0
        self.chunks_uploaded = 0
        self.objects_uploaded = 0

    def reused(self, size: int) -> None:
        with self._lock:
            self.done_bytes += size
            done = self.done_bytes
        _report(self._progress, done, self._total)

    def add(self, sha: str, data: bytes) -> ChunkRef:
        self._raise_if_failed()
        self.bytes_uploaded += len(data)
        self.chunks_uploaded += 1
        if len(data) >= self._repo.big_chunk_size:
            rel = f"chunks/{sha[:2]}/{sha}"
            self._submit(rel, data, len(data))
            return ChunkRef(sha256=sha, size=len(data), object=rel, offset=0)
        if self._pack and len(self._pack) + len(data) > self._repo.pack_size:
            self._seal()
        if not self._pack:
            self._pack_seq += 1
            self._pack_rel = f"packs/{self._checkpoint_id}-{self._pack_seq:06d}"
        offset = len(self._pack)
        self._pack += data
        return ChunkRef(sha256=sha, size=len(data), object=self._pack_rel, offset=offset)

    def _seal(self) -> None:
        if self._pack:
            data = bytes(self._pack)
            self._pack = bytearray()
            self._packs.append(self._pack_rel)
            self._submit(self._pack_rel, data, len(data))

    def _submit(self, rel: str, data: bytes, size: int) -> None:
        self._slots.acquire()
        try:
            self._raise_if_failed()
            fut = self._pool.submit(self._put, rel, data, size)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(self._done)
        self._futures.append(fut)

    def _put(self, rel: str, data: bytes, size: int) -> None:
        self._repo.store.put_bytes(self._repo._key(rel), data)
        with self._lock:
            self.objects_uploaded += 1
            self.done_bytes += size
            done = self.done_bytes
        _report(self._progress, done, self._total)

    def _done(self, fut: Future) -> None:
        self._slots.release()
        if not fut.cancelled() and fut.exception() is not None:
            with self._lock:
                if self._error is None:
                    self._error = fut.exception()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """Upload the last pack and wait for everything; raise the first failure."""
        try:
            self._seal()
            for fut in self._futures:
                fut.result()
        finally:
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Stop, wait for uploads in flight, and remove this commit's packs (best effort)."""
        for fut in self._futures:
            fut.cancel()
        self._pool.shutdown(wait=True)
        # Packs are named after this checkpoint: nothing else can use them.
        # Lone chunks may be shared with a concurrent commit: gc removes them.
        try:
            self._repo.store.delete_many([self._repo._key(rel) for rel in self._packs])
        except Exception as e:
            log.debug("cannot remove the packs of a failed commit: %s", e)


class CheckpointRepository:
    """The checkpoints of one job in `store`; see the module docstring."""

    def __init__(
        self,
        store: ObjectStore,
        job_key: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        pack_size: int = DEFAULT_PACK_SIZE,
        parallel: int = DEFAULT_PARALLEL,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(job_key, str) or not JOB_KEY_RE.match(job_key):
            raise JobIdentityError(
                f"invalid job key {job_key!r}",
                hint="a job key is 1-200 of A-Z a-z 0-9 . _ -, starting alphanumeric (sanitize it first)",
            )
        if chunk_size <= 0 or chunk_size % PAGE_SIZE:
            raise ValueError(f"chunk_size must be a positive multiple of {PAGE_SIZE}, got {chunk_size}")
        if pack_size < chunk_size:
            raise ValueError(f"pack_size ({pack_size}) must be at least chunk_size ({chunk_size})")
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        if grace_seconds < 0:
            raise ValueError(f"grace_seconds must not be negative, got {grace_seconds}")
        self.store = store
        self.job_key = job_key
        self.chunk_size = chunk_size
        self.pack_size = pack_size
        self.parallel = parallel
        self.grace_seconds = grace_seconds
        self._clock = clock
        self._prefix = f"jobs/{job_key}"
        # Chunks of at least half a pack are stored alone; smaller ones go
        # into packs. With the default 256 KiB chunks everything is packed:
        # one request per 16 MiB, not per chunk (per-request latency would
        # bound throughput).
        self.big_chunk_size = max(PAGE_SIZE, pack_size // 2)

    @classmethod
    def from_config(cls, store: ObjectStore, job_key: str, store_cfg: Any, **kw: Any) -> CheckpointRepository:
        """Sizes and parallelism from a config.StoreSection."""
        return cls(store, job_key, chunk_size=store_cfg.chunk_size, pack_size=store_cfg.pack_size,
                   parallel=store_cfg.parallel, **kw)

    def __repr__(self) -> str:
        return f"<CheckpointRepository {self.job_key} in {self.store.url}>"

    # -- keys -----------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """The job's directory in the store."""
        return self._prefix

    def _key(self, rel: str) -> str:
        return f"{self._prefix}/{rel}"

    def _manifest_key(self, checkpoint_id: str) -> str:
        return self._key(f"manifests/{checkpoint_id}.json")

    def _ids_under(self, kind: str) -> List[str]:
        """Checkpoint ids of `<kind>/<id>.json` objects, newest first."""
        ids = []
        for key in self.store.list(self._key(kind)):
            name = key.rsplit("/", 1)[-1]
            if key == self._key(f"{kind}/{name}") and name.endswith(".json"):
                cid = name[: -len(".json")]
                if CHECKPOINT_ID_RE.match(cid):
                    ids.append(cid)
        ids.sort(reverse=True)
        return ids

    # -- reading checkpoints -----------------------------------------------------

    def _parse(self, data: bytes, checkpoint_id: str) -> Manifest:
        m = Manifest.from_json(data)
        if m.checkpoint_id != checkpoint_id:
            raise ManifestError(f"manifest {checkpoint_id} names itself {m.checkpoint_id}")
        if m.job_key != self.job_key:
            raise ManifestError(f"manifest {checkpoint_id} belongs to job {m.job_key!r}")
        return m

    def _load(self, checkpoint_id: str) -> Manifest:
        return self._parse(self.store.get_bytes(self._manifest_key(checkpoint_id)), checkpoint_id)

    def _load_valid(self, ids: Iterable[str]) -> List[Manifest]:
        out = []
        for cid in ids:
            try:
                out.append(self._load(cid))
            except ObjectNotFound:
                continue  # pruned meanwhile
            except ManifestError as e:
                log.warning("skipping unreadable checkpoint %s of job %s: %s", cid, self.job_key, e)
        return out

    @_with_job_key
    def list(self) -> List[Manifest]:
        """Committed checkpoints, newest first; unreadable manifests are skipped (logged)."""
        return self._load_valid(self._ids_under("manifests"))

    @_with_job_key
    def get(self, checkpoint_id: str) -> Manifest:
        """One checkpoint's manifest: ObjectNotFound or ManifestError when unusable."""
        validate_checkpoint_id(checkpoint_id)
        return self._load(checkpoint_id)

    @_with_job_key
    def latest(self) -> Optional[Manifest]:
        """The newest committed checkpoint, or None.

        Reads the LATEST pointer and its manifest (two reads); lists the
        manifests only when the pointer is missing, invalid or names a
        checkpoint that is gone or unreadable. A crash between writing a
        manifest and the pointer leaves the pointer on the previous
        checkpoint, which is still a good one; the next commit moves it.
        """
        try:
            pointer = self.store.get_bytes(self._key(LATEST)).decode("ascii").strip()
            return self._load(validate_checkpoint_id(pointer))
        except (ObjectNotFound, ManifestError, UnicodeDecodeError) as e:
            log.info("job %s: LATEST pointer unusable (%s); listing checkpoints", self.job_key, e)
        found = self.list()
        return found[0] if found else None

    # -- commit -------------------------------------------------------------------

    def _scan(self, src_dir: str) -> List[Tuple[str, str, int, int]]:
        """(relpath, path to read, size, mode) of every file to store, sorted."""
        try:
            root = os.path.realpath(src_dir)
            if not os.path.isdir(root):
                raise StoreError(f"checkpoint directory {src_dir} does not exist or is not a directory")
        except OSError as e:
            raise StoreError(f"cannot read checkpoint directory {src_dir}: {e.strerror}") from e
        out = []

        def onerror(e: OSError) -> None:
            raise StoreError(f"cannot read checkpoint directory {src_dir}: {e}") from e

        for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
            dirnames.sort()
            names = sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for name in names:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                try:
                    st = os.lstat(path)
                    read_path = path
                    if stat_mod.S_ISLNK(st.st_mode):
                        target = os.path.realpath(path)
                        if os.path.commonpath([root, target]) != root:
                            raise StoreError(
                                f"{rel} in checkpoint directory {src_dir} is a symlink leading outside it "
                                f"({os.readlink(path)!r})",
                                hint="a checkpoint may only contain its own files",
                            )
                        st = os.stat(target)
                        read_path = target
                except OSError as e:
                    raise StoreError(
                        f"cannot read {rel} in checkpoint directory {src_dir}: {e.strerror}"
                    ) from e
                if stat_mod.S_ISDIR(st.st_mode):
                    continue  # a symlink to a directory inside: its files are stored under their own path
                if not stat_mod.S_ISREG(st.st_mode):
                    log.warning("job %s: not storing %s (not a regular file)", self.job_key, rel)
                    continue
                out.append((rel, read_path, st.st_size, stat_mod.S_IMODE(st.st_mode)))
        out.sort()
        return out

    def _dedup_index(self, ids: List[str]) -> Dict[str, ChunkRef]:
        """Chunks of committed manifests whose objects exist, by sha256.

        Chunks in a pack that the kept checkpoints use less than
        REPACK_BELOW of are left out: they are uploaded again, into this
        commit's packs, so the sparse pack stops being referenced and gc
        removes it once the checkpoints using it are pruned. Without this,
        one live chunk would keep a whole pack of dead ones forever.
        """
        manifests = self._load_valid(ids)
        if not manifests:
            return {}
        sizes: Dict[str, int] = {}
        for kind in ("chunks", "packs"):
            for key, info in self.store.list_info(self._key(kind)):
                sizes[key[len(self._prefix) + 1:]] = info.size
        live: Dict[str, Set[int]] = {}
        live_bytes: Dict[str, int] = {}
        for m in manifests:
            for f in m.files:
                for c in f.chunks:
                    if c.object.startswith("packs/") and c.offset not in live.setdefault(c.object, set()):
                        live[c.object].add(c.offset)
                        live_bytes[c.object] = live_bytes.get(c.object, 0) + c.size
        sparse = {obj for obj, n in live_bytes.items() if obj in sizes and n < REPACK_BELOW * sizes[obj]}
        index: Dict[str, ChunkRef] = {}
        for m in manifests:
            for f in m.files:
                for c in f.chunks:
                    if c.sha256 not in index and c.object in sizes and c.object not in sparse:
                        index[c.sha256] = c
        return index

    def _next_id(self, existing: List[str]) -> str:
        cid = new_checkpoint_id(self._clock())
        if existing and cid <= existing[0]:
            # Keep ids increasing even if this node's clock is behind the last writer's.
            cid = new_checkpoint_id(checkpoint_id_time(existing[0]) + 0.001)
        return cid

    def _chunk_file(self, rel: str, path: str, size: int, mode: int, extents_for: Optional[ExtentsFor],
                    index: Dict[str, ChunkRef], uploader: _Uploader, hasher: ThreadPoolExecutor) -> FileEntry:
        extents = None
        if extents_for is not None:
            try:
                extents = extents_for(rel)
            except Exception as e:  # chunking only affects dedup: fall back to a fixed grid
                log.warning("job %s: no pagemap extents for %s (%s); fixed-size chunks", self.job_key, rel, e)
        try:
            pieces: List[Piece] = plan_chunks(size, self.chunk_size, extents)
        except ValueError as e:
            log.warning("job %s: bad pagemap extents for %s (%s); fixed-size chunks", self.job_key, rel, e)
            pieces = plan_fixed(size, self.chunk_size)
        # The whole-file hash runs on its own thread, one piece behind the chunk
        # hashes (hashlib releases the GIL): twice the throughput of doing both here.
        whole = hashlib.sha256()
        pending: Optional[Future] = None
        refs: List[ChunkRef] = []
        try:
            with open(path, "rb", buffering=0) as f:
                for piece in pieces:
                    data = _read_exactly(f, piece.length)
                    if len(data) != piece.length:
                        raise StoreError(f"{rel} shrank while being committed")
                    if pending is not None:
                        pending.result()
                    pending = hasher.submit(whole.update, data)
                    sha = hashlib.sha256(data).hexdigest()
                    known = index.get(sha)
                    if known is not None and known.size == len(data):
                        uploader.reused(len(data))
                    else:
                        known = uploader.add(sha, data)
                        index[sha] = known
                    refs.append(dataclasses.replace(known))
                if f.read(1):
                    raise StoreError(f"{rel} grew while being committed")
        except OSError as e:
            raise StoreError(f"cannot read {rel} to commit it: {e.strerror}") from e
        finally:
            if pending is not None:
                pending.result()
        return FileEntry(path=rel, size=size, mode=mode, sha256=whole.hexdigest(), chunks=refs)

    @_with_job_key
    def commit(
        self,
        src_dir: str,
        manifest_template: Manifest,
        extents_for: Optional[ExtentsFor] = None,
        progress: Optional[ProgressFn] = None,
    ) -> Manifest:
        """Store the checkpoint directory `src_dir` and return its manifest.

        `manifest_template` gives everything but `files` (checkpoint_id and
        created_at are filled in when empty; its stats are kept and the
        upload numbers added). `extents_for(relpath)` returns the pagemap
        extents of a pages image, or None for a fixed-size grid.
        `progress(done_bytes, total_bytes)` may be called from worker threads.
        On failure nothing references the partial upload, earlier
        checkpoints are untouched, and StoreError is raised.
        """
        started = time.monotonic()
        existing = self._ids_under("manifests")
        template = dataclasses.replace(manifest_template, files=[])
        if template.job_key and template.job_key != self.job_key:
            raise StoreError(f"manifest template is for job {template.job_key!r}, not {self.job_key!r}")
        template.job_key = self.job_key
        template.checkpoint_id = template.checkpoint_id or self._next_id(existing)
        template.created_at = template.created_at or self._clock()
        template.stats = dict(manifest_template.stats)
        template.validate()  # fail before uploading anything
        cid = template.checkpoint_id
        if self.store.exists(self._manifest_key(cid)):
            raise StoreError(f"checkpoint {cid} already exists")

        files = self._scan(src_dir)
        total = sum(size for _, _, size, _ in files)
        index = self._dedup_index(existing)
        uploader = _Uploader(self, cid, total, progress)
        hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmbatch-hash")
        try:
            entries = [
                self._chunk_file(rel, path, size, mode, extents_for, index, uploader, hasher)
                for rel, path, size, mode in files
            ]
            uploader.finish()
        except BaseException as e:
            uploader.abort()
            if isinstance(e, MmbatchError) or not isinstance(e, Exception):
                raise
            raise StoreError(f"checkpoint {cid} failed: {e}") from e
        finally:
            hasher.shutdown(wait=True)

        manifest = dataclasses.replace(template, files=entries)
        manifest.stats.update(
            files_total=len(entries),
            bytes_total=total,
            bytes_uploaded=uploader.bytes_uploaded,
            chunks_total=sum(len(f.chunks) for f in entries),
            chunks_uploaded=uploader.chunks_uploaded,
            objects_uploaded=uploader.objects_uploaded,
            upload_seconds=round(time.monotonic() - started, 3),
        )
        data = manifest.to_json()
        manifest = Manifest.from_json(data)  # exactly what readers will see (defaults filled in)
        self.store.put_bytes(self._manifest_key(cid), data)
        try:
            self.store.put_bytes(self._key(LATEST), cid.encode("ascii") + b"\n")
        except StoreError as e:
            # The checkpoint is committed; latest() copes with a stale pointer.
            log.warning("job %s: checkpoint %s committed but LATEST not updated: %s", self.job_key, cid, e)
        log.info(
            "job %s: committed checkpoint %s: %d files, %d bytes, %d uploaded in %.1fs",
            self.job_key, cid, len(entries), total, uploader.bytes_uploaded, manifest.stats["upload_seconds"],
        )
        return manifest

    # -- fetch ------------------------------------------------------------------------

    def _dest_parent(self, root: str, rel: str) -> str:
        """Create the directories of `rel` under `root` (0700), refusing symlinks."""
        parts = rel.split("/")[:-1]
        current = root
        for part in parts:
            current = os.path.join(current, part)
            try:
                os.mkdir(current, 0o700)
                os.chmod(current, 0o700)
            except FileExistsError:
                if os.path.islink(current) or not os.path.isdir(current):
                    raise StoreError(
                        f"cannot restore {rel}: {current} exists and is not a directory"
                    ) from None
        return current

    @_with_job_key
    def fetch(self, manifest: Manifest, dest_dir: str, progress: Optional[ProgressFn] = None) -> None:
        """Rebuild every file of `manifest` under `dest_dir`, verified.

        Chunks are read in parallel (adjacent chunks of a pack in one ranged
        read), each checked against its sha256, and each file against its
        size before it is renamed into place with its mode (owner
        bits only, at most 0600). A mismatch or a missing object raises
        CorruptObject naming the file and chunk; a partial fetch leaves no
        file of this checkpoint behind under its final name.
        """
        manifest.validate()
        if manifest.job_key != self.job_key:
            raise StoreError(f"checkpoint {manifest.checkpoint_id} belongs to job {manifest.job_key!r}")
        cid = manifest.checkpoint_id
        try:
            os.makedirs(dest_dir, mode=0o700, exist_ok=True)
            root = os.path.realpath(dest_dir)
        except OSError as e:
            raise StoreError(f"cannot create {dest_dir}: {e.strerror}") from e
        total = manifest.total_size
        done = [0]
        lock = threading.Lock()
        tmps: List[str] = []
        finals: List[Tuple[FileEntry, str, str]] = []
        try:
            for entry in manifest.files:
                parent = self._dest_parent(root, entry.path)
                final = os.path.join(parent, entry.path.rsplit("/", 1)[-1])
                tmp = os.path.join(parent, _TMP_PREFIX + os.urandom(8).hex())
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                tmps.append(tmp)
                try:
                    os.fchmod(fd, 0o600)
                    os.ftruncate(fd, entry.size)
                finally:
                    os.close(fd)
                finals.append((entry, tmp, final))

            def read_task(
                entry: FileEntry, tmp: str, file_off: int, first: int, refs: List[ChunkRef]
            ) -> None:
                obj = refs[0].object
                length = sum(r.size for r in refs)
                where = f"chunk {first} of {entry.path} (object {obj})"
                try:
                    data = self.store.get_range(self._key(obj), refs[0].offset, length)
                except ObjectNotFound as e:
                    raise CorruptObject(f"checkpoint {cid}: {where} is missing from the store") from e
                if len(data) != length:
                    raise CorruptObject(f"checkpoint {cid}: {where} is truncated in the store")
                pos = 0
                for i, ref in enumerate(refs):
                    piece = memoryview(data)[pos:pos + ref.size]
                    if hashlib.sha256(piece).hexdigest() != ref.sha256:
                        raise CorruptObject(
                            f"checkpoint {cid}: chunk {first + i} of {entry.path} "
                            f"(object {obj} offset {ref.offset}) does not match its sha256"
                        )
                    pos += ref.size
                fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    view = memoryview(data)
                    written = 0
                    while written < length:
                        written += os.pwrite(fd, view[written:], file_off + written)
                finally:
                    os.close(fd)
                with lock:
                    done[0] += length
                    now = done[0]
                _report(progress, now, total)

            self._run_parallel(read_task, self._read_tasks(finals))
            for entry, tmp, final in finals:
                # Every chunk was checked against its sha256 and written at its
                # offset, and the manifest's chunks add up to the file: the file
                # is right by construction. Re-hashing it whole would read every
                # byte again on the restore path, where the job is waiting.
                _verify_size(cid, entry, tmp)
                os.chmod(tmp, entry.mode & 0o600)
                os.rename(tmp, final)
                tmps.remove(tmp)
        except OSError as e:
            raise StoreError(f"cannot write checkpoint {cid} to {dest_dir}: {e.strerror}") from e
        finally:
            for tmp in tmps:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def _read_tasks(self, finals: List[Tuple[FileEntry, str, str]]) -> Iterable[tuple]:
        """(entry, tmp, file offset, first chunk index, refs): contiguous chunks of one object, coalesced."""
        max_read = max(self.pack_size, self.chunk_size)
        for entry, tmp, _final in finals:
            file_off = 0
            group: List[ChunkRef] = []
            group_off = group_first = group_len = 0
            for i, ref in enumerate(entry.chunks):
                if group and (ref.object != group[-1].object
                              or ref.offset != group[-1].offset + group[-1].size
                              or group_len + ref.size > max_read):
                    yield entry, tmp, group_off, group_first, group
                    group = []
                if not group:
                    group_off, group_first, group_len = file_off, i, 0
                group.append(ref)
                group_len += ref.size
                file_off += ref.size
            if group:
                yield entry, tmp, group_off, group_first, group

    def _run_parallel(self, fn: Callable[..., None], tasks: Iterable[tuple]) -> None:
        """Run fn(*task) on `parallel` threads, at most `parallel` tasks in flight; first error wins."""
        slots = threading.BoundedSemaphore(self.parallel)
        errors: List[BaseException] = []
        futures: List[Future] = []

        def done(fut: Future) -> None:
            slots.release()
            if not fut.cancelled() and fut.exception() is not None:
                errors.append(fut.exception())  # type: ignore[arg-type]

        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="mmbatch-fetch") as pool:
            try:
                for task in tasks:
                    slots.acquire()
                    if errors:
                        slots.release()
                        break
                    fut = pool.submit(fn, *task)
                    fut.add_done_callback(done)
                    futures.append(fut)
            finally:
                for fut in futures:
                    if errors:
                        fut.cancel()
        if errors:
            raise errors[0]
        for fut in futures:
            fut.result()

    # -- prune and garbage collection --------------------------------------------------

    @_with_job_key
    def prune(self, keep: int, grace_seconds: Optional[float] = None) -> GcResult:
        """Keep the newest `keep` checkpoints, retire the rest, then `gc`."""
        if keep < 1:
            raise ValueError("keep must be at least 1 (use delete_all to remove every checkpoint)")
        pruned = 0
        for cid in self._ids_under("manifests")[keep:]:
            key = self._manifest_key(cid)
            try:
                data = self.store.get_bytes(key)
            except ObjectNotFound:
                continue
            try:
                self._parse(data, cid)
            except ManifestError as e:
                log.warning("job %s: deleting unreadable checkpoint %s: %s", self.job_key, cid, e)
            else:
                self.store.put_bytes(self._key(f"trash/{cid}.json"), data)
            self.store.delete(key)
            pruned += 1
            log.info("job %s: pruned checkpoint %s", self.job_key, cid)
        result = self.gc(grace_seconds)
        result.manifests_pruned = pruned
        return result

    @_with_job_key
    def gc(self, grace_seconds: Optional[float] = None) -> GcResult:
        """Delete chunk and pack objects no manifest needs (the rule is in the module docstring)."""
        grace = self.grace_seconds if grace_seconds is None else grace_seconds
        result = GcResult()
        now = self._clock()
        referenced: Set[str] = set()
        for cid in self._ids_under("manifests"):
            try:
                referenced |= self._load(cid).chunk_objects()
            except ObjectNotFound:
                continue  # moved to the trash meanwhile: listed below
            except ManifestError as e:
                # Perhaps written by a newer mmbatch: do not guess what it needs.
                result.skipped = f"checkpoint {cid} is unreadable ({e.message})"
                log.warning("job %s: not collecting garbage: %s", self.job_key, result.skipped)
                return result
        expired_trash: List[str] = []
        for key, info in self.store.list_info(self._key("trash")):
            cid = key.rsplit("/", 1)[-1][: -len(".json")]
            if now - info.mtime >= grace:
                expired_trash.append(key)
                continue
            try:
                referenced |= self._parse(self.store.get_bytes(key), cid).chunk_objects()
            except ObjectNotFound:
                continue
            except ManifestError as e:
                result.skipped = f"pruned checkpoint {cid} is unreadable ({e.message})"
                log.warning("job %s: not collecting garbage: %s", self.job_key, result.skipped)
                return result
        doomed: List[Tuple[str, int]] = []
        for kind in ("chunks", "packs"):
            for key, info in self.store.list_info(self._key(kind)):
                rel = key[len(self._prefix) + 1:]
                if rel not in referenced and now - info.mtime >= grace:
                    doomed.append((key, info.size))
        to_delete = []
        for key, size in doomed:
            try:
                info = self.store.stat(key)  # a commit may have just rewritten it
            except ObjectNotFound:
                continue
            if self._clock() - info.mtime >= grace:
                to_delete.append(key)
                result.bytes_deleted += size
        # Marked first: a lifecycle rule on the mark finishes a gc cut short here (docs/aws.md).
        self.store.mark_garbage(to_delete + expired_trash)
        self.store.delete_many(to_delete)
        result.objects_deleted = len(to_delete)
        self.store.delete_many(expired_trash)
        result.trash_deleted = len(expired_trash)
        if to_delete or expired_trash:
            log.info("job %s: garbage collected %d objects (%d bytes), %d pruned manifests",
                     self.job_key, len(to_delete), result.bytes_deleted, len(expired_trash))
        return result

    @_with_job_key
    def delete_all(self) -> None:
        """Delete every object of the job: checkpoints first, then data and records."""
        keys = list(self.store.list(self._prefix))
        self._delete_checkpoints_first(keys)
        log.info("job %s: deleted all %d objects", self.job_key, len(keys))

    @_with_job_key
    def delete_checkpoints(self) -> int:
        """Delete every checkpoint and its data, keeping the job's records
        (attempts, events) for the management server. Returns objects deleted."""
        data_dirs = tuple(self._key(d) + "/" for d in ("manifests", "trash", "chunks", "packs"))
        keys = [k for k in self.store.list(self._prefix) if k == self._key(LATEST) or k.startswith(data_dirs)]
        self._delete_checkpoints_first(keys)
        log.info("job %s: deleted its checkpoints (%d objects)", self.job_key, len(keys))
        return len(keys)

    def _delete_checkpoints_first(self, keys: List[str]) -> None:
        """Manifests and the pointer go first: no checkpoint is ever visible
        with part of its data gone."""
        manifests_dir = self._key("manifests/")
        first = [k for k in keys if k == self._key(LATEST) or k.startswith(manifests_dir)]
        self.store.delete_many(first)
        self.store.delete_many(sorted(set(keys) - set(first)))

    # -- job records ---------------------------------------------------------------------

    def _record_key(self, kind: str, name: Optional[str] = None) -> str:
        if not isinstance(kind, str) or not RECORD_KIND_RE.match(kind) or kind in _RESERVED_KINDS:
            raise StoreError(f"invalid record kind {kind!r}",
                             hint=f"lowercase a-z 0-9 _ -, not one of {', '.join(sorted(_RESERVED_KINDS))}")
        if name is None:
            return self._key(kind)
        if not isinstance(name, str) or not RECORD_NAME_RE.match(name):
            raise StoreError(
                f"invalid record name {name!r}", hint="1-200 of A-Z a-z 0-9 . _ -, starting alphanumeric"
            )
        return self._key(f"{kind}/{name}.json")

    @_with_job_key
    def put_record(self, kind: str, name: str, data: Dict[str, Any]) -> None:
        """Store a small JSON record `jobs/<job>/<kind>/<name>.json` (atomically replaced)."""
        key = self._record_key(kind, name)
        if not isinstance(data, dict):
            raise StoreError(f"record {kind}/{name} must be a dict, got {type(data).__name__}")
        try:
            body = json.dumps(data, sort_keys=True, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise StoreError(f"record {kind}/{name} is not JSON-serializable: {e}") from e
        self.store.put_bytes(key, body)

    @_with_job_key
    def get_record(self, kind: str, name: str) -> Optional[Dict[str, Any]]:
        """The record, or None when there is none; CorruptObject when it is not a JSON object."""
        key = self._record_key(kind, name)
        try:
            data = self.store.get_bytes(key)
        except ObjectNotFound:
            return None
        return _parse_record(data, f"{kind}/{name}")

    @_with_job_key
    def list_records(self, kind: str) -> List[Dict[str, Any]]:
        """Every record of `kind`, sorted by name; unreadable ones are skipped (logged)."""
        base = self._record_key(kind)
        out = []
        for key in sorted(self.store.list(base)):
            name = key[len(base) + 1:]
            if "/" in name or not name.endswith(".json"):
                continue
            try:
                out.append(_parse_record(self.store.get_bytes(key), f"{kind}/{name}"))
            except ObjectNotFound:
                continue
            except CorruptObject as e:
                log.warning("job %s: skipping record: %s", self.job_key, e)
        return out


def _parse_record(data: bytes, what: str) -> Dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptObject(f"record {what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CorruptObject(f"record {what} is not a JSON object")
    return doc


def _read_exactly(f: Any, n: int) -> bytes:
    parts = []
    while n > 0:
        block = f.read(n)
        if not block:
            break
        parts.append(block)
        n -= len(block)
    return b"".join(parts)


def _verify_size(checkpoint_id: str, entry: FileEntry, path: str) -> None:
    size = os.stat(path).st_size
    if size != entry.size:
        raise CorruptObject(f"checkpoint {checkpoint_id}: {entry.path} is {size} bytes, expected {entry.size}")
