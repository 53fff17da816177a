"""The `mmbatch` CLI without root or dockerd: its pure parts (durations, job
rows, redaction, progress bars), `gc` and `support-bundle` on a real file
store, and `status`/`jobs` against a real mmbatchd loop (tests.unit.api)
and without one."""

from __future__ import annotations

import copy
import io
import json
import os
import tarfile
import time

import pytest

from mmbatch import cli, events, support_bundle
from mmbatch import config as config_mod
from mmbatch.api import openapi
from mmbatch.api.node_view import redact_value, redacted_config
from mmbatch.checkpointer import open_repository
from mmbatch.manifest import Manifest
from mmbatch.progress import ProgressBar, human_bytes, render
from tests.unit.api.daemon_world import TOKEN, cid_of, running_node, write_state


@pytest.mark.parametrize("seconds,text", [
    (None, "-"), (0, "0s"), (59.6, "1m"), (90, "1m30s"), (3600, "1h"), (3725, "1h2m"), (90061, "1d1h"),
    (-5, "overdue 5s"),
])
def test_human_duration(seconds, text):
    assert cli.human_duration(seconds) == text


def test_job_rows_say_what_each_job_is_doing():
    now = 1000.0
    base = {"container_id": "a" * 64, "job_key": "j", "attempt": "2", "decision": "restored", "interval": 900.0,
            "last_checkpoint_at": 880.0, "next_checkpoint_at": 1600.0, "failures": 0, "stopped_at": None,
            "checkpointing": False, "frozen": False, "final_status": None}
    rows = cli.job_rows([base, dict(base, frozen=True), dict(base, checkpointing=True, frozen=True),
                         dict(base, final_status="committed", frozen=True), dict(base, stopped_at=990.0),
                         dict(base, next_checkpoint_at=None, failures=3)], now)
    assert [r["state"] for r in rows] == ["running", "frozen", "checkpointing", "final committed", "stopped",
                                          "running"]
    assert rows[0]["container"] == "a" * 12 and rows[0]["last checkpoint"] == "2m ago"
    assert rows[0]["next"] == "in 10m" and rows[0]["interval"] == "15m" and rows[0]["failures"] == ""
    assert rows[5]["next"] == "-" and rows[5]["failures"] == 3


def test_progress_bar_draws_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet = io.StringIO()
    bar = ProgressBar("upload", stream=quiet)
    bar(10, 100)
    bar.close()
    assert quiet.getvalue() == "", "not a terminal: nothing"

    t = [0.0]
    tty = Tty()
    bar = ProgressBar("upload", stream=tty, clock=lambda: t[0])
    bar(0, 4 << 20)
    t[0] = 0.01
    bar(1 << 20, 4 << 20)  # too soon after the last draw: skipped
    t[0] = 1.0
    bar(2 << 20, 4 << 20)
    t[0] = 1.001
    bar(4 << 20, 4 << 20)  # the end is always drawn
    bar.close()
    frames = tty.getvalue().split("\r")[1:]
    assert len(frames) == 3 and tty.getvalue().endswith("\n")
    assert " 50% 2.0 MiB/4.0 MiB 2.0 MiB/s" in frames[1]
    assert "[" + "=" * 30 + "] 100%" in frames[2]
    assert render("x", 0, 0, 0.0).startswith("x [>")
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(10) == "10 B"


def test_secrets_are_redacted():
    assert redact_value("token_file", "/etc/mmbatch/token") == "/etc/mmbatch/token", "a path is not a secret"
    assert redact_value("kms_key_id", "arn:aws:kms:x") == "<redacted>"
    assert redact_value("url", "s3://bucket/prefix") == "s3://bucket/prefix"
    assert redact_value("endpoint_url", "http://user:pw@127.0.0.1:8333") == "http://<redacted>@127.0.0.1:8333"
    cfg = config_mod.from_dict({"store": {"url": "s3://b/p", "sse": "aws:kms", "kms_key_id": "arn:k"}})
    assert redacted_config(cfg)["store"]["kms_key_id"] == "<redacted>"
    text = ("key AKIAABCDEFGHIJKLMNOP and aws_secret_access_key = abc/def+ghi\n"
            "Authorization: Bearer abcdefghijklmnop\nECS_ENGINE_AUTH_DATA={\"r\":{\"auth\":\"x\"}}\n"
            '{"password": "hunter22"} ' + TOKEN + " https://u:p@host/x\nECS_CLUSTER=prod\n")
    out = support_bundle.redact_text(text, [TOKEN])
    for secret in ("AKIAABCDEFGHIJKLMNOP", "abc/def+ghi", "abcdefghijklmnop", '"auth"', "hunter22", TOKEN, "u:p@"):
        assert secret not in out, secret
    assert "ECS_CLUSTER=prod" in out and "Bearer <redacted>" in out


