"""A fake delegate runtime and a harness that runs the shim against it.

In the style of nvidia-container-toolkit's runtime tests: the fake runtime is
a script written into a tmp dir that records each call (argv as JSON, one
file per call) and exits with a code chosen by the test. The shim runs in a
child process, configured only through its environment (MMBATCH_CONFIG,
MMBATCH_CONFIG_CACHE, ...) so nothing on the host (/etc/mmbatch,
/run/mmbatch, dockerd) is read or written. No root.

Two ways to run it, same observable behaviour (argv, env, cwd, stdio, exit
status): "exec", a new interpreter running `python -S -m shim.main ...`
as the node's launcher does; and "fork" (the default, ~3x faster), a forked
child of the test process calling `shim.main.main(argv)` and exiting with
its result, or exec'ing the delegate as the shim does. MMBATCH_SHIM_TEST_VIA=exec
runs every test the slow, literal way.
"""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence, Union

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _shim_pythonpath() -> str:
    """The shim runs with `-S` (no site), as the node's launcher runs it
    (`python3 -IS`): ~10 ms instead of ~80 ms a call here. It needs only the
    repo, plus tomli where the stdlib has no tomllib (Python < 3.11)."""
    paths = [REPO]
    if sys.version_info < (3, 11):
        try:
            import tomli  # type: ignore[import-not-found]

            paths.append(os.path.dirname(os.path.dirname(tomli.__file__)))
        except ImportError:
            pass
    return os.pathsep.join(paths)


SHIM_PYTHONPATH = _shim_pythonpath()

# The fake runtime. `-IS`: isolated and without site, so each call costs
# ~10 ms. It records, in one JSON file per call:
#   argv      sys.argv (argv[0] is the script path the shim exec'd)
#   argv_hex  each argument's raw bytes, hex: byte-exact comparison
#   stdin     what it read on stdin (runc reads `update --resources -` there)
#   seen      {path: content or None} for each path in FAKE_RUNTIME_WATCH,
#             read at call time (what the delegate saw of bundle and state)
#   env       the FAKE_RUNTIME_ENV_KEYS variables it was given
# then writes FAKE_RUNTIME_STDOUT / FAKE_RUNTIME_STDERR and exits with
# FAKE_RUNTIME_EXIT.
FAKE_RUNTIME = '''#!{python} -IS
import json, os, sys, time
data = {{
    "argv": sys.argv,
    "argv_hex": [os.fsencode(a).hex() for a in sys.argv],
    "pid": os.getpid(),
    "cwd": os.getcwd(),
}}
try:
    data["stdin"] = sys.stdin.buffer.read().decode("utf-8", "replace")
except Exception:
    data["stdin"] = None
seen = {{}}
for p in filter(None, os.environ.get("FAKE_RUNTIME_WATCH", "").split(os.pathsep)):
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            seen[p] = f.read()
    except OSError:
        seen[p] = None
data["seen"] = seen
data["env"] = {{k: os.environ.get(k) for k in os.environ.get("FAKE_RUNTIME_ENV_KEYS", "").split(",") if k}}
d = os.environ["FAKE_RUNTIME_RECORDS"]
name = "%020d-%d.json" % (time.monotonic_ns(), os.getpid())
with open(os.path.join(d, name + ".tmp"), "w", encoding="utf-8") as f:
    json.dump(data, f)
os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name))
sys.stdout.write(os.environ.get("FAKE_RUNTIME_STDOUT", ""))
sys.stderr.write(os.environ.get("FAKE_RUNTIME_STDERR", ""))
sys.stdout.flush()
sys.stderr.flush()
sys.exit(int(os.environ.get("FAKE_RUNTIME_EXIT", "0")))
'''

Arg = Union[str, bytes]


