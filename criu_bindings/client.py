"""`CriuClient`: CRIU's RPC requests (version, check, features, dump, pre-dump, restore).

Requests are criu_req messages (messages.py) sent over a transport
(transport.py); the response loop answers CRIU's notifications
("pre-dump", "post-dump", "network-lock", ...) with the caller's callback
and a ``notify_success`` reply, as libcriu does (lib/c/criu.c:
send_req_and_recv_resp_sk).

Options are a mapping of criu_opts field names (images/rpc.proto) to values,
checked against the definition, plus two conveniences: ``images_dir`` and
``work_dir`` may be paths, which the client opens and sends as
``images_dir_fd`` / ``work_dir_fd``. ``log_file`` defaults to
"<request>.log" (CRIU writes it in the work dir, which defaults to the
images dir), so every `CriuError` can name its log.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

from . import messages
from .errors import (
    CriuError,
    CriuNotFoundError,
    CriuNotifyError,
    CriuUnsupportedError,
    TransportError,
    WireError,
)
from .transport import CriuConnection, ServiceConnection, SwrkConnection, close_fds

__all__ = [
    "FEATURES",
    "CriuClient",
    "CriuVersion",
    "DumpResult",
    "RestoreResult",
    "NotifyEvent",
    "NotifyCallback",
    "find_criu",
]

REQ = messages.CRIU_REQ_TYPE

# Our feature names (as `criu check --feature NAME` spells the first one)
# -> criu_features fields (images/rpc.proto).
FEATURES: Dict[str, str] = {
    "mem_dirty_track": "mem_track",
    "lazy_pages": "lazy_pages",
    "pidfd_store": "pidfd_store",
}
_FEATURE_ALIASES = {"mem_track": "mem_track"}

#: Default seconds to wait for answers to quick queries (version, check, features).
QUERY_TIMEOUT = 60.0


def find_criu(criu: str | None = None) -> str:
    """The criu binary: `criu` if given, else $MMBATCH_CRIU, else `criu` on PATH."""
    candidate = criu or os.environ.get("MMBATCH_CRIU") or "criu"
    if os.sep in candidate:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        raise CriuNotFoundError(f"criu binary {candidate} is missing or not executable")
    found = shutil.which(candidate)
    if not found:
        raise CriuNotFoundError(f"no {candidate!r} on PATH; install CRIU >= 4 or set MMBATCH_CRIU to its path")
    return found


@dataclasses.dataclass(frozen=True)
class CriuVersion:
    """criu_version: 4.1.1 is major 4, minor 1, sublevel 1."""

    major: int
    minor: int
    sublevel: int = 0
    extra: int = 0
    gitid: str | None = None
    name: str | None = None

    def as_tuple(self) -> Tuple[int, int, int]:
        return (self.major, self.minor, self.sublevel)

    def __str__(self) -> str:
        s = f"{self.major}.{self.minor}"
        if self.sublevel or self.extra:
            s += f".{self.sublevel}"
        if self.extra:
            s += f".{self.extra}"
        return s


@dataclasses.dataclass(frozen=True)
class DumpResult:
    """Outcome of a dump or pre-dump. `restored` is criu_dump_resp.restored (self-dump only)."""

    restored: bool
    log_path: str | None


@dataclasses.dataclass(frozen=True)
class RestoreResult:
    """Outcome of a restore: the pid of the restored tree's root."""

    pid: int
    log_path: str | None


class NotifyEvent:
    """A CRIU notification ("action script" over RPC).

    Attributes:
        script: the action: "pre-dump", "post-dump", "pre-restore",
            "post-restore", "network-lock", "network-unlock",
            "setup-namespaces", "post-setup-namespaces", "pre-resume",
            "post-resume", "orphan-pts-master", "status-ready",
            "query-ext-files".
        pid: the restored root's pid (setup-namespaces, post-restore), else None.
        fd: an fd CRIU sent with the notification (orphan-pts-master: the
            pty master), else None. It is closed after the callback returns
            unless the callback calls `take_fd()`.
    """

    def __init__(self, script: str, pid: int | None, fd: int | None) -> None:
        self.script = script
        self.pid = pid
        self.fd = fd
        self._taken = False

    def take_fd(self) -> int | None:
        """Keep the received fd: the caller now owns (and must close) it."""
        self._taken = True
        return self.fd

    def _release(self) -> None:
        if self.fd is not None and not self._taken:
            close_fds([self.fd])

    def __repr__(self) -> str:
        return f"NotifyEvent(script={self.script!r}, pid={self.pid!r}, fd={self.fd!r})"


