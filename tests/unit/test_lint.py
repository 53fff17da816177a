"""Nothing newer than Python 3.9 syntax lands: ruff with --target-version py39."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ruff():
    try:
        import ruff  # noqa: F401
    except ImportError:
        path = shutil.which("ruff")
        if not path:
            from tests.conftest import unavailable

            unavailable("ruff is not installed (pip install ruff)")
        return [path]
    return [sys.executable, "-m", "ruff"]


def test_ruff_py39_clean():
    proc = subprocess.run(
        _ruff() + ["check", "--target-version", "py39", "--no-cache", "shim", "hooks", "criu_bindings", "mmbatch",
                   "tests", "bench"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sources_compile_under_py39_grammar():
    """ruff checks the rules; this checks the grammar itself with ast."""
    import ast

    bad = []
    for top in ("shim", "hooks", "criu_bindings", "mmbatch"):
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    try:
                        ast.parse(open(path, encoding="utf-8").read(), path, feature_version=(3, 9))
                    except SyntaxError as e:
                        bad.append(f"{path}:{e.lineno}: {e.msg}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", ["shim.main", "shim.argv", "shim.delegate"])
def test_hot_path_imports_stay_minimal(module):
    """The passthrough path must not import typing, os, json or re: each costs
    milliseconds on every container call on the node."""
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); before = set(sys.modules); import {module}; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert not loaded & {"typing", "os", "json", "re", "subprocess", "mmbatch"}, loaded
