"""Moving CRIU RPC messages: SOCK_SEQPACKET framing, `criu swrk` and `criu service`.

Transport only: this module knows nothing of requests or protobuf (see
client.py for that), as pycriu keeps `_criu_comm*` apart from `criu`.

CRIU's RPC is one protobuf message per SOCK_SEQPACKET packet, no length
prefix (criu/cr-service.c: recv_criu_msg/send_criu_msg_with_fd). A packet's
size is learnt with ``recv(MSG_PEEK | MSG_TRUNC)``; a packet may carry file
descriptors as SCM_RIGHTS (CRIU sends the orphan-pts-master fd that way).

Two ways to reach CRIU, as libcriu has:

- `SwrkConnection`: fork+exec ``criu swrk <fd>`` with one end of a
  ``socketpair(AF_UNIX, SOCK_SEQPACKET)``. CRIU serves one request (plus
  its notifications) and exits. CRIU resolves fds named in requests
  (images_dir_fd, work_dir_fd) as /proc/<peer pid>/fd/N, the peer being the
  process that created the socketpair: us. inherit_fd fds must instead be
  open in CRIU itself, hence `pass_fds`.
- `ServiceConnection`: connect to the unix socket of a running
  ``criu service --address PATH``; it forks a worker per connection.
"""

from __future__ import annotations

import array
import os
import socket
import subprocess
import tempfile
from typing import IO, List, Mapping, NamedTuple, Sequence

from .errors import TransportError

__all__ = ["Packet", "SeqpacketChannel", "CriuConnection", "SwrkConnection", "ServiceConnection"]

MAX_MESSAGE = 64 << 20  # far above anything CRIU sends; a bound against garbage
MAX_FDS = 16  # CRIU sends at most one fd per message
_INT_SIZE = array.array("i").itemsize


class Packet(NamedTuple):
    """One received message and the fds that came with it (now owned by the receiver)."""

    data: bytes
    fds: List[int]


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class SeqpacketChannel:
    """Message framing over a connected AF_UNIX SOCK_SEQPACKET socket."""

    def __init__(self, sock: socket.socket, timeout: float | None = None) -> None:
        self.sock = sock
        sock.settimeout(timeout)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        try:
            if fds:
                self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
            else:
                self.sock.send(data)
        except socket.timeout:
            raise TransportError("timed out sending to criu") from None
        except OSError as e:
            raise TransportError(f"cannot send to criu: {e}") from e

    def recv(self) -> Packet:
        """Receive one whole message. EOF, timeout and bad framing raise `TransportError`."""
        try:
            # A 1-byte buffer with MSG_TRUNC returns the real packet length
            # without copying it (recv_into, unlike recv, never reads past it).
            size = self.sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
            if size == 0:
                raise TransportError("criu closed the connection")
            if size > MAX_MESSAGE:
                raise TransportError(f"criu sent a {size}-byte message, over the {MAX_MESSAGE} limit")
            data, ancdata, flags, _ = self.sock.recvmsg(size, socket.CMSG_SPACE(MAX_FDS * _INT_SIZE))
        except socket.timeout:
            raise TransportError("timed out waiting for criu") from None
        except OSError as e:
            raise TransportError(f"cannot receive from criu: {e}") from e
        fds: List[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _INT_SIZE
                fds.extend(array.array("i", payload[:usable]))
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            close_fds(fds)
            raise TransportError("message from criu was truncated")
        return Packet(data, fds)

    def close(self) -> None:
        self.sock.close()


class CriuConnection:
    """One conversation with CRIU (a request, its notifications, its response)."""

    channel: SeqpacketChannel

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        self.channel.send(data, fds)

    def recv(self) -> Packet:
        try:
            return self.channel.recv()
        except TransportError as e:
            detail = self.diagnostics()
            if detail:
                raise TransportError(f"{e}; {detail}") from e.__cause__
            raise

    def diagnostics(self) -> str:
        """What CRIU said outside the protocol (exit status, stderr), for error messages."""
        return ""

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CriuConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SwrkConnection(CriuConnection):
    """``criu swrk <fd>`` as our child, over a socketpair.

    Args:
        criu: path of the criu binary.
        pass_fds: extra fds to keep open, at the same numbers, in CRIU
            (inherit_fd on restore).
        timeout: seconds to wait for each message (None: forever).
        exit_timeout: seconds to wait for CRIU to exit once we are done
            with it, after which it is killed.
        env: environment for CRIU (default: ours).
    """

    def __init__(
        self,
        criu: str,
        *,
        pass_fds: Sequence[int] = (),
        timeout: float | None = None,
        exit_timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.criu = criu
        self.exit_timeout = exit_timeout
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._stderr: IO[bytes] = tempfile.TemporaryFile(prefix="criu-swrk-")
        try:
            self.process = subprocess.Popen(
                [criu, "swrk", str(theirs.fileno())],
                pass_fds=(theirs.fileno(), *pass_fds),
                stdin=subprocess.DEVNULL,
                stdout=self._stderr,
                stderr=self._stderr,
                env=dict(env) if env is not None else None,
            )
        except OSError as e:
            ours.close()
            self._stderr.close()
            raise TransportError(f"cannot start {criu} swrk: {e}") from e
        finally:
            theirs.close()  # else we would never see EOF when CRIU dies
        self.channel = SeqpacketChannel(ours, timeout)
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def diagnostics(self) -> str:
        parts = []
        try:
            # Called when the socket broke: CRIU is exiting or gone; give it a moment to be reaped.
            rc: int | None = self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            rc = None
        if rc is not None:
            parts.append(f"criu swrk exited with {rc}" if rc >= 0 else f"criu swrk killed by signal {-rc}")
        err = self.stderr_tail()
        if err:
            parts.append(f"stderr: {err}")
        return "; ".join(parts)

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - limit))
            return self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        self.channel.close()
        try:
            self.returncode = self.process.wait(timeout=self.exit_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()  # our own child, by pid
            self.returncode = self.process.wait()
        finally:
            self._stderr.close()


class ServiceConnection(CriuConnection):
    """A connection to ``criu service --address PATH``."""

    def __init__(self, address: str, *, timeout: float | None = None) -> None:
        self.address = address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except socket.timeout:
            sock.close()
            raise TransportError(f"timed out connecting to criu service at {address}") from None
        except OSError as e:
            sock.close()
            raise TransportError(f"cannot connect to criu service at {address}: {e}") from e
        self.channel = SeqpacketChannel(sock, timeout)
