"""mmbatchd: the node daemon that checkpoints managed containers on a
schedule and saves them when the Spot instance is reclaimed.

It learns of managed containers from four sources, all idempotent:
  (a) mmbatch-hook datagrams (poststart/poststop) on the hook socket,
  (b) the runtime's "restored" datagram after a restore (same socket),
  (c) the engine's event stream (start, die, destroy, oom, kill),
  (d) a reconcile of `<state_dir>/*/state.json` against the engine's running
      containers, at start-up and every 30 s.
A container is managed when our runtime wrote state.json for it. At start-up
each job's schedule resumes from its last committed checkpoint in the store.

One thread (the main loop) owns all state; the hook listener, the engine
event reader, the Spot watcher and the checkpoint workers talk to it through
a queue. Checkpoints run on worker threads: periodic ones as many at a time
as `[checkpoint] parallel` allows (mmbatch.scheduler decides), final ones at
an interruption one per CPU (`[spot] final_parallel`).

Interruption (mmbatch.spot): write `<state_dir>/interrupted` (the runtime's
`kill` then holds stop signals), freeze every job (`runc pause`, recorded in
its state as frozen_by), take its final checkpoint, write its
`<state_dir>/<id>/final.json`. Jobs stay frozen; if the instance still lives
at the notice's time plus `spot.grace_seconds`, they are resumed and the
schedule goes on. A restarted daemon picks an interruption up from the
marker and the states.

Exit codes: the engine's `die` event carries it; the daemon finalizes the
attempt (mmbatch.finalize) unless the runtime's own detached finalizer has
already recorded one, so checkpoints of succeeded jobs go even when that
finalizer could not run.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from mmbatch import config as config_mod
from mmbatch import events, node_info
from mmbatch.errors import CheckpointBusy, EngineError, MmbatchError
from mmbatch.scheduler import Scheduler, schedule_base

log = logging.getLogger("mmbatchd")

RECONCILE_SECONDS = 30.0
SHUTDOWN_FINAL_TIMEOUT = 120.0     # in-flight final checkpoints at SIGTERM (unit: TimeoutStopSec=150)
SHUTDOWN_PERIODIC_TIMEOUT = 20.0   # in-flight periodic ones (the freeze guard covers an abandoned one)
FINALIZE_DELAY = 10.0              # let the runtime's own finalizer go first
FORGET_STOPPED_AFTER = 900.0
FINAL_ATTEMPTS = 3
ENGINE_EVENTS = ["start", "die", "destroy", "oom", "kill"]
HOOK_START_EVENTS = ("createRuntime", "createContainer", "startContainer", "poststart", "prestart")


def hook_socket_path(cfg: config_mod.Config) -> str:
    return os.environ.get("MMBATCH_HOOK_SOCKET") or cfg.api.hook_socket


def _valid_id(cid: Any) -> bool:
    from shim.argv import is_valid_container_id

    return isinstance(cid, str) and is_valid_container_id(cid)


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class ManagedContainer:
    container_id: str
    state: Dict[str, Any]
    started_at: float
    stopped_at: Optional[float] = None
    frozen: bool = False
    final_status: Optional[str] = None
    last_checkpoint_at: Optional[float] = None
    flags: Set[str] = field(default_factory=set)

    @property
    def job(self) -> Dict[str, Any]:
        return self.state.get("job") or {}

    @property
    def job_key(self) -> str:
        return str(self.job.get("job_key") or "")

    @property
    def interval(self) -> float:
        return float(self.job.get("interval") or 0)


class Daemon:
    def __init__(self, cfg: config_mod.Config, clock: Callable[[], float] = time.time,
                 engine: Any = None) -> None:
        from mmbatch.engine import DockerEngine

        self.cfg = cfg
        self.clock = clock
        self.state_dir = cfg.runtime.state_dir
        self.engine = engine or DockerEngine(cfg.runtime.docker_socket, timeout=10.0)
        self.inbox: queue.Queue[Tuple[Any, ...]] = queue.Queue()
        self.stop_event = threading.Event()
        self.containers: Dict[str, ManagedContainer] = {}
        ck = cfg.checkpoint
        self.scheduler = Scheduler(
            parallel=ck.parallel, jitter=ck.jitter, bandwidth_bytes_per_second=ck.bandwidth_mbps * 1e6 / 8,
            retry_seconds=ck.retry_seconds,
        )
        self.final_parallel = cfg.spot.final_parallel or cpu_count()
        self._final_slots = threading.Semaphore(self.final_parallel)
        self._lock = threading.Lock()
        self._periodic: Set[str] = set()            # containers with a periodic checkpoint in flight
        self._finals: Dict[str, threading.Thread] = {}
        self._final_pending: Set[str] = set()       # final checkpoints not yet reported to the main loop
        self._final_results: Dict[str, Dict[str, Any]] = {}
        self._final_t0 = time.monotonic()
        self._repos: Dict[str, Any] = {}
        self.interruption: Optional[Dict[str, Any]] = None
        self._last_reconcile = 0.0
        self._sock: Optional[socket.socket] = None
        self.hook_socket = hook_socket_path(cfg)
        self.finalize_delay = FINALIZE_DELAY
        # The node API (mmbatch.api): metrics fed from results and events, and
        # the mode/interval of the file, which PUT /api/v1/config may change.
        from mmbatch.api.metrics import Metrics

        self.metrics = Metrics()
        self.file_checkpoint = (cfg.checkpoint.mode, cfg.checkpoint.interval)
        self.api: Any = None
        self.on_event: Optional[Callable[[Dict[str, Any]], None]] = None  # each new events.log line

    # -- plumbing ------------------------------------------------------------------

    def post(self, *msg: Any) -> None:
        self.inbox.put(msg)

    def _thread(self, target: Callable[..., None], *args: Any, name: str = "") -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=name or getattr(target, "__name__", "worker"),
                             daemon=True)
        t.start()
        return t

    def _emit(self, kind: str, c: Optional[ManagedContainer] = None, **fields: Any) -> None:
        repo = None
        if c is not None and c.job_key:
            repo = self._repos.get(c.job_key)
            if repo is None:
                try:
                    from mmbatch.checkpointer import open_repository

                    repo = self._repos[c.job_key] = open_repository(self.cfg, c.job)
                except Exception as e:
                    log.debug("no store for event %s: %s", kind, e)
        events.emit(events.make(kind, c.job_key if c else None, c.container_id if c else None, **fields), repo)

    # -- sources ---------------------------------------------------------------------

    def open_hook_socket(self) -> None:
        path = self.hook_socket
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                probe.connect(path)
                raise MmbatchError(f"another mmbatchd listens on {path}",
                                   hint="stop it first (systemctl stop mmbatchd)")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # left by a daemon that died
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        s.settimeout(1.0)
        self._sock = s

    def _hook_listener(self) -> None:
        import json

        assert self._sock is not None
        while not self.stop_event.is_set():
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                if self.stop_event.is_set():
                    return
                time.sleep(0.5)
                continue
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            if isinstance(msg, dict):
                self.post("hook", msg)

    def _engine_events(self) -> None:
        since = self.clock()
        last_nano = 0
        failing = False
        while not self.stop_event.is_set():
            try:
                for ev in self.engine.events(since, since + 10 * 365 * 86400,
                                             {"type": ["container"], "event": ENGINE_EVENTS}, timeout=None):
                    nano = int(ev.get("timeNano") or 0)
                    if nano and nano <= last_nano:
                        continue  # replayed after a reconnect
                    last_nano = max(last_nano, nano)
                    if nano:
                        since = nano / 1e9
                    self.post("engine", ev)
                    if failing:
                        log.info("engine events: connected again")
                        failing = False
            except (EngineError, OSError, ValueError) as e:
                if not failing:
                    log.warning("engine events: %s; reconnecting", e)
                failing = True
            self.stop_event.wait(2.0)

    def _spot_watcher(self) -> None:
        from mmbatch.spot import ImdsClient, ImdsError, SpotWatcher

        try:
            client = ImdsClient(self.cfg.spot.imds_endpoint)
        except ImdsError as e:
            log.error("spot watcher disabled: %s", e)
            return
        wrote_facts = False
        watcher = SpotWatcher(
            client,
            on_interruption=lambda n: self.post("spot", n),
            on_rebalance=lambda n: self.post("rebalance", n),
            poll_seconds=self.cfg.spot.poll_seconds,
            log=lambda m: log.warning("%s", m),
        )
        failing = False
        while not self.stop_event.is_set():
            try:
                if not wrote_facts:
                    facts = node_info.facts_from_imds(client.get)
                    path = node_info.write_node_info(facts)
                    wrote_facts = True
                    log.info("node %s: %s", path, ", ".join(f"{k}={v}" for k, v in sorted(facts.items())))
                watcher.poll_once()
                if failing:
                    log.info("IMDS answers again")
                failing = False
            except ImdsError as e:
                if not failing:
                    log.warning("spot watcher: %s (retrying every %gs)", e, self.cfg.spot.poll_seconds)
                failing = True
            except Exception as e:
                log.exception("spot watcher: %s", e)
            self.stop_event.wait(self.cfg.spot.poll_seconds)

    # -- what runs ---------------------------------------------------------------------

    def _running_ids(self) -> Optional[Set[str]]:
        try:
            return {c["Id"] for c in self.engine.list_containers()
                    if c.get("State") in ("running", "paused") and c.get("Id")}
        except (EngineError, OSError) as e:
            log.warning("engine container list failed (%s); asking the runtime", e)
            return None

    def _runtime_status(self, st: Dict[str, Any], cid: str) -> Optional[str]:
        from mmbatch.runc import Runc, identity_flags

        try:
            return (Runc(st.get("runtime") or "runc", identity_flags(st.get("globals") or {})).state(cid)
                    or {}).get("status")
        except MmbatchError:
            return None

    def reconcile(self) -> None:
        """Find managed containers that run but are not scheduled (a daemon start,
        a lost datagram). Their schedules resume from the store."""
        self._last_reconcile = self.clock()
        try:
            names = os.listdir(self.state_dir)
        except OSError:
            return
        running = self._running_ids()
        for cid in names:
            if not _valid_id(cid) or cid in self.containers and self.containers[cid].stopped_at is None:
                continue
            if not os.path.isfile(os.path.join(self.state_dir, cid, "state.json")):
                continue
            if running is not None and cid not in running:
                continue
            self.discover(cid, "reconcile", check_runtime=running is None)

    def discover(self, cid: str, source: str, check_runtime: bool = False) -> Optional[ManagedContainer]:
        from shim import state as shim_state

        if not _valid_id(cid):
            return None
        known = self.containers.get(cid)
        if known is not None and known.stopped_at is None:
            return known
        st = shim_state.read(self.state_dir, cid)
        if not st or not st.get("managed") or not isinstance(st.get("job"), dict):
            return None
        if st.get("decision") == "pending":
            return None  # its create is still running; its start will tell us
        if check_runtime and self._runtime_status(st, cid) not in ("running", "paused"):
            return None
        restored = st.get("decision") == "restored"
        started = float(st.get("restored_at") if restored and st.get("restored_at") else
                        st.get("created_at") or self.clock())
        last = None
        if source == "reconcile":
            last = self._latest_checkpoint_time(st)
        c = ManagedContainer(cid, st, started, frozen=bool(st.get("frozen_by")), last_checkpoint_at=last)
        if c.interval <= 0 or c.interval == self.file_checkpoint[1]:  # the node's interval, maybe changed by the API
            c.state["job"]["interval"] = self.cfg.checkpoint.interval
        self.containers[cid] = c
        base = schedule_base(last, started)
        self.scheduler.remove(cid)
        job = self.scheduler.add(cid, c.interval, base)
        log.info("watching %s (job %s, %s, via %s): next checkpoint in %.0fs", cid[:12], c.job_key,
                 "restored" if restored else "cold start", source, max(0.0, job.next_due - self.clock()))
        if self.interruption is not None:
            if node_info.read_final(self.state_dir, cid) is None:
                self._start_final(cid)
            else:
                c.final_status = "committed"
        elif c.frozen:
            self._thaw(c, "left frozen by an earlier interruption")
        return c

    def _latest_checkpoint_time(self, st: Dict[str, Any]) -> Optional[float]:
        from mmbatch.checkpointer import open_repository

        try:
            m = open_repository(self.cfg, st["job"]).latest()
        except Exception as e:
            log.warning("job %s: cannot read its latest checkpoint (%s)", st["job"].get("job_key"), e)
            return None
        return float(m.created_at) if m is not None else None

    def _stopped(self, cid: str) -> None:
        c = self.containers.get(cid)
        self.scheduler.remove(cid)
        if c is not None and c.stopped_at is None:
            c.stopped_at = self.clock()
            log.info("%s (job %s) stopped", cid[:12], c.job_key)

    def _forget_old(self) -> None:
        now = self.clock()
        for cid, c in list(self.containers.items()):
            if c.stopped_at is not None and now - c.stopped_at > FORGET_STOPPED_AFTER:
                del self.containers[cid]

    # -- messages ---------------------------------------------------------------------

    def handle(self, msg: Tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "hook":
            self._on_hook(msg[1])
        elif kind == "engine":
            self._on_engine(msg[1])
        elif kind == "done":
            self._on_done(*msg[1:])
        elif kind == "rebased":
            _, cid, t = msg
            nxt = self.scheduler.rebase(cid, t)
            if nxt is not None:
                log.info("%s: checkpointed at %.3f by someone else; next in %.0fs", cid[:12], t, nxt - self.clock())
        elif kind == "spot":
            self.begin_interruption(msg[1])
        elif kind == "rebalance":
            self._on_rebalance(msg[1])
        elif kind == "final-done":
            self._on_final_done(*msg[1:])
        elif kind == "call":  # from the API's threads: run in the loop, answer on the reply queue
            _, fn, reply = msg
            try:
                reply.put((True, fn()))
            except Exception as e:
                reply.put((False, e))
        elif kind == "stop":
            self.stop_event.set()

    def _on_hook(self, msg: Dict[str, Any]) -> None:
        cid = msg.get("container_id")
        event = msg.get("event")
        if not _valid_id(cid):
            return
        if event == "restored" or event in HOOK_START_EVENTS:
            self.discover(cid, f"hook {event}")
        elif event == "poststop":
            self._stopped(cid)

    def _on_engine(self, ev: Dict[str, Any]) -> None:
        action = str(ev.get("Action") or ev.get("status") or "")
        cid = (ev.get("Actor") or {}).get("ID") or ev.get("id")
        if not _valid_id(cid):
            return
        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
        if action == "start":
            self.discover(cid, "engine start")
        elif action == "die":
            c = self.containers.get(cid)
            self._stopped(cid)
            if c is not None:
                try:
                    code: Optional[int] = int(attrs["exitCode"])
                except (KeyError, ValueError):
                    code = None
                self._thread(self._finalize, c, code, name=f"finalize-{cid[:12]}")
        elif action == "destroy":
            self.scheduler.remove(cid)
            self.containers.pop(cid, None)
        elif action in ("oom", "kill") and cid in self.containers:
            log.info("%s: engine %s %s", cid[:12], action, attrs.get("signal", ""))

    def _finalize(self, c: ManagedContainer, exit_code: Optional[int]) -> None:
        """The attempt's end from the engine's die event; a no-op when the
        runtime's detached finalizer already recorded the exit code."""
        from mmbatch.checkpointer import open_repository
        from mmbatch.finalize import finalize

        if self.stop_event.wait(self.finalize_delay):
            return
        try:
            record = open_repository(self.cfg, c.job).get_record("attempts", c.container_id) or {}
            if record.get("exit_code") is not None:
                return
            finalize(c.container_id, c.state, self.cfg, exit_code=exit_code)
            log.info("%s (job %s): finalized, exit code %s", c.container_id[:12], c.job_key, exit_code)
        except Exception as e:
            log.warning("%s: finalize failed: %s", c.container_id[:12], e)

    # -- periodic checkpoints ---------------------------------------------------------

    def _start_periodic(self, cid: str, reason: str, base: float) -> None:
        with self._lock:
            self._periodic.add(cid)
        self._thread(self._periodic_worker, cid, reason, base, name=f"ckpt-{cid[:12]}")

    def _periodic_worker(self, cid: str, reason: str, base: float) -> None:
        from mmbatch.checkpointer import checkpoint_container

        try:
            c = self.containers.get(cid)
            if reason == "periodic" and c is not None:
                t = self._latest_checkpoint_time(c.state)
                if t is not None and t > base + 1.0:
                    self.post("rebased", cid, t)
                    return
            log.info("%s: %s checkpoint starts", cid[:12], reason)
            result = checkpoint_container(cid, self.cfg, self.state_dir, reason=reason,
                                          log=lambda m: log.debug("%s: %s", cid[:12], m))
            self.post("done", cid, reason, result, None)
        except Exception as e:
            self.post("done", cid, reason, None, e)
        finally:
            with self._lock:
                self._periodic.discard(cid)

    def _on_done(self, cid: str, reason: str, result: Any, error: Optional[BaseException]) -> None:
        now = self.clock()
        c = self.containers.get(cid)
        if error is None:
            created = float(result.manifest.created_at)
            if c is not None:
                c.last_checkpoint_at = created
            nxt = self.scheduler.completed(cid, now, created, result.bytes_uploaded)
            self.metrics.checkpoint_committed(reason, result.freeze_seconds, result.bytes_total,
                                              result.bytes_uploaded)
            log.info("%s (job %s): %s checkpoint %s, frozen %.3fs, %d bytes new; next in %.0fs", cid[:12],
                     result.job_key, reason, result.checkpoint_id, result.freeze_seconds, result.bytes_uploaded,
                     (nxt or now) - now)
            return
        if isinstance(error, CheckpointBusy):
            self.scheduler.failed(cid, now, str(error), busy=True)
            return
        st = c.state if c is not None else {}
        if c is None or not os.path.isfile(os.path.join(self.state_dir, cid, "state.json")) or \
                self._runtime_status(st, cid) not in ("running", "paused"):
            log.info("%s: gone (%s)", cid[:12], error)
            self._stopped(cid)
            return
        nxt = self.scheduler.failed(cid, now, str(error))
        self.metrics.checkpoint_failed(reason)
        job = self.scheduler.get(cid)
        failures = job.failures if job else 0
        log.warning("%s (job %s): %s checkpoint failed (%s); retry %d in %.0fs", cid[:12], c.job_key, reason,
                    error, failures, (nxt or now) - now)
        self._emit("checkpoint-retry", c, reason=reason, error=str(error)[:2000], failures=failures,
                   retry_in=round((nxt or now) - now, 3))

    # -- rebalance and interruption ------------------------------------------------------

    def _active(self) -> List[ManagedContainer]:
        return [c for c in self.containers.values() if c.stopped_at is None]

    def _on_rebalance(self, notice: Any) -> None:
        if self.interruption is not None:
            return
        now = self.clock()
        self.metrics.rebalances.inc()
        n = sum(1 for c in self._active() if self.scheduler.request_now(c.container_id, now, "rebalance"))
        log.warning("rebalance recommendation (notice time %s): early checkpoint of %d jobs", notice.raw_time, n)
        self._emit("rebalance-recommendation", None, notice_time=notice.raw_time, jobs=n)

    def begin_interruption(self, notice: Any) -> None:
        now = self.clock()
        if self.interruption is not None:
            if self.interruption.get("time_text") == notice.raw_time:
                return
            log.warning("a new interruption notice (%s %s) during one in progress", notice.action, notice.raw_time)
        deadline = notice.time + self.cfg.spot.grace_seconds
        if self.cfg.checkpoint.mode == "none":  # checkpoints turned off at run time (PUT /api/v1/config)
            log.warning("Spot interruption notice %s %s: checkpoint mode is none, no final checkpoints",
                        notice.action, notice.raw_time)
            return
        if now > deadline:
            log.info("ignoring interruption notice %s %s: its grace ran out", notice.action, notice.raw_time)
            return
        self.metrics.interruptions.inc()
        self.interruption = {
            "action": notice.action, "time": notice.time, "time_text": notice.raw_time, "noticed_at": now,
            "deadline": deadline, "grace_seconds": self.cfg.spot.grace_seconds,
            "kill_wait_seconds": self.cfg.spot.kill_wait_seconds,
        }
        node_info.write_interruption(self.state_dir, self.interruption)
        self.scheduler.hold()
        active = self._active()
        self._final_t0 = time.monotonic()
        self._final_results = {}
        log.warning("Spot interruption notice: %s at %s (in %.0fs); final checkpoints of %d jobs, %d at a time",
                    notice.action, notice.raw_time, notice.time - now, len(active), self.final_parallel)
        self._emit("spot-interruption", None, action=notice.action, time=notice.raw_time, jobs=len(active),
                   parallel=self.final_parallel)
        # Freeze first, all at once: nothing a job does after the notice can
        # then escape its final checkpoint, and the CPUs are free to save.
        todo = []
        for c in active:
            if node_info.read_final(self.state_dir, c.container_id) is not None:
                c.final_status = "committed"
                continue
            todo.append(c.container_id)
        with self._lock:
            busy = set(self._periodic)
        for cid in todo:
            if cid not in busy:
                self._freeze(self.containers[cid])
        for cid in todo:
            self._start_final(cid)

    def _freeze(self, c: ManagedContainer) -> bool:
        from mmbatch.runc import Runc, identity_flags
        from shim import state as shim_state

        if c.frozen:
            return True
        runc = Runc(c.state.get("runtime") or "runc", identity_flags(c.state.get("globals") or {}))
        status = (runc.state(c.container_id) or {}).get("status")
        if status == "paused":
            return True  # paused by its user: it stays so, and is not ours to resume
        if status != "running":
            return False
        try:
            shim_state.update(self.state_dir, c.container_id, frozen_by="mmbatchd", frozen_at=time.time(),
                              frozen_for="spot-interruption")
            runc.pause(c.container_id)
        except (MmbatchError, OSError) as e:
            log.error("%s: cannot freeze: %s", c.container_id[:12], e)
            try:
                shim_state.update(self.state_dir, c.container_id, frozen_by=None)
            except OSError:
                pass
            return False
        c.frozen = True
        self._emit("freeze", c, reason="spot-interruption")
        return True

    def _start_final(self, cid: str) -> None:
        if cid in self._final_pending:
            return
        self._final_pending.add(cid)
        with self._lock:
            self._finals[cid] = self._thread(self._final_worker, cid, name=f"final-{cid[:12]}")

    def _final_worker(self, cid: str) -> None:
        from mmbatch.checkpointer import checkpoint_container

        c = self.containers.get(cid)
        marker = self.interruption or {}
        give_up_at = float(marker.get("deadline") or time.time() + 300)
        t_start = time.monotonic()
        status, detail, ckid, taken_at = "failed", "", None, None
        with self._final_slots:
            try:
                if c is None:
                    return
                while True:  # a periodic checkpoint in flight finishes first (it resumes the job at its end)
                    with self._lock:
                        busy = cid in self._periodic
                    if not busy:
                        break
                    time.sleep(0.05)
                if not self._freeze(c):
                    detail = "not running"
                    return
                attempts = 0
                while time.time() < give_up_at:
                    attempts += 1
                    try:
                        result = checkpoint_container(cid, self.cfg, self.state_dir, reason="spot-final",
                                                      log=lambda m: log.debug("%s: %s", cid[:12], m))
                    except CheckpointBusy:
                        attempts -= 1
                        time.sleep(0.2)
                        continue
                    except MmbatchError as e:
                        detail = str(e)
                        log.error("%s: final checkpoint attempt %d failed: %s", cid[:12], attempts, e)
                        if attempts >= FINAL_ATTEMPTS:
                            break
                        time.sleep(0.5)
                        continue
                    status, ckid, taken_at = "committed", result.checkpoint_id, float(result.manifest.created_at)
                    self.metrics.checkpoint_committed("spot-final", result.freeze_seconds, result.bytes_total,
                                                      result.bytes_uploaded)
                    detail = f"frozen {result.freeze_seconds:.3f}s, {result.bytes_uploaded} bytes new"
                    break
            except Exception as e:  # the marker must be written whatever happens
                detail = f"{type(e).__name__}: {e}"
                log.exception("%s: final checkpoint: %s", cid[:12], e)
            finally:
                seconds = time.monotonic() - t_start
                if c is not None:
                    try:
                        node_info.write_final(self.state_dir, cid, {
                            "status": status, "checkpoint_id": ckid, "seconds": round(seconds, 3),
                            "detail": detail[:2000], "time": time.time(),
                        })
                    except OSError as e:
                        log.error("%s: cannot write its final marker: %s", cid[:12], e)
                self.post("final-done", cid, status, ckid, taken_at, seconds, detail)

    def _on_final_done(self, cid: str, status: str, ckid: Optional[str], taken_at: Optional[float],
                       seconds: float, detail: str) -> None:
        self._final_pending.discard(cid)
        c = self.containers.get(cid)
        since_notice = time.monotonic() - self._final_t0
        if c is not None:
            self._report_final(c, status, ckid, taken_at, seconds, detail, since_notice)
        if not self._final_pending and self.interruption is not None and self._final_results:
            done = self._final_results
            ok = sum(1 for r in done.values() if r["status"] == "committed")
            log.warning("final checkpoints: %d committed, %d failed, %.1fs after the notice", ok, len(done) - ok,
                        since_notice)
            self._emit("final-checkpoints", None, committed=ok, failed=len(done) - ok,
                       seconds=round(since_notice, 3), parallel=self.final_parallel)

    def _report_final(self, c: ManagedContainer, status: str, ckid: Optional[str], taken_at: Optional[float],
                      seconds: float, detail: str, since_notice: float) -> None:
        cid = c.container_id
        c.final_status = status
        self._final_results[cid] = {"status": status, "seconds": seconds}
        if status != "committed":
            self.metrics.checkpoint_failed("spot-final")
        if status == "committed":
            c.last_checkpoint_at = taken_at
            log.warning("%s (job %s): final checkpoint %s committed (%.1fs after the notice); job stays frozen",
                        cid[:12], c.job_key, ckid, since_notice)
        else:
            log.error("%s (job %s): no final checkpoint (%s); the job runs on", cid[:12], c.job_key, detail)
            if c.frozen:
                self._thaw(c, "its final checkpoint failed")
        self._emit("final-checkpoint", c, status=status, checkpoint_id=ckid, seconds=round(seconds, 3),
                   since_notice=round(since_notice, 3), detail=detail[:500])

    def _thaw(self, c: ManagedContainer, why: str) -> None:
        from mmbatch.runc import Runc, identity_flags
        from shim import state as shim_state

        runc = Runc(c.state.get("runtime") or "runc", identity_flags(c.state.get("globals") or {}))
        try:
            if (runc.state(c.container_id) or {}).get("status") == "paused":
                runc.resume(c.container_id)
            shim_state.update(self.state_dir, c.container_id, frozen_by=None, resumed_at=time.time())
        except (MmbatchError, OSError) as e:
            log.error("%s: cannot resume: %s", c.container_id[:12], e)
            return
        c.frozen = False
        log.warning("%s (job %s): resumed: %s", c.container_id[:12], c.job_key, why)
        self._emit("resume", c, reason=why)

    def _check_interruption_over(self) -> None:
        if self.interruption is None or self.clock() < float(self.interruption.get("deadline") or 0):
            return
        if self._final_pending:
            return
        log.warning("the instance outlived its interruption notice (%s) by %gs: resuming jobs",
                    self.interruption.get("time_text"), self.cfg.spot.grace_seconds)
        n = 0
        for c in self._active():
            if c.frozen:
                self._thaw(c, "the interruption did not happen")
                n += 1
            node_info.clear_final(self.state_dir, c.container_id)
            c.final_status = None
            if c.last_checkpoint_at:
                self.scheduler.rebase(c.container_id, c.last_checkpoint_at)
        node_info.clear_interruption(self.state_dir)
        self._emit("spot-resume", None, time=self.interruption.get("time_text"), jobs=n)
        self.interruption = None
        self._final_results = {}
        self.scheduler.release()

    def _load_interruption_marker(self) -> Optional[Dict[str, Any]]:
        """A daemon restarted during an interruption carries on with it. A
        marker past its deadline is dropped (discover() thaws what it froze)."""
        data = node_info.read_interruption(self.state_dir, self.clock())
        if data is None and os.path.exists(node_info.interruption_path(self.state_dir)):
            node_info.clear_interruption(self.state_dir)
            for name in os.listdir(self.state_dir):
                if _valid_id(name):
                    node_info.clear_final(self.state_dir, name)
        return data

    # -- the loop ----------------------------------------------------------------------

    def start(self, spot: bool = True, engine_events: bool = True) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.open_hook_socket()
        self._thread(self._hook_listener, name="hooks")
        if engine_events:
            self._thread(self._engine_events, name="engine-events")
        marker = self._load_interruption_marker()
        if marker is not None:
            log.warning("an interruption is in progress (%s at %s): carrying on with it", marker.get("action"),
                        marker.get("time_text"))
            self.interruption = marker
            self.scheduler.hold()
        self.reconcile()  # during an interruption, every job without a final checkpoint gets one
        if spot and self.cfg.spot.enabled:
            self._thread(self._spot_watcher, name="spot")
        self._start_api()
        log.info("mmbatchd: %d managed containers; hook socket %s; checkpoints %d at a time; final ones %d at "
                 "a time", len(self._active()), self.hook_socket, self.cfg.checkpoint.parallel, self.final_parallel)

    def _start_api(self) -> None:
        """The node API and the event-log follower that feeds restore metrics
        (and CloudWatch). Neither may stop the daemon: errors are logged."""
        from mmbatch.api.metrics import EventLogFollower
        from mmbatch.api.node_view import DaemonView
        from mmbatch.api.server import ApiServer, socket_path

        def active_jobs() -> List[Tuple[Dict[str, str], float]]:
            try:
                cs = list(self.containers.values())
            except RuntimeError:  # changed while copied: the next scrape has it
                return []
            active = [c for c in cs if c.stopped_at is None]
            return [({"state": "running"}, float(sum(1 for c in active if not c.frozen))),
                    ({"state": "frozen"}, float(sum(1 for c in active if c.frozen)))]

        self.metrics.add_gauge("mmbatch_managed_jobs", "Managed containers the daemon watches", active_jobs)

        def on_event(ev: Dict[str, Any]) -> None:
            self.metrics.observe_event(ev)
            if self.on_event is not None:
                self.on_event(ev)

        follower = EventLogFollower(os.path.join(events.log_dir(), "events.log"), on_event)
        self._thread(follower.run, self.stop_event, name="event-log")
        view = DaemonView(self)
        try:
            api = ApiServer.from_config(view, self.cfg)
        except MmbatchError as e:  # an unusable token file: no TCP listener, the unix socket still
            log.error("node API: no TCP listener: %s", e)
            api = ApiServer(view, socket_path(self.cfg))
        try:
            self.api = api.start()
        except MmbatchError as e:
            api.stop()
            self.api = None
            log.error("node API not served: %s", e)

    def step(self, max_wait: float = 1.0) -> None:
        now = self.clock()
        for job in (self.scheduler.due(now) if self.cfg.checkpoint.mode != "none" else []):
            c = self.containers.get(job.key)
            if c is None:
                self.scheduler.remove(job.key)
                continue
            self._start_periodic(job.key, job.reason, job.base)
        wake = self.scheduler.next_wakeup(self.clock())
        timeout = max_wait if wake is None else max(0.02, min(max_wait, wake - self.clock()))
        try:
            msg = self.inbox.get(timeout=timeout)
        except queue.Empty:
            msg = None
        while msg is not None:
            try:
                self.handle(msg)
            except Exception as e:
                log.exception("handling %s: %s", msg[0], e)
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                msg = None
        self._check_interruption_over()
        if self.clock() - self._last_reconcile >= RECONCILE_SECONDS:
            self.reconcile()
            self._forget_old()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.step()
        self.shutdown()

    def shutdown(self) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + SHUTDOWN_FINAL_TIMEOUT
        with self._lock:
            finals = [t for t in self._finals.values() if t.is_alive()]
        if finals:
            log.warning("stopping: waiting for %d final checkpoints", len(finals))
        for t in finals:
            t.join(max(0.0, deadline - time.monotonic()))
        deadline = time.monotonic() + SHUTDOWN_PERIODIC_TIMEOUT
        while time.monotonic() < deadline:
            with self._lock:
                if not self._periodic:
                    break
            time.sleep(0.1)
        while True:  # report what finished meanwhile (its markers are written already)
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                break
            if msg[0] in ("final-done", "done"):
                try:
                    self.handle(msg)
                except Exception as e:
                    log.warning("while stopping: %s", e)
        if self.api is not None:
            self.api.stop()
        if self._sock is not None:
            self._sock.close()
            try:
                os.unlink(self.hook_socket)
            except OSError:
                pass
        log.info("mmbatchd stopped")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mmbatchd", description="mmbatch node daemon (runs in the foreground)")
    p.add_argument("--config", help="config file (default $MMBATCH_CONFIG or /etc/mmbatch/config.toml)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    args = p.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
    except MmbatchError as e:
        print(f"mmbatchd: {e}", file=sys.stderr)
        return 2
    from mmbatch import logs

    logs.setup_daemon_logging(cfg, args.log_level or cfg.log.level)
    events.configure(cfg.log.dir)
    os.environ.setdefault("MMBATCH_LOG_DIR", cfg.log.dir)  # and for what it starts
    daemon = Daemon(cfg)
    shipping = None
    try:
        shipping = logs.start_cloudwatch(cfg, on_drop=lambda n: daemon.metrics.log_drops.inc(n))
    except Exception as e:  # CloudWatch is optional: the daemon runs without it
        log.error("CloudWatch Logs shipping is off: %s", e)
    if shipping is not None:
        shipper, prefix = shipping
        daemon.on_event = lambda ev: shipper.submit(f"{prefix}/events", json.dumps(ev, sort_keys=True, default=str),
                                                    float(ev.get("time") or time.time()))

    def on_signal(signum: int, _frame: Any) -> None:
        daemon.stop_event.set()
        daemon.post("stop")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # `kill -USR2 <pid>`: every thread's stack on stderr, for a daemon that seems stuck.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    try:
        daemon.start()
    except MmbatchError as e:
        log.error("%s", e)
        return 1
    daemon.run()
    if shipping is not None:
        shipping[0].stop(flush_timeout=5.0)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # worker threads abandoned at the timeout must not hold the exit up


if __name__ == "__main__":
    sys.exit(main())