def write_fake_runtime(path: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(FAKE_RUNTIME.format(python=os.path.realpath(sys.executable)))
    os.chmod(path, 0o755)
    return path


def config_toml(delegate: str, state_dir: str, store: str, staging: str, docker_socket: str,
                extra: str = "", checkpoint: str = "") -> str:
    return (
        "[runtime]\n"
        f"delegate = {json.dumps(delegate)}\n"
        f"state_dir = {json.dumps(state_dir)}\n"
        f"docker_socket = {json.dumps(docker_socket)}\n"
        "[checkpoint]\n"
        f"staging_dir = {json.dumps(staging)}\n"
        + checkpoint +
        "[store]\n"
        f"url = {json.dumps('file://' + store)}\n"
        + extra
    )


DEFAULT_VIA = os.environ.get("MMBATCH_SHIM_TEST_VIA", "fork")
SHIM_MAIN = os.path.join(REPO, "shim", "main.py")


def preload() -> None:
    """Import what a managed create/delete imports, once, in the test process,
    so forked children start warm (it changes speed, not behaviour)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    import importlib

    for name in ("shim.main", "shim.runtime_log", "shim.state", "shim.commands.create", "shim.commands.start",
                 "shim.commands.kill", "shim.commands.delete", "mmbatch.config", "mmbatch.oci",
                 "mmbatch.identity", "mmbatch.engine", "mmbatch.restorer", "mmbatch.attempts",
                 "mmbatch.events", "mmbatch.checkpointer", "mmbatch.runc"):
        try:
            importlib.import_module(name)
        except Exception:
            pass  # the child imports it itself and reports what fails


def _child(argv: List[Arg], env: Dict[str, str], cwd: str, fds: List[int]) -> None:
    """In the forked child: become the shim process, then run its main()."""
    code = 70
    try:
        in_r, out_w, err_w = fds
        os.dup2(in_r, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.closerange(3, 1024)  # like a fresh process: only stdio open
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        os.umask(0o022)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                      errors="backslashreplace")
        args = [os.fsdecode(a) for a in argv]
        sys.argv = [SHIM_MAIN] + args
        from shim.main import main

        code = main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def run_forked(argv: List[Arg], env: Dict[str, str], cwd: str, input: bytes,
               timeout: float) -> subprocess.CompletedProcess:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        _child(argv, env, cwd, [in_r, out_w, err_w])
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    out, err = bytearray(), bytearray()
    try:
        try:
            os.write(in_w, input)  # small inputs only: fits the pipe buffer
        except BrokenPipeError:
            pass
        os.close(in_w)
        in_w = -1
        deadline = time.monotonic() + timeout
        open_fds = {out_r: out, err_r: err}
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, 9)
                raise subprocess.TimeoutExpired(argv, timeout)
            ready, _, _ = select.select(list(open_fds), [], [], left)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    open_fds[fd] += chunk
                else:
                    del open_fds[fd]
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in (in_w, out_r, err_r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
    return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), bytes(out), bytes(err))


class ShimResult:
    def __init__(self, proc: subprocess.CompletedProcess, calls: List[Dict[str, Any]]) -> None:
        self.returncode = proc.returncode
        self.stdout: bytes = proc.stdout
        self.stderr: bytes = proc.stderr
        self.calls = calls

    @property
    def call(self) -> Dict[str, Any]:
        assert len(self.calls) == 1, f"expected one delegate call, got {len(self.calls)}: {self.calls}"
        return self.calls[0]

    def __repr__(self) -> str:
        return (f"ShimResult(rc={self.returncode}, calls={len(self.calls)}, "
                f"stderr={self.stderr.decode(errors='replace')[-800:]!r})")


class ShimHarness:
    """One tmp world: fake runtime, config, state dir, store, bundle, runtime root."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.bin_dir = os.path.join(tmp, "bin")
        self.records = os.path.join(tmp, "records")
        self.state_dir = os.path.join(tmp, "state")
        self.store = os.path.join(tmp, "store")
        self.staging = os.path.join(tmp, "staging")
        self.root = os.path.join(tmp, "runc-root")
        self.bundle_dir = os.path.join(tmp, "bundle")
        self.config = os.path.join(tmp, "config.toml")
        self.cache = os.path.join(tmp, "cache", "config.cache")
        self.log_dir = os.path.join(tmp, "logs")
        self.docker_socket = os.path.join(tmp, "no-such-docker.sock")
        for d in (self.bin_dir, self.records, self.root, self.bundle_dir):
            os.makedirs(d, exist_ok=True)
        # Named "runc" so that the default delegate (a bare name searched on
        # PATH, used when the config is broken) also finds the fake.
        self.fake = write_fake_runtime(os.path.join(self.bin_dir, "runc"))
        self.write_config()

    # -- set-up ---------------------------------------------------------------
    def write_config(self, extra: str = "", delegate: Optional[str] = None, text: Optional[str] = None,
                     checkpoint: str = "", state_dir: Optional[str] = None) -> None:
        """A valid config pointing at the fake (or `text` verbatim). `extra`
        is appended; `checkpoint` lines go into [checkpoint]."""
        if text is None:
            text = config_toml(delegate or self.fake, state_dir or self.state_dir, self.store, self.staging,
                               self.docker_socket, extra, checkpoint)
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(text)

    def bundle(self, env: Sequence[str] = ("PATH=/bin",), name: str = "bundle",
               spec: Optional[Dict[str, Any]] = None) -> str:
        """A bundle dir with a config.json (rootfs is never looked at)."""
        d = os.path.join(self.tmp, name)
        os.makedirs(d, exist_ok=True)
        if spec is None:
            spec = {
                "ociVersion": "1.0.2-dev",
                "process": {"args": ["sh", "-c", "true"], "cwd": "/", "env": list(env)},
                "root": {"path": "rootfs"},
                "annotations": {"keep.me": "yes"},
            }
        with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f)
        return d

    def base_env(self) -> Dict[str, str]:
        return {
            "PATH": os.pathsep.join([self.bin_dir, "/usr/bin", "/bin"]),
            "PYTHONPATH": SHIM_PYTHONPATH,
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
            "MMBATCH_CONFIG": self.config,
            "MMBATCH_CONFIG_CACHE": self.cache,
            "MMBATCH_LOG_DIR": self.log_dir,
            "MMBATCH_HOOK_SOCKET": os.path.join(self.tmp, "no-such-hook.sock"),
            "MMBATCH_NODE_INFO": os.path.join(self.tmp, "no-such-node.json"),
            "FAKE_RUNTIME_RECORDS": self.records,
        }

    # -- running --------------------------------------------------------------
    def calls(self) -> List[Dict[str, Any]]:
        out = []
        for name in sorted(os.listdir(self.records)):
            if name.endswith(".json"):
                with open(os.path.join(self.records, name), encoding="utf-8") as f:
                    out.append(json.load(f))
        return out

    def clear_calls(self) -> None:
        for name in os.listdir(self.records):
            os.unlink(os.path.join(self.records, name))

    def run(self, *argv: Arg, exit_code: int = 0, env: Optional[Dict[str, str]] = None,
            input: bytes = b"", watch: Sequence[str] = (), stdout: str = "", stderr: str = "",
            cwd: Optional[str] = None, timeout: float = 30, via: Optional[str] = None) -> ShimResult:
        """Run the shim with argv; the fake delegate exits with exit_code."""
        self.clear_calls()
        e = self.base_env()
        e["FAKE_RUNTIME_EXIT"] = str(exit_code)
        e["FAKE_RUNTIME_WATCH"] = os.pathsep.join(watch)
        e["FAKE_RUNTIME_STDOUT"] = stdout
        e["FAKE_RUNTIME_STDERR"] = stderr
        if env:
            e.update(env)
        via = via or DEFAULT_VIA
        if via == "exec":
            proc = subprocess.run(
                [sys.executable, "-S", "-m", "shim.main", *argv], input=input, capture_output=True,
                env=e, cwd=cwd or self.tmp, timeout=timeout,
            )
        else:
            preload()
            proc = run_forked(list(argv), e, cwd or self.tmp, input, timeout)
        return ShimResult(proc, self.calls())

    # -- inspecting -----------------------------------------------------------
    def tree(self, top: Optional[str] = None, exclude: Sequence[str] = ()) -> List[str]:
        """Every path under top (default: the whole tmp world), relative;
        without the fake's records and the config cache's directory."""
        top = top or self.tmp
        skip = {os.path.realpath(p) for p in (self.records, os.path.dirname(self.cache), *exclude)}
        out = []
        for d, dirs, files in os.walk(top):
            dirs[:] = [x for x in dirs if os.path.realpath(os.path.join(d, x)) not in skip]
            for x in dirs + files:
                out.append(os.path.relpath(os.path.join(d, x), top))
        return sorted(out)

    def state_entries(self) -> List[str]:
        try:
            return sorted(os.listdir(self.state_dir))
        except FileNotFoundError:
            return []


def hexargs(argv: Sequence[Arg]) -> List[str]:
    return [(a if isinstance(a, bytes) else os.fsencode(a)).hex() for a in argv]


def log_lines(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []
