"""mmbatchd's node API: HTTP on 127.0.0.1 (a token always required) and on a
0600 unix socket, JSON under /api/v1, Prometheus text under /metrics, and
its OpenAPI document (docs/api.md).

- `server`    the listeners and the token check
- `routes`    requests to answers, over a `NodeView` (pure, no sockets)
- `node_view` what the daemon shows and how runtime config changes reach it
- `openapi`   the OpenAPI document and a validator for its JSON-schema subset
- `metrics`   counters, a histogram, Prometheus text format
"""
