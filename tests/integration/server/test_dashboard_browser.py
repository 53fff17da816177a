"""The dashboard in a real browser, over a store filled by a real run.

A private node (own dockerd, mmbatchd, a fake IMDS saying Spot) runs two
Batch jobs through mmbatch-runtime: job A (queue q-alpha) gets a Spot
interruption notice, its final checkpoint, a kill; its retry is restored
from that checkpoint and succeeds. Job B (queue q-beta) fails with exit 3.
The management server reads that store; headless Chromium signs in through
a fake Cognito's hosted UI, and the numbers the pages show (after their
script ran) must equal those counted straight from the store's records.
Screenshots go to $MMBATCH_TEST_ARTIFACTS (or the test's tmp dir).
"""

from __future__ import annotations

import json
import os

import pytest

from mmbatch import config as config_mod
from mmbatch.checkpoints import CheckpointRepository
from mmbatch.identity import sanitize_component
from mmbatch.server.cli import build
from mmbatch.store.fs import FsObjectStore
from tests.integration.daemon import daemon_jobs as jobs
from tests.lib.fake_cognito import FakeCognito

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.root, pytest.mark.slow]

SPOT_PRICE, OD_PRICE = 0.02, 0.05


def final_committed(node, cid):
    try:
        with open(os.path.join(node.state_dir, cid, "final.json")) as f:
            return json.load(f).get("status") == "committed"
    except (OSError, ValueError):
        return False


def attempt_of(node, job_id, cid):
    return jobs.repo(node, job_id).get_record("attempts", cid) or {}


# Job A also writes 64 KiB into its rootfs: the rootfs usage the dashboard shows.
JOB_A = "head -c 65536 /dev/urandom > /scratch.bin; " + jobs.COUNTER


def run_the_jobs(node, imds, image):
    """Job A: interrupted on Spot, killed, restored, succeeds. Job B: fails. Returns their ids."""
    job_a, job_b = jobs.unique("dash-a"), jobs.unique("dash-b")
    a1 = jobs.run_job(node, "a1", job_a, "-e", "AWS_BATCH_JQ_NAME=q-alpha", "-e", "LIMIT=100", image=image,
                      argv=("sh", "-c", JOB_A))
    b1 = jobs.run_job(node, "b1", job_b, "-e", "AWS_BATCH_JQ_NAME=q-beta", image=image,
                      argv=("sh", "-c", "sleep 1; exit 3"))
    jobs.wait_for(lambda: len(jobs.counter_lines(node.logs("a1"))) >= 10, 30, "job A to count", node=node)
    imds.schedule_interruption(3)
    jobs.wait_for(lambda: final_committed(node, a1), 60, "job A's final checkpoint", node=node)
    node.docker("kill", "a1", timeout=150)  # what ECS does to a reclaimed instance's tasks
    node.docker("wait", "a1", timeout=60)
    jobs.wait_for(lambda: attempt_of(node, job_a, a1).get("end") == "killed", 30, "attempt 1's end", node=node)
    jobs.wait_for(lambda: not os.path.exists(os.path.join(node.state_dir, "interrupted")), 30,
                  "the interruption to pass", node=node)
    imds.clear()
    a2 = jobs.run_job(node, "a2", job_a, "-e", "AWS_BATCH_JQ_NAME=q-alpha", "-e", "LIMIT=100", image=image,
                      argv=("sh", "-c", JOB_A), attempt=2)
    assert int(node.out("wait", "a2", timeout=60)) == 0
    assert int(node.out("wait", "b1", timeout=60)) == 3
    jobs.wait_for(lambda: attempt_of(node, job_a, a2).get("end") == "succeeded", 60, "job A's success", node=node)
    jobs.wait_for(lambda: attempt_of(node, job_b, b1).get("exit_code") == 3, 60, "job B's exit code", node=node)
    first = jobs.counter_lines(node.logs("a2"))[0]
    assert first > 1, "attempt 2 was restored, not started over"
    return job_a, job_b


