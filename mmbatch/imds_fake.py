"""A fake EC2 instance metadata service (IMDSv2 only), for tests and demos.

It speaks the wire protocol of the real one, as far as mmbatch uses it:

- `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds`
  (an integer 1..21600; otherwise 400) and returns a token as text/plain,
  echoing the TTL header. A PUT carrying `X-Forwarded-For` is refused (403),
  as IMDS does so that proxies cannot fetch tokens.
- Every GET needs a valid, unexpired `X-aws-ec2-metadata-token` (401
  otherwise: this fake is an instance with http-tokens=required).
- `meta-data/spot/instance-action` is 404 until an interruption is
  scheduled, then `{"action": "terminate", "time": "2026-11-27T12:00:00Z"}`;
  `meta-data/spot/termination-time` likewise gives the time alone.
  `meta-data/events/recommendations/rebalance` is 404 until a rebalance
  recommendation, then `{"noticeTime": "..."}`.
- instance-id, instance-type, placement/availability-zone,
  instance-life-cycle, ami-id, local-ipv4, hostname.

A control API that IMDS does not have (no token needed), for tests and
`mmbatch demo --spot`:

    POST /_fake/interrupt?in=120[&action=terminate]   schedule a notice
    POST /_fake/rebalance[?in=0]                      a rebalance recommendation
    POST /_fake/clear                                 no notice of any kind
    POST /_fake/expire-tokens                         every token expires now
    GET  /_fake/state                                 counters, as JSON

`python -m mmbatch.imds_fake --port N` serves on 127.0.0.1 until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Optional, Tuple

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL = 21600

_NOT_FOUND = (
    '<?xml version="1.0" encoding="iso-8859-1"?>\n'
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
    '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
    '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
    " <head>\n  <title>404 - Not Found</title>\n </head>\n <body>\n  <h1>404 - Not Found</h1>\n </body>\n</html>\n"
)


def imds_time(epoch: float) -> str:
    """IMDS's time format: UTC, whole seconds, a Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(round(epoch)))


