"""Passthrough: every call the shim does not act on reaches the delegate
byte-identical (argv[1:] equal, argv[0] the delegate's path), with the
delegate's exit code and stdio, and leaves no state behind.

The call forms are containerd's (DESIGN.md, "Contracts that matter"), in the
spellings runc's flag parser accepts (`--f v`, `--f=v`, `-f v`), plus flags,
subcommands and arguments the shim has never heard of.
"""

from __future__ import annotations

import os
from typing import List

import pytest

from tests.unit.shim.shim_harness import ShimHarness, hexargs, log_lines

# Placeholders: {R} runtime root, {B} bundle (unmanaged), {L} --log file,
# {S} console socket, {T} tmp dir. "ID" is a docker-like container id.
ID = "4f1c0ffee0ddba11" * 4

CONTAINERD = ["--root", "{R}", "--log", "{B}/log.json", "--log-format", "json"]
CONTAINERD_SYSTEMD = CONTAINERD + ["--systemd-cgroup"]

CALL_FORMS = {
    # containerd-shim-runc-v2's exact forms
    "create": CONTAINERD + ["create", "--bundle", "{B}", "--pid-file", "{B}/init.pid", ID],
    "create-systemd": CONTAINERD_SYSTEMD + ["create", "--bundle", "{B}", "--pid-file", "{B}/init.pid", ID],
    "create-console": CONTAINERD + ["create", "--bundle", "{B}", "--pid-file", "{B}/init.pid",
                                    "--console-socket", "{S}", ID],
    "start": CONTAINERD + ["start", ID],
    "state": CONTAINERD + ["state", ID],
    "kill": CONTAINERD + ["kill", ID, "15"],
    "kill-name": CONTAINERD + ["kill", ID, "SIGKILL"],
    "kill-all": CONTAINERD + ["kill", "--all", ID, "9"],
    "delete": CONTAINERD + ["delete", ID],
    "delete-force": CONTAINERD + ["delete", "--force", ID],
    "exec": CONTAINERD + ["exec", "--process", "{T}/process.json", "--detach", "--pid-file", "{T}/exec.pid", ID],
    "exec-console": CONTAINERD + ["exec", "--process", "{T}/p.json", "--console-socket", "{S}", "--detach",
                                  "--pid-file", "{T}/exec.pid", ID],
    "ps": CONTAINERD + ["ps", "--format", "json", ID],
    "pause": CONTAINERD + ["pause", ID],
    "resume": CONTAINERD + ["resume", ID],
    "update": CONTAINERD + ["update", "--resources", "-", ID],
    "features": ["features"],
    "checkpoint": CONTAINERD + ["checkpoint", "--image-path", "{T}/img", "--work-path", "{T}/work",
                                "--leave-running", "--tcp-established", ID],
    "restore": CONTAINERD + ["restore", "--detach", "--bundle", "{B}", "--pid-file", "{B}/init.pid",
                             "--image-path", "{T}/img", "--work-path", "{T}/work", ID],
    "version-long": ["--version"],
    "version-short": ["-v"],
    "help-long": ["--help"],
    "help-short": ["-h"],
    "help-command": ["help"],
    "create-help": ["create", "--help"],
    "no-args": [],
    # `=` forms
    "eq-globals-create": ["--root={R}", "--log={B}/log.json", "--log-format=json", "--systemd-cgroup=true",
                          "create", "--bundle={B}", "--pid-file={B}/init.pid", "--console-socket={S}", ID],
    "eq-kill-all": ["--root={R}", "kill", "--all=true", ID, "KILL"],
    "eq-delete-force": ["--root={R}", "delete", "--force=true", ID],
    "eq-ps": ["--root={R}", "ps", "--format=json", ID],
    "eq-value-with-eq": ["--root={R}", "--log={T}/a=b.json", "state", ID],
    # single-dash forms
    "dash-create": ["-root", "{R}", "-log", "{B}/log.json", "-log-format", "json", "create", "-bundle", "{B}",
                    "-pid-file", "{B}/init.pid", ID],
    "dash-create-b": ["-root", "{R}", "create", "-b", "{B}", ID],
    "dash-kill-a": ["-root", "{R}", "kill", "-a", ID, "9"],
    "dash-delete-f": ["-root", "{R}", "delete", "-f", ID],
    "dash-eq": ["-root={R}", "-debug", "state", ID],
    # other runc globals
    "debug-criu-rootless": ["--debug", "--criu", "/usr/sbin/criu", "--rootless", "false", "--root", "{R}",
                            "state", ID],
    "double-dash": ["--root", "{R}", "--", "state", ID],
    "double-dash-args": ["--root", "{R}", "kill", "--", ID, "TERM"],
    # unknown global flags, subcommands, subcommand flags
    "unknown-global-bool": ["--frobnicate", "--root", "{R}", "start", ID],
    "unknown-global-value": ["--root", "{R}", "--weird", "x", "create", "--bundle", "{B}", ID],
    "unknown-global-eq": ["--new-global=1", "delete", ID],
    "unknown-command": ["--root", "{R}", "frobnicate", "--x", "y", ID, "extra"],
    "unknown-command-bare": ["frobnicate"],
    "list": ["--root", "{R}", "list", "--format", "json", "--quiet"],
    "events": ["--root", "{R}", "events", "--stats", "--interval", "1s", ID],
    "spec": ["spec", "--rootless", "--bundle", "{B}"],
    "run": ["--root", "{R}", "run", "--bundle", "{B}", "--detach", ID],
    "unknown-create-flag": CONTAINERD + ["create", "--bundle", "{B}", "--brand-new", "--pid-file", "{B}/p", ID],
    "unknown-start-flag": ["--root", "{R}", "start", "--quickly", ID],
    "unknown-kill-flag": ["--root", "{R}", "kill", "--gently", ID, "TERM"],
    "unknown-delete-flag": ["--root", "{R}", "delete", "--now", ID],
    # odd but legal argv: flags after the id, extra args, odd values
    "flags-after-id": ["--root", "{R}", "delete", ID, "--force"],
    "kill-extra-args": ["--root", "{R}", "kill", ID, "TERM", "extra"],
    "start-two-ids": ["--root", "{R}", "start", ID, ID],
    "empty-strings": ["--root", "", "--log", "", "state", ""],
    "spaces-and-unicode": ["--root", "{T}/ro ot é", "state", "idé with space"],
    "create-missing-id": CONTAINERD + ["create", "--bundle", "{B}"],
    "create-missing-flag-value": CONTAINERD + ["create", "--bundle"],
    "value-looks-like-flag": ["--root", "--root", "--log", "-x", "state", ID],
}


