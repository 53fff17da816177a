"""What containerd sees when things go wrong.

containerd reports a runtime failure from the last JSON line
`{"level":"error","msg":...,"time":...}` in `--log`, which is appended to,
never truncated. A broken node config must not stop containers: the shim
falls back to its defaults (delegate `runc` on PATH) and says why in a
warning.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import List

import pytest

from tests.unit.shim.shim_harness import ShimHarness, log_lines

CID = "feedfacecafebeef" * 4
MISSING = "/nonexistent/runc"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
EARLIER = [
    '{"level":"info","msg":"an earlier line","time":"2024-01-01T00:00:00Z"}',
    '{"level":"warning","msg":"another","time":"2024-01-01T00:00:01Z"}',
]


def _argv(shim: ShimHarness, log: str, command: str) -> List[str]:
    g = ["--root", shim.root, "--log", log, "--log-format", "json"]
    managed = shim.bundle(["AWS_BATCH_JOB_ID=job-err"], name="managed-bundle")
    plain = shim.bundle(["PATH=/bin"], name="plain-bundle")
    return {
        "create-unmanaged": g + ["create", "--bundle", plain, "--pid-file", plain + "/init.pid", CID],
        "create-managed": g + ["create", "--bundle", managed, "--pid-file", managed + "/init.pid", CID],
        "start": g + ["start", CID],
        "state": g + ["state", CID],
        "kill": g + ["kill", CID, "9"],
        "delete": g + ["delete", "--force", CID],
        "exec": g + ["exec", "--process", shim.tmp + "/p.json", "--detach", "--pid-file", shim.tmp + "/e.pid", CID],
        "features": ["--log", log, "--log-format", "json", "features"],
        "unknown": g + ["frobnicate", CID],
    }[command]


def _last_error(log: str) -> dict:
    lines = log_lines(log)
    assert lines, "nothing was logged"
    rec = json.loads(lines[-1])
    assert set(rec) >= {"level", "msg", "time"}, rec
    assert rec["level"] == "error", rec
    assert isinstance(rec["msg"], str) and rec["msg"]
    assert RFC3339.match(rec["time"]), rec["time"]
    return rec


@pytest.mark.parametrize("command", ["create-unmanaged", "create-managed", "start", "state", "kill", "delete",
                                     "exec", "features", "unknown"])
def test_missing_delegate_error_is_last_json_line_and_log_is_appended(shim: ShimHarness, command: str) -> None:
    shim.write_config(delegate=MISSING)
    log = os.path.join(shim.tmp, "log.json")
    with open(log, "w") as f:
        f.write("\n".join(EARLIER) + "\n")
    res = shim.run(*_argv(shim, log, command))
    assert res.returncode != 0, res
    assert res.calls == []
    rec = _last_error(log)
    assert MISSING in rec["msg"]
    assert log_lines(log)[:2] == EARLIER, "the --log file must be appended to, never truncated"
    assert shim.state_entries() == []


def test_missing_delegate_by_bare_name(shim: ShimHarness) -> None:
    name = f"no-such-runtime-{uuid.uuid4().hex[:6]}"
    shim.write_config(delegate=name)
    log = os.path.join(shim.tmp, "log.json")
    res = shim.run("--log", log, "--log-format", "json", "state", CID)
    assert res.returncode != 0
    assert name in _last_error(log)["msg"]


def test_missing_delegate_without_log_goes_to_stderr(shim: ShimHarness) -> None:
    shim.write_config(delegate=MISSING)
    res = shim.run("--version")
    assert res.returncode != 0
    assert MISSING.encode() in res.stderr


def test_missing_delegate_log_in_missing_dir_still_fails_cleanly(shim: ShimHarness) -> None:
    shim.write_config(delegate=MISSING)
    res = shim.run("--log", os.path.join(shim.tmp, "no", "such", "dir", "log.json"), "--log-format", "json",
                   "state", CID)
    assert res.returncode != 0
    assert MISSING.encode() in res.stderr
    assert b"Traceback" not in res.stderr


def test_missing_delegate_text_log_format(shim: ShimHarness) -> None:
    shim.write_config(delegate=MISSING)
    log = os.path.join(shim.tmp, "log.txt")
    res = shim.run("--log", log, "state", CID)
    assert res.returncode != 0
    last = log_lines(log)[-1]
    assert "level=error" in last and MISSING in last, last


@pytest.mark.parametrize("kind", ["not-executable", "directory", "exec-format"])
def test_unrunnable_delegate(shim: ShimHarness, kind: str) -> None:
    path = os.path.join(shim.tmp, "bad-runtime")
    if kind == "directory":
        os.makedirs(path)
    else:
        with open(path, "wb") as f:
            f.write(b"\x7fELF garbage, not a program\n" if kind == "exec-format" else b"#!/bin/sh\nexit 0\n")
        os.chmod(path, 0o755 if kind == "exec-format" else 0o644)
    shim.write_config(delegate=path)
    log = os.path.join(shim.tmp, "log.json")
    res = shim.run("--root", shim.root, "--log", log, "--log-format", "json", "start", CID)
    assert res.returncode != 0, res
    assert path in _last_error(log)["msg"]
    assert b"Traceback" not in res.stderr


def test_missing_delegate_for_managed_lifecycle(shim: ShimHarness) -> None:
    """A delegate that vanishes after a managed create: start/kill/delete of
    a container with state still end in an error line, not a traceback."""
    bundle = shim.bundle(["AWS_BATCH_JOB_ID=job-vanish"])
    log = os.path.join(bundle, "log.json")
    g = ["--root", shim.root, "--log", log, "--log-format", "json"]
    assert shim.run(*g, "create", "--bundle", bundle, CID).returncode == 0
    assert shim.state_entries() == [CID]
    shim.write_config(delegate=MISSING)
    for cmd in (["start", CID], ["kill", CID, "9"], ["delete", CID]):
        res = shim.run(*g, *cmd)
        assert res.returncode != 0, (cmd, res)
        assert MISSING in _last_error(log)["msg"]
        assert b"Traceback" not in res.stderr, (cmd, res.stderr)


# -- a malformed config file ------------------------------------------------

BAD_CONFIGS = {
    "invalid-toml": ("[runtime\ndelegate = ", "not valid TOML"),
    "unknown-key": ('[runtime]\nbogus_key = 1\n', "runtime.bogus_key"),
    "unknown-section": ('[nonsense]\na = 1\n', "nonsense"),
    "wrong-type": ('[runtime]\nstate_dir = 5\n', "runtime.state_dir"),
    "bad-value": ('[checkpoint]\nmode = "sometimes"\n', "checkpoint.mode"),
    "relative-state-dir": ('[runtime]\nstate_dir = "relative/dir"\n', "runtime.state_dir"),
    "binary-garbage": ("\x00\x01\x02garbage", "config"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_malformed_config_fails_open_with_a_warning(shim: ShimHarness, case: str) -> None:
    text, names = BAD_CONFIGS[case]
    shim.write_config(text=text)
    log = os.path.join(shim.tmp, "log.json")
    argv = ["--root", shim.root, "--log", log, "--log-format", "json", "state", CID]
    res = shim.run(*argv, exit_code=0)
    # The defaults apply: delegate "runc" found on PATH (the fake is named runc).
    assert res.returncode == 0, res
    assert res.call["argv"] == [shim.fake] + argv
    lines = [json.loads(x) for x in log_lines(log)]
    warnings = [x for x in lines if x["level"] == "warning"]
    assert warnings, f"no warning about the broken config: {lines}"
    assert all(x["level"] != "error" for x in lines), "a fail-open problem must not be containerd's error line"
    assert names in warnings[0]["msg"], warnings[0]
    assert shim.config in warnings[0]["msg"], "the warning should name the file"


def test_malformed_config_warning_on_stderr_without_log(shim: ShimHarness) -> None:
    shim.write_config(text='[runtime]\nbogus_key = 1\n')
    res = shim.run("--version", stdout="runc version 1.1.5\n")
    assert res.returncode == 0
    assert res.stdout == b"runc version 1.1.5\n", "the delegate's stdout must stay clean"
    assert b"runtime.bogus_key" in res.stderr


def test_config_path_is_a_directory(shim: ShimHarness) -> None:
    d = os.path.join(shim.tmp, "config-dir")
    os.makedirs(d)
    log = os.path.join(shim.tmp, "log.json")
    res = shim.run("--log", log, "--log-format", "json", "state", CID, env={"MMBATCH_CONFIG": d})
    assert res.returncode == 0, res
    assert res.call["argv"][0] == shim.fake
    assert any(json.loads(x)["level"] == "warning" for x in log_lines(log))


def test_malformed_config_managed_create_fails_open(shim: ShimHarness) -> None:
    """With a broken config the state dir would be the default /run/mmbatch:
    the managed create must still reach the delegate (and, here, must not
    have written state anywhere, since its config could not be read)."""
    shim.write_config(text="[runtime\n")
    cid = "mmbatch-unit-" + uuid.uuid4().hex
    bundle = shim.bundle(["AWS_BATCH_JOB_ID=job-broken-config"])
    log = os.path.join(bundle, "log.json")
    argv = ["--root", shim.root, "--log", log, "--log-format", "json", "create", "--bundle", bundle, cid]
    res = shim.run(*argv, exit_code=0)
    assert res.returncode == 0, res
    assert res.call["argv"][1:] == argv
    assert not os.path.exists(os.path.join("/run/mmbatch", cid))
    assert all(json.loads(x)["level"] != "error" for x in log_lines(log))


def test_missing_config_file_means_defaults_silently(shim: ShimHarness) -> None:
    log = os.path.join(shim.tmp, "log.json")
    res = shim.run("--log", log, "--log-format", "json", "state", CID,
                   env={"MMBATCH_CONFIG": os.path.join(shim.tmp, "absent.toml")})
    assert res.returncode == 0, res
    assert res.call["argv"][0] == shim.fake  # "runc" on PATH
    assert log_lines(log) == []
