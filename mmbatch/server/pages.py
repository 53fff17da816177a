"""The dashboard's HTML, rendered on the server from reports' dicts.

Every value is escaped; numbers carry their raw value in `data-value` so a
script (or a test) reads exactly what the server computed. Times are UTC
`<time datetime>` elements that static/app.js shows in the reader's zone.
No inline script or style: the Content-Security-Policy forbids both.
"""

from __future__ import annotations

import time
import urllib.parse
from html import escape
from typing import Any, Dict, List, Optional, Sequence

from mmbatch import progress
from mmbatch.server import charts
from mmbatch.server.model import STATES

DEV_USER = "dev mode (no login)"
NAV = (("/", "Overview"), ("/jobs", "Jobs"), ("/nodes", "Nodes"), ("/cost", "Cost"))


def esc(v: Any) -> str:
    return escape("" if v is None else str(v), quote=True)


_e = esc


def human_bytes(n: Optional[float]) -> str:
    return progress.human_bytes(float(n or 0))


def pct(rate: Optional[float]) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f} %"


def money(v: Optional[float]) -> str:
    return f"${float(v or 0):,.2f}"


def hours(v: Optional[float]) -> str:
    return f"{float(v or 0):.3f}"


def when(t: Any) -> str:
    if not t:
        return "<span class=\"muted\">–</span>"
    try:
        tm = time.gmtime(t)
    except (TypeError, ValueError, OverflowError, OSError):  # a record's odd value (a string, NaN, 1e300)
        return f'<span class="muted">{_e(t)}</span>'
    return (f'<time datetime="{time.strftime("%Y-%m-%dT%H:%M:%SZ", tm)}">'
            f'{time.strftime("%Y-%m-%d %H:%M:%S", tm)} UTC</time>')


def num(value: Any, text: Optional[str] = None, test_id: str = "") -> str:
    tid = f' data-testid="{_e(test_id)}"' if test_id else ""
    raw = "" if value is None else value
    return f'<span class="num" data-value="{_e(raw)}"{tid}>{_e(text if text is not None else raw)}</span>'


def table(headers: Sequence[str], rows: List[List[str]], test_id: str, empty: str = "nothing yet") -> str:
    if not rows:
        return f'<p class="muted" data-testid="{_e(test_id)}-empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return (f'<table class="sortable" data-testid="{_e(test_id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def layout(title: str, body: str, *, active: str = "", user: str = "", status: str = "") -> str:
    nav = "".join(f'<a href="{p}"{" class=active" if p == active else ""}>{_e(name)}</a>' for p, name in NAV)
    who = ""
    if user == DEV_USER:
        who = f'<span class="logout muted">{_e(user)}</span>'
    elif user:
        who = (f'<form method="post" action="/logout" class="logout"><span class="muted">{_e(user)}</span> '
               f'<button type="submit">Sign out</button></form>')
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)} · mmbatch</title><link rel=\"stylesheet\" href=\"/static/app.css\">"
        "<script src=\"/static/app.js\" defer></script></head><body>"
        f"<header><strong>mmbatch</strong><nav>{nav}</nav>{who}</header>"
        f"<main><h1>{_e(title)}</h1>{status}{body}</main></body></html>"
    )


def sync_status(synced_at: Optional[float], error: str) -> str:
    parts = [f'<p class="status muted">Store read {when(synced_at)}</p>' if synced_at else
             '<p class="status muted">The store has not been read yet.</p>']
    if error:
        parts.append(f'<p class="error" role="alert">Last read of the store failed: {_e(error)}</p>')
    return "".join(parts)


def job_link(job_key: str) -> str:
    return f'<a href="/jobs/{urllib.parse.quote(job_key, safe="")}">{_e(job_key)}</a>'


def dashboard(t: Dict[str, Any], queues: List[Dict[str, Any]], activity: List[Dict[str, Any]],
              cost: Dict[str, Any]) -> str:
    cards = [
        ("jobs", "Jobs", num(t["jobs"], test_id="total-jobs")),
        ("spot", "Spot protections", num(t["spot_protections"], test_id="total-spot-protections")),
        ("restores", "Restores", num(t["restores"], test_id="total-restores")),
        ("checkpoints", "Checkpoints", num(t["checkpoints"], test_id="total-checkpoints")),
        ("attempts", "Attempts", num(t["attempts"], test_id="total-attempts")),
        ("success", "Success rate", num(t["success_rate"], pct(t["success_rate"]), test_id="total-success-rate")),
        ("saved", "Saved with Spot", num(round(cost["saved"], 6), money(cost["saved"]), test_id="total-saved")),
    ]
    body = ['<section class="cards">']
    for key, label, value in cards:
        body.append(f'<div class="card card-{key}"><div class="label">{_e(label)}</div>'
                    f'<div class="value">{value}</div></div>')
    body.append("</section>")
    rows = []
    for q in queues:
        name = q["job_queue"]
        link = f'<a href="/jobs?queue={urllib.parse.quote(name, safe="")}">{_e(name or "(none)")}</a>'
        rows.append([link, num(q["jobs"]), num(q["succeeded"]), num(q["failed"]), num(q["active"]),
                     num(q["restores"]), num(q["spot_protections"]),
                     num(q["success_rate"], pct(q["success_rate"]))])
    body.append("<h2>Job queues</h2>")
    body.append(table(["Job queue", "Jobs", "Succeeded", "Failed", "Running or interrupted", "Restores",
                       "Spot protections", "Success rate"], rows, "queues"))
    body.append('<section class="charts">')
    body.append(charts.hbars([(q["job_queue"] or "(none)", None if q["success_rate"] is None
                               else q["success_rate"] * 100) for q in queues],
                             "Success rate per job queue (%)", max_value=100, fmt=lambda v: f"{v:.1f} %"))
    body.append(charts.columns([a["date"] for a in activity],
                               [("checkpoints", [a["checkpoints"] for a in activity]),
                                ("restores", [a["restores"] for a in activity]),
                                ("Spot protections", [a["spot_protections"] for a in activity])],
                               "Activity per day (UTC), last 14 days"))
    body.append("</section>")
    return "".join(body)


