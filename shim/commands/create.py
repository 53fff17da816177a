"""`create`: decide whether the container is a managed job; if so, prepare it
(CRIU options, state) and restore its latest good checkpoint instead of a cold
create. Anything of ours that fails means a cold create: fail open.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from shim import delegate, runtime_log, state
from shim.argv import Invocation

_JOB_ENV_MARKERS = ("AWS_BATCH_JOB_ID=", "MMBATCH_JOB_KEY=")


def _looks_like_job(spec: dict) -> bool:
    env = (spec.get("process") or {}).get("env") or []
    return any(isinstance(e, str) and e.startswith(_JOB_ENV_MARKERS) and len(e.split("=", 1)[1]) > 0 for e in env)


def run(inv: Invocation, runtime: str, state_dir: str, problem: Optional[str]) -> int:
    cid = inv.container_id or ""
    if problem:
        runtime_log.write(inv.log_path, "warning", problem, inv.log_format)
    try:
        restored = _managed_create(inv, runtime, state_dir, cid)
    except Exception as e:  # fail open: never stop a container because of us
        runtime_log.write(
            inv.log_path, "warning", f"create of {cid[:12]}: {type(e).__name__}: {e}; cold start", inv.log_format
        )
        restored = False
    if restored:
        return 0
    try:
        delegate.exec_delegate(runtime, inv.argv)
    except OSError as e:
        runtime_log.write(
            inv.log_path, "error", f"cannot execute delegate runtime {runtime}: {e.strerror}", inv.log_format,
            stderr=True,
        )
    return 1


def _managed_create(inv: Invocation, runtime: str, state_dir: str, cid: str) -> bool:
    """Prepare a managed container; True when it was restored (create done)."""
    from mmbatch import oci

    bundle = inv.flags.get("bundle") or os.getcwd()
    spec = oci.read_spec(bundle)
    if not _looks_like_job(spec):
        return False

    from mmbatch import config as config_mod
    from mmbatch.identity import ECS_CONTAINER_NAME_LABEL, env_of, job_settings

    cfg = config_mod.load()
    env = env_of(spec)
    image_id = ""
    container_name = ""
    engine_note = ""
    try:
        from mmbatch.engine import DockerEngine

        summary = DockerEngine(cfg.runtime.docker_socket, timeout=3.0).container_summary(cid)
        if summary:
            image_id = summary.get("ImageID") or ""
            container_name = (summary.get("Labels") or {}).get(ECS_CONTAINER_NAME_LABEL, "")
    except Exception as e:
        engine_note = f"container engine not asked ({e}); image not checked"
    settings = job_settings(env, cfg, container_name)
    for w in settings.warnings:
        runtime_log.write(inv.log_path, "warning", w, inv.log_format)
    if not settings.managed:
        return False
    if engine_note:
        runtime_log.write(inv.log_path, "warning", engine_note, inv.log_format)

    cdir = state.container_dir(state_dir, cid)
    os.makedirs(cdir, mode=0o700, exist_ok=True)
    criu_conf = os.path.join(cdir, "criu.conf")
    oci.write_criu_config(criu_conf, oci.criu_options(cfg.checkpoint))
    oci.inject(spec, criu_conf, settings.job_key or "")
    oci.write_spec(bundle, spec)
    record = {
        "container_id": cid,
        "managed": True,
        "job": settings.to_dict(),
        "image_id": image_id,
        "container_name": container_name,
        "bundle": bundle,
        "root": inv.root,
        "globals": inv.globals,
        "runtime": runtime,
        "created_at": time.time(),
        "decision": "pending",
    }
    state.write(state_dir, cid, record)
    runtime_log.write(inv.log_path, "info", f"managed job {settings.job_key}", inv.log_format)

    from mmbatch.restorer import CreateRequest, restore_on_create

    request = CreateRequest(
        container_id=cid,
        bundle=bundle,
        spec=spec,
        settings=settings,
        config=cfg,
        runtime=runtime,
        globals_=inv.globals,
        pid_file=inv.flags.get("pid-file", ""),
        console_socket=inv.flags.get("console-socket", ""),
        image_id=image_id,
        state_dir=state_dir,
        log=lambda level, msg: runtime_log.write(inv.log_path, level, msg, inv.log_format),
    )
    return restore_on_create(request)