@pytest.mark.parametrize("text,secret", [
    ('secret_access_key = "quoted/secret+value"', "quoted/secret+value"),
    ("password: 'with spaces inside'", "with spaces"),
    ('{"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG", "Token": "IQoJ"}',
     "wJalrXUtnFEMI/K7MDENG"),
    ('{"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "x", "Token": "IQoJb3JpZ2luX2VjE"}', "IQoJb3JpZ2luX2VjE"),
    ('export AWS_SESSION_TOKEN="FwoGZXIvYXdzE"', "FwoGZXIvYXdzE"),
    ("AWS_CONTAINER_AUTHORIZATION_TOKEN=abcdefgh1234", "abcdefgh1234"),
    ('client_secret = "s3cret-of-the-app-client"', "s3cret-of-the-app-client"),
    ("juicefs meta redis://:redis-pass@10.0.0.5:6379/1", "redis-pass"),
    ("Authorization: Basic dGVzdDpzZWNyZXQ=", "dGVzdDpzZWNyZXQ="),
    ("id token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl", "eyJzdWIiOiJ1In0"),
    ("GET https://b.s3.amazonaws.com/k?X-Amz-Security-Token=FwoGZXIv&X-Amz-Date=1", "FwoGZXIv"),
    ("api_key=XYZ123abc; next", "XYZ123abc"),
])
def test_redaction_covers_quoted_camel_case_and_url_secrets(text, secret):
    out = support_bundle.redact_text(text)
    assert secret not in out and support_bundle.REDACTED in out, out


def test_redaction_keeps_what_is_not_secret():
    text = ('"token_file": "/etc/mmbatch/api.token", "cognito_client_secret_file": "/etc/mmbatch/cs"\n'
            'ECS_CLUSTER=prod\nlog_group = "/mmbatch/nodes"\ntoken mismatch after 5 tries\n')
    assert support_bundle.redact_text(text) == text


def test_bundle_file_is_private_even_when_it_existed(tmp_path):
    path = tmp_path / "b.tar.gz"
    path.write_bytes(b"old")
    path.chmod(0o644)
    b = support_bundle.Bundle([])
    b.add_text("x.txt", "password=hunter22\n")
    b.write(str(path))
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with tarfile.open(path) as tar:
        texts = {m.name.rsplit("/", 1)[-1]: tar.extractfile(m).read() for m in tar.getmembers()}
    assert texts["x.txt"] == b"password=<redacted>\n"
    link = tmp_path / "link.tar.gz"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        b.write(str(link))  # a planted symbolic link is not followed
    assert not (tmp_path / "elsewhere").exists()


def make_cfg(tmp_path, **api) -> config_mod.Config:
    return config_mod.from_dict({
        "runtime": {"state_dir": str(tmp_path / "state")},
        "checkpoint": {"staging_dir": str(tmp_path / "staging"), "memory_staging_dir": "", "keep": 1},
        "store": {"url": f"file://{tmp_path / 'store'}"},
        "api": {"hook_socket": str(tmp_path / "run" / "hook.sock"), **api},
        "log": {"dir": str(tmp_path / "log")},
    })


def commit(cfg, tmp_path, job_key: str, created_at: float, data: bytes) -> Manifest:
    src = tmp_path / f"src-{job_key}-{created_at}"
    (src / "criu").mkdir(parents=True)
    (src / "criu" / "pages-1.img").write_bytes(data)
    return open_repository(cfg, {"job_key": job_key}).commit(
        str(src), Manifest(job_key=job_key, container_id="c" * 64, created_at=created_at))