def jobs_page(rows: List[Dict[str, Any]], queue: Optional[str], state: Optional[str], queues: List[str]) -> str:
    opts_q = '<option value="">all queues</option>' + "".join(
        f'<option value="{_e(q)}"{" selected" if q == queue else ""}>{_e(q or "(none)")}</option>' for q in queues)
    opts_s = '<option value="">all states</option>' + "".join(
        f'<option{" selected" if s == state else ""}>{_e(s)}</option>' for s in STATES)
    form = (f'<form class="filters" method="get" action="/jobs"><select name="queue">{opts_q}</select>'
            f'<select name="state">{opts_s}</select><button type="submit">Filter</button>'
            f'<input type="search" class="quickfilter" placeholder="find in table" aria-label="find in table">'
            f' <a href="/jobs.csv">CSV</a></form>')
    table_rows = []
    for r in rows:
        table_rows.append([
            job_link(r["job_key"]), _e(r["job_queue"] or "(none)"),
            f'<span class="state state-{_e(r["state"])}">{_e(r["state"])}</span>',
            num(r["attempts"]), num(r["checkpoints"]), num(r["restores"]), num(r["spot_protections"]),
            num(r["max_rootfs_bytes"], human_bytes(r["max_rootfs_bytes"])),
            num(round(r["cpu_seconds"] or 0, 3), hours((r["cpu_seconds"] or 0) / 3600)),
            when(r["last_seen"]),
        ])
    return form + table(["Job", "Job queue", "State", "Attempts", "Checkpoints", "Restores", "Spot protections",
                         "Max rootfs", "CPU hours", "Last seen"], table_rows, "jobs", "no jobs in the store yet")


def job_page(j: Dict[str, Any]) -> str:
    facts = [
        ("Job queue", _e(j["job_queue"] or "(none)")),
        ("State", f'<span class="state state-{_e(j["state"])}" data-testid="job-state">{_e(j["state"])}</span>'),
        ("Attempts", num(j["attempts"], test_id="job-attempts")),
        ("Checkpoints taken", num(j["checkpoints"], test_id="job-checkpoints")),
        ("Checkpoints stored", num(j["stored_checkpoints"], test_id="job-stored-checkpoints")),
        ("Restores", num(j["restores"], test_id="job-restores")),
        ("Spot protections", num(j["spot_protections"], test_id="job-spot-protections")),
        ("Max rootfs usage", num(j["max_rootfs_bytes"], human_bytes(j["max_rootfs_bytes"]),
                                 test_id="job-max-rootfs")),
        ("CPU hours", num(round(j["cpu_seconds"] or 0, 3), hours((j["cpu_seconds"] or 0) / 3600),
                          test_id="job-cpu")),
        ("Exit code", _e("" if j["exit_code"] is None else j["exit_code"])),
    ]
    body = ['<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"]
    body.append("<h2>Timeline</h2>" + charts.timeline(j["attempt_list"], j["event_list"]))
    rows = []
    for a in j["attempt_list"]:
        rows.append([_e(a["attempt"]), f'<code>{_e(a["container_id"][:12])}</code>', when(a["started_at"]),
                     when(a["ended_at"]), _e(a["end_state"] or "running"),
                     _e("" if a["exit_code"] is None else a["exit_code"]),
                     _e(a["restored_from"] or "cold start"), _e(a["hostname"]), _e(a["instance_type"]),
                     _e(a["lifecycle"]), num(round(a["cpu_seconds"] or 0, 3), f'{a["cpu_seconds"] or 0:.1f} s')])
    body.append("<h2>Attempts</h2>" + table(["Attempt", "Container", "Started", "Ended", "End", "Exit", "Restored from",
                                             "Node", "Instance type", "Life cycle", "CPU time"], rows, "attempts"))
    rows = [[f'<code>{_e(c["checkpoint_id"])}</code>', when(c["created_at"]), _e(c["reason"]),
             num(c["size"], human_bytes(c["size"])), num(c["rootfs_bytes"], human_bytes(c["rootfs_bytes"])),
             _e(c["hostname"])] for c in j["checkpoint_list"]]
    body.append("<h2>Stored checkpoints</h2>" + table(["Checkpoint", "Created", "Reason", "Size", "Rootfs diff",
                                                       "Node"], rows, "checkpoints",
                                                      "none stored (a job that succeeded has its checkpoints deleted)"))
    rows = []
    for e in j["event_list"]:
        detail = {k: v for k, v in e.items() if k not in ("time", "kind", "job_key", "container_id", "id", "node")}
        text = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(detail.items()))
        rows.append([when(e.get("time")), f'<span class="kind kind-{_e(e.get("kind"))}">{_e(e.get("kind"))}</span>',
                     f'<code>{_e(str(e.get("container_id") or "")[:12])}</code>', _e(e.get("node")), _e(text)])
    body.append("<h2>Events</h2>" + table(["Time", "Event", "Container", "Node", "Detail"], rows, "events"))
    return "".join(body)


