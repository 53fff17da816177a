"""ECS_NVIDIA_RUNTIME=mmbatch in ecs.config: table-driven set/unset, exact round trips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmbatch.install.ecs_config import set_runtime, setting_value, unset_runtime

ROOT = Path(__file__).resolve().parents[3]
OURS = "ECS_NVIDIA_RUNTIME=mmbatch"

# (name, original, expected after set)
SET_CASES = [
    ("empty file", "", f"{OURS}\n"),
    ("other lines kept", "ECS_CLUSTER=gpu\nECS_ENABLE_GPU_SUPPORT=true\n",
     f"ECS_CLUSTER=gpu\nECS_ENABLE_GPU_SUPPORT=true\n{OURS}\n"),
    ("no final newline", "ECS_CLUSTER=gpu", f"ECS_CLUSTER=gpu\n{OURS}"),
    ("already set", f"ECS_CLUSTER=gpu\n{OURS}\nECS_LOGLEVEL=info\n", f"ECS_CLUSTER=gpu\n{OURS}\nECS_LOGLEVEL=info\n"),
    ("quoted value of ours", 'ECS_NVIDIA_RUNTIME="mmbatch"\n', f"{OURS}\n"),
    ("previous value kept as a comment", "ECS_CLUSTER=gpu\nECS_NVIDIA_RUNTIME=nvidia\nECS_LOGLEVEL=info\n",
     f"ECS_CLUSTER=gpu\n# mmbatch-previous: ECS_NVIDIA_RUNTIME=nvidia\n{OURS}\nECS_LOGLEVEL=info\n"),
    ("comments and blanks kept", "# cluster\n\nECS_CLUSTER=gpu\n", f"# cluster\n\nECS_CLUSTER=gpu\n{OURS}\n"),
    ("CRLF kept", "ECS_CLUSTER=gpu\r\n", f"ECS_CLUSTER=gpu\r\n{OURS}\r\n"),
    ("duplicates collapse at the last", f"{OURS}\nECS_CLUSTER=gpu\n{OURS}\n", f"ECS_CLUSTER=gpu\n{OURS}\n"),
    ("similar key untouched", "ECS_NVIDIA_RUNTIME_X=1\n", f"ECS_NVIDIA_RUNTIME_X=1\n{OURS}\n"),
]


@pytest.mark.parametrize("name,original,expected", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_set(name: str, original: str, expected: str) -> None:
    new, changed = set_runtime(original)
    assert new == expected
    assert changed == (original != expected)


@pytest.mark.parametrize("name,original,expected", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_set_is_idempotent(name: str, original: str, expected: str) -> None:
    once, _ = set_runtime(original)
    assert set_runtime(once) == (once, False)


ROUND_TRIP = [c for c in SET_CASES if c[0] not in ("already set", "quoted value of ours",
                                                   "duplicates collapse at the last")]


@pytest.mark.parametrize("name,original,expected", ROUND_TRIP, ids=[c[0] for c in ROUND_TRIP])
def test_unset_restores_exactly(name: str, original: str, expected: str) -> None:
    new, _ = set_runtime(original)
    back, changed = unset_runtime(new)
    assert back == original
    assert changed
    assert unset_runtime(back) == (back, False)


@pytest.mark.parametrize("text", ["ECS_NVIDIA_RUNTIME=nvidia\n", "ECS_CLUSTER=x\n", ""])
def test_unset_leaves_other_values(text: str) -> None:
    assert unset_runtime(text) == (text, False)


@pytest.mark.parametrize("line,value", [
    ("ECS_NVIDIA_RUNTIME=mmbatch", "mmbatch"),
    ("  ECS_NVIDIA_RUNTIME = 'nvidia' ", "nvidia"),
    ("ECS_NVIDIA_RUNTIME=", ""),
    ("#ECS_NVIDIA_RUNTIME=mmbatch", None),
    ("ECS_NVIDIA_RUNTIMES=x", None),
])
def test_setting_value(line: str, value) -> None:
    assert setting_value(line) == value


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mmbatch.install.ecs_config", *args], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT), check=True)
    return out.stdout.strip()


def test_cli_creates_and_removes(tmp_path: Path) -> None:
    path = tmp_path / "ecs" / "ecs.config"
    assert _cli("set", "--file", str(path)) == "changed=1"
    assert path.read_text() == f"{OURS}\n"
    assert _cli("set", "--file", str(path)) == "changed=0"
    assert _cli("unset", "--file", str(path)) == "changed=1"
    assert not path.exists(), "a file that held only our line goes away"
    assert _cli("unset", "--file", str(path)) == "changed=0"


def test_cli_keeps_mode_and_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "ecs.config"
    path.write_text("ECS_CLUSTER=gpu\n")
    os.chmod(path, 0o600)
    _cli("set", "--file", str(path))
    assert os.stat(path).st_mode & 0o777 == 0o600
    _cli("unset", "--file", str(path))
    assert path.read_text() == "ECS_CLUSTER=gpu\n"
