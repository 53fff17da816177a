"""Store → SQLite cache → the numbers the pages show, on a file store filled
with records in the shapes the runtime and mmbatchd write."""

from __future__ import annotations

import csv
import io
import json
import os
import xml.etree.ElementTree as ET

from mmbatch.manifest import Manifest
from mmbatch.server import charts, reports
from mmbatch.server.cache import Cache
from mmbatch.server.model import Prices, attempt_state, cost_of, summarize_job
from mmbatch.server.sync import sync
from tests.unit.server.conftest import repo
from tests.unit.server.test_admin_login import TOKEN
from tests.unit.server.test_cognito_login import request

T0 = 1_790_000_000.0
SPOT = {"hostname": "ip-10-0-0-1", "instance_id": "i-0aaa", "instance_type": "m6i.large",
        "availability_zone": "us-east-1a", "lifecycle": "spot"}
ONDEMAND = {"hostname": "ip-10-0-0-2", "instance_id": "i-0bbb", "instance_type": "m6i.xlarge",
            "availability_zone": "us-east-1b", "lifecycle": "on-demand"}


def attempt(cid, started, node, *, end=None, exit_code=None, queue="q-genomics", cpu=None, restored_from=None,
            attempt_no="1"):
    return {"container_id": cid, "attempt": attempt_no, "job_queue": queue, "started_at": started, "node": node,
            "restored_from": restored_from, "end": end, "ended_at": None if end is None else started + 100,
            "exit_code": exit_code, "signal": None, "oom_kills": 0, "cpu_seconds": cpu}


def event(r, kind, t, cid, node="ip-10-0-0-1", **fields):
    ev = {"time": t, "kind": kind, "job_key": r.job_key, "container_id": cid, "node": node,
          "id": f"{int(t * 1000) % 10 ** 12:012x}"}
    ev.update(fields)
    r.put_record("events", f"{int(t)}-{ev['id']}", ev)


def fill(store, tmp_path):
    """Three jobs: one interrupted on Spot and restored that then succeeded, one failed, one running."""
    a = repo(store, "job-a")
    a.put_record("attempts", "c1", attempt("c1", T0, SPOT, end="killed", cpu=3600.0, attempt_no="1"))
    a.put_record("attempts", "c2", attempt("c2", T0 + 300, ONDEMAND, end="succeeded", exit_code=0, cpu=1800.0,
                                           restored_from="ck1", attempt_no="2"))
    event(a, "checkpoint", T0 + 50, "c1", reason="periodic", rootfs_bytes=1000)
    event(a, "checkpoint", T0 + 90, "c1", reason="spot-final", rootfs_bytes=5000)
    event(a, "restore", T0 + 301, "c2", node="ip-10-0-0-2", checkpoint_id="ck1", seconds=1.5)
    event(a, "job-exit", T0 + 400, "c2", node="ip-10-0-0-2", exit_code=0)
    b = repo(store, "job-b")
    b.put_record("attempts", "c3", attempt("c3", T0 + 10, SPOT, end="exited", exit_code=2, cpu=7200.0))
    event(b, "cold-start", T0 + 10, "c3", reason="no earlier attempt recorded")
    c = repo(store, "job-c")
    c.put_record("attempts", "c4", attempt("c4", T0 + 20, SPOT, queue="q-render", cpu=None))
    src = tmp_path / "ckpt"
    (src / "criu").mkdir(parents=True)
    (src / "criu" / "pages-1.img").write_bytes(os.urandom(10000))
    m = c.commit(str(src), Manifest(container_id="c4", created_at=T0 + 60, attempt="1", node=dict(SPOT),
                                    stats={"rootfs_bytes": 7777, "freeze_seconds": 0.1}, labels={"reason": "periodic"}))
    event(c, "checkpoint", T0 + 60, "c4", reason="periodic", checkpoint_id=m.checkpoint_id, rootfs_bytes=7777)
    return a, b, c, m