def materialize(shim: ShimHarness, form: List[str]) -> List[str]:
    bundle = shim.bundle()  # an unmanaged container's bundle
    subst = {"{R}": shim.root, "{B}": bundle, "{S}": os.path.join(shim.tmp, "console.sock"), "{T}": shim.tmp}
    out = []
    for a in form:
        for k, v in subst.items():
            a = a.replace(k, v)
        out.append(a)
    return out


@pytest.mark.parametrize("form", sorted(CALL_FORMS))
def test_call_form_passes_through_byte_identical(shim: ShimHarness, form: str) -> None:
    argv = materialize(shim, CALL_FORMS[form])
    before = shim.tree()
    res = shim.run(*argv, exit_code=0)
    assert res.returncode == 0, res
    call = res.call
    assert call["argv"][0] == shim.fake
    assert call["argv_hex"][1:] == hexargs(argv)
    # Nothing of ours: no state, no log lines, no new files (the config
    # cache is written on the first call and lives outside the tmp tree
    # checked here only under cache/).
    assert shim.state_entries() == []
    after = [p for p in shim.tree() if not p.startswith("cache")]
    assert after == [p for p in before if not p.startswith("cache")]
    assert res.stderr == b""


@pytest.mark.parametrize("form,code", [
    ("state", 1), ("state", 255), ("create", 1), ("create", 125), ("kill-all", 137), ("delete-force", 2),
    ("unknown-command", 42), ("version-long", 3),
])
def test_exit_code_of_delegate_is_exit_code_seen(shim: ShimHarness, form: str, code: int) -> None:
    argv = materialize(shim, CALL_FORMS[form])
    res = shim.run(*argv, exit_code=code)
    assert res.returncode == code, res
    assert res.call["argv_hex"][1:] == hexargs(argv)


def test_stdio_and_stdin_reach_the_delegate(shim: ShimHarness) -> None:
    """`update --resources -` has runc read the resources JSON on stdin;
    `state` answers on stdout: the shim must neither eat nor add bytes."""
    argv = materialize(shim, CALL_FORMS["update"])
    resources = b'{"memory":{"limit":33554432}}\n'
    res = shim.run(*argv, input=resources, stdout='{"status":"running"}\n', stderr="runc says\n")
    assert res.call["stdin"] == resources.decode()
    assert res.stdout == b'{"status":"running"}\n'
    assert res.stderr == b"runc says\n"


def test_non_utf8_argv_is_passed_byte_identical(shim: ShimHarness) -> None:
    argv = [b"--root", os.fsencode(shim.root), b"--log", b"/tmp/\xff\xfe.json", b"state", b"id\xe9\x80"]
    res = shim.run(*argv)
    assert res.returncode == 0, res
    assert res.call["argv_hex"][1:] == hexargs(argv)