#: A notify callback gets a `NotifyEvent`; raising tells CRIU to abort.
#: For "query-ext-files" it may return an iterable of --external keys.
NotifyCallback = Callable[[NotifyEvent], Any]


class _PreparedOpts:
    """criu_opts ready to send, plus the fds we opened for it and where the log goes."""

    def __init__(self, opts: Dict[str, Any], opened: List[int], log_path: str | None, pass_fds: List[int]):
        self.opts = opts
        self.opened = opened
        self.log_path = log_path
        self.pass_fds = pass_fds

    def close(self) -> None:
        close_fds(self.opened)
        self.opened = []


def _open_dir(path: Any, what: str) -> int:
    try:
        return os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ValueError(f"cannot open {what} {path}: {e.strerror}") from e


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class CriuClient:
    """Talks to CRIU over RPC, one request per `criu swrk` (or service connection).

    Args:
        criu: path or name of the criu binary; default $MMBATCH_CRIU, else
            `criu` on PATH. Resolved on first use.
        service_address: talk to a running ``criu service`` at this unix
            socket path instead of starting ``criu swrk``.
        timeout: seconds to wait for each message during dump/pre-dump/
            restore (None: no limit; a big dump takes as long as it takes).
            On expiry `criu swrk` gets 30 s to finish, then SIGKILL, which
            can leave a tree being dumped stopped: prefer a generous value.
        query_timeout: the same for version/check/feature_check.
        env: environment for ``criu swrk`` (default: ours).
    """

    def __init__(
        self,
        criu: str | None = None,
        *,
        service_address: str | None = None,
        timeout: float | None = None,
        query_timeout: float | None = QUERY_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._criu = criu
        self._resolved: str | None = None
        self.service_address = service_address
        self.timeout = timeout
        self.query_timeout = query_timeout
        self.env = env

    @property
    def criu(self) -> str:
        """The resolved criu binary (raises `CriuNotFoundError`)."""
        if self._resolved is None:
            self._resolved = find_criu(self._criu)
        return self._resolved

    def __repr__(self) -> str:
        where = self.service_address or self._criu or "criu"
        return f"CriuClient({where!r})"

    # -- queries ---------------------------------------------------------

    def version(self) -> CriuVersion:
        """CRIU's version (VERSION request)."""
        resp = self._call({"type": "VERSION"}, timeout=self.query_timeout)
        v = resp.get("version")
        if v is None:
            raise TransportError("criu answered VERSION without a version")
        return CriuVersion(
            major=v["major_number"],
            minor=v["minor_number"],
            sublevel=v.get("sublevel", 0),
            extra=v.get("extra", 0),
            gitid=v.get("gitid"),
            name=v.get("name"),
        )

    def check(self, *, work_dir: str | None = None, log_level: int = 2) -> None:
        """Run CRIU's kernel check (like ``criu check``); raise `CriuError` when it fails.

        CRIU needs an images dir even for a check (it crashes without one),
        so a temporary one is used unless `work_dir` is given; the log is
        check.log there.
        """
        tmp = None if work_dir else tempfile.mkdtemp(prefix="mmbatch-criu-check-")
        d = work_dir or tmp
        assert d is not None
        try:
            opts = {"images_dir": d, "log_file": "check.log", "log_level": log_level}
            try:
                self._request("CHECK", opts, timeout=self.query_timeout)
            except CriuError as e:
                if tmp is None:
                    raise
                # The log goes away with the temporary dir: keep its errors, drop its path.
                raise CriuError(
                    "criu check failed",
                    request="CHECK",
                    cr_errno=e.cr_errno,
                    cr_errmsg=e.cr_errmsg,
                    log_errors=e.log_errors,
                ) from None
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)

    def feature_check(self, names: Iterable[str] = tuple(FEATURES)) -> Dict[str, bool]:
        """Which of `names` (mem_dirty_track, lazy_pages, pidfd_store) CRIU and the kernel support."""
        wanted: Dict[str, str] = {}
        for name in names:
            field = FEATURES.get(name) or _FEATURE_ALIASES.get(name)
            if field is None:
                raise ValueError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
            wanted[name] = field
        if not wanted:
            return {}
        req = {"type": "FEATURE_CHECK", "features": {f: True for f in wanted.values()}}
        resp = self._call(req, timeout=self.query_timeout)
        got = resp.get("features") or {}
        return {name: bool(got.get(field, False)) for name, field in wanted.items()}

    # -- dump / restore --------------------------------------------------------

    def dump(self, opts: Mapping[str, Any], notify: NotifyCallback | None = None) -> DumpResult:
        """Checkpoint the tree rooted at opts["pid"] into opts["images_dir"] (or images_dir_fd).

        Without leave_running the tree is killed after a successful dump. A
        failed dump, or a notify callback that raises, leaves it running.
        """
        if not opts.get("pid"):
            raise ValueError("dump needs opts['pid'] (dumping the calling process is not supported)")
        resp, log_path = self._request("DUMP", opts, notify=notify, timeout=self.timeout)
        return DumpResult(restored=bool((resp.get("dump") or {}).get("restored", False)), log_path=log_path)

    def pre_dump(
        self, opts: Mapping[str, Any], notify: NotifyCallback | None = None, *, check_support: bool = True
    ) -> DumpResult:
        """One memory pre-dump (SINGLE_PRE_DUMP) of opts["pid"]; needs kernel dirty-page tracking.

        Unless `check_support` is False, first asks CRIU whether the kernel
        tracks dirty pages and raises `CriuUnsupportedError` if not, without
        touching the process: CRIU 4.1.1 pre-dumping on such a kernel hits
        "BUG at criu/mem.c:45" halfway and leaves its parasite mapped in
        the process (/memfd:CRIUMFD).
        """
        if not opts.get("pid"):
            raise ValueError("pre_dump needs opts['pid']")
        if check_support and not self.feature_check(["mem_dirty_track"])["mem_dirty_track"]:
            raise CriuUnsupportedError(
                "pre-dump needs soft-dirty page tracking, which this kernel lacks"
                " (criu check --feature mem_dirty_track); take full dumps instead",
                request="SINGLE_PRE_DUMP",
                feature="mem_dirty_track",
            )
        _, log_path = self._request("SINGLE_PRE_DUMP", opts, notify=notify, timeout=self.timeout)
        return DumpResult(restored=False, log_path=log_path)

    def restore(self, opts: Mapping[str, Any], notify: NotifyCallback | None = None) -> RestoreResult:
        """Restore the tree in opts["images_dir"]; it is detached from CRIU and runs on its own."""
        resp, log_path = self._request("RESTORE", opts, notify=notify, timeout=self.timeout)
        pid = (resp.get("restore") or {}).get("pid")
        if pid is None:
            raise TransportError("criu answered RESTORE without a pid")
        return RestoreResult(pid=pid, log_path=log_path)

    # -- plumbing ------------------------------------------------------------------

    def _prepare(self, request: str, opts: Mapping[str, Any], notify: bool) -> _PreparedOpts:
        if not isinstance(opts, Mapping):
            raise TypeError(f"opts must be a mapping of criu_opts fields, got {type(opts).__name__}")
        out = {k: v for k, v in opts.items() if v is not None}
        opened: List[int] = []
        try:
            images_path: str | None = None
            if "images_dir_fd" in out:
                out.pop("images_dir", None)
                images_path = _fd_path(out["images_dir_fd"])
            elif "images_dir" in out:
                images_path = os.fspath(out.pop("images_dir"))
                fd = _open_dir(images_path, "images dir")
                opened.append(fd)
                out["images_dir_fd"] = fd
            else:
                raise ValueError(f"{request} needs opts['images_dir'] (a path) or opts['images_dir_fd']")
            work_path = images_path
            if "work_dir" in out:
                work_path = os.fspath(out.pop("work_dir"))
                fd = _open_dir(work_path, "work dir")
                opened.append(fd)
                out["work_dir_fd"] = fd
            elif "work_dir_fd" in out:
                work_path = _fd_path(out["work_dir_fd"])
            out.setdefault("log_file", f"{request.lower().replace('_', '-')}.log")
            if "/" in str(out["log_file"]):
                raise ValueError("log_file is a file name in the work dir: CRIU refuses a '/' in it")
            if notify:
                out["notify_scripts"] = True
            try:
                messages.CRIU_OPTS.encode(out)  # fail here, before starting CRIU
            except WireError as e:
                raise ValueError(f"bad criu option: {e}") from e
            pass_fds = [entry["fd"] for entry in out.get("inherit_fd", ())]
            if pass_fds and self.service_address:
                raise ValueError("inherit_fd only works with criu swrk, not with a criu service")
            log_path = os.path.join(work_path, out["log_file"]) if work_path else None
            return _PreparedOpts(out, opened, log_path, pass_fds)
        except BaseException:
            close_fds(opened)
            raise

    def _request(
        self,
        request: str,
        opts: Mapping[str, Any],
        *,
        notify: NotifyCallback | None = None,
        timeout: float | None,
    ) -> Tuple[Dict[str, Any], str | None]:
        prepared = self._prepare(request, opts, notify is not None)
        try:
            resp = self._call(
                {"type": request, "opts": prepared.opts},
                notify=notify,
                pass_fds=prepared.pass_fds,
                timeout=timeout,
                log_path=prepared.log_path,
            )
        finally:
            prepared.close()
        return resp, prepared.log_path

    def _connect(self, pass_fds: Sequence[int], timeout: float | None) -> CriuConnection:
        if self.service_address:
            return ServiceConnection(self.service_address, timeout=timeout)
        return SwrkConnection(self.criu, pass_fds=pass_fds, timeout=timeout, env=self.env)

    def _call(
        self,
        req: Dict[str, Any],
        *,
        notify: NotifyCallback | None = None,
        pass_fds: Sequence[int] = (),
        timeout: float | None = None,
        log_path: str | None = None,
    ) -> Dict[str, Any]:
        """Send `req`, serve notifications, return the final criu_resp (or raise)."""
        data = messages.CRIU_REQ.encode(req)
        failure: BaseException | None = None
        failed_script = ""
        with self._connect(pass_fds, timeout) as conn:
            conn.send(data)
            while True:
                packet = conn.recv()
                try:
                    resp = messages.CRIU_RESP.decode(packet.data)
                except WireError as e:
                    close_fds(packet.fds)
                    raise TransportError(f"undecodable response from criu: {e}") from e
                if resp["type"] != REQ.NOTIFY:
                    close_fds(packet.fds)
                    break
                notification = resp.get("notify") or {}
                event = NotifyEvent(
                    notification.get("script", ""),
                    notification.get("pid"),
                    packet.fds[0] if packet.fds else None,
                )
                close_fds(packet.fds[1:])
                reply: Dict[str, Any] = {"type": "NOTIFY", "notify_success": True}
                try:
                    if notify is not None:
                        result = notify(event)
                        if event.script == "query-ext-files" and result:
                            reply["opts"] = {"external": [str(k) for k in result]}
                except BaseException as e:  # noqa: B036 - must answer CRIU before unwinding
                    reply = {"type": "NOTIFY", "notify_success": False}
                    if failure is None:
                        failure, failed_script = e, event.script
                finally:
                    event._release()
                conn.send(messages.CRIU_REQ.encode(reply))
        return self._check_response(req, resp, log_path, failure, failed_script)

    def _check_response(
        self,
        req: Dict[str, Any],
        resp: Dict[str, Any],
        log_path: str | None,
        failure: BaseException | None,
        failed_script: str,
    ) -> Dict[str, Any]:
        request = req["type"]
        want = REQ.value_of(request)
        got = resp["type"]
        err: Dict[str, Any] = {
            "request": request,
            "cr_errno": resp.get("cr_errno"),
            "cr_errmsg": resp.get("cr_errmsg"),
            "log_path": log_path,
        }
        if failure is not None or not resp["success"]:
            err["log_errors"] = log_errors(log_path)
        if failure is not None:
            if not isinstance(failure, Exception):
                raise failure  # KeyboardInterrupt, SystemExit: CRIU has been answered and is done
            outcome = "criu rolled back" if not resp["success"] else "criu went on regardless"
            raise CriuNotifyError(
                f"{request}: notify callback for {failed_script!r} failed ({failure!r}); {outcome}",
                script=failed_script,
                **err,
            ) from failure
        if got == REQ.EMPTY and not resp["success"]:
            raise CriuError(f"criu rejected the {request} request", **err)
        if got != want:
            raise TransportError(f"criu answered {request} with {REQ.name_of(got)}")
        if not resp["success"]:
            raise CriuError(f"criu {request.lower().replace('_', '-')} failed", **err)
        return resp


# Error lines CRIU logs on every run on some hosts, that explain nothing (see ENVIRONMENT.md).
_HARMLESS_LOG_ERRORS = ("Can't setup RLIMIT_NOFILE",)
# "Error (file:line): msg", with a "(seconds) " prefix from log level 4 up and a "pid: " one in children.
_LOG_ERROR = re.compile(r"^(?:\([0-9. ]+\)\s+)?(?:\d+:\s+)?(Error \(.*)")
_MAX_LOG_SCAN = 32 << 20


def log_errors(log_path: str | None, limit: int = 20) -> List[str]:
    """The meaningful "Error (file:line): ..." lines of a CRIU log, first ones first."""
    if not log_path:
        return []
    found: List[str] = []
    try:
        with open(log_path, errors="replace") as f:
            if os.fstat(f.fileno()).st_size > _MAX_LOG_SCAN:
                f.seek(os.fstat(f.fileno()).st_size - _MAX_LOG_SCAN)
            for line in f:
                m = _LOG_ERROR.match(line)
                if m and not any(h in line for h in _HARMLESS_LOG_ERRORS):
                    found.append(m.group(1).strip())
                    if len(found) >= limit:
                        break
    except OSError:
        pass
    return found