def nodes_page(rows: List[Dict[str, Any]]) -> str:
    trs = [[_e(r["hostname"]), _e(r["instance_id"]), _e(r["instance_type"]), _e(r["availability_zone"]),
            _e(r["lifecycle"]), num(r["jobs"]), num(r["attempts"]), num(r["checkpoints"]), num(r["restores"]),
            num(r["spot_protections"]), num(round(r["cpu_hours"], 6), hours(r["cpu_hours"])), when(r["first_seen"]),
            when(r["last_seen"])] for r in rows]
    return ('<p><a href="/nodes.csv" data-testid="nodes-csv">Download CSV</a></p>'
            + table(["Host", "Instance", "Type", "Zone", "Life cycle", "Jobs", "Attempts", "Checkpoints", "Restores",
                     "Spot protections", "CPU hours", "First seen", "Last seen"], trs, "nodes"))


def cost_page(c: Dict[str, Any]) -> str:
    p = c["prices"]
    facts = [
        ("Job CPU hours", num(round(c["cpu_hours"], 6), hours(c["cpu_hours"]), test_id="cost-cpu-hours")),
        ("on Spot", num(round(c["spot_cpu_hours"], 6), hours(c["spot_cpu_hours"]), test_id="cost-spot-hours")),
        ("on demand or unknown", num(round(c["on_demand_cpu_hours"], 6), hours(c["on_demand_cpu_hours"]),
                                     test_id="cost-od-hours")),
        ("Cost", num(round(c["cost"], 6), money(c["cost"]), test_id="cost-cost")),
        ("All on demand it would have cost", num(round(c["on_demand_cost"], 6), money(c["on_demand_cost"]),
                                                 test_id="cost-od-cost")),
        ("Saved with Spot", num(round(c["saved"], 6), money(c["saved"]), test_id="cost-saved")),
    ]
    body = ['<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"]
    body.append(f'<p class="muted">Prices per vCPU-hour: on demand {money(p["on_demand_vcpu_hour"])}, Spot '
                f'{money(p["spot_vcpu_hour"])}' + "".join(
                    f'; {_e(t)}: {money(v["on_demand"])} / {money(v["spot"])}' for t, v in p["by_type"].items())
                + " (server.on_demand_vcpu_hour, server.spot_vcpu_hour, server.instance_prices). CPU time is "
                  "measured from each attempt's cgroup; attempts of unknown life cycle are priced on demand.</p>")
    body.append(charts.hbars([("all on demand", c["on_demand_cost"]), ("actual", c["cost"])],
                             "Cost of job CPU time", fmt=money, color=charts.COLORS[2]))
    rows = [[_e(q["job_queue"] or "(none)"), num(round(q["cpu_hours"], 6), hours(q["cpu_hours"])),
             num(round(q["cost"], 6), money(q["cost"])), num(round(q["on_demand_cost"], 6), money(q["on_demand_cost"])),
             num(round(q["saved"], 6), money(q["saved"]))] for q in c["by_queue"]]
    body.append("<h2>Per job queue</h2>" + table(["Job queue", "CPU hours", "Cost", "All on demand", "Saved"], rows,
                                                 "cost-queues"))
    return "".join(body)


def login_page(token_login: bool, cognito_login: bool, error: str = "", next_path: str = "/") -> str:
    parts = []
    if error:
        parts.append(f'<p class="error" role="alert">{_e(error)}</p>')
    if cognito_login:
        parts.append(f'<p><a class="button" href="/login/cognito?next={urllib.parse.quote(next_path, safe="")}" '
                     f'data-testid="cognito-login">Sign in with Amazon Cognito</a></p>')
    if token_login:
        parts.append('<form method="post" action="/login" class="login">'
                     f'<input type="hidden" name="next" value="{_e(next_path)}">'
                     '<label>Admin token <input type="password" name="token" autocomplete="current-password" '
                     'required></label> <button type="submit">Sign in</button></form>')
    return layout("Sign in", "".join(parts))


def error_page(status: int, message: str) -> str:
    return layout(f"{status}", f'<p class="error">{_e(message)}</p>')