class FakeImds:
    """The service; start() serves it on a thread. Its state is thread-safe."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        instance_id: str = "",
        instance_type: str = "m6i.large",
        availability_zone: str = "us-east-1a",
        lifecycle: str = "spot",
    ) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: Dict[str, float] = {}  # token -> expiry (clock time)
        self.interruption: Optional[Dict[str, str]] = None
        self.rebalance: Optional[Dict[str, str]] = None
        self.counters = {"token_requests": 0, "token_rejected": 0, "gets": 0, "unauthorized": 0}
        iid = instance_id or "i-0" + secrets.token_hex(8)
        self.meta: Dict[str, str] = {
            "ami-id": "ami-0abcdef1234567890",
            "hostname": "ip-127-0-0-1.ec2.internal",
            "instance-id": iid,
            "instance-type": instance_type,
            "instance-life-cycle": lifecycle,
            "local-ipv4": "127.0.0.1",
            "placement/availability-zone": availability_zone,
            "placement/region": availability_zone[:-1] if availability_zone[-1:].isalpha() else availability_zone,
        }
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -----------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}"

    def start(self) -> FakeImds:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="imds-fake", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeImds:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- control -------------------------------------------------------------------

    def schedule_interruption(self, in_seconds: float = 120.0, action: str = "terminate") -> Dict[str, str]:
        if action not in ("terminate", "stop", "hibernate"):
            raise ValueError(f"unknown action {action!r}")
        notice = {"action": action, "time": imds_time(self.clock() + in_seconds)}
        with self._lock:
            self.interruption = notice
        return notice

    def schedule_rebalance(self, in_seconds: float = 0.0) -> Dict[str, str]:
        notice = {"noticeTime": imds_time(self.clock() + in_seconds)}
        with self._lock:
            self.rebalance = notice
        return notice

    def clear(self) -> None:
        with self._lock:
            self.interruption = None
            self.rebalance = None

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def state(self) -> Dict[str, Any]:
        with self._lock:
            return {"counters": dict(self.counters), "interruption": self.interruption,
                    "rebalance": self.rebalance, "tokens": len(self._tokens)}

    # -- the protocol ------------------------------------------------------------------

    def issue_token(self, headers: Any) -> Tuple[int, str, Dict[str, str]]:
        with self._lock:
            self.counters["token_requests"] += 1
        if headers.get("X-Forwarded-For") is not None:
            return self._reject(403, "Forbidden")
        raw = headers.get(TTL_HEADER)
        if raw is None:
            return self._reject(400, "Missing or Invalid Parameters")
        try:
            ttl = int(raw.strip())
        except ValueError:
            return self._reject(400, "Missing or Invalid Parameters")
        if not 1 <= ttl <= MAX_TTL:
            return self._reject(400, "Missing or Invalid Parameters")
        token = "AQAEA" + secrets.token_urlsafe(42)
        with self._lock:
            now = self.clock()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + ttl
        return 200, token, {TTL_HEADER: str(ttl)}

    def _reject(self, status: int, text: str) -> Tuple[int, str, Dict[str, str]]:
        with self._lock:
            self.counters["token_rejected"] += 1
        return status, text, {}

    def authorized(self, headers: Any) -> bool:
        token = headers.get(TOKEN_HEADER)
        with self._lock:
            self.counters["gets"] += 1
            ok = token is not None and self._tokens.get(token, 0.0) > self.clock()
            if not ok:
                self.counters["unauthorized"] += 1
        return ok

    def lookup(self, path: str) -> Optional[str]:
        """The body of a metadata path, or None (404)."""
        prefix = "/latest/meta-data/"
        if path in ("/latest/meta-data", prefix):
            names = sorted({k.split("/", 1)[0] + ("/" if "/" in k else "") for k in self.meta} | {"spot/", "events/"})
            return "\n".join(names)
        if not path.startswith(prefix):
            return None
        key = path[len(prefix):].rstrip("/")
        with self._lock:
            interruption, rebalance = self.interruption, self.rebalance
        if key == "spot/instance-action":
            return json.dumps(interruption) if interruption else None
        if key == "spot/termination-time":
            return interruption["time"] if interruption else None
        if key == "events/recommendations/rebalance":
            return json.dumps(rebalance) if rebalance else None
        return self.meta.get(key)

    def control(self, method: str, path: str, query: Dict[str, str]) -> Tuple[int, str]:
        try:
            if method == "POST" and path == "/_fake/interrupt":
                notice = self.schedule_interruption(float(query.get("in", "120")), query.get("action", "terminate"))
                return 200, json.dumps(notice)
            if method == "POST" and path == "/_fake/rebalance":
                return 200, json.dumps(self.schedule_rebalance(float(query.get("in", "0"))))
            if method == "POST" and path == "/_fake/clear":
                self.clear()
                return 200, "{}"
            if method == "POST" and path == "/_fake/expire-tokens":
                self.expire_tokens()
                return 200, "{}"
            if method == "GET" and path == "/_fake/state":
                return 200, json.dumps(self.state())
        except ValueError as e:
            return 400, json.dumps({"error": str(e)})
        return 404, json.dumps({"error": f"no control {method} {path}"})


def _handler_for(imds: FakeImds) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "EC2ws"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def _send(self, status: int, body: str, headers: Optional[Dict[str, str]] = None,
                  content_type: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _drain(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)

        def _route(self) -> None:
            self._drain()
            url = urllib.parse.urlsplit(self.path)
            if url.path.startswith("/_fake/"):
                query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
                status, body = imds.control(self.command, url.path, query)
                self._send(status, body, content_type="application/json")
                return
            if self.command == "PUT":
                if url.path != "/latest/api/token":
                    self._send(403, "Forbidden")
                    return
                status, body, headers = imds.issue_token(self.headers)
                self._send(status, body, headers)
                return
            if self.command not in ("GET", "HEAD"):
                self._send(405, "Method Not Allowed")
                return
            if not imds.authorized(self.headers):
                self._send(401, "Unauthorized")
                return
            body = imds.lookup(url.path)
            if body is None:
                self._send(404, _NOT_FOUND, content_type="text/html")
                return
            self._send(200, body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _route

    return Handler


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmbatch.imds_fake", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--instance-id", default="")
    p.add_argument("--instance-type", default="m6i.large")
    p.add_argument("--availability-zone", default="us-east-1a")
    p.add_argument("--lifecycle", default="spot", choices=("spot", "on-demand", "scheduled"))
    p.add_argument("--interrupt-in", type=float, default=None, help="schedule a notice this many seconds ahead")
    args = p.parse_args(argv)
    imds = FakeImds(args.host, args.port, instance_id=args.instance_id, instance_type=args.instance_type,
                    availability_zone=args.availability_zone, lifecycle=args.lifecycle)
    if args.interrupt_in is not None:
        imds.schedule_interruption(args.interrupt_in)

    def stop(_sig: int, _frame: Any) -> None:
        threading.Thread(target=imds._server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"fake IMDS listening on {imds.url}", flush=True)
    imds.serve_forever()
    imds._server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