def store_view(store_dir):
    """Counts straight from the store's records, without the server's code."""
    store = FsObjectStore(store_dir)
    keys = sorted({k.split("/")[1] for k in store.list("jobs")})
    view = {}
    for key in keys:
        r = CheckpointRepository(store, key)
        attempts, events = r.list_records("attempts"), r.list_records("events")
        view[key] = {
            "attempts": attempts,
            "checkpoints": sum(e["kind"] == "checkpoint" for e in events),
            "restores": sum(e["kind"] == "restore" for e in events),
            "spot": sum(e["kind"] == "checkpoint" and e.get("reason") == "spot-final" for e in events),
            "rootfs": max([e.get("rootfs_bytes", 0) for e in events if e["kind"] == "checkpoint"], default=0),
            "cpu": sum(a.get("cpu_seconds") or 0 for a in attempts),
        }
    return view


def page_numbers(browser, prefix):
    selector = json.dumps(f'[data-testid^="{prefix}"]')
    return browser.eval(f"JSON.stringify(Object.fromEntries(Array.from(document.querySelectorAll({selector}))"
                        ".map(e => [e.dataset.testid, [e.textContent, e.dataset.value]])))")


def test_dashboard_in_chromium_shows_the_store(node_factory, imds_factory, busybox_image, browser, tmp_path):
    imds = imds_factory()
    node = node_factory("dash", images=[busybox_image])
    node.write_config(imds=imds.url, grace=2, poll=0.3)
    node.start_mmbatchd()
    jobs.wait_for(lambda: os.path.exists(node.node_json), 20, "node.json from IMDS", node=node)
    job_a, job_b = run_the_jobs(node, imds, busybox_image)
    key_a, key_b = sanitize_component(job_a), sanitize_component(job_b)

    view = store_view(node.store_dir)
    assert sorted(view) == sorted([key_a, key_b])
    # What the runtime itself recorded for the server: queue, node, CPU time, rootfs.
    for key, queue in ((key_a, "q-alpha"), (key_b, "q-beta")):
        for a in view[key]["attempts"]:
            assert a["job_queue"] == queue and a["node"]["lifecycle"] == "spot"
            assert isinstance(a["cpu_seconds"], float) and a["cpu_seconds"] > 0, a
    assert view[key_a]["spot"] >= 1 and view[key_a]["restores"] == 1 and view[key_a]["rootfs"] >= 65536

    fake = FakeCognito(users={"operator": "a long test password"}).start()
    server = None
    try:
        cfg = config_mod.from_dict({
            "store": {"url": "file://" + node.store_dir},
            "server": {"cache_path": str(tmp_path / "cache.sqlite3"), "spot_vcpu_hour": SPOT_PRICE,
                       "on_demand_vcpu_hour": OD_PRICE, "cognito_region": "us-east-1",
                       "cognito_user_pool_id": fake.user_pool_id, "cognito_client_id": fake.client_id,
                       "cognito_domain": fake.url, "cognito_idp_endpoint": fake.url}})
        secret = tmp_path / "secret"
        secret.write_text(fake.client_secret)
        secret.chmod(0o600)  # the server refuses a secret file open to others
        cfg.server.cognito_client_secret_file = str(secret)
        server = build(cfg, listen="127.0.0.1:0").start()
        fake.callback_urls.append(server.url + "/auth/callback")
        shots = os.environ.get("MMBATCH_TEST_ARTIFACTS") or str(tmp_path)
        os.makedirs(shots, exist_ok=True)

        # Sign in as a person would: the login page, Cognito's form, back to the dashboard.
        browser.navigate(server.url + "/")
        assert browser.eval("location.pathname") == "/login"
        browser.eval("document.querySelector('[data-testid=cognito-login]').click()")
        browser.wait_for(f"location.host === {json.dumps(fake.url.split('//')[1])} && "
                         "!!document.getElementById('password')")
        browser.eval("document.getElementById('username').value = 'operator';"
                     "document.getElementById('password').value = 'a long test password';"
                     "document.getElementById('submit').click()")
        browser.wait_for(f"location.href.startsWith({json.dumps(server.url + '/')}) && document.body && "
                         "document.body.dataset.js === 'ready'")
        assert browser.eval("location.pathname") == "/"
        session = [c for c in browser.cookies() if c["name"] == "mmbatch_session"]
        assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Lax"
        assert browser.eval("document.cookie.indexOf('mmbatch_session')") == -1  # HttpOnly: not for scripts

        # Overview: totals equal the store's.
        totals = json.loads(page_numbers(browser, "total-"))
        all_attempts = sum(len(v["attempts"]) for v in view.values())
        assert totals["total-jobs"][0] == "2"
        assert totals["total-attempts"][0] == str(all_attempts) == "3"
        assert totals["total-checkpoints"][0] == str(sum(v["checkpoints"] for v in view.values()))
        assert totals["total-restores"][0] == str(sum(v["restores"] for v in view.values())) == "1"
        assert totals["total-spot-protections"][0] == str(sum(v["spot"] for v in view.values()))
        assert totals["total-success-rate"][0] == "50.0 %"  # A succeeded, B failed
        assert browser.eval("document.querySelector('time').title.endsWith('UTC')"), "the page's script ran"
        browser.screenshot(os.path.join(shots, "dashboard-overview.png"))

        # Job A's page.
        browser.navigate(f"{server.url}/jobs/{key_a}")
        job = json.loads(page_numbers(browser, "job-"))
        assert job["job-state"][0] == "succeeded"
        assert job["job-attempts"][0] == "2" and job["job-restores"][0] == "1"
        assert job["job-spot-protections"][0] == str(view[key_a]["spot"])
        assert job["job-checkpoints"][0] == str(view[key_a]["checkpoints"])
        assert job["job-stored-checkpoints"][0] == "0"  # deleted when the job succeeded
        assert int(job["job-max-rootfs"][1]) == view[key_a]["rootfs"]
        assert abs(float(job["job-cpu"][1]) - view[key_a]["cpu"]) < 1e-3
        assert browser.eval("document.querySelectorAll('[data-testid=events] tbody tr').length") >= 5
        browser.screenshot(os.path.join(shots, "dashboard-job.png"))

        # Job queues: q-alpha 100 %, q-beta 0 %.
        browser.navigate(server.url + "/")
        rates = browser.eval("Array.from(document.querySelectorAll('[data-testid=queues] tbody tr'))"
                             ".map(r => [r.cells[0].textContent, r.cells[7].textContent])")
        assert rates == [["q-alpha", "100.0 %"], ["q-beta", "0.0 %"]]

        # Nodes, and their CSV through the page's own session.
        browser.navigate(server.url + "/nodes")
        csv_text = browser.eval("fetch('/nodes.csv').then(r => r.text())")
        header, *rows = [ln.split(",") for ln in csv_text.strip().splitlines()]
        assert len(rows) == 1
        row = dict(zip(header, rows[0]))
        assert row["lifecycle"] == "spot" and row["instance_type"] == "m6i.large"
        assert int(row["attempts"]) == all_attempts and int(row["jobs"]) == 2

        # Cost: every attempt ran on Spot.
        browser.navigate(server.url + "/cost")
        cost = json.loads(page_numbers(browser, "cost-"))
        cpu_hours = sum(v["cpu"] for v in view.values()) / 3600
        assert abs(float(cost["cost-cpu-hours"][1]) - cpu_hours) < 1e-5
        assert abs(float(cost["cost-saved"][1]) - cpu_hours * (OD_PRICE - SPOT_PRICE)) < 1e-5
        browser.screenshot(os.path.join(shots, "dashboard-cost.png"))

        # Sign out: through Cognito's logout endpoint, back to the login page, session gone.
        browser.eval("document.querySelector('form.logout button').click()")
        browser.wait_for(f"location.href === {json.dumps(server.url + '/login')} && !!document.body")
        assert not [c for c in browser.cookies() if c["name"] == "mmbatch_session"]
        print(f"\nscreenshots in {shots}", flush=True)
        assert os.path.getsize(os.path.join(shots, "dashboard-overview.png")) > 10000
    finally:
        if server is not None:
            server.stop()
            server.app.cache.close()
        fake.stop()
