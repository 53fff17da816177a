"""The Spot watcher: interruption notices and rebalance recommendations from
the instance metadata service, IMDSv2 only.

A session token comes from `PUT /latest/api/token` with
`X-aws-ec2-metadata-token-ttl-seconds`; every GET carries it as
`X-aws-ec2-metadata-token`. The token is renewed before its TTL runs out, and
once more when IMDS answers 401 (it expired early, or IMDS restarted).
404 on the two notice paths means nothing is scheduled.

`SpotWatcher.poll_once()` is the whole protocol in one step (tests drive it
against mmbatch.imds_fake); `run()` repeats it every `poll_seconds` and
reports each new notice once.
"""

from __future__ import annotations

import calendar
import http.client
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from mmbatch.errors import MmbatchError

TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
DEFAULT_TTL = 21600


class ImdsError(MmbatchError):
    """IMDS is unreachable or answered something unexpected."""


@dataclass(frozen=True)
class InterruptionNotice:
    action: str      # terminate | stop | hibernate
    time: float      # when it happens (epoch seconds)
    raw_time: str

    def to_dict(self) -> Dict[str, Any]:
        return {"action": self.action, "time": self.time, "time_text": self.raw_time}


@dataclass(frozen=True)
class RebalanceNotice:
    notice_time: float
    raw_time: str


def parse_imds_time(text: str) -> float:
    """"2026-11-27T12:00:00Z" (fractions allowed) -> epoch seconds."""
    s = text.strip()
    if not s.endswith("Z"):
        raise ValueError(f"not an IMDS UTC time: {text!r}")
    s = s[:-1]
    frac = 0.0
    if "." in s:
        s, f = s.split(".", 1)
        frac = float("0." + f) if f.isdigit() else 0.0
    return calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%S")) + frac


def parse_instance_action(body: str) -> InterruptionNotice:
    try:
        data = json.loads(body)
        action = data["action"]
        raw = data["time"]
        if not isinstance(action, str) or not isinstance(raw, str):
            raise TypeError("action and time must be strings")
        return InterruptionNotice(action=action, time=parse_imds_time(raw), raw_time=raw)
    except (ValueError, KeyError, TypeError) as e:
        raise ImdsError(f"unexpected spot/instance-action from IMDS: {body[:200]!r} ({e})") from e


def parse_rebalance(body: str) -> RebalanceNotice:
    try:
        data = json.loads(body)
        raw = data["noticeTime"]
        if not isinstance(raw, str):
            raise TypeError("noticeTime must be a string")
        return RebalanceNotice(notice_time=parse_imds_time(raw), raw_time=raw)
    except (ValueError, KeyError, TypeError) as e:
        raise ImdsError(f"unexpected rebalance recommendation from IMDS: {body[:200]!r} ({e})") from e


class ImdsClient:
    """IMDSv2 requests with a cached session token."""

    def __init__(self, endpoint: str, token_ttl: int = DEFAULT_TTL, timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme != "http" or not url.hostname:
            raise ImdsError(f"IMDS endpoint must be http://host[:port], got {endpoint!r}")
        if not 1 <= token_ttl <= 21600:
            raise ImdsError(f"token TTL must be 1..21600 seconds, got {token_ttl}")
        self.host = url.hostname
        self.port = url.port or 80
        self.token_ttl = token_ttl
        self.timeout = timeout
        self.clock = clock
        self._token: Optional[str] = None
        self._token_expires = 0.0
        self.tokens_fetched = 0

    def _request(self, method: str, path: str, headers: Dict[str, str]) -> Tuple[int, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
            return resp.status, body
        except (OSError, http.client.HTTPException) as e:
            raise ImdsError(f"IMDS {method} {path} failed: {e}") from e
        finally:
            conn.close()

    def _refresh_margin(self) -> float:
        return min(60.0, self.token_ttl / 10.0)

    def token(self) -> str:
        now = self.clock()
        if self._token is None or now >= self._token_expires - self._refresh_margin():
            status, body = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self.token_ttl)})
            if status != 200 or not body:
                raise ImdsError(f"IMDS refused a session token (HTTP {status}: {body[:100]!r})",
                                hint="is IMDSv2 enabled with a hop limit that reaches this host?")
            self._token = body.strip()
            self._token_expires = now + self.token_ttl
            self.tokens_fetched += 1
        return self._token

    def get(self, path: str) -> Optional[str]:
        """The body at `path`; None on 404."""
        for attempt in (1, 2):
            status, body = self._request("GET", path, {TOKEN_HEADER: self.token()})
            if status == 200:
                return body
            if status == 404:
                return None
            if status == 401 and attempt == 1:
                self._token = None  # expired early, or IMDS forgot it: one new token
                continue
            raise ImdsError(f"IMDS GET {path}: HTTP {status}")
        return None  # not reached


class SpotWatcher:
    """Polls the two notice paths; reports each new notice once."""

    def __init__(
        self,
        client: ImdsClient,
        on_interruption: Callable[[InterruptionNotice], None] = lambda n: None,
        on_rebalance: Callable[[RebalanceNotice], None] = lambda n: None,
        poll_seconds: float = 5.0,
        log: Callable[[str], None] = lambda msg: None,
    ) -> None:
        self.client = client
        self.on_interruption = on_interruption
        self.on_rebalance = on_rebalance
        self.poll_seconds = poll_seconds
        self.log = log
        self._seen_action: Optional[Tuple[str, str]] = None
        self._seen_rebalance: Optional[str] = None
        self._failing = False

    def check(self) -> Tuple[Optional[InterruptionNotice], Optional[RebalanceNotice]]:
        """What IMDS says now (None: nothing scheduled). Raises ImdsError."""
        body = self.client.get(INSTANCE_ACTION)
        action = parse_instance_action(body) if body is not None else None
        body = self.client.get(REBALANCE)
        rebalance = parse_rebalance(body) if body is not None else None
        return action, rebalance

    def poll_once(self) -> Tuple[Optional[InterruptionNotice], Optional[RebalanceNotice]]:
        """One poll; returns (and reports) only notices not reported before."""
        action, rebalance = self.check()
        new_action = new_rebalance = None
        if action is not None and (action.action, action.raw_time) != self._seen_action:
            self._seen_action = (action.action, action.raw_time)
            new_action = action
        if rebalance is not None and rebalance.raw_time != self._seen_rebalance:
            self._seen_rebalance = rebalance.raw_time
            new_rebalance = rebalance
        if new_action is not None:
            self.on_interruption(new_action)
        if new_rebalance is not None:
            self.on_rebalance(new_rebalance)
        return new_action, new_rebalance

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll_once()
                if self._failing:
                    self.log("IMDS answers again")
                self._failing = False
            except ImdsError as e:
                if not self._failing:
                    self.log(f"spot watcher: {e} (retrying every {self.poll_seconds:g}s)")
                self._failing = True
            except Exception as e:  # never let the watcher die
                self.log(f"spot watcher: unexpected {type(e).__name__}: {e}")
            stop.wait(self.poll_seconds)
