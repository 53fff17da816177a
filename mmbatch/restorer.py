"""Restore-on-create: a managed container's `create` becomes a restore of its
job's latest good checkpoint.

Order of checks, cheapest and safest first: the policy (was the previous
attempt interrupted?), the checkpoint's compatibility with this container
and node, its restore-failure count, then fetch and verify every chunk, then
the volume files, then the rootfs diff (backed up so it can be undone), then
`runc restore --detach`. Any failure falls back to the previous checkpoint,
then to a cold create. The caller (shim create) never lets an exception out.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from mmbatch import attempts, events, faults, gpu, oci, open_files, predump, rootfs_diff
from mmbatch.checkpointer import CRIU_DIR, ROOTFS_DIR, criu_version, keep_logs, node_info, open_repository
from mmbatch.compat import check as compat_check
from mmbatch.compat import node_compat
from mmbatch.config import Config
from mmbatch.errors import IncompatibleCheckpoint, MmbatchError, RestoreError
from mmbatch.identity import JobSettings, env_of
from mmbatch.runc import Runc, identity_flags
from mmbatch.staging import choose as choose_staging

MAX_CANDIDATES = 3


@dataclass
class CreateRequest:
    container_id: str
    bundle: str
    spec: Dict[str, Any]
    settings: JobSettings
    config: Config
    runtime: str
    globals_: Dict[str, str]
    pid_file: str
    console_socket: str
    image_id: str
    state_dir: str
    log: Callable[[str, str], None]


def restore_on_create(req: CreateRequest) -> bool:
    """True when the container was restored (the create is done)."""
    from shim import state as shim_state

    cid = req.container_id
    key = req.settings.job_key or ""
    job = req.settings.to_dict()
    repo = open_repository(req.config, job)
    records = repo.list_records("attempts")
    allowed, why = attempts.should_restore(records)
    _record_attempt(repo, req, restored_from=None)
    if not allowed:
        req.log("info", f"cold start: {why}")
        events.emit(events.make("cold-start", key, cid, reason=why), repo)
        shim_state.update(req.state_dir, cid, decision="cold", reason=why)
        return False
    candidates = repo.list()[:MAX_CANDIDATES]
    if not candidates:
        shim_state.update(req.state_dir, cid, decision="cold", reason="no checkpoint")
        return False
    gpu_here: Optional[Dict[str, Any]] = None
    gpu_setup, gpu_problem = None, ""
    if any(m.compat.get("gpu") for m in candidates):  # nvidia-smi only when a checkpoint holds GPU state
        gpu_here, gpu_setup, gpu_problem = gpu.node_setup(req.config.gpu)
    current = node_compat(req.spec, req.image_id, criu_version(), "", gpu=gpu_here)
    if not req.image_id:
        current["image_id"] = ""
    for manifest in candidates:
        ckid = manifest.checkpoint_id
        failures = attempts.restore_failures(repo.get_record("restores", ckid))
        if failures >= req.config.checkpoint.max_restore_failures:
            _fallback(req, repo, ckid, f"skipped: failed to restore {failures} times")
            continue
        reason = compat_check(manifest.compat, current)
        if manifest.compat.get("gpu") and gpu_setup is None and (gpu_here is None or not reason):
            # no GPU found (or nvidia-smi failed), or CRIU lacks the plugin or cuda-checkpoint
            reason = gpu_problem or reason or "CRIU cannot restore GPU state here"
        if reason:
            _fallback(req, repo, ckid, f"incompatible: {reason}")
            continue
        try:
            t0 = time.monotonic()
            phases = _restore_one(req, repo, manifest, gpu_setup if manifest.compat.get("gpu") else None)
        except MmbatchError as e:
            counts = not isinstance(e, IncompatibleCheckpoint)
            if counts:
                repo.put_record("restores", ckid, {"failures": failures + 1, "last_error": str(e)[:2000],
                                                   "time": time.time()})
            _fallback(req, repo, ckid, str(e))
            continue
        seconds = time.monotonic() - t0
        shim_state.update(req.state_dir, cid, decision="restored", checkpoint_id=ckid, restored_at=time.time())
        _record_attempt(repo, req, restored_from=ckid)
        req.log("info", f"restored {key} from checkpoint {ckid} in {seconds:.2f}s")
        events.emit(events.make("restore", key, cid, checkpoint_id=ckid, seconds=seconds,
                                source_container=manifest.container_id, **phases), repo)
        return True
    shim_state.update(req.state_dir, cid, decision="cold", reason="no restorable checkpoint")
    events.emit(events.make("cold-start", key, cid, reason="no restorable checkpoint"), repo)
    return False


def _fallback(req: CreateRequest, repo, ckid: str, why: str) -> None:
    req.log("warning", f"checkpoint {ckid} not used: {why}")
    events.emit(events.make("restore-fallback", req.settings.job_key, req.container_id, checkpoint_id=ckid,
                            reason=why), repo)


def _record_attempt(repo, req: CreateRequest, restored_from: Optional[str]) -> None:
    data = repo.get_record("attempts", req.container_id) or {}
    data.update({
        "container_id": req.container_id,
        "attempt": req.settings.attempt,
        "job_queue": env_of(req.spec).get("AWS_BATCH_JQ_NAME", ""),  # for the management server
        "started_at": data.get("started_at") or time.time(),
        "node": node_info(),
        "restored_from": restored_from,
        "end": None,
        "ended_at": None,
        "exit_code": None,  # a container started again under its id (restart policy) ends anew
    })
    repo.put_record("attempts", req.container_id, data)


def _restore_one(req: CreateRequest, repo, manifest, gpu_setup: Optional[gpu.CriuGpuSetup] = None,
                 ) -> Dict[str, float]:
    """Restore one checkpoint; the seconds each phase took. A checkpoint with
    GPU state restores through CRIU's CUDA plugin (`gpu_setup`)."""
    cid = req.container_id
    # The images and the restored process are in memory at once: tmpfs only if both fit.
    staging_root = choose_staging(req.config.checkpoint, 2 * manifest.total_size)
    staging = os.path.join(staging_root, f"restore-{cid[:12]}-{manifest.checkpoint_id}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging_root, mode=0o700, exist_ok=True)
    os.makedirs(staging, mode=0o700)
    touched: Optional[List[str]] = None
    merged = oci.rootfs_path(req.spec, req.bundle)
    backup = os.path.join(staging, "rootfs-backup.tar")
    runc = Runc(req.runtime, identity_flags(req.globals_), log_file=os.path.join(staging, "runc.log"),
                env=gpu_setup.environment() if gpu_setup else None)
    try:
        out = os.path.join(staging, "out")
        t = time.monotonic()
        repo.fetch(manifest, out)  # verifies every chunk and file
        phases = {"fetch_seconds": time.monotonic() - t}
        faults.point("fetched")
        predump.relink(out, predump.parse_chain_label(manifest.labels.get(predump.LABEL, "")))
        truncations = open_files.plan_restore(manifest.open_files, req.spec)
        t = time.monotonic()
        touched = rootfs_diff.apply(merged, os.path.join(out, ROOTFS_DIR), backup)
        open_files.truncate(truncations)
        phases["rootfs_seconds"] = time.monotonic() - t
        faults.point("before-restore")
        work = os.path.join(staging, "work")
        os.makedirs(work, mode=0o700)
        args = ["restore", "--detach", "--no-subreaper", "--bundle", req.bundle,
                "--image-path", os.path.join(out, CRIU_DIR), "--work-path", work]
        if req.pid_file:
            args += ["--pid-file", req.pid_file]
        if req.console_socket:
            args += ["--console-socket", req.console_socket]
        # stdio stays inherited: runc maps the job's old stdio pipes onto the
        # ones the engine just gave this create (descriptors.json).
        t = time.monotonic()
        runc.run(*args, cid, capture=False, stdin=None, timeout=req.config.checkpoint.restore_timeout)
        phases["runc_restore_seconds"] = time.monotonic() - t
        if gpu_setup:
            phases.update(gpu.log_stats(os.path.join(work, "restore.log")))
        status = (runc.state(cid) or {}).get("status")
        if status != "running":
            raise RestoreError(f"restored container is {status or 'gone'}, not running")
        return phases
    except (MmbatchError, OSError) as e:
        runc.delete_force(cid)
        if touched is not None:
            try:
                rootfs_diff.revert(merged, touched, backup)
            except MmbatchError as re:
                req.log("warning", f"rootfs revert incomplete: {re}")
        if isinstance(e, MmbatchError):
            e.job_key = e.job_key or req.settings.job_key
            e.container_id = e.container_id or cid
            if not isinstance(e, RestoreError) and not isinstance(e, IncompatibleCheckpoint):
                raise RestoreError(e.message, container_id=cid, job_key=req.settings.job_key, hint=e.hint) from e
            raise
        raise RestoreError(f"restore failed: {e}", container_id=cid, job_key=req.settings.job_key) from e
    finally:
        if sys.exc_info()[0] is not None:
            keep_logs(os.path.join(staging, "work"), f"{cid[:12]}-restore")
        shutil.rmtree(staging, ignore_errors=True)