def test_sync_summarizes_jobs_queues_nodes_and_cost(store, tmp_path):
    fill(store, tmp_path)
    cache = Cache(str(tmp_path / "cache.db"))
    r = sync(store, cache)
    assert r.read == 11 and r.jobs_changed == 3 and r.skipped == 0
    jobs = {j["job_key"]: j for j in reports.jobs(cache)}
    assert jobs["job-a"]["state"] == "succeeded" and jobs["job-a"]["attempts"] == 2
    assert jobs["job-a"]["checkpoints"] == 2 and jobs["job-a"]["restores"] == 1
    assert jobs["job-a"]["spot_protections"] == 1 and jobs["job-a"]["max_rootfs_bytes"] == 5000
    assert jobs["job-a"]["cpu_seconds"] == 5400.0 and jobs["job-a"]["job_queue"] == "q-genomics"
    assert jobs["job-b"]["state"] == "failed" and jobs["job-b"]["exit_code"] == 2
    assert jobs["job-c"]["state"] == "running" and jobs["job-c"]["stored_checkpoints"] == 1
    assert jobs["job-c"]["max_rootfs_bytes"] == 7777
    t = reports.totals(cache)
    assert (t["jobs"], t["attempts"], t["checkpoints"], t["restores"], t["spot_protections"]) == (3, 4, 3, 1, 1)
    assert t["success_rate"] == 0.5
    q = {x["job_queue"]: x for x in reports.queues(cache)}
    assert q["q-genomics"]["success_rate"] == 0.5 and q["q-render"]["success_rate"] is None
    nodes = {n["hostname"]: n for n in reports.nodes(cache)}
    assert nodes["ip-10-0-0-1"]["attempts"] == 3 and nodes["ip-10-0-0-1"]["jobs"] == 3
    assert nodes["ip-10-0-0-1"]["checkpoints"] == 3 and nodes["ip-10-0-0-1"]["spot_protections"] == 1
    assert nodes["ip-10-0-0-2"]["restores"] == 1 and nodes["ip-10-0-0-2"]["lifecycle"] == "on-demand"
    c = reports.cost(cache, Prices(on_demand=0.05, spot=0.02, by_type={"m6i.xlarge": (0.04, 0.015)}))
    # spot: 1 h (a) + 2 h (b) at 0.02 vs 0.05; on demand: 0.5 h (a, xlarge) at 0.04
    assert abs(c["cpu_hours"] - 3.5) < 1e-9 and abs(c["spot_cpu_hours"] - 3.0) < 1e-9
    assert abs(c["cost"] - (3 * 0.02 + 0.5 * 0.04)) < 1e-9
    assert abs(c["on_demand_cost"] - (3 * 0.05 + 0.5 * 0.04)) < 1e-9
    assert abs(c["saved"] - 3 * 0.03) < 1e-9


def test_sync_reads_only_changes_and_mirrors_deletions(store, tmp_path):
    a, b, c, m = fill(store, tmp_path)
    cache = Cache(str(tmp_path / "cache.db"))
    sync(store, cache)
    again = sync(store, cache)
    assert again.read == 0 and again.removed == 0 and again.jobs_changed == 0
    rec = attempt("c4", T0 + 20, SPOT, queue="q-render", end="succeeded", exit_code=0, cpu=60.0)
    rec["ended_at"] = T0 + 10_000  # a different size, so the change is seen on any file system
    c.put_record("attempts", "c4", rec)
    c.delete_checkpoints()  # what finalize does when a job succeeds
    r = sync(store, cache)
    assert r.read == 1 and r.removed >= 1 and r.jobs_changed == 1
    [job_c] = reports.jobs(cache, queue="q-render")
    assert job_c["state"] == "succeeded" and job_c["stored_checkpoints"] == 0
    assert job_c["checkpoints"] == 1 and job_c["max_rootfs_bytes"] == 7777  # from the event, which stays
    b.delete_all()
    sync(store, cache)
    assert sorted(j["job_key"] for j in reports.jobs(cache)) == ["job-a", "job-c"]
    assert reports.totals(cache)["jobs"] == 2


def test_unreadable_records_are_skipped_and_another_store_resets_the_cache(store, tmp_path):
    fill(store, tmp_path)
    store.put_bytes("jobs/job-a/events/bad.json", b"{not json")
    store.put_bytes("jobs/job-a/manifests/20260101T000000.000Z-00000000.json", b"{}")
    cache = Cache(str(tmp_path / "cache.db"))
    r = sync(store, cache)
    assert r.skipped == 2 and reports.totals(cache)["jobs"] == 3
    from mmbatch.store.fs import FsObjectStore

    empty = FsObjectStore(str(tmp_path / "other-store"))
    sync(empty, cache)
    assert reports.totals(cache)["jobs"] == 0 and cache.meta("store_url") == empty.url


def test_pages_and_csv_show_the_cache(make_server, admin_token_file, store, tmp_path):
    fill(store, tmp_path)
    server = make_server({"admin_token_file": admin_token_file, "spot_vcpu_hour": 0.02,
                          "on_demand_vcpu_hour": 0.05}, store.url)
    cookie = {"mmbatch_session": request(server.url + "/login", "POST", {"token": TOKEN})[2][0]
              .split(";")[0].split("=", 1)[1]}
    status, _, _, page = request(server.url + "/", cookies=cookie)
    assert status == 200
    assert 'data-testid="total-jobs">3<' in page and 'data-testid="total-spot-protections">1<' in page
    assert 'data-testid="total-success-rate">50.0 %<' in page
    status, _, _, page = request(server.url + "/jobs?queue=q-genomics&state=failed", cookies=cookie)
    assert "job-b" in page and "job-a" not in page.split("<tbody>")[1]
    status, _, _, page = request(server.url + "/jobs/job-a", cookies=cookie)
    assert status == 200 and 'data-testid="job-spot-protections">1<' in page and "spot-final" in page
    assert request(server.url + "/jobs/no-such-job", cookies=cookie)[0] == 404
    status, headers, _, body = request(server.url + "/nodes.csv", cookies=cookie)
    assert headers["content-disposition"] == 'attachment; filename="nodes.csv"'
    rows = list(csv.DictReader(io.StringIO(body)))
    assert {r["hostname"] for r in rows} == {"ip-10-0-0-1", "ip-10-0-0-2"}
    assert [r["attempts"] for r in rows if r["instance_id"] == "i-0aaa"] == ["3"]
    status, _, _, page = request(server.url + "/cost", cookies=cookie)
    assert 'data-testid="cost-saved">$0.09<' in page
    assert "<script>" not in page and " style=" not in page  # the CSP forbids both


