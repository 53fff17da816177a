"""Taking a checkpoint of a running managed container.

freeze (runc pause) -> runc checkpoint --leave-running into local staging ->
rootfs diff captured from the overlay upperdir while still frozen -> sizes of
files open on volumes -> resume -> write to the store -> manifest last.

One checkpoint at a time per container (a lock). If anything fails the job
keeps running (resumed in `finally`, and by a guard process if we are
killed) and the previous checkpoint stays intact (nothing is referenced
before the manifest is written).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

from mmbatch import events, faults, gpu, oci, open_files, predump, rootfs_diff
from mmbatch.compat import node_compat
from mmbatch.config import Config
from mmbatch.errors import CheckpointBusy, CheckpointError, MmbatchError
from mmbatch.freeze_guard import FreezeGuard
from mmbatch.freezer import Freezer
from mmbatch.runc import Runc, identity_flags, read_runtime_state
from mmbatch.staging import choose as choose_staging
from mmbatch.staging import container_memory
from mmbatch.staging import roots as staging_roots

CRIU_DIR = "criu"
ROOTFS_DIR = "rootfs"


@dataclass
class CheckpointResult:
    checkpoint_id: str
    job_key: str
    container_id: str
    freeze_seconds: float
    dump_seconds: float
    total_seconds: float
    bytes_total: int
    bytes_uploaded: int
    manifest: Any


_criu_version_cache: Dict[str, str] = {}


def criu_version(criu: str = "criu") -> str:
    if criu not in _criu_version_cache:
        try:
            out = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        version = ""
        for line in out.splitlines():
            if line.lower().startswith("version:"):
                version = line.split(":", 1)[1].strip()
        _criu_version_cache[criu] = version
    return _criu_version_cache[criu]


def node_info() -> Dict[str, str]:
    info = {"hostname": socket.gethostname()}
    try:  # written by the spot watcher (mmbatchd) from IMDS when it runs
        with open(os.environ.get("MMBATCH_NODE_INFO", "/run/mmbatch/node.json"), encoding="utf-8") as f:
            data = json.load(f)
        for k in ("instance_id", "instance_type", "availability_zone", "lifecycle"):
            if isinstance(data.get(k), str):
                info[k] = data[k]
    except (OSError, ValueError):
        pass
    return info


def pages_extents(checkpoint_dir: str, image_dirs: Sequence[str] = (CRIU_DIR,)) -> Callable[[str], Optional[list]]:
    """Map a pages image (path relative to the checkpoint dir) to its pagemap
    extents, so unchanged memory regions chunk identically. `image_dirs`:
    the final images and any pre-dump passes before them."""
    table: Dict[str, list] = {}
    try:
        from criu_bindings.images import iter_pagemaps

        for d in image_dirs:
            for _pagemap, pages, extents in iter_pagemaps(os.path.join(checkpoint_dir, d)):
                table[f"{d}/{os.path.basename(pages)}"] = list(extents)
    except Exception:
        table = {}
    return lambda rel: table.get(rel)


def _lock(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CheckpointBusy("another checkpoint of this container is in progress") from None
    return fd


def open_repository(cfg: Config, job: Dict[str, Any]):
    """The CheckpointRepository of a job (its store and namespace)."""
    from mmbatch.checkpoints import CheckpointRepository
    from mmbatch.identity import store_namespace
    from mmbatch.store import open_store

    store = open_store(job.get("image_path") or cfg.store.url, cfg.store)
    namespace = store_namespace(job["job_key"], job.get("image_subpath", ""))
    return CheckpointRepository.from_config(store, namespace, cfg.store)


def checkpoint_container(
    container_id: str,
    cfg: Config,
    state_dir: str,
    reason: str = "manual",
    log: Callable[[str], None] = lambda msg: None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> CheckpointResult:
    """Checkpoint one managed container. Raises CheckpointError; the job runs on.
    `progress(done_bytes, total_bytes)` follows the upload (the CLI's bar)."""
    from shim import state as shim_state

    st = shim_state.read(state_dir, container_id)
    if not st or not st.get("managed"):
        raise CheckpointError("not a managed container (no mmbatch state)", container_id=container_id)
    job = st["job"]
    job_key = job["job_key"]
    cdir = shim_state.container_dir(state_dir, container_id)
    lock_fd = _lock(os.path.join(cdir, "checkpoint.lock"))
    staging = None
    t_start = time.monotonic()
    try:
        globals_ = st.get("globals") or {}
        root = globals_.get("root") or "/run/runc"
        rstate = read_runtime_state(root, container_id)
        if not rstate:
            raise CheckpointError("the runtime has no state for it (not running?)", container_id=container_id,
                                  job_key=job_key)
        rootfs = rstate.get("config", {}).get("rootfs") or ""
        spec = oci.read_spec(st["bundle"])
        # A GPU job: CRIU's CUDA plugin and cuda-checkpoint, or GpuError saying what is missing.
        gpu_setup = gpu.setup_for(cfg.gpu, spec)
        overlay = rootfs_diff.find_overlay(rootfs)

        from mmbatch.manifest import Manifest, new_checkpoint_id

        ckid = new_checkpoint_id()
        _remove_stale_staging(cfg, container_id)  # left by a checkpointer that was killed; we hold the lock
        staging_root = choose_staging(cfg.checkpoint, container_memory(rstate.get("cgroup_paths") or {}))
        staging = os.path.join(staging_root, f"{container_id[:12]}-{ckid}")
        images = os.path.join(staging, "out", CRIU_DIR)
        rootfs_out = os.path.join(staging, "out", ROOTFS_DIR)
        work = os.path.join(staging, "work")
        for d in (images, rootfs_out, work):
            os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(staging_root, 0o700)
        runc = Runc(st["runtime"], identity_flags(globals_), log_file=os.path.join(work, "runc.log"),
                    env=gpu_setup.environment() if gpu_setup else None)
        status = (runc.state(container_id) or {}).get("status")
        if status not in ("running", "paused"):
            raise CheckpointError(f"container is {status or 'gone'}", container_id=container_id, job_key=job_key)
        already_paused = status == "paused"

        # With dirty-page tracking, most memory is written while the job
        # runs; the final dump then writes only what changed since.
        pre_dumps = predump.wanted(cfg.checkpoint.pre_dump, cfg.checkpoint.pre_dump_iterations,
                                   cfg.checkpoint.pre_dump == "auto" and predump.mem_dirty_track(
                                       cache_file=os.path.join(state_dir, "criu-features.json")), status)
        if gpu_setup:
            pre_dumps = 0  # CRIU's CUDA plugin disables itself in pre-dumps: device state needs a full dump
        parent = ""
        pre_dump_seconds = 0.0
        if pre_dumps:
            t_pre = time.monotonic()
            try:
                parent = predump.run_pre_dumps(runc, container_id, os.path.join(staging, "out"), work, pre_dumps)
            except CheckpointError as e:
                log(f"{e}; taking a full dump")
                pre_dumps = 0
            pre_dump_seconds = time.monotonic() - t_pre
        # Most of the rootfs diff is copied while the job still runs; the
        # frozen pass only copies what changed since (rootfs_diff docstring).
        try:
            pre = rootfs_diff.precopy(overlay.upper, rootfs_out)
        except CheckpointError as e:
            log(f"rootfs pre-copy skipped: {e}")
            pre = None
        faults.point("before-freeze")
        t_freeze = time.monotonic()
        # A container the user paused stays paused, and needs no guard. The
        # cgroup is frozen directly: a `runc pause` process costs frozen time.
        freezer = Freezer(rstate.get("cgroup_paths") or {})
        guard = None if already_paused else FreezeGuard(runc.argv("resume", container_id)).start()
        try:
            if guard:
                freezer.freeze()
            faults.point("frozen")
            volume_files = [] if gpu_setup else open_files.scan(freezer.pids(), spec)
            t_dump = time.monotonic()
            runc.checkpoint(container_id, images, work, leave_running=True,
                            extra=("--parent-path", parent) if parent else ())
            dump_seconds = time.monotonic() - t_dump
            if gpu_setup:  # CRIU thawed the cgroup for the plugin's lock; it is frozen again now
                volume_files = open_files.scan(freezer.pids(), spec)
            faults.point("dumped")
            diff_stats = rootfs_diff.capture(overlay.upper, rootfs_out, pre)
            faults.point("captured")
        finally:
            if guard:
                try:
                    freezer.thaw()
                    guard.release()
                finally:
                    guard.close()  # without release(), the guard resumes the job
        freeze_seconds = time.monotonic() - t_freeze
        criu_stats = _criu_dump_stats(work)
        log(f"frozen {freeze_seconds:.3f}s (dump {dump_seconds:.3f}s)")

        compat = node_compat(spec, st.get("image_id", ""), criu_version(), "",
                             gpu=gpu_setup.gpu.to_compat() if gpu_setup else None)
        if gpu_setup:  # the device-state copy happens inside the freeze: say how long it took
            criu_stats.update(gpu.log_stats(os.path.join(work, "dump.log")))
        template = Manifest(
            checkpoint_id=ckid,
            job_key=job_key,
            container_id=container_id,
            created_at=time.time(),
            attempt=str(job.get("attempt", "")),
            node=node_info(),
            compat=compat,
            open_files=volume_files,
            stats={
                "freeze_seconds": round(freeze_seconds, 6),
                "dump_seconds": round(dump_seconds, 6),
                "rootfs_files": diff_stats["files"],
                "rootfs_bytes": diff_stats["bytes"],
                "rootfs_frozen_bytes": diff_stats["frozen_bytes"],
                "rootfs_precopy_seconds": round(pre.seconds, 6) if pre else 0.0,
                "pre_dumps": pre_dumps,
                "pre_dump_seconds": round(pre_dump_seconds, 6),
                **criu_stats,
            },
            labels={"reason": reason, **({predump.LABEL: predump.chain_label(pre_dumps)} if pre_dumps else {})},
        )
        repo = open_repository(cfg, job)
        faults.point("before-upload")
        manifest = repo.commit(os.path.join(staging, "out"), template, extents_for=pages_extents(
            os.path.join(staging, "out"), [predump.pre_dir(n) for n in range(pre_dumps)] + [CRIU_DIR]),
            progress=progress)
        faults.point("committed")
        try:
            repo.prune(cfg.checkpoint.keep)
        except MmbatchError as e:
            log(f"pruning old checkpoints failed: {e}")
        total = time.monotonic() - t_start
        result = CheckpointResult(
            checkpoint_id=manifest.checkpoint_id, job_key=job_key, container_id=container_id,
            freeze_seconds=freeze_seconds, dump_seconds=dump_seconds, total_seconds=total,
            bytes_total=int(manifest.stats.get("bytes_total", 0)),
            bytes_uploaded=int(manifest.stats.get("bytes_uploaded", 0)), manifest=manifest,
        )
        events.emit(events.make(
            "checkpoint", job_key, container_id, checkpoint_id=manifest.checkpoint_id, reason=reason,
            freeze_seconds=freeze_seconds, dump_seconds=dump_seconds, total_seconds=total,
            bytes_total=result.bytes_total, bytes_uploaded=result.bytes_uploaded,
            rootfs_bytes=diff_stats["bytes"],
        ), repo)
        return result
    except MmbatchError as e:
        events.emit(events.make("checkpoint-failed", job_key, container_id, reason=reason, error=e.message))
        if isinstance(e, CheckpointError):
            e.container_id = e.container_id or container_id
            e.job_key = e.job_key or job_key
            raise
        raise CheckpointError(f"checkpoint failed: {e.message}", container_id=container_id, job_key=job_key,
                              hint=e.hint) from e
    except OSError as e:
        events.emit(events.make("checkpoint-failed", job_key, container_id, reason=reason, error=str(e)))
        raise CheckpointError(f"checkpoint failed: {e}", container_id=container_id, job_key=job_key) from e
    finally:
        if staging:
            if sys.exc_info()[0] is not None:
                keep_logs(os.path.join(staging, "work"), f"{container_id[:12]}-dump")
            shutil.rmtree(staging, ignore_errors=True)
        os.close(lock_fd)


def _criu_dump_stats(work: str) -> Dict[str, float]:
    """CRIU's own numbers (stats-dump in the work dir): times in seconds, pages."""
    try:
        from criu_bindings import read_dump_stats

        st = read_dump_stats(os.path.join(work, "stats-dump"))
    except Exception:
        return {}
    return {
        "criu_frozen_seconds": st.frozen_time / 1e6,
        "criu_freezing_seconds": st.freezing_time / 1e6,
        "criu_memdump_seconds": st.memdump_time / 1e6,
        "criu_memwrite_seconds": st.memwrite_time / 1e6,
        "criu_pages_scanned": st.pages_scanned,
        "criu_pages_written": st.pages_written,
    }


def _remove_stale_staging(cfg: Config, container_id: str) -> None:
    prefix = f"{container_id[:12]}-"
    for root in staging_roots(cfg.checkpoint):
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def keep_logs(work: str, prefix: str) -> None:
    """Keep CRIU's and runc's logs of a failed attempt under the log dir."""
    dest = os.path.join(events.log_dir(), "criu")
    try:
        names = [n for n in os.listdir(work) if n.endswith(".log")]
        if not names:
            return
        os.makedirs(dest, mode=0o750, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for n in names:
            shutil.copyfile(os.path.join(work, n), os.path.join(dest, f"{prefix}-{stamp}-{n}"))
    except OSError:
        pass