def test_exec_keeps_pid_and_cwd(shim: ShimHarness) -> None:
    """Passthrough is an exec, not a child: containerd waits on the pid it
    started and relative paths resolve against the caller's cwd."""
    sub = os.path.join(shim.tmp, "cwd-here")
    os.makedirs(sub)
    res = shim.run("--root", "rel-root", "state", ID, cwd=sub)
    assert res.call["cwd"] == sub
    assert res.call["argv"][1:] == ["--root", "rel-root", "state", ID]


def test_delegate_found_on_path_by_bare_name(shim: ShimHarness) -> None:
    shim.write_config(delegate="runc")  # bare name: PATH lookup (bin dir first)
    res = shim.run("--root", shim.root, "state", ID)
    assert res.returncode == 0, res
    assert res.call["argv"][0] == shim.fake


def test_config_change_is_seen_despite_the_cache(shim: ShimHarness) -> None:
    other_dir = os.path.join(shim.tmp, "bin2")
    os.makedirs(other_dir)
    from tests.unit.shim.shim_harness import write_fake_runtime

    other = write_fake_runtime(os.path.join(other_dir, "other-runtime"))
    assert shim.run("state", ID).call["argv"][0] == shim.fake
    assert shim.run("state", ID).call["argv"][0] == shim.fake  # served from the cache
    shim.write_config(delegate=other)
    assert shim.run("state", ID).call["argv"][0] == other


def test_garbage_cache_file_is_ignored(shim: ShimHarness) -> None:
    os.makedirs(os.path.dirname(shim.cache), exist_ok=True)
    with open(shim.cache, "w") as f:
        f.write("mmbatch-config-cache-1\tnot\tthe\tright\tidentity\t/nonexistent/runc\t/\n")
    res = shim.run("state", ID)
    assert res.returncode == 0, res
    assert res.call["argv"][0] == shim.fake


def test_unwritable_cache_location_still_passes_through(shim: ShimHarness) -> None:
    blocker = os.path.join(shim.tmp, "blocker")
    with open(blocker, "w") as f:
        f.write("a file where the cache's directory should be\n")
    res = shim.run("state", ID, env={"MMBATCH_CONFIG_CACHE": os.path.join(blocker, "config.cache")})
    assert res.returncode == 0, res
    assert res.call["argv"][1:] == ["state", ID]


def test_passthrough_with_warm_cache_imports_no_mmbatch(shim: ShimHarness) -> None:
    """The passthrough path is on every container's critical path: once the
    config is cached it must not import the mmbatch package or a TOML parser."""
    import subprocess
    import sys

    shim.run("state", ID)  # warms the cache
    code = (
        "import sys\n"
        "from shim import delegate, main\n"
        "def fake_exec(path, argv):\n"
        "    bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mmbatch', 'tomllib', 'tomli', 'boto3'))\n"
        "    print(repr(bad)); sys.exit(0)\n"
        "delegate.exec_delegate = fake_exec\n"
        f"main.main(['--root', 'r', 'state', {ID!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=shim.base_env(), capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == b"[]"


def test_log_untouched_by_passthrough(shim: ShimHarness) -> None:
    log = os.path.join(shim.tmp, "log.json")
    with open(log, "w") as f:
        f.write('{"level":"info","msg":"earlier","time":"2024-01-01T00:00:00Z"}\n')
    res = shim.run("--root", shim.root, "--log", log, "--log-format", "json", "start", ID)
    assert res.returncode == 0
    assert log_lines(log) == ['{"level":"info","msg":"earlier","time":"2024-01-01T00:00:00Z"}']


@pytest.mark.parametrize("form", ["create-console", "kill-all", "eq-globals-create", "dash-create-b",
                                  "version-long", "unknown-command"])
def test_call_form_via_python_m_shim_main(shim: ShimHarness, form: str) -> None:
    """The same contract through a fresh interpreter (`python -S -m shim.main`),
    as the node's launcher runs it, not only through a forked main()."""
    argv = materialize(shim, CALL_FORMS[form])
    res = shim.run(*argv, exit_code=7, via="exec")
    assert res.returncode == 7, res
    assert res.call["argv"][0] == shim.fake
    assert res.call["argv_hex"][1:] == hexargs(argv)
    assert res.stderr == b""


def test_non_utf8_argv_via_python_m_shim_main(shim: ShimHarness) -> None:
    argv = [b"--root", os.fsencode(shim.root), b"kill", b"id\xff", b"9"]
    res = shim.run(*argv, via="exec")
    assert res.returncode == 0, res
    assert res.call["argv_hex"][1:] == hexargs(argv)
