"""`create`: unmanaged bundles pass through untouched; managed ones (env has
AWS_BATCH_JOB_ID or MMBATCH_JOB_KEY, mode not `none`) get their state under
the configured state_dir (never under --root), the `org.criu.config`
annotation in config.json, and still the delegate's own `create`, same argv.

No engine is needed: the config's docker_socket does not exist, so the shim
fails open on the image lookup (a warning) and carries on. The store is a
tmp `file://` store with no checkpoint, so every create is a cold start.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional

import pytest

from tests.unit.shim.shim_harness import ShimHarness, hexargs, log_lines

CID = "0123456789abcdef" * 4


def create_argv(shim: ShimHarness, bundle: str, cid: str = CID, console: bool = False,
                systemd: bool = False) -> List[str]:
    argv = ["--root", shim.root, "--log", os.path.join(bundle, "log.json"), "--log-format", "json"]
    if systemd:
        argv.append("--systemd-cgroup")
    argv += ["create", "--bundle", bundle, "--pid-file", os.path.join(bundle, "init.pid")]
    if console:
        argv += ["--console-socket", os.path.join(shim.tmp, "console.sock")]
    return argv + [cid]


def read_spec(bundle: str) -> dict:
    with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def spec_bytes(bundle: str) -> bytes:
    with open(os.path.join(bundle, "config.json"), "rb") as f:
        return f.read()


# -- unmanaged --------------------------------------------------------------

UNMANAGED_ENVS = {
    "no-job-env": ["PATH=/bin", "HOME=/root"],
    "empty-job-id": ["PATH=/bin", "AWS_BATCH_JOB_ID="],
    "empty-job-key": ["PATH=/bin", "MMBATCH_JOB_KEY="],
    "prefix-lookalike": ["PATH=/bin", "XAWS_BATCH_JOB_ID=abc", "AWS_BATCH_JOB_IDX=abc"],
    "other-batch-vars": ["PATH=/bin", "AWS_BATCH_JOB_ATTEMPT=2", "AWS_BATCH_JQ_NAME=q"],
    "mode-none": ["AWS_BATCH_JOB_ID=job-1", "MMBATCH_CHECKPOINT_MODE=none"],
    "mode-none-alias": ["AWS_BATCH_JOB_ID=job-1", "MMC_CHECKPOINT_MODE=none"],
    "mode-none-loud": ["MMBATCH_JOB_KEY=k", "MMBATCH_CHECKPOINT_MODE= NONE "],
    "mode-none-alias-job-key": ["MMBATCH_JOB_KEY=k", "MMC_CHECKPOINT_MODE=none"],
}


@pytest.mark.parametrize("case", sorted(UNMANAGED_ENVS))
def test_unmanaged_create_passes_through_and_leaves_no_state(shim: ShimHarness, case: str) -> None:
    bundle = shim.bundle(UNMANAGED_ENVS[case])
    original = spec_bytes(bundle)
    argv = create_argv(shim, bundle)
    res = shim.run(*argv, exit_code=0)
    assert res.returncode == 0, res
    assert res.call["argv_hex"][1:] == hexargs(argv)
    assert shim.state_entries() == []
    assert os.listdir(shim.root) == []
    assert spec_bytes(bundle) == original, "an unmanaged bundle must not be rewritten"
    assert not any('"level":"error"' in line for line in log_lines(os.path.join(bundle, "log.json")))


def test_unmanaged_when_node_mode_is_none(shim: ShimHarness) -> None:
    shim.write_config(checkpoint='mode = "none"\n')
    bundle = shim.bundle(["AWS_BATCH_JOB_ID=job-1"])
    res = shim.run(*create_argv(shim, bundle))
    assert res.returncode == 0, res
    assert shim.state_entries() == []


@pytest.mark.parametrize("spec_text", ["not json", "[1, 2]", '{"process": "AWS_BATCH_JOB_ID=x"}',
                                       '{"process": {"env": {"AWS_BATCH_JOB_ID": "x"}}}', ""])
def test_odd_bundle_config_fails_open(shim: ShimHarness, spec_text: str) -> None:
    bundle = shim.bundle()
    with open(os.path.join(bundle, "config.json"), "w") as f:
        f.write(spec_text)
    argv = create_argv(shim, bundle)
    res = shim.run(*argv, exit_code=0)
    assert res.returncode == 0, res
    assert res.call["argv_hex"][1:] == hexargs(argv)
    assert shim.state_entries() == []
    for line in log_lines(os.path.join(bundle, "log.json")):
        assert json.loads(line)["level"] != "error", line


def test_create_without_bundle_config_fails_open(shim: ShimHarness) -> None:
    bundle = os.path.join(shim.tmp, "no-such-bundle")
    argv = create_argv(shim, shim.bundle())
    argv[argv.index("--bundle") + 1] = bundle
    res = shim.run(*argv, exit_code=0)
    assert res.returncode == 0, res
    assert res.call["argv"][1:] == argv
    assert shim.state_entries() == []


# -- managed ----------------------------------------------------------------

MANAGED_ENVS = {
    "batch-job-id": (["PATH=/bin", "AWS_BATCH_JOB_ID=2f3c-job-id", "AWS_BATCH_JOB_ATTEMPT=1"], "2f3c-job-id"),
    "batch-array-job": (["AWS_BATCH_JOB_ID=arr-1:7", "AWS_BATCH_JOB_ARRAY_INDEX=7"], None),
    "job-key": (["PATH=/bin", "MMBATCH_JOB_KEY=my-job"], "my-job"),
    "hostile-job-id": (["AWS_BATCH_JOB_ID=../../etc/passwd"], None),
    "mode-iterative-overrides-alias": (
        ["AWS_BATCH_JOB_ID=j-9", "MMBATCH_CHECKPOINT_MODE=iterative", "MMC_CHECKPOINT_MODE=none"], "j-9"),
}


@pytest.mark.parametrize("case", sorted(MANAGED_ENVS))
def test_managed_create_records_state_and_annotation(shim: ShimHarness, case: str) -> None:
    env, key = MANAGED_ENVS[case]
    console = systemd = case == "batch-job-id"  # containerd's fullest form, once
    bundle = shim.bundle(env)
    argv = create_argv(shim, bundle, console=console, systemd=systemd)
    cdir = os.path.join(shim.state_dir, CID)
    state_file = os.path.join(cdir, "state.json")
    spec_file = os.path.join(bundle, "config.json")
    res = shim.run(*argv, exit_code=0, watch=[state_file, spec_file])
    assert res.returncode == 0, res

    # The delegate's own create, same argv.
    call = res.call
    assert call["argv"][0] == shim.fake
    assert call["argv_hex"][1:] == hexargs(argv)

    # State under state_dir, never under --root; written atomically.
    assert shim.state_entries() == [CID]
    assert os.listdir(shim.root) == []
    assert sorted(os.listdir(cdir)) == ["criu.conf", "state.json"], "temp files left behind"
    assert os.stat(cdir).st_mode & 0o777 == 0o700
    with open(state_file, encoding="utf-8") as f:
        st = json.load(f)
    assert st["container_id"] == CID
    assert st["managed"] is True
    assert st["decision"] == "cold"  # the tmp store has no checkpoint
    assert st["bundle"] == bundle
    assert st["root"] == shim.root
    job_key = st["job"]["job_key"]
    if key is not None:
        assert job_key == key
    assert job_key and "/" not in job_key and not job_key.startswith(".")

    # The annotation, in the spec the delegate read; the rest of it kept.
    for seen in (json.loads(call["seen"][spec_file]), read_spec(bundle)):
        ann = seen["annotations"]
        assert ann["org.criu.config"] == os.path.join(cdir, "criu.conf")
        assert ann["keep.me"] == "yes"
        assert seen["process"]["env"] == env
    assert os.path.isfile(os.path.join(cdir, "criu.conf"))
    assert call["seen"][state_file] is not None, "state must exist before the delegate runs"

    # Nothing escaped the tmp world: the hostile job id made no path.
    assert not os.path.exists(os.path.join(shim.tmp, "etc"))
    lines = log_lines(os.path.join(bundle, "log.json"))
    assert lines, "the failed engine lookup should be logged as a warning"
    for line in lines:
        rec = json.loads(line)
        assert rec["level"] in ("info", "warning"), line
    assert any("engine" in json.loads(x)["msg"] for x in lines)


@pytest.mark.parametrize("code", [1, 2])
def test_managed_create_returns_delegate_exit_code(shim: ShimHarness, code: int) -> None:
    bundle = shim.bundle(["AWS_BATCH_JOB_ID=job-rc"])
    argv = create_argv(shim, bundle)
    res = shim.run(*argv, exit_code=code)
    assert res.returncode == code, res
    assert res.call["argv"][1:] == argv


def test_managed_with_node_mode_none_overridden_per_job(shim: ShimHarness) -> None:
    shim.write_config(checkpoint='mode = "none"\n')
    bundle = shim.bundle(["AWS_BATCH_JOB_ID=job-1", "MMBATCH_CHECKPOINT_MODE=iterative"])
    res = shim.run(*create_argv(shim, bundle))
    assert res.returncode == 0, res
    assert shim.state_entries() == [CID]


def test_state_dir_is_created_when_missing(shim: ShimHarness) -> None:
    nested = os.path.join(shim.tmp, "deep", "er", "state")
    shim.write_config(state_dir=nested)
    bundle = shim.bundle(["MMBATCH_JOB_KEY=k1"])
    res = shim.run(*create_argv(shim, bundle))
    assert res.returncode == 0, res
    assert os.path.isfile(os.path.join(nested, CID, "state.json"))


def test_unusable_state_dir_fails_open(shim: ShimHarness) -> None:
    blocker = os.path.join(shim.tmp, "state-is-a-file")
    with open(blocker, "w") as f:
        f.write("x")
    shim.write_config(state_dir=blocker)
    bundle = shim.bundle(["MMBATCH_JOB_KEY=k1"])
    argv = create_argv(shim, bundle)
    res = shim.run(*argv, exit_code=0)
    assert res.returncode == 0, res
    assert res.call["argv"][1:] == argv
    assert any(json.loads(x)["level"] == "warning" for x in log_lines(os.path.join(bundle, "log.json")))


# -- lifecycle of a managed container after create ---------------------------

def _managed(shim: ShimHarness, cid: str = CID) -> str:
    bundle = shim.bundle(["AWS_BATCH_JOB_ID=job-life"])
    res = shim.run(*create_argv(shim, bundle, cid=cid))
    assert res.returncode == 0, res
    return bundle


def _state(shim: ShimHarness, cid: str = CID) -> Optional[dict]:
    try:
        with open(os.path.join(shim.state_dir, cid, "state.json"), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def test_managed_start_kill_delete_delegate_with_same_argv(shim: ShimHarness) -> None:
    bundle = _managed(shim)
    g = ["--root", shim.root, "--log", os.path.join(bundle, "log.json"), "--log-format", "json"]

    res = shim.run(*g, "start", CID)
    assert res.returncode == 0 and res.call["argv"][1:] == g + ["start", CID], res
    assert _state(shim)["decision"] == "cold"

    res = shim.run(*g, "kill", CID, "15", exit_code=0)
    assert res.returncode == 0 and res.call["argv"][1:] == g + ["kill", CID, "15"], res
    st = _state(shim)
    assert st["kill_signal"] == "15" and st["killed_at"]

    res = shim.run(*g, "kill", "--all", CID, "9")
    assert res.call["argv"][1:] == g + ["kill", "--all", CID, "9"], res
    assert _state(shim)["kill_signal"] == "15", "the first signal from outside is the one recorded"

    res = shim.run(*g, "delete", "--force", CID, exit_code=0)
    assert res.returncode == 0 and res.call["argv"][1:] == g + ["delete", "--force", CID], res
    assert shim.state_entries() == []


@pytest.mark.parametrize("signal", ["USR1", "SIGUSR2", "10", "WINCH", "CONT"])
def test_signals_that_do_not_stop_a_job_are_not_recorded_as_a_stop(shim: ShimHarness, signal: str) -> None:
    """A job that traps USR1 and later fails on its own must not count as
    stopped from outside (it would be restored and replay its failure)."""
    _managed(shim)
    res = shim.run("--root", shim.root, "kill", CID, signal, exit_code=0)
    assert res.call["argv"][1:] == ["--root", shim.root, "kill", CID, signal]
    assert "killed_at" not in _state(shim)
    shim.run("--root", shim.root, "kill", CID, "SIGTERM", exit_code=0)
    assert _state(shim)["kill_signal"] == "SIGTERM"


@pytest.mark.parametrize("code", [1, 137])
def test_managed_kill_and_delete_return_delegate_exit_code(shim: ShimHarness, code: int) -> None:
    _managed(shim)
    assert shim.run("--root", shim.root, "kill", CID, "KILL", exit_code=code).returncode == code
    assert shim.run("--root", shim.root, "delete", CID, exit_code=code).returncode == code


def test_state_of_managed_container_is_passthrough(shim: ShimHarness) -> None:
    _managed(shim)
    res = shim.run("--root", shim.root, "state", CID, stdout='{"id":"x"}')
    assert res.call["argv"][1:] == ["--root", shim.root, "state", CID]
    assert res.stdout == b'{"id":"x"}'
    assert _state(shim) is not None


def test_bundle_config_mode_is_kept(shim: ShimHarness) -> None:
    bundle = shim.bundle(["AWS_BATCH_JOB_ID=job-mode"])
    os.chmod(os.path.join(bundle, "config.json"), 0o640)
    assert shim.run(*create_argv(shim, bundle)).returncode == 0
    assert os.stat(os.path.join(bundle, "config.json")).st_mode & 0o777 == 0o640
    assert "org.criu.config" in read_spec(bundle)["annotations"]
    assert [n for n in os.listdir(bundle) if n.startswith("config.json.")] == []


def _restored_state(shim: ShimHarness) -> None:
    cdir = os.path.join(shim.state_dir, CID)
    os.makedirs(cdir)
    with open(os.path.join(cdir, "state.json"), "w", encoding="utf-8") as f:
        json.dump({"container_id": CID, "managed": True, "decision": "restored",
                   "job": {"job_key": "job-r"}, "globals": {"root": shim.root}}, f)


def test_start_of_restored_running_container_is_a_noop(shim: ShimHarness) -> None:
    """After restore-on-create the job runs already: start asks the delegate
    for the state (same --root) and succeeds without a delegate start."""
    _restored_state(shim)
    log = os.path.join(shim.tmp, "log.json")
    res = shim.run("--root", shim.root, "--log", log, "--log-format", "json", "start", CID,
                   stdout=json.dumps({"id": CID, "status": "running"}))
    assert res.returncode == 0, res
    argv = res.call["argv"][1:]
    assert "start" not in argv
    assert argv[argv.index("state") + 1] == CID
    assert argv[argv.index("--root") + 1] == shim.root
    assert log not in argv, "our own runtime calls must not write into containerd's log.json"
    assert _state(shim)["started_at_restore"] is True


@pytest.mark.parametrize("status,code", [("stopped", 0), ("", 1)])
def test_start_of_restored_container_that_is_not_running_fails(shim: ShimHarness, status: str, code: int) -> None:
    _restored_state(shim)
    log = os.path.join(shim.tmp, "log.json")
    out = json.dumps({"id": CID, "status": status}) if status else ""
    res = shim.run("--root", shim.root, "--log", log, "--log-format", "json", "start", CID, stdout=out,
                   exit_code=code)
    assert res.returncode != 0, res
    rec = json.loads(log_lines(log)[-1])
    assert rec["level"] == "error" and CID[:12] in rec["msg"], rec