def test_job_states_and_cost_model():
    assert attempt_state({"end": None}) == "running"
    assert attempt_state({"end": "killed"}) == "interrupted"
    assert attempt_state({"end": "oom"}) == "failed"
    assert attempt_state({"end": "exited", "exit_code": None}) == "exited"
    assert attempt_state({"end": "exited", "exit_code": 0}) == "succeeded"
    s = summarize_job("j", [], [{"kind": "checkpoint", "time": 5.0, "reason": "spot-final"}], [])
    assert s.spot_protections == 1 and s.first_seen == 5.0
    c = cost_of([{"cpu_seconds": 7200, "lifecycle": "spot", "instance_type": "x"},
                 {"cpu_seconds": None, "lifecycle": "spot"}], Prices(on_demand=1.0, spot=0.25))
    assert c.cost == 0.5 and c.on_demand_cost == 2.0 and c.saved == 1.5


def test_charts_are_well_formed_svg_without_inline_style():
    svgs = [charts.hbars([("q<&>", 50.0), ("none", None)], "rate", max_value=100),
            charts.hbars([], "empty"),
            charts.columns(["2026-11-01", "2026-11-02"], [("a", [1, 2]), ("b", [0, 3])], "act"),
            charts.timeline([{"container_id": "c", "started_at": 1.0, "ended_at": 9.0, "end_state": "killed"}],
                            [{"kind": "checkpoint", "time": 5.0, "container_id": "c"}]),
            charts.timeline([], [])]
    for svg in svgs:
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg")
        assert all("style" not in el.attrib for el in root.iter())


XSS = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def test_store_strings_are_escaped_and_csv_cells_neutralized(make_server, admin_token_file, store, tmp_path):
    """Every string in a page comes from records any node may write: it is escaped; spreadsheet
    formulas in CSV cells are neutralized; odd values (NaN, huge numbers, lists) break nothing."""
    r = repo(store, "job-x")
    node = {"hostname": '=HYPERLINK("http://evil.example","x")', "instance_id": XSS, "instance_type": "+1+1",
            "availability_zone": "@SUM(A1)", "lifecycle": "-2+3"}
    r.put_record("attempts", "cx", attempt("cx", T0, node, queue=XSS, end="killed", cpu=1.0, attempt_no=XSS))
    event(r, XSS, T0 + 5, XSS, node=XSS, reason=XSS, extra=XSS)
    event(r, "checkpoint", T0 + 6, "cx", node=XSS, reason=XSS, rootfs_bytes=1, checkpoint_id=XSS)
    # a buggy node's records: NaN (Python's json writes it), a number too large for SQLite, wrong types
    store.put_bytes("jobs/job-x/attempts/cy.json", json.dumps(
        {"container_id": "cy", "started_at": T0 + 8, "end": "exited", "exit_code": 10 ** 30, "cpu_seconds": NAN,
         "node": node, "job_queue": ["a", "list"]}).encode())
    store.put_bytes("jobs/job-x/events/odd-1.json", json.dumps(
        {"time": NAN, "kind": ["checkpoint"], "container_id": {"a": 1}, "node": 7}).encode())
    store.put_bytes("jobs/job-x/events/odd-2.json", json.dumps(
        {"time": 1e300, "kind": "restore", "container_id": "cx"}).encode())
    cache = Cache(str(tmp_path / "cache.db"))
    result = sync(store, cache)
    assert result.skipped == 0 and result.read == 6
    server = make_server({"admin_token_file": admin_token_file}, store.url)
    cookie = {"mmbatch_session": request(server.url + "/login", "POST", {"token": TOKEN})[2][0]
              .split(";")[0].split("=", 1)[1]}
    for path in ("/", "/jobs", "/jobs/job-x", "/nodes", "/cost", "/api/jobs/job-x", "/api/summary"):
        status, headers, _, page = request(server.url + path, cookies=cookie)
        assert status == 200, path
        if path.startswith("/api/"):  # JSON as it is, never sniffed as HTML
            assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
            json.loads(page)
        else:
            assert "<script>alert" not in page and "<img src=x" not in page, path
    page = request(server.url + "/jobs/job-x", cookies=cookie)[3]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img" in page
    status, headers, _, body = request(server.url + "/nodes.csv", cookies=cookie)
    assert status == 200
    [row] = list(csv.DictReader(io.StringIO(body)))
    assert row["hostname"] == "'" + node["hostname"] and row["instance_type"] == "'+1+1"
    assert row["availability_zone"] == "'@SUM(A1)" and row["lifecycle"] == "'-2+3"
    assert row["attempts"] == "2", "numbers are left as they are"


NAN = float("nan")
