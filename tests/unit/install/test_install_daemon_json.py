"""daemon.json merge/unmerge: pure functions, table-driven, and the CLI on temp files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmbatch.install import daemon_json as dj
from mmbatch.install.errors import DaemonJsonError, InstallError

ROOT = Path(__file__).resolve().parents[3]
RT = "/opt/mmbatch/bin/mmbatch-runtime"
NVIDIA = {"path": "/usr/bin/nvidia-container-runtime"}

# (name, original document, make_default, expected document after merge)
MERGE_CASES = [
    ("empty", {}, False, {"runtimes": {"mmbatch": {"path": RT}}}),
    (
        "unrelated keys kept in order",
        {"log-driver": "json-file", "log-opts": {"max-size": "10m"}, "live-restore": True},
        False,
        {"log-driver": "json-file", "log-opts": {"max-size": "10m"}, "live-restore": True,
         "runtimes": {"mmbatch": {"path": RT}}},
    ),
    (
        "other runtimes kept",
        {"runtimes": {"nvidia": NVIDIA, "crun": {"path": "/usr/bin/crun", "runtimeArgs": ["--debug"]}}},
        False,
        {"runtimes": {"nvidia": NVIDIA, "crun": {"path": "/usr/bin/crun", "runtimeArgs": ["--debug"]},
                      "mmbatch": {"path": RT}}},
    ),
    (
        "stale path of ours replaced",
        {"runtimes": {"mmbatch": {"path": "/old/mmbatch-runtime"}}},
        False,
        {"runtimes": {"mmbatch": {"path": RT}}},
    ),
    (
        "default runtime set",
        {"debug": False},
        True,
        {"debug": False, "runtimes": {"mmbatch": {"path": RT}}, "default-runtime": "mmbatch"},
    ),
    (
        "default runtime replaces nvidia in place",
        {"default-runtime": "nvidia", "runtimes": {"nvidia": NVIDIA}},
        True,
        {"default-runtime": "mmbatch", "runtimes": {"nvidia": NVIDIA, "mmbatch": {"path": RT}}},
    ),
    (
        "existing default kept without --default-runtime",
        {"default-runtime": "nvidia", "runtimes": {"nvidia": NVIDIA}},
        False,
        {"default-runtime": "nvidia", "runtimes": {"nvidia": NVIDIA, "mmbatch": {"path": RT}}},
    ),
]


@pytest.mark.parametrize("name,original,make_default,expected", MERGE_CASES, ids=[c[0] for c in MERGE_CASES])
def test_merge(name: str, original: dict, make_default: bool, expected: dict) -> None:
    before = json.dumps(original)
    change = dj.merge(original, RT, make_default)
    assert change.doc == expected
    assert list(change.doc) == list(expected), "key order kept"
    assert change.changed
    assert change.default_runtime_changed == (original.get("default-runtime") != expected.get("default-runtime"))
    assert json.dumps(original) == before, "input not mutated"


@pytest.mark.parametrize("name,original,make_default,expected", MERGE_CASES, ids=[c[0] for c in MERGE_CASES])
def test_merge_is_idempotent(name: str, original: dict, make_default: bool, expected: dict) -> None:
    once = dj.merge(original, RT, make_default).doc
    twice = dj.merge(once, RT, make_default)
    assert not twice.changed
    assert not twice.default_runtime_changed
    assert twice.doc == once


# An original that already had our runtime cannot come back: unmerge takes it out.
ROUND_TRIP = [c for c in MERGE_CASES if "mmbatch" not in c[1].get("runtimes", {})]


@pytest.mark.parametrize("name,original,make_default,expected", ROUND_TRIP, ids=[c[0] for c in ROUND_TRIP])
def test_unmerge_restores_exactly(name: str, original: dict, make_default: bool, expected: dict) -> None:
    merged = dj.merge(original, RT, make_default).doc
    back = dj.unmerge(merged, previous_default=original.get("default-runtime"))
    assert back.doc == original
    assert list(back.doc) == list(original), "key order restored"
    assert dj.unmerge(back.doc, original.get("default-runtime")).changed is False


def test_unmerge_without_previous_default_drops_the_key() -> None:
    doc = {"default-runtime": "mmbatch", "runtimes": {"mmbatch": {"path": RT}}, "debug": True}
    change = dj.unmerge(doc)
    assert change.doc == {"debug": True}
    assert change.default_runtime_changed


def test_unmerge_leaves_foreign_default_alone() -> None:
    doc = {"default-runtime": "nvidia", "runtimes": {"nvidia": NVIDIA, "mmbatch": {"path": RT}}}
    change = dj.unmerge(doc, previous_default="runc")
    assert change.doc == {"default-runtime": "nvidia", "runtimes": {"nvidia": NVIDIA}}
    assert not change.default_runtime_changed


# (name, current doc, backup doc, make_default, gpu, expected delegate)
DELEGATE_CASES = [
    ("no default: runc", {}, None, True, False, "runc"),
    ("runc default", {"default-runtime": "runc"}, None, True, False, "runc"),
    ("containerd runc name", {"default-runtime": "io.containerd.runc.v2"}, None, True, False, "runc"),
    ("nvidia default chained", {"default-runtime": "nvidia", "runtimes": {"nvidia": NVIDIA}}, None, True, False,
     NVIDIA["path"]),
    ("nvidia without entry", {"default-runtime": "nvidia"}, None, True, False, "nvidia-container-runtime"),
    ("custom default chained", {"default-runtime": "crun", "runtimes": {"crun": {"path": "/usr/local/bin/crun"}}},
     None, True, False, "/usr/local/bin/crun"),
    ("nvidia default, not made default", {"default-runtime": "nvidia", "runtimes": {"nvidia": NVIDIA}}, None,
     False, False, "runc"),
    ("second run reads the backup",
     {"default-runtime": "mmbatch", "runtimes": {"nvidia": NVIDIA, "mmbatch": {"path": RT}}},
     {"default-runtime": "nvidia", "runtimes": {"nvidia": NVIDIA}}, True, False, NVIDIA["path"]),
    ("second run without backup", {"default-runtime": "mmbatch", "runtimes": {"mmbatch": {"path": RT}}}, None,
     True, False, "runc"),
    ("gpu node: nvidia runtime", {"runtimes": {"nvidia": {"path": "/opt/nv/ncr"}}}, None, False, True,
     "/opt/nv/ncr"),
    ("gpu node without nvidia entry", {}, None, False, True, "nvidia-container-runtime"),
    ("gpu node, runc default", {"default-runtime": "runc"}, None, True, True, "nvidia-container-runtime"),
]


@pytest.mark.parametrize("name,doc,backup,make_default,gpu,expected", DELEGATE_CASES,
                         ids=[c[0] for c in DELEGATE_CASES])
def test_chained_delegate(name: str, doc: dict, backup, make_default: bool, gpu: bool, expected: str) -> None:
    delegate, warnings = dj.chained_delegate(doc, backup, make_default=make_default, gpu=gpu)
    assert delegate == expected
    assert warnings == []


def test_chained_delegate_warns_about_runtime_args() -> None:
    doc = {"default-runtime": "crun", "runtimes": {"crun": {"path": "crun", "runtimeArgs": ["--systemd-cgroup"]}}}
    delegate, warnings = dj.chained_delegate(doc, make_default=True)
    assert delegate == "crun"
    assert len(warnings) == 1 and "runtimeArgs" in warnings[0]


@pytest.mark.parametrize("doc,words", [
    ({"default-runtime": "kata"}, "not defined"),
    ({"default-runtime": "kata", "runtimes": {"kata": {"runtimeType": "io.containerd.kata.v2"}}}, "no \"path\""),
])
def test_chained_delegate_refuses_what_it_cannot_chain(doc: dict, words: str) -> None:
    with pytest.raises(InstallError, match=words):
        dj.chained_delegate(doc, make_default=True)


# (text, line, column) of malformed files
MALFORMED = [
    ('{"a": 1,\n  "b": }\n', 2, 8),
    ('{"runtimes": {"x": {"path": "/x"}}\n', 2, 1),  # unterminated: reported at the end
    ('{\n  "debug": true,\n}\n', 3, 1),
    ("[1, 2]\n", None, None),
    ('{"runtimes": []}', None, None),
    ('{"runtimes": {"x": "/usr/bin/x"}}', None, None),
    ('{"default-runtime": 1}', None, None),
]


@pytest.mark.parametrize("text,line,column", MALFORMED)
def test_parse_malformed_names_file_and_position(text: str, line, column) -> None:
    with pytest.raises(DaemonJsonError) as info:
        dj.parse(text, "/etc/docker/daemon.json")
    message = str(info.value)
    assert message.startswith("/etc/docker/daemon.json: ")
    if line is not None:
        assert (info.value.line, info.value.column) == (line, column)
        assert f"line {line} column {column}" in message


@pytest.mark.parametrize("text,expected", [
    ("", {}),
    ("  \n", {}),
    ('\ufeff{"debug": true}', {"debug": True}),
])
def test_parse_like_dockerd(text: str, expected: dict) -> None:
    assert dj.parse(text) == expected


@pytest.mark.parametrize("original,indent", [
    ('{\n    "debug": true\n}\n', "    "),
    ('{\n\t"debug": true\n}\n', "\t"),
    ('{"debug": true}', "  "),
])
def test_dumps_keeps_indentation(original: str, indent: str) -> None:
    text = dj.dumps(dj.merge(dj.parse(original), RT).doc, like=original)
    assert text.endswith("}\n")
    assert f'\n{indent}"debug": true,' in text


# --- plan_uninstall -------------------------------------------------------------

ORIGINAL = (
    '{\n  "log-driver": "journald",\n'
    '  "runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime"}},\n'
    '  "default-runtime": "nvidia"\n}\n'
)


def _installed(original: str, make_default: bool = True) -> str:
    return dj.dumps(dj.merge(dj.parse(original), RT, make_default).doc, like=original)


def test_uninstall_restores_backup_bytes() -> None:
    plan = dj.plan_uninstall(_installed(ORIGINAL), ORIGINAL)
    assert plan.action == "restore-backup"
    assert plan.text == ORIGINAL
    assert plan.default_runtime_changed
    assert not plan.default_runtime_removed, "back to nvidia: a reload applies it"


def test_uninstall_reports_a_removed_default_runtime() -> None:
    original = '{"debug": true}\n'
    plan = dj.plan_uninstall(_installed(original), original)
    assert (plan.action, plan.text) == ("restore-backup", original)
    assert plan.default_runtime_removed
    plan = dj.plan_uninstall(_installed(original), None)
    assert plan.action == "unmerge" and plan.default_runtime_removed
    plan = dj.plan_uninstall(_installed("", make_default=True), None)
    assert plan.action == "remove" and plan.default_runtime_removed


def test_uninstall_keeps_later_changes_of_others() -> None:
    doc = dj.parse(_installed(ORIGINAL))
    doc["debug"] = True
    plan = dj.plan_uninstall(dj.dumps(doc), ORIGINAL)
    assert plan.action == "unmerge"
    assert json.loads(plan.text or "") == {**json.loads(ORIGINAL), "debug": True}


def test_uninstall_without_backup_removes_only_ours() -> None:
    current = '{"debug": true, "runtimes": {"mmbatch": {"path": "/x"}}, "default-runtime": "mmbatch"}'
    plan = dj.plan_uninstall(current, None)
    assert plan.action == "unmerge"
    assert json.loads(plan.text or "") == {"debug": True}
    assert plan.default_runtime_changed and plan.default_runtime_removed


def test_uninstall_of_a_file_we_created_removes_it() -> None:
    plan = dj.plan_uninstall(_installed("", make_default=False), None)
    assert plan.action == "remove"


def test_uninstall_with_nothing_of_ours() -> None:
    plan = dj.plan_uninstall('{"debug": true}\n', None)
    assert plan.action == "none" and not plan.changed


def test_uninstall_restores_an_empty_runtimes_object() -> None:
    original = '{"runtimes": {}}\n'
    plan = dj.plan_uninstall(_installed(original, make_default=False), original)
    assert (plan.action, plan.text) == ("restore-backup", original)


def test_uninstall_refuses_malformed_file() -> None:
    with pytest.raises(DaemonJsonError, match="daemon.json: not valid JSON"):
        dj.plan_uninstall("{oops", ORIGINAL, "daemon.json")


# --- the CLI on real files --------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mmbatch.install.daemon_json", *args],
                          capture_output=True, text=True, env=env, cwd=str(ROOT))


def _kv(stdout: str) -> dict:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def test_cli_merge_twice_then_unmerge(tmp_path: Path) -> None:
    path, backup = tmp_path / "daemon.json", tmp_path / "daemon.json.mmbatch-backup"
    path.write_text(ORIGINAL)
    os.chmod(path, 0o640)
    first = _cli("merge", "--file", str(path), "--backup", str(backup), "--runtime-path", RT, "--default-runtime")
    assert first.returncode == 0, first.stderr
    assert _kv(first.stdout) == {"changed": "1", "default_runtime_changed": "1", "backup": "written"}
    assert backup.read_text() == ORIGINAL
    assert os.stat(backup).st_mode & 0o777 == 0o640
    assert os.stat(path).st_mode & 0o777 == 0o640, "mode of the replaced file kept"
    merged = path.read_bytes()
    stat = os.stat(path)

    second = _cli("merge", "--file", str(path), "--backup", str(backup), "--runtime-path", RT, "--default-runtime")
    assert _kv(second.stdout) == {"changed": "0", "default_runtime_changed": "0", "backup": "none"}
    assert path.read_bytes() == merged
    assert os.stat(path).st_ino == stat.st_ino, "not rewritten"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["daemon.json", "daemon.json.mmbatch-backup"]

    out = _cli("unmerge", "--file", str(path), "--backup", str(backup))
    assert out.returncode == 0, out.stderr
    assert _kv(out.stdout)["action"] == "restore-backup"
    assert path.read_text() == ORIGINAL
    assert not backup.exists()


def test_cli_delegate_reads_backup(tmp_path: Path) -> None:
    path, backup = tmp_path / "daemon.json", tmp_path / "b"
    path.write_text(ORIGINAL)
    _cli("merge", "--file", str(path), "--backup", str(backup), "--runtime-path", RT, "--default-runtime")
    out = _cli("delegate", "--file", str(path), "--backup", str(backup), "--default-runtime")
    assert _kv(out.stdout) == {"delegate": "/usr/bin/nvidia-container-runtime"}


def test_cli_merge_creates_missing_file_without_backup(tmp_path: Path) -> None:
    path, backup = tmp_path / "docker" / "daemon.json", tmp_path / "docker" / "daemon.json.mmbatch-backup"
    out = _cli("merge", "--file", str(path), "--backup", str(backup), "--runtime-path", RT)
    assert _kv(out.stdout)["backup"] == "none"
    assert json.loads(path.read_text()) == {"runtimes": {"mmbatch": {"path": RT}}}
    assert not backup.exists()
    out = _cli("unmerge", "--file", str(path), "--backup", str(backup))
    assert _kv(out.stdout)["action"] == "remove"
    assert not path.exists()


@pytest.mark.parametrize("command", ["merge", "unmerge", "delegate"])
def test_cli_malformed_file_left_untouched(tmp_path: Path, command: str) -> None:
    path = tmp_path / "daemon.json"
    bad = b'{\n  "debug": true,\n  "runtimes": {\n}\n'
    path.write_bytes(bad)
    extra = ["--runtime-path", RT] if command == "merge" else []
    out = _cli(command, "--file", str(path), "--backup", str(tmp_path / "bk"), *extra)
    assert out.returncode == 1
    assert out.stdout == ""
    assert f"{path}: not valid JSON" in out.stderr
    assert "line 5 column 1" in out.stderr
    assert path.read_bytes() == bad
    assert sorted(p.name for p in tmp_path.iterdir()) == ["daemon.json"], "no backup, no temp file"
