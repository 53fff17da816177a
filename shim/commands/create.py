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


def _inject_hooks(spec: dict, hook_socket: str) -> None:
    """mmbatch-hook tells mmbatchd when the job starts and stops. Best effort:
    without the hook next to us there are no hooks (mmbatchd also follows the
    engine's events); the hook itself always exits 0."""
    import sys

    hook = ""
    for d in (os.path.dirname(os.path.abspath(sys.argv[0] or ".")), os.path.dirname(sys.executable)):
        candidate = os.path.join(d, "mmbatch-hook")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            hook = candidate
            break
    if not hook or not isinstance(spec.get("hooks", {}), dict):
        return
    hooks = spec.setdefault("hooks", {})
    env = [f"MMBATCH_HOOK_SOCKET={os.environ.get('MMBATCH_HOOK_SOCKET') or hook_socket}"]
    for stage in ("poststart", "poststop"):
        entries = hooks.setdefault(stage, [])
        if isinstance(entries, list):
            entries.append({"path": hook, "args": ["mmbatch-hook", stage], "env": env, "timeout": 5})


def _prepare_gpu(inv: Invocation, spec: dict, runtime: str) -> None:
    """nvidia-container-runtime adds its prestart hook only on `create`; a
    restore-on-create needs it too (it puts the GPU devices into the
    container), so add it the same way. The runtime leaves a spec that has
    the hook alone, so a cold create is unchanged."""
    from mmbatch import gpu

    if not gpu.is_nvidia_runtime(runtime):
        return
    hook = gpu.find_nvidia_hook(runtime)
    if hook:
        gpu.ensure_nvidia_hook(spec, hook)
    else:
        runtime_log.write(inv.log_path, "warning", f"{gpu.NVIDIA_HOOK} not found: a GPU job cannot be restored",
                          inv.log_format)


class Prepared:
    """A managed container, prepared: its config, spec and job settings."""

    def __init__(self, cfg, spec: dict, settings, image_id: str, bundle: str, globals_: dict) -> None:
        self.cfg = cfg
        self.spec = spec
        self.settings = settings
        self.image_id = image_id
        self.bundle = bundle
        self.globals_ = globals_


def prepare_managed(inv: Invocation, runtime: str, state_dir: str, cid: str, decision: str) -> Optional[Prepared]:
    """For a managed job: CRIU options and hooks into its spec, our state
    written. None when the container is not a managed job."""
    from mmbatch import oci

    bundle = os.path.abspath(inv.flags.get("bundle") or os.getcwd())
    spec = oci.read_spec(bundle)
    if not _looks_like_job(spec):
        return None

    from mmbatch import config as config_mod
    from mmbatch import events
    from mmbatch.identity import ECS_CONTAINER_NAME_LABEL, env_of, job_settings

    cfg = config_mod.load()
    events.configure(cfg.log.dir)
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
        return None
    if engine_note:
        runtime_log.write(inv.log_path, "warning", engine_note, inv.log_format)

    cdir = state.container_dir(state_dir, cid)
    os.makedirs(cdir, mode=0o700, exist_ok=True)
    criu_conf = os.path.join(cdir, "criu.conf")
    criu_lines = oci.criu_options(cfg.checkpoint)
    from mmbatch import gpu

    if gpu.requests_gpu(spec):
        criu_lines += gpu.criu_config_lines(cfg.gpu.lock_timeout)
        _prepare_gpu(inv, spec, runtime)
    oci.write_criu_config(criu_conf, criu_lines)
    oci.inject(spec, criu_conf, settings.job_key or "")
    _inject_hooks(spec, cfg.api.hook_socket)
    oci.write_spec(bundle, spec)
    root = inv.root if inv.root.startswith("/") else os.path.abspath(inv.root)
    globals_ = dict(inv.globals)
    if "root" in globals_:
        globals_["root"] = root
    record = {
        "container_id": cid,
        "managed": True,
        "job": settings.to_dict(),
        "image_id": image_id,
        "container_name": container_name,
        "bundle": bundle,
        "root": root,
        "globals": globals_,
        "runtime": runtime,
        "created_at": time.time(),
        "decision": decision,
    }
    state.write(state_dir, cid, record)
    runtime_log.write(inv.log_path, "info", f"managed job {settings.job_key}", inv.log_format)
    return Prepared(cfg, spec, settings, image_id, bundle, globals_)


def _managed_create(inv: Invocation, runtime: str, state_dir: str, cid: str) -> bool:
    """Prepare a managed container; True when it was restored (create done)."""
    prepared = prepare_managed(inv, runtime, state_dir, cid, decision="pending")
    if prepared is None:
        return False

    from mmbatch.restorer import CreateRequest, restore_on_create

    request = CreateRequest(
        container_id=cid,
        bundle=prepared.bundle,
        spec=prepared.spec,
        settings=prepared.settings,
        config=prepared.cfg,
        runtime=runtime,
        globals_=prepared.globals_,
        pid_file=inv.flags.get("pid-file", ""),
        console_socket=inv.flags.get("console-socket", ""),
        image_id=prepared.image_id,
        state_dir=state_dir,
        log=lambda level, msg: runtime_log.write(inv.log_path, level, msg, inv.log_format),
    )
    return restore_on_create(request)
