"""`mmbatch server`: build the management server from the config and run it.

Imports little at module level: the `mmbatch` command loads this module for every subcommand.

`register(subparsers)` adds the subcommand to the `mmbatch` command;
`build(cfg, ...)` assembles a started-ready DashboardServer (tests use it).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Optional

from mmbatch.server.errors import ServerError

if TYPE_CHECKING:
    from mmbatch.config import Config
    from mmbatch.server.app import DashboardServer

log = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ServerError(f"listen address {listen!r} is not HOST:PORT")
    return host, int(port)


def _secret(path: str) -> str:
    if not path:
        return ""
    from mmbatch.server.auth import read_secret_file

    return read_secret_file(path, "Cognito client secret")


def build(cfg: Config, *, store_url: Optional[str] = None, listen: Optional[str] = None,
          dev: Optional[bool] = None, cache_path: Optional[str] = None) -> DashboardServer:
    """A DashboardServer bound to its address (not serving yet), its cache synced once."""
    from mmbatch.server.app import Dashboard, DashboardServer
    from mmbatch.server.auth import AuthPolicy, is_loopback, read_admin_token
    from mmbatch.server.cache import Cache
    from mmbatch.server.model import Prices
    from mmbatch.server.oidc import CognitoClient, CognitoLogin, domain_url
    from mmbatch.server.sync import Syncer
    from mmbatch.store import open_store

    sv = cfg.server
    host, port = split_listen(listen or sv.listen)
    policy = AuthPolicy(dev=sv.dev if dev is None else dev, session_seconds=int(sv.session_lifetime))
    if sv.admin_token_file:
        policy.admin_token = read_admin_token(sv.admin_token_file)
    client_secret = _secret(sv.cognito_client_secret_file)  # before binding: a refusal leaks no socket
    if not sv.cognito_user_pool_id:
        policy.check(host)  # fail before binding; with Cognito, once the callback URL is known
    if not policy.dev and not is_loopback(host) and not (sv.public_url or "").startswith("https://"):
        log.warning("serving logins over plain http on %s: put TLS in front (server.public_url = https://...)", host)
    store = open_store(store_url or cfg.store.url, cfg.store)
    cache = Cache(cache_path or sv.cache_path)
    syncer = Syncer(store, cache, sv.sync_interval)
    app = Dashboard(cache, syncer, policy, Prices.from_config(sv))
    server = DashboardServer(app, host, port)
    app.public_url = (sv.public_url or server.url).rstrip("/")
    policy.secure_cookies = app.public_url.startswith("https://")
    if sv.cognito_user_pool_id:
        client = CognitoClient(
            region=sv.cognito_region, user_pool_id=sv.cognito_user_pool_id, client_id=sv.cognito_client_id,
            client_secret=client_secret,
            domain=domain_url(sv.cognito_domain, sv.cognito_region),
            redirect_uri=f"{app.public_url}/auth/callback", idp_endpoint=sv.cognito_idp_endpoint)
        policy.cognito = CognitoLogin(client)
        try:
            policy.check(host)
        except ServerError:
            server.httpd.server_close()
            raise
    syncer.run_once()
    return server


def run(server: DashboardServer) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.app.syncer.start()
    server.start()
    print(f"mmbatch server on {server.url} (store {server.app.syncer.store.url})", file=sys.stderr, flush=True)
    stop.wait()
    server.app.syncer.stop()
    server.stop()
    return 0


def cmd_server(args: argparse.Namespace, cfg: Config) -> int:
    logging.basicConfig(level=getattr(logging, cfg.log.level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = build(cfg, store_url=args.store, listen=args.listen, dev=True if args.dev else None,
                   cache_path=args.cache)
    if args.sync_only:
        last = server.app.syncer.last
        server.stop()
        if last is None:
            print(f"mmbatch server: sync failed: {server.app.syncer.last_error}", file=sys.stderr)
            return 1
        print(f"synced: {last.read} records read, {last.removed} removed, {last.jobs_changed} jobs changed "
              f"in {last.seconds:.2f}s")
        return 0
    return run(server)


def register(subparsers: Any) -> None:
    """Add `mmbatch server` to the CLI's subparsers."""
    c = subparsers.add_parser("server", help="the management server: a dashboard over the checkpoint store")
    c.add_argument("--listen", help="HOST:PORT (default server.listen, 127.0.0.1:8090)")
    c.add_argument("--store", help="store URL (default store.url)")
    c.add_argument("--cache", help="SQLite cache file (default server.cache_path)")
    c.add_argument("--dev", action="store_true", help="no login (only on a loopback address)")
    c.add_argument("--sync-only", action="store_true", help="read the store into the cache once and exit")
    c.set_defaults(func=cmd_server)