def run_cli(capsys, cfg_path: str, *argv: str):
    try:
        rc = cli.main(["--config", cfg_path, *argv])
    finally:
        events.configure("")  # main points events.log at the config's log.dir: not for the next tests
    out, err = capsys.readouterr()
    return rc, out, err


def write_config(tmp_path, cfg: config_mod.Config) -> str:
    lines = []
    for section, values in cfg.to_dict().items():
        if section not in ("runtime", "checkpoint", "store", "api", "log"):
            continue
        lines.append(f"[{section}]")
        for k, v in values.items():
            if isinstance(v, str):
                lines.append(f'{k} = "{v}"')
            elif isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, (int, float)):
                lines.append(f"{k} = {v}")
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_gc_prunes_to_keep_and_collects_chunks(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    now = time.time()
    for n in (3, 2, 1):
        commit(cfg, tmp_path, "job-gc", now - 10 * n, os.urandom(4 << 20))
    commit(cfg, tmp_path, "job-other", now, os.urandom(4096))
    stale = tmp_path / "staging" / "0123456789ab-old"
    stale.mkdir(parents=True)
    os.utime(stale, (now - 7200, now - 7200))
    path = write_config(tmp_path, cfg)

    rc, out, _ = run_cli(capsys, path, "gc", "job-gc", "--grace", "0", "--json")
    assert rc == 0
    doc = json.loads(out)
    (row,) = doc["jobs"]
    assert row["job"] == "job-gc" and row["pruned"] == 2, "keep = 1"
    assert row["objects"] >= 2 and row["bytes"] >= 8 << 20, "the pruned checkpoints' chunks go (grace 0)"
    assert doc["staging_removed"] == [str(stale)] and not stale.exists()
    assert len(open_repository(cfg, {"job_key": "job-gc"}).list()) == 1
    assert len(open_repository(cfg, {"job_key": "job-other"}).list()) == 1, "only the named job"

    commit(cfg, tmp_path, "job-other", now + 1, os.urandom(4096))
    rc, out, _ = run_cli(capsys, path, "gc", "--all")
    assert rc == 0 and "job-gc" in out and "job-other" in out and "JOB" in out
    assert len(open_repository(cfg, {"job_key": "job-other"}).list()) == 1


def test_gc_defaults_to_the_jobs_of_this_node(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    write_state(cfg, cid_of(7), "job-here")
    now = time.time()
    commit(cfg, tmp_path, "job-here", now - 5, os.urandom(4096))
    commit(cfg, tmp_path, "job-here", now, os.urandom(4096))
    commit(cfg, tmp_path, "job-elsewhere", now - 5, os.urandom(4096))
    commit(cfg, tmp_path, "job-elsewhere", now, os.urandom(4096))
    rc, out, _ = run_cli(capsys, write_config(tmp_path, cfg), "gc", "--json")
    assert rc == 0 and [r["job"] for r in json.loads(out)["jobs"]] == ["job-here"]
    assert len(open_repository(cfg, {"job_key": "job-elsewhere"}).list()) == 2
    rc, _, err = run_cli(capsys, write_config(tmp_path, cfg), "gc", "--grace", "soon")
    assert rc == 1 and "--grace" in err


def test_status_and_jobs_without_a_daemon_exit_1_and_show_the_state_dir(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    write_state(cfg, cid_of(3), "job-local")
    path = write_config(tmp_path, cfg)
    rc, out, _ = run_cli(capsys, path, "status", "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["daemon"]["running"] is False and doc["local_jobs"] == 1
    rc, out, err = run_cli(capsys, path, "jobs", "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["source"] == "state directory" and "does not answer" in err
    assert [j["job_key"] for j in doc["jobs"]] == ["job-local"]
    rc, out, _ = run_cli(capsys, path, "jobs")
    assert rc == 1 and "job-local" in out and "CONTAINER" in out


@pytest.fixture
def node(tmp_path, monkeypatch):
    yield from running_node(tmp_path, monkeypatch)


def test_status_and_jobs_ask_the_daemon(node, capsys):
    cfg = copy.deepcopy(node.daemon.cfg)
    cfg.api.listen = f"127.0.0.1:{node.port}"  # the port the daemon got
    cfg_path = write_config(node.tmp_path, cfg)
    for with_socket in (True, False):  # the unix socket (root), then TCP with the token
        if not with_socket:
            os.rename(node.sock, node.sock + ".hidden")
        try:
            rc, out, _ = run_cli(capsys, cfg_path, "status", "--json")
            doc = json.loads(out)
            assert rc == 0 and doc["daemon"] == {"running": True}, doc
            openapi.validate({k: v for k, v in doc.items() if k != "daemon"}, openapi.schema("Node"))
            rc, out, _ = run_cli(capsys, cfg_path, "jobs", "--json")
            doc = json.loads(out)
            assert rc == 0 and doc["source"] == "mmbatchd"
            assert sorted(j["job_key"] for j in doc["jobs"]) == ["job-a", "job-b"]
        finally:
            if not with_socket:
                os.rename(node.sock + ".hidden", node.sock)
    rc, out, _ = run_cli(capsys, cfg_path, "status")
    assert rc == 0 and "mmbatchd:    running" in out and "i-0abc m5.large" in out and "every 1m" in out
    rc, out, _ = run_cli(capsys, cfg_path, "jobs")
    assert rc == 0 and "job-a" in out and "in " in out


def test_support_bundle_holds_logs_config_doctor_and_events(node, capsys):
    d = node.daemon
    tmp = node.tmp_path
    events.emit(events.make("restore", "job-a", cid_of(1), checkpoint_id="c1", note=f"Bearer {TOKEN}"))
    (tmp / "log").mkdir(exist_ok=True)
    (tmp / "log" / "mmbatchd.jsonl").write_text(json.dumps({"msg": "hello", "level": "info"}) + "\n")
    (tmp / "log" / "criu").mkdir()
    (tmp / "log" / "criu" / "0101-dump.log").write_text("(00.001) Error (criu/cr-dump.c): boom\n")
    cfg_path = write_config(tmp, d.cfg)
    out_path = tmp / "bundle.tar.gz"
    rc, out, _ = run_cli(capsys, cfg_path, "support-bundle", "-o", str(out_path), "--json")
    assert rc == 0 and json.loads(out)["path"] == str(out_path)
    assert oct(os.stat(out_path).st_mode & 0o777) == "0o600"
    with tarfile.open(out_path) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    for name in ("MANIFEST.json", "config.json", "system.txt", "doctor.txt", "doctor.json", "logs/events.log",
                 "logs/mmbatchd.jsonl", "logs/criu/0101-dump.log", "daemon/node.json", "daemon/jobs.json",
                 "daemon/metrics.txt", f"state/{cid_of(1)[:12]}.json"):
        assert name in files, name
    assert '"kind": "restore"' in files["logs/events.log"]
    assert TOKEN not in "".join(files.values()), "the API token never lands in a bundle"
    assert json.loads(files["config.json"])["effective"]["store"]["url"].startswith("file://")
    assert {c["name"] for c in json.loads(files["doctor.json"])} >= {"kernel", "cgroups", "store"}
    assert "mmbatch_checkpoints_total" in files["daemon/metrics.txt"]
    assert json.loads(files["daemon/node.json"])["jobs"]["active"] == 2


def test_support_bundle_without_a_daemon_says_so(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    out_path = tmp_path / "b.tar.gz"
    rc, out, err = run_cli(capsys, write_config(tmp_path, cfg), "support-bundle", "-o", str(out_path),
                           "--no-doctor", "--json")
    doc = json.loads(out)
    assert rc == 0 and "mmbatchd did not answer" in doc["notes"] and "doctor.txt" not in doc["files"]
    assert "does not answer" in err


def test_doctor_fails_when_the_engine_does_not_answer(tmp_path):
    from mmbatch.doctor import FAIL, Doctor
    from mmbatch.engine import DockerEngine

    cfg = make_cfg(tmp_path)
    cfg.runtime.docker_socket = str(tmp_path / "no-docker.sock")
    doc = Doctor(cfg, str(tmp_path))
    doc.check_docker_engine()
    assert doc.results == [], "a fixture host root is not asked about the live engine"
    doc.check_docker_engine(DockerEngine(cfg.runtime.docker_socket, timeout=1.0))
    (check,) = doc.results
    assert check.name == "docker engine" and check.status == FAIL and "start dockerd" in check.fix
