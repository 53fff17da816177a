"""`shim.argv.parse` and `is_valid_container_id`, table-driven (pure, in-process)."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from shim.argv import is_valid_container_id, parse

ID = "c0ffee" * 10
R = "/var/run/docker/runtime-runc/moby"
B = "/run/containerd/io.containerd.runtime.v2.task/moby/" + ID
CONTAINERD = ["--root", R, "--log", B + "/log.json", "--log-format", "json"]
G = {"root": R, "log": B + "/log.json", "log-format": "json"}

# name: (argv, expected). Expected keys: command, globals, flags, args,
# opaque, container_id; anything left out is not checked.
PARSE_TABLE: Dict[str, Any] = {
    "containerd-create": (
        CONTAINERD + ["create", "--bundle", B, "--pid-file", B + "/init.pid", ID],
        dict(command="create", globals=G, flags={"bundle": B, "pid-file": B + "/init.pid"}, args=[ID],
             opaque=False, container_id=ID)),
    "containerd-create-systemd-console": (
        CONTAINERD + ["--systemd-cgroup", "create", "--bundle", B, "--pid-file", B + "/init.pid",
                      "--console-socket", "/tmp/pty.sock", ID],
        dict(command="create", globals=dict(G, **{"systemd-cgroup": "true"}),
             flags={"bundle": B, "pid-file": B + "/init.pid", "console-socket": "/tmp/pty.sock"},
             container_id=ID, opaque=False)),
    "create-eq-forms": (
        ["--root=" + R, "--log-format=json", "create", "--bundle=" + B, "--pid-file=/p=q", ID],
        dict(command="create", globals={"root": R, "log-format": "json"}, flags={"bundle": B, "pid-file": "/p=q"},
             container_id=ID, opaque=False)),
    "create-single-dash": (
        ["-root", R, "create", "-bundle", B, "-b", "/other", "-pid-file", "/p", ID],
        dict(command="create", flags={"bundle": "/other", "pid-file": "/p"}, container_id=ID, opaque=False)),
    "create-bool-flags": (
        ["create", "--no-pivot", "--no-new-keyring", "--preserve-fds", "2", "-b", B, ID],
        dict(flags={"no-pivot": "true", "no-new-keyring": "true", "preserve-fds": "2", "bundle": B},
             container_id=ID, opaque=False)),
    "create-no-bundle": (["create", ID], dict(command="create", flags={}, container_id=ID, opaque=False)),
    "create-no-id": (["create", "--bundle", B], dict(command="create", container_id=None)),
    "create-missing-value": (["create", "--bundle"], dict(command="create", opaque=True, container_id=None)),
    "create-unknown-flag": (["create", "--brand-new", "-b", B, ID], dict(command="create", opaque=True)),
    "start": (CONTAINERD + ["start", ID], dict(command="start", globals=G, args=[ID], container_id=ID)),
    "start-two-ids": (["start", ID, ID], dict(command="start", container_id=None)),
    "state": (["state", ID], dict(command="state", container_id=ID, opaque=False)),
    "kill": (["kill", ID, "15"], dict(command="kill", args=[ID, "15"], container_id=ID, flags={})),
    "kill-default-signal": (["kill", ID], dict(command="kill", args=[ID], container_id=ID)),
    "kill-all": (["kill", "--all", ID, "9"], dict(command="kill", flags={"all": "true"}, container_id=ID)),
    "kill-a": (["kill", "-a", ID, "KILL"], dict(command="kill", flags={"all": "true"}, container_id=ID)),
    "kill-too-many": (["kill", ID, "9", "x"], dict(command="kill", container_id=None)),
    "kill-no-args": (["kill"], dict(command="kill", container_id=None)),
    "delete": (["delete", ID], dict(command="delete", flags={}, container_id=ID)),
    "delete-force": (["delete", "--force", ID], dict(command="delete", flags={"force": "true"}, container_id=ID)),
    "delete-f": (["delete", "-f", ID], dict(command="delete", flags={"force": "true"}, container_id=ID)),
    "delete-force-eq": (["delete", "--force=true", ID], dict(flags={"force": "true"}, container_id=ID)),
    "double-dash-before-command": (["--root", R, "--", "delete", ID],
                                   dict(command="delete", globals={"root": R}, container_id=ID)),
    "double-dash-before-id": (["kill", "--", ID, "9"], dict(command="kill", args=[ID, "9"], container_id=ID)),
    "dash-id-after-double-dash": (["delete", "--", "-x"], dict(command="delete", args=["-x"], container_id="-x")),
    "globals-all-known": (
        ["--debug", "--criu", "/c", "--rootless", "auto", "--systemd-cgroup", "--root", R, "state", ID],
        dict(globals={"debug": "true", "criu": "/c", "rootless": "auto", "systemd-cgroup": "true", "root": R},
             command="state", opaque=False)),
    "empty-values": (["--root", "", "--log=", "state", ID], dict(globals={"root": "", "log": ""}, opaque=False)),
    # opaque: the shim passes these through without understanding them
    "no-args": ([], dict(command=None, opaque=True, container_id=None)),
    "version": (["--version"], dict(command=None, opaque=True)),
    "v": (["-v"], dict(command=None, opaque=True)),
    "help": (["--help"], dict(command=None, opaque=True)),
    "unknown-global": (["--frob", "start", ID], dict(command=None, opaque=True)),
    "global-missing-value": (["--root"], dict(opaque=True)),
    "unknown-command": (["frobnicate", ID], dict(command="frobnicate", opaque=True)),
    "exec": (CONTAINERD + ["exec", "--process", "/p.json", "--detach", "--pid-file", "/e.pid", ID],
             dict(command="exec", opaque=True)),
    "ps": (["ps", "--format", "json", ID], dict(command="ps", opaque=True)),
    "update": (["update", "--resources", "-", ID], dict(command="update", opaque=True)),
    "features": (["features"], dict(command="features", opaque=True)),
    "checkpoint": (["checkpoint", "--image-path", "/i", ID], dict(command="checkpoint", opaque=True)),
    "restore": (["restore", "--detach", "--bundle", B, "--image-path", "/i", ID],
                dict(command="restore", opaque=False, container_id=ID,
                     flags={"detach": "true", "bundle": B, "image-path": "/i"})),
    "restore-unknown-flag": (["restore", "--frob", ID], dict(command="restore", opaque=True)),
    "pause": (["pause", ID], dict(command="pause", opaque=True)),
    "triple-dash": (["---root", R, "state", ID], dict(opaque=True, command="---root")),
    "lone-dash-is-positional": (["kill", "-", "9"], dict(command="kill", args=["-", "9"], container_id="-")),
    "value-looks-like-flag": (["--log", "--root", "state", ID], dict(globals={"log": "--root"}, command="state")),
}


@pytest.mark.parametrize("name", sorted(PARSE_TABLE))
def test_parse_table(name: str) -> None:
    argv, expected = PARSE_TABLE[name]
    inv = parse(list(argv))
    assert inv.argv == argv
    got = {
        "command": inv.command,
        "globals": inv.globals,
        "flags": inv.flags,
        "args": inv.args,
        "opaque": inv.opaque,
        "container_id": inv.container_id,
    }
    for key, want in expected.items():
        assert got[key] == want, f"{name}: {key} = {got[key]!r}, want {want!r}"


def test_parse_never_mutates_argv() -> None:
    argv = CONTAINERD + ["create", "--bundle", B, ID]
    copy = list(argv)
    parse(argv)
    assert argv == copy


@pytest.mark.parametrize("argv,expected", [
    (CONTAINERD + ["create", "--bundle", B, ID], CONTAINERD),
    (["create", ID], []),
    (["--systemd-cgroup", "--root=" + R, "kill", ID, "9"], ["--systemd-cgroup", "--root=" + R]),
    (["--version"], ["--version"]),
])
def test_global_argv(argv: List[str], expected: List[str]) -> None:
    assert parse(argv).global_argv() == expected


@pytest.mark.parametrize("argv,root,log,fmt", [
    (CONTAINERD + ["state", ID], R, B + "/log.json", "json"),
    (["state", ID], "/run/runc", None, "text"),
    (["--root=", "--log=", "state", ID], "/run/runc", None, "text"),
])
def test_properties(argv: List[str], root: str, log: str, fmt: str) -> None:
    inv = parse(argv)
    assert (inv.root, inv.log_path, inv.log_format) == (root, log, fmt)


def test_flags_after_the_id_like_runc() -> None:
    """runc (urfave/cli v1) moves flags given after the id in front of it, so
    `runc delete ID --force` is a forced delete, and so it is for us."""
    inv = parse(["delete", ID, "--force"])
    assert (inv.container_id, inv.flags, inv.opaque) == (ID, {"force": "true"}, False)
    inv = parse(["create", ID, "--bundle", "/b", "--pid-file", "/p"])
    assert (inv.container_id, inv.flags) == (ID, {"bundle": "/b", "pid-file": "/p"})
    inv = parse(["delete", "--", "-odd"])
    assert inv.container_id == "-odd" and not inv.opaque


@pytest.mark.parametrize("cid,valid", [
    (ID, True),
    ("a", True),
    ("my_container-1.2+3", True),
    ("a" * 1024, True),
    ("a" * 1025, False),
    ("", False),
    (".", False),
    ("..", False),
    ("...", True),  # runc accepts it and it is a plain file name
    ("../x", False),
    ("a/b", False),
    ("/abs", False),
    ("abc/", False),
    ("a\\b", False),
    ("a b", False),
    ("a\nb", False),
    ("a\tb", False),
    ("a\x00b", False),
    ("é", False),
    ("контейнер", False),
    ("a\u2215b", False),
    ("１２３", False),  # full-width digits: isalnum() but not ASCII
    ("a,b", False),  # runc's regex allows ',' (a range '+'..'.'); we need not manage it
    ("*", False),
    ("$x", False),
])
def test_is_valid_container_id(cid: str, valid: bool) -> None:
    assert is_valid_container_id(cid) is valid
