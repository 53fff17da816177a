"""Docker behaves the same with `--runtime=mmbatch` as with `--runtime=runc`.

A table of scenarios; each is a function that drives a real dockerd with one
runtime and returns a normalized result dict (no container ids, timestamps,
host names or tmp paths, and timings reduced to "within bounds"). One test
per scenario runs it with both runtimes and asserts the results are equal,
after sanity checks on the runc result so that a scenario that silently did
nothing fails instead of comparing two empty dicts. Keys starting with "_"
are runtime-specific facts (mmbatch's state dir, raw timings): they are left
out of the comparison and checked on their own.

Each scenario also runs in a "job" flavor (every container gets an
AWS_BATCH_JOB_ID), so that mmbatch's create/start/kill/delete interception,
not only its passthrough, is compared with runc. After every scenario no
container may have left a state dir behind.

Every container runs with `--network none` and is removed (by name) by the
`runtime_containers` fixture, whatever happens; the two runtimes' sides run
concurrently (MMBATCH_CONFORMANCE_SERIAL=1: one after the other).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest

from tests.lib import docker as dk

pytestmark = [pytest.mark.docker, pytest.mark.root]

RUNTIMES = ("runc", "mmbatch")
MMBATCH_CONFIG = "/etc/mmbatch/config.toml"
JOB_IDS: List[str] = []  # every job id used, for the store clean-up at the end


def mmbatch_state_dir() -> str:
    """Where the node's shim keeps per-container state (its config's runtime.state_dir)."""
    try:
        from mmbatch.config import load

        return load(MMBATCH_CONFIG).runtime.state_dir
    except Exception:
        return "/run/mmbatch"


class Ctx:
    """One runtime's side of a scenario: runs containers, normalizes output."""

    def __init__(self, runtime: str, containers: dk.Containers, image: str, tmp: str,
                 flavor: str = "plain") -> None:
        self.runtime = runtime
        self.containers = containers
        self.image = image
        self.tmp = tmp
        self.flavor = flavor
        self.job_ids: List[str] = []
        # The "job" flavor makes every container a managed job (AWS_BATCH_JOB_ID),
        # so mmbatch's create/start/kill/delete interception is on the path.
        self.extra_args: List[str] = ["-e", f"AWS_BATCH_JOB_ID={self.job_id('flavor')}"] if flavor == "job" else []
        self.names: List[str] = []
        self.ids: Dict[str, str] = {}
        self.timings: Dict[str, float] = {}

    def run(self, *args: str, prefix: str = "c", detach: bool = True, check: bool = True,
            timeout: float = 60) -> Tuple[str, Any]:
        """docker run --runtime=RT --network none ARGS (ARGS include image and command)."""
        name = self.containers.name(f"conf-{prefix}-{self.runtime[:2]}")
        self.names.append(name)
        t0 = time.monotonic()
        proc = self.containers.run(f"--runtime={self.runtime}", "--network", "none", *self.extra_args, *args,
                                   name=name, detach=detach, check=check, timeout=timeout)
        self.timings.setdefault(f"run-{prefix}", time.monotonic() - t0)
        try:
            self.ids[name] = dk.container_id(name)
        except AssertionError:
            pass  # not created at all: nothing of it to normalize
        return name, proc

    def job_id(self, what: str) -> str:
        """Unique per run: a job id seen before could find someone's checkpoint."""
        jid = f"mmbt-conformance-{what}-{self.runtime}-{uuid.uuid4().hex[:10]}"
        self.job_ids.append(jid)
        JOB_IDS.append(jid)
        return jid

    def norm(self, text: str) -> str:
        """Replace what differs per container/run: ids, names, host name, tmp dir."""
        for name in self.names:
            cid = self.ids.get(name, "")
            if cid:
                text = text.replace(cid, "<ID>").replace(cid[:12], "<ID>")
            text = text.replace(name, "<NAME>")
        text = text.replace(self.tmp, "<TMP>")
        for jid in self.job_ids:
            text = text.replace(jid, "<JOB>")
        text = re.sub(r"\b[0-9a-f]{64}\b", "<ID>", text)
        text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", "<TIME>", text)
        return text


# -- small helpers -----------------------------------------------------------

STATE_KEYS = ("Status", "Running", "Paused", "Restarting", "OOMKilled", "Dead", "ExitCode", "Error")


def state(ctx: Ctx, name: str) -> Dict[str, Any]:
    s = dk.container_state(name)
    out = {k: s.get(k) for k in STATE_KEYS}
    out["Error"] = ctx.norm(out["Error"] or "")
    out["StartedAt-set"] = not str(s.get("StartedAt", "")).startswith("0001-")
    out["FinishedAt-set"] = not str(s.get("FinishedAt", "")).startswith("0001-")
    return out


def running(name: str) -> None:
    dk.wait_until(lambda: dk.container_state(name).get("Running"), timeout=30, what=f"{name} running")


def wait_log(name: str, needle: str, timeout: float = 30) -> None:
    dk.wait_for_log(name, lambda text: needle in text, timeout=timeout)


def wait_exited(name: str, timeout: float = 60) -> int:
    return dk.wait_exit(name, timeout=timeout)


def cli(*args: str, timeout: float = 60) -> Dict[str, Any]:
    """A docker CLI call's rc, stdout and stderr (not raising)."""
    proc = dk.docker(*args, check=False, timeout=timeout)
    return {"rc": proc.returncode, "out": proc.stdout.decode(errors="replace"),
            "err": proc.stderr.decode(errors="replace")}


def cli_n(ctx: Ctx, *args: str, timeout: float = 60) -> Dict[str, Any]:
    r = cli(*args, timeout=timeout)
    r["out"] = ctx.norm(r["out"])
    r["err"] = ctx.norm(r["err"])
    return r


def logs(ctx: Ctx, name: str) -> Dict[str, str]:
    o, e = dk.logs(name)
    return {"stdout": ctx.norm(o), "stderr": ctx.norm(e)}


def host_state_dir_exists(name: str) -> bool:
    return os.path.exists(os.path.join(mmbatch_state_dir(), dk.container_id(name)))


# -- scenarios ---------------------------------------------------------------

def sc_exit_codes(ctx: Ctx) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    names = {code: ctx.run(ctx.image, "sh", "-c", f"exit {code}", prefix=f"exit{code}")[0] for code in (0, 1, 3)}
    for code, name in names.items():
        out[f"wait-{code}"] = wait_exited(name)
        out[f"state-{code}"] = state(ctx, name)
    _, proc = ctx.run(ctx.image, "sh", "-c", "exit 42", prefix="fg", detach=False, check=False)
    out["foreground-rc"] = proc.returncode
    return out


def sanity_exit_codes(r: Dict[str, Any]) -> None:
    assert (r["wait-0"], r["wait-1"], r["wait-3"], r["foreground-rc"]) == (0, 1, 3, 42)
    assert r["state-1"]["Status"] == "exited" and r["state-1"]["ExitCode"] == 1


def sc_exec_failure(ctx: Ctx) -> Dict[str, Any]:
    """The runtime's create fails (the job's command cannot run): the error the
    engine reports comes from the runtime's --log JSON line."""
    out: Dict[str, Any] = {}
    for label, cmd in (("missing", "/no/such/binary"), ("not-executable", "/etc/passwd"),
                       ("not-in-path", "no-such-command")):
        name, proc = ctx.run(ctx.image, cmd, prefix=label, detach=False, check=False)
        out[label] = {"rc": proc.returncode, "stderr": ctx.norm(proc.stderr.decode(errors="replace")),
                      "state": state(ctx, name)}
    return out


def sanity_exec_failure(r: Dict[str, Any]) -> None:
    assert r["missing"]["rc"] == 127 and "/no/such/binary" in r["missing"]["stderr"]
    assert r["not-executable"]["rc"] == 126
    assert r["missing"]["state"]["Error"], "the engine should show the runtime's error"


def sc_kill(ctx: Ctx) -> Dict[str, Any]:
    name, _ = ctx.run(ctx.image, "sleep", "300", prefix="kill")
    running(name)
    k = cli_n(ctx, "kill", name)
    return {"kill": k, "wait": wait_exited(name), "state": state(ctx, name)}


def sanity_kill(r: Dict[str, Any]) -> None:
    assert r["kill"]["rc"] == 0 and r["wait"] == 137 and r["state"]["ExitCode"] == 137


def sc_stop_sigterm(ctx: Ctx) -> Dict[str, Any]:
    """A job that traps nothing gets SIGTERM from `docker stop` and dies of
    it: 143 (under --init, so the job is not pid 1, which ignores TERM)."""
    name, _ = ctx.run("--init", ctx.image, "sleep", "300", prefix="term")
    running(name)
    t0 = time.monotonic()
    s = cli_n(ctx, "stop", "-t", "20", name)
    elapsed = time.monotonic() - t0
    ctx.timings["stop-term"] = elapsed
    return {"stop": s, "wait": wait_exited(name), "state": state(ctx, name), "quick": elapsed < 10}


def sanity_stop_sigterm(r: Dict[str, Any]) -> None:
    assert r["stop"]["rc"] == 0 and r["wait"] == 143 and r["quick"]


def sc_stop_ignores_term(ctx: Ctx) -> Dict[str, Any]:
    """TERM ignored: `docker stop -t 1` escalates to SIGKILL after 1 s."""
    name, _ = ctx.run(ctx.image, "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.2; done",
                      prefix="stopkill")
    wait_log(name, "ready")
    t0 = time.monotonic()
    s = cli_n(ctx, "stop", "-t", "1", name)
    elapsed = time.monotonic() - t0
    ctx.timings["stop-kill"] = elapsed
    return {"stop": s, "wait": wait_exited(name), "state": state(ctx, name),
            "waited-for-grace": elapsed >= 0.9, "bounded": elapsed < 6.0}


def sanity_stop_ignores_term(r: Dict[str, Any]) -> None:
    assert r["wait"] == 137 and r["waited-for-grace"] and r["bounded"]


def sc_kill_usr1(ctx: Ctx) -> Dict[str, Any]:
    name, _ = ctx.run(ctx.image, "sh", "-c",
                      "trap 'echo got-usr1; exit 7' USR1; echo ready; while :; do sleep 0.1; done", prefix="usr1")
    wait_log(name, "ready")
    k = cli_n(ctx, "kill", "-s", "USR1", name)
    return {"kill": k, "wait": wait_exited(name), "logs": logs(ctx, name), "state": state(ctx, name)}


def sanity_kill_usr1(r: Dict[str, Any]) -> None:
    assert r["wait"] == 7 and "got-usr1" in r["logs"]["stdout"]


def sc_logs(ctx: Ctx) -> Dict[str, Any]:
    name, _ = ctx.run(ctx.image, "sh", "-c",
                      "echo out-1; echo err-1 >&2; echo out-2; printf 'no-newline'; printf 'é\\t' >&2",
                      prefix="logs")
    wait_exited(name)
    fg_name, proc = ctx.run(ctx.image, "sh", "-c", "echo fg-out; echo fg-err >&2", prefix="fglogs", detach=False)
    return {"logs": logs(ctx, name), "foreground": {"out": proc.stdout.decode(), "err": proc.stderr.decode()},
            "foreground-logs": logs(ctx, fg_name)}


def sanity_logs(r: Dict[str, Any]) -> None:
    assert r["logs"]["stdout"] == "out-1\nout-2\nno-newline"
    assert r["logs"]["stderr"] == "err-1\né\t"
    assert r["foreground"] == {"out": "fg-out\n", "err": "fg-err\n"}


def sc_exec(ctx: Ctx) -> Dict[str, Any]:
    name, _ = ctx.run("-e", "JOBVAR=from-run", ctx.image, "sleep", "300", prefix="exec")
    running(name)
    return {
        "output-and-rc": cli_n(ctx, "exec", name, "sh", "-c", "echo hi; echo oops >&2; exit 3"),
        "env": cli_n(ctx, "exec", "-e", "X=1", name, "sh", "-c", "echo $JOBVAR $X"),
        "user-workdir": cli_n(ctx, "exec", "-u", "1000", "-w", "/tmp", name, "sh", "-c", "id -u; pwd"),
        "pid1": cli_n(ctx, "exec", name, "cat", "/proc/1/cmdline"),
        "tty": cli_n(ctx, "exec", "-t", name, "tty"),
        "detached": cli_n(ctx, "exec", "-d", name, "sh", "-c", "echo detached > /tmp/d"),
        "detached-effect": (time.sleep(0.3), cli_n(ctx, "exec", name, "cat", "/tmp/d"))[1],
        "missing-binary": cli_n(ctx, "exec", name, "/no/such/binary"),
        "state": state(ctx, name),
    }


def sanity_exec(r: Dict[str, Any]) -> None:
    assert r["output-and-rc"] == {"rc": 3, "out": "hi\n", "err": "oops\n"}
    assert r["env"]["out"] == "from-run 1\n"
    assert r["user-workdir"]["out"] == "1000\n/tmp\n"
    assert r["tty"]["out"].startswith("/dev/pts/")
    assert r["detached-effect"]["out"] == "detached\n"
    assert r["missing-binary"]["rc"] != 0


def sc_pause(ctx: Ctx) -> Dict[str, Any]:
    name, _ = ctx.run(ctx.image, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done", prefix="pause")
    dk.wait_for_log(name, lambda t: len(t.split()) >= 3)

    def count() -> int:
        return len(dk.logs(name)[0].split())

    p = cli_n(ctx, "pause", name)
    paused = state(ctx, name)
    exec_while_paused = cli_n(ctx, "exec", name, "true")
    time.sleep(0.4)  # lines written just before the freeze may still be on their way
    n1 = count()
    time.sleep(0.8)
    n2 = count()
    u = cli_n(ctx, "unpause", name)
    unpaused = state(ctx, name)
    dk.wait_until(lambda: count() >= n2 + 3, timeout=10, what="counting after unpause")
    return {"pause": p, "paused": paused, "frozen": n1 == n2, "exec-while-paused": exec_while_paused,
            "unpause": u, "unpaused": unpaused, "counts-after": True}


def sanity_pause(r: Dict[str, Any]) -> None:
    assert r["paused"]["Paused"] is True and r["paused"]["Status"] == "paused"
    assert r["frozen"] and r["unpaused"]["Paused"] is False and r["unpaused"]["Running"] is True


def sc_wait(ctx: Ctx) -> Dict[str, Any]:
    name, _ = ctx.run(ctx.image, "sh", "-c", "sleep 1; exit 5", prefix="wait")
    first = cli_n(ctx, "wait", name)  # blocks until the exit
    again = cli_n(ctx, "wait", name)  # already exited
    return {"first": first, "again": again, "state": state(ctx, name)}


def sanity_wait(r: Dict[str, Any]) -> None:
    assert r["first"]["out"].strip() == "5" and r["again"]["out"].strip() == "5"


def sc_tty(ctx: Ctx) -> Dict[str, Any]:
    _, fg = ctx.run("-t", ctx.image, "sh", "-c", "tty; echo out; echo err >&2; stty size 2>&1 || true",
                    prefix="tty", detach=False)
    name, _ = ctx.run("-t", ctx.image, "sh", "-c", "tty; test -t 0 && echo stdin-tty; test -t 1 && echo stdout-tty",
                      prefix="ttyd")
    wait_exited(name)
    return {"foreground": ctx.norm(fg.stdout.decode(errors="replace")), "logs": logs(ctx, name)}


def sanity_tty(r: Dict[str, Any]) -> None:
    assert r["foreground"].startswith("/dev/pts/0\r\n") and "err\r\n" in r["foreground"]
    assert "stdout-tty" in r["logs"]["stdout"]


def sc_init(ctx: Ctx) -> Dict[str, Any]:
    _, p = ctx.run("--init", ctx.image, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /proc/$$/status"
                   " | grep -E '^(PPid|Uid|Gid):'", prefix="init", detach=False)
    _, q = ctx.run(ctx.image, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$", prefix="noinit",
                   detach=False)
    return {"init": p.stdout.decode(), "no-init": q.stdout.decode()}


def sanity_init(r: Dict[str, Any]) -> None:
    assert "docker-init" in r["init"] and "PPid:\t1" in r["init"]
    assert r["no-init"].endswith("\n1\n")


def sc_identity(ctx: Ctx) -> Dict[str, Any]:
    """env, args, workdir, user: what the job sees of its own definition."""
    script = 'echo "$FOO|$EMPTY|$(pwd)|$(id -u):$(id -g)|$0|$#|$*|$HOME|$(umask)"; env | sort'
    _, p = ctx.run("-e", "FOO=bar baz", "-e", "EMPTY=", "-w", "/tmp/work", "-u", "1000", ctx.image,
                   "sh", "-c", script, "arg0", "a", "b c", prefix="ident", detach=False)
    _, q = ctx.run("-u", "1000:1000", "--group-add", "65534", ctx.image, "id", prefix="ident2", detach=False)
    _, h = ctx.run("--hostname", "fixed-host", "--entrypoint", "/bin/sh", ctx.image, "-c",
                   "hostname; cat /etc/hostname; ls -d /tmp/work 2>&1; true", prefix="ident3", detach=False)
    return {"env-args": ctx.norm(p.stdout.decode()), "id": q.stdout.decode(), "host": ctx.norm(h.stdout.decode())}


def sanity_identity(r: Dict[str, Any]) -> None:
    first = r["env-args"].splitlines()[0]
    assert first == "bar baz||/tmp/work|1000:1000|arg0|2|a b c|/tmp|0022", first
    assert "HOSTNAME=<ID>" in r["env-args"]
    assert "uid=1000" in r["id"] and "65534" in r["id"]
    assert r["host"].startswith("fixed-host\nfixed-host\n")


def sc_read_only(ctx: Ctx) -> Dict[str, Any]:
    script = ("touch /x 2>&1; echo rc=$?; echo y > /tmp/y 2>&1; echo rc=$?; echo z > /scratch/z && echo ok;"
              " awk '$2==\"/\" {split($4,o,\",\"); print o[1]}' /proc/mounts")
    _, p = ctx.run("--read-only", "--tmpfs", "/scratch", ctx.image, "sh", "-c", script, prefix="ro",
                   detach=False, check=False)
    return {"rc": p.returncode, "out": p.stdout.decode()}


def sanity_read_only(r: Dict[str, Any]) -> None:
    assert "Read-only file system" in r["out"] and "rc=1" in r["out"] and "ok" in r["out"]
    assert r["out"].rstrip().endswith("ro")


def sc_volumes(ctx: Ctx) -> Dict[str, Any]:
    rw = os.path.join(ctx.tmp, "rw")
    ro = os.path.join(ctx.tmp, "ro")
    for d in (rw, ro):
        os.makedirs(d)
    with open(os.path.join(rw, "in.txt"), "w") as f:
        f.write("from-host\n")
    with open(os.path.join(ro, "ro.txt"), "w") as f:
        f.write("read-only\n")
    script = ("cat /data/in.txt /ro/ro.txt; echo from-job > /data/out.txt; touch /ro/x 2>&1; echo ro-rc=$?;"
              " stat -c '%a %s' /scratch; df -k /scratch | awk 'NR==2 {print $2}';"
              " dd if=/dev/zero of=/scratch/big bs=1024 count=2048 2>&1 | grep -o 'No space left on device';"
              " grep -E ' /(data|ro|scratch) ' /proc/mounts | awk '{split($4,o,\",\"); print $2, $3, o[1]}' | sort")
    _, p = ctx.run("-v", f"{rw}:/data", "-v", f"{ro}:/ro:ro", "--tmpfs", "/scratch:size=1m,mode=1770",
                   ctx.image, "sh", "-c", script, prefix="vol", detach=False, check=False)
    with open(os.path.join(rw, "out.txt")) as f:
        written = f.read()
    return {"rc": p.returncode, "out": ctx.norm(p.stdout.decode()), "host-sees": written,
            "host-files": sorted(os.listdir(rw)), "ro-files": sorted(os.listdir(ro))}


def sanity_volumes(r: Dict[str, Any]) -> None:
    assert r["out"].startswith("from-host\nread-only\n") and r["host-sees"] == "from-job\n"
    assert "ro-rc=1" in r["out"] and "1770" in r["out"] and "\n1024\n" in r["out"]
    assert "No space left on device" in r["out"] and r["ro-files"] == ["ro.txt"]


def sc_oom(ctx: Ctx) -> Dict[str, Any]:
    # One process eats the memory (awk exec'd as PID 1, a 1 GiB string without
    # the limit): which process the kernel kills is then not a matter of chance
    # (with a pipeline, the shell sometimes outlived its child long enough to
    # print "Killed", under either runtime).
    name, _ = ctx.run("--memory", "32m", "--memory-swap", "32m", ctx.image, "sh", "-c",
                      'echo start; exec awk \'BEGIN { s = "a"; for (i = 0; i < 30; i++) s = s s; print "survived" }\'',
                      prefix="oom")
    code = wait_exited(name)
    return {"wait": code, "state": state(ctx, name), "logs": logs(ctx, name)}


def sanity_oom(r: Dict[str, Any]) -> None:
    assert r["wait"] == 137 and r["state"]["OOMKilled"] is True
    assert "survived" not in r["logs"]["stdout"]


def sc_update_memory(ctx: Ctx) -> Dict[str, Any]:
    name, _ = ctx.run("--memory", "32m", ctx.image, "sleep", "300", prefix="upd")
    running(name)
    limit = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max")
    before = cli_n(ctx, "exec", name, "sh", "-c", limit)
    u = cli_n(ctx, "update", "--memory", "48m", "--memory-swap", "96m", name)
    after = cli_n(ctx, "exec", name, "sh", "-c", limit)
    bad = cli_n(ctx, "update", "--memory", "1k", name)
    hc = dk.inspect(name)["HostConfig"]
    return {"before": before, "update": u, "after": after, "too-small": {"rc": bad["rc"], "err": bad["err"]},
            "host-config": {"Memory": hc["Memory"], "MemorySwap": hc["MemorySwap"]}, "state": state(ctx, name)}


def sanity_update_memory(r: Dict[str, Any]) -> None:
    assert r["before"]["out"].strip() == str(32 << 20)
    assert r["update"]["rc"] == 0 and r["after"]["out"].strip() == str(48 << 20)
    assert r["host-config"] == {"Memory": 48 << 20, "MemorySwap": 96 << 20}
    assert r["too-small"]["rc"] != 0


def _top_table(text: str) -> Dict[str, Any]:
    lines = [x for x in text.splitlines() if x.strip()]
    header = lines[0].split()
    rows = []
    for line in lines[1:]:
        cols = line.split(None, len(header) - 1)
        row = dict(zip(header, cols))
        rows.append({"UID": row.get("UID"), "CMD": row.get("CMD")})
    return {"header": header, "rows": sorted(rows, key=lambda r: str(r["CMD"]))}


def sc_top(ctx: Ctx) -> Dict[str, Any]:
    name, _ = ctx.run(ctx.image, "sh", "-c", "sleep 300 & exec sleep 301", prefix="top")
    running(name)
    dk.wait_until(lambda: "sleep 300" in cli("top", name)["out"], timeout=10, what="both sleeps in docker top")
    t = cli("top", name)
    t2 = cli("top", name, "-o", "pid,user,args")
    return {"rc": t["rc"], "top": _top_table(t["out"]), "top-o-rc": t2["rc"],
            "top-o": sorted(line.split(None, 1)[1] for line in t2["out"].splitlines()[1:] if line.strip())}


def sanity_top(r: Dict[str, Any]) -> None:
    cmds = [row["CMD"] for row in r["top"]["rows"]]
    assert cmds == ["sleep 300", "sleep 301"], cmds


def sc_restart_policy(ctx: Ctx) -> Dict[str, Any]:
    name, _ = ctx.run("--restart", "on-failure:2", ctx.image, "sh", "-c", "echo attempt; exit 3", prefix="restart")

    def settled() -> Optional[Dict[str, Any]]:
        info = dk.inspect(name)
        s = info["State"]
        if info["RestartCount"] == 2 and s["Status"] == "exited" and not s["Restarting"]:
            return info
        return None

    info = dk.wait_until(settled, timeout=60, interval=0.2, what="two restarts")
    time.sleep(1.0)  # no third attempt must follow
    info = dk.inspect(name)
    return {"RestartCount": info["RestartCount"], "state": state(ctx, name), "logs": logs(ctx, name)}


def sanity_restart_policy(r: Dict[str, Any]) -> None:
    assert r["RestartCount"] == 2 and r["state"]["ExitCode"] == 3
    assert r["logs"]["stdout"] == "attempt\n" * 3


def sc_restart_explicit(ctx: Ctx) -> Dict[str, Any]:
    """`docker restart` and `docker start` of an exited container: the same
    container id is created again through the runtime."""
    name, _ = ctx.run("-e", "AWS_BATCH_JOB_ID=" + ctx.job_id("restart"), ctx.image, "sh", "-c",
                      "echo run; trap 'exit 0' TERM; while :; do sleep 0.1; done", prefix="rst")
    wait_log(name, "run")
    r = cli_n(ctx, "restart", "-t", "5", name)
    dk.wait_for_log(name, lambda t: t.count("run") == 2)
    s = cli_n(ctx, "stop", "-t", "5", name)
    code1 = wait_exited(name)
    st = cli_n(ctx, "start", name)
    dk.wait_for_log(name, lambda t: t.count("run") == 3)
    running_again = state(ctx, name)
    dk.docker("kill", name)
    code2 = wait_exited(name)
    return {"restart": r, "stop": s, "exit-after-stop": code1, "start": st, "running-again": running_again,
            "exit-after-kill": code2, "logs": logs(ctx, name)}


def sanity_restart_explicit(r: Dict[str, Any]) -> None:
    assert r["exit-after-stop"] == 0 and r["exit-after-kill"] == 137
    assert r["running-again"]["Running"] is True and r["logs"]["stdout"] == "run\n" * 3


def sc_stdin(ctx: Ctx) -> Dict[str, Any]:
    """`docker run -i`: the job's stdin is the caller's, untouched by the runtime."""
    data = b"line1\nline2\n" + bytes(range(1, 256)) + b"\nend\n"
    name = ctx.containers.name(f"conf-stdin-{ctx.runtime[:2]}")
    ctx.names.append(name)
    proc = dk.docker("run", "--name", name, "--label", dk.LABEL, f"--runtime={ctx.runtime}", "--network", "none",
                     *ctx.extra_args, "-i", ctx.image, "sh", "-c", "md5sum; echo done", input=data, check=False)
    ctx.ids[name] = dk.container_id(name)
    import hashlib

    return {"rc": proc.returncode, "out": proc.stdout.decode(), "expected-md5": hashlib.md5(data).hexdigest()}


def sanity_stdin(r: Dict[str, Any]) -> None:
    assert r["rc"] == 0 and r["out"].startswith(r["expected-md5"]) and r["out"].endswith("done\n")


def sc_resources_security(ctx: Ctx) -> Dict[str, Any]:
    """What the spec says beyond the process: limits, capabilities, seccomp,
    devices, shm: a rewritten config.json must keep all of it."""
    script = ("grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; ulimit -n; ulimit -Hn;"
              " cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
              " /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/cpu/cpu.shares 2>&1;"
              " df -k /dev/shm | awk 'NR==2 {print $2}'; ls -l /dev/mynull | awk '{print $1, $5, $6}';"
              " cat /proc/sys/net/core/somaxconn; id")
    _, p = ctx.run("--cpus", "0.5", "--cpu-shares", "512", "--pids-limit", "50", "--ulimit", "nofile=100:200",
                   "--cap-drop", "ALL", "--cap-add", "CHOWN", "--security-opt", "no-new-privileges",
                   "--device", "/dev/null:/dev/mynull", "--shm-size", "2m", "--sysctl", "net.core.somaxconn=99",
                   "--group-add", "10", ctx.image, "sh", "-c", script, prefix="res", detach=False, check=False)
    return {"rc": p.returncode, "out": p.stdout.decode(), "err": p.stderr.decode()}


def sanity_resources_security(r: Dict[str, Any]) -> None:
    out = r["out"]
    assert "NoNewPrivs:\t1" in out and "Seccomp:\t2" in out and "CapEff:\t0000000000000001" in out, out
    assert "\n100\n200\n50\n50000\n100000\n512\n2048\n" in out, out
    assert "\n99\n" in out and "crw-rw-rw- 1, 3" in out and "groups=0(root),10" in out, out


def sc_stop_signal(ctx: Ctx) -> Dict[str, Any]:
    """`--stop-signal`: docker stop sends the image's/container's signal, not TERM."""
    name, _ = ctx.run("--stop-signal", "SIGUSR2", ctx.image, "sh", "-c",
                      "trap 'echo got-usr2; exit 12' USR2; trap 'echo got-term; exit 15' TERM; echo ready;"
                      " while :; do sleep 0.1; done", prefix="stopsig")
    wait_log(name, "ready")
    s = cli_n(ctx, "stop", "-t", "10", name)
    return {"stop": s, "wait": wait_exited(name), "logs": logs(ctx, name), "state": state(ctx, name)}


def sanity_stop_signal(r: Dict[str, Any]) -> None:
    assert r["wait"] == 12 and r["logs"]["stdout"] == "ready\ngot-usr2\n"


def sc_docker_checkpoint(ctx: Ctx) -> Dict[str, Any]:
    """dockerd --experimental: `docker checkpoint create` (runtime `checkpoint`,
    passed through) and `docker start --checkpoint` (runtime `restore`) back
    into the same container object."""
    if dk.out("info", "--format", "{{.ExperimentalBuild}}") != "true" or not shutil.which("criu"):
        from tests.conftest import unavailable

        unavailable("docker checkpoint needs dockerd --experimental and criu")
    name, _ = ctx.run(ctx.image, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done", prefix="ckpt")
    dk.wait_for_log(name, lambda t: len(t.split()) >= 5)
    c = cli_n(ctx, "checkpoint", "create", name, "cp1", timeout=120)
    after_ckpt = state(ctx, name)
    n = len(dk.logs(name)[0].split())
    r = cli_n(ctx, "start", "--checkpoint", "cp1", name, timeout=120)
    if "failed to upload checkpoint to containerd" in r["err"] and "already exists" in r["err"]:
        # dockerd's own race ingesting the checkpoint into containerd's
        # content store, before any runtime is called: try once more.
        time.sleep(1.0)
        r = cli_n(ctx, "start", "--checkpoint", "cp1", name, timeout=120)
    # Restored, it goes on from where it was: no restart from 1.
    try:
        dk.wait_until(lambda: len(dk.logs(name)[0].split()) >= n + 5, timeout=5, what="counting after restore")
        counted_on = True
    except AssertionError:
        counted_on = False
    lines = dk.logs(name)[0].split()
    restarted_from_one = lines[n:n + 1] == ["1"]
    r["err"] = re.sub(r"/\S+/restore.log", "<RESTORE-LOG>", r["err"])
    return {"checkpoint": c, "after-checkpoint": after_ckpt, "start-from-checkpoint": r,
            "counted-on": counted_on, "restarted-from-one": restarted_from_one,
            "running": dk.container_state(name).get("Running")}


def sanity_docker_checkpoint(r: Dict[str, Any]) -> None:
    assert r["checkpoint"]["rc"] == 0 and r["after-checkpoint"]["Status"] == "exited"
    assert r["start-from-checkpoint"]["rc"] == 0, r["start-from-checkpoint"]
    assert r["counted-on"] and not r["restarted-from-one"] and r["running"]


def sc_burst(ctx: Ctx) -> Dict[str, Any]:
    """Six containers created at once (as a node starting a batch of jobs):
    each keeps its own exit code, logs and state."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> str:
        name, _ = ctx.run(ctx.image, "sh", "-c", f"echo job-{i}; sleep 0.5; exit {i + 10}", prefix=f"burst{i}")
        return name

    with ThreadPoolExecutor(max_workers=6) as pool:
        names = list(pool.map(one, range(6)))
    return {f"job-{i}": {"wait": wait_exited(n), "logs": logs(ctx, n), "state": state(ctx, n)}
            for i, n in enumerate(names)}


def sanity_burst(r: Dict[str, Any]) -> None:
    for i in range(6):
        assert r[f"job-{i}"]["wait"] == i + 10 and r[f"job-{i}"]["logs"]["stdout"] == f"job-{i}\n"


def _job_scenario(env: List[str]) -> Callable[[Ctx], Dict[str, Any]]:
    def scenario(ctx: Ctx) -> Dict[str, Any]:
        args: List[str] = []
        for e in env:
            args += ["-e", e.replace("{JOB}", ctx.job_id("job"))]
        name, _ = ctx.run(*args, ctx.image, "sh", "-c",
                          "echo job=${AWS_BATCH_JOB_ID:+set}${MMBATCH_JOB_KEY:+key}; echo ready; "
                          "trap 'echo term; exit 0' TERM; while :; do sleep 0.1; done", prefix="job")
        wait_log(name, "ready")
        during = host_state_dir_exists(name)
        exec_ = cli_n(ctx, "exec", name, "sh", "-c", "echo in-job; exit 2")
        stop = cli_n(ctx, "stop", "-t", "10", name)
        code = wait_exited(name)
        gone = dk.wait_until(lambda: not host_state_dir_exists(name), timeout=10, what="state dir removed")
        return {"_state_dir_while_running": during, "state_dir_after_exit": not gone, "exec": exec_,
                "stop": stop, "wait": code, "state": state(ctx, name), "logs": logs(ctx, name)}
    return scenario


def sanity_job(r: Dict[str, Any]) -> None:
    assert r["wait"] == 0 and "term" in r["logs"]["stdout"] and r["exec"]["rc"] == 2
    assert r["state_dir_after_exit"] is False


def expect_state_dir(expected_for_mmbatch: bool) -> Callable[[str, Dict[str, Any]], None]:
    def check(runtime: str, r: Dict[str, Any]) -> None:
        want = expected_for_mmbatch if runtime == "mmbatch" else False
        assert r["_state_dir_while_running"] is want, (
            f"{runtime}: state dir {mmbatch_state_dir()}/<id> existed while running: "
            f"{r['_state_dir_while_running']}, expected {want}")
    return check


class Scenario(NamedTuple):
    run: Callable[[Ctx], Dict[str, Any]]
    sanity: Callable[[Dict[str, Any]], None]
    per_runtime: Optional[Callable[[str, Dict[str, Any]], None]] = None


SCENARIOS: Dict[str, Scenario] = {
    "exit-codes": Scenario(sc_exit_codes, sanity_exit_codes),
    "exec-failure-at-create": Scenario(sc_exec_failure, sanity_exec_failure),
    "kill-137": Scenario(sc_kill, sanity_kill),
    "stop-sigterm-143": Scenario(sc_stop_sigterm, sanity_stop_sigterm),
    "stop-ignores-term-137": Scenario(sc_stop_ignores_term, sanity_stop_ignores_term),
    "kill-usr1-trap": Scenario(sc_kill_usr1, sanity_kill_usr1),
    "logs-stdout-stderr": Scenario(sc_logs, sanity_logs),
    "exec": Scenario(sc_exec, sanity_exec),
    "pause-unpause": Scenario(sc_pause, sanity_pause),
    "wait": Scenario(sc_wait, sanity_wait),
    "tty": Scenario(sc_tty, sanity_tty),
    "init": Scenario(sc_init, sanity_init),
    "env-args-workdir-user": Scenario(sc_identity, sanity_identity),
    "read-only": Scenario(sc_read_only, sanity_read_only),
    "volumes-bind-tmpfs": Scenario(sc_volumes, sanity_volumes),
    "oom-kill": Scenario(sc_oom, sanity_oom),
    "update-memory": Scenario(sc_update_memory, sanity_update_memory),
    "top": Scenario(sc_top, sanity_top),
    "restart-policy-on-failure": Scenario(sc_restart_policy, sanity_restart_policy),
    "restart-and-start-again": Scenario(sc_restart_explicit, sanity_restart_explicit),
    "job-aws-batch-managed": Scenario(_job_scenario(["AWS_BATCH_JOB_ID={JOB}", "AWS_BATCH_JOB_ATTEMPT=1"]),
                                      sanity_job, expect_state_dir(True)),
    "job-key-managed": Scenario(_job_scenario(["MMBATCH_JOB_KEY={JOB}"]), sanity_job, expect_state_dir(True)),
    "job-mode-none": Scenario(_job_scenario(["AWS_BATCH_JOB_ID={JOB}", "MMBATCH_CHECKPOINT_MODE=none"]),
                              sanity_job, expect_state_dir(False)),
    "unmanaged": Scenario(_job_scenario(["PLAIN=1"]), sanity_job, expect_state_dir(False)),
    "stdin": Scenario(sc_stdin, sanity_stdin),
    "resources-security": Scenario(sc_resources_security, sanity_resources_security),
    "stop-signal": Scenario(sc_stop_signal, sanity_stop_signal),
    "docker-checkpoint-restore": Scenario(sc_docker_checkpoint, sanity_docker_checkpoint),
    "burst-of-six": Scenario(sc_burst, sanity_burst),
}


# Scenarios also run as managed jobs ("job" flavor): every container gets an
# AWS_BATCH_JOB_ID, so for mmbatch each create/start/kill/delete goes through
# its interception (state, annotation, restore lookup) instead of a plain exec.
JOB_FLAVOR = [
    "exit-codes", "exec-failure-at-create", "kill-137", "stop-sigterm-143", "stop-ignores-term-137",
    "kill-usr1-trap", "logs-stdout-stderr", "exec", "pause-unpause", "wait", "tty", "init",
    "env-args-workdir-user", "read-only", "volumes-bind-tmpfs", "oom-kill", "update-memory", "top",
    "restart-policy-on-failure", "stdin", "resources-security", "stop-signal", "docker-checkpoint-restore",
    "burst-of-six",
]
CASES = [pytest.param(name, "plain", id=name) for name in SCENARIOS] + [
    pytest.param(name, "job", id=f"job-{name}") for name in JOB_FLAVOR]


def comparable(result: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def _store_root() -> Optional[str]:
    try:
        from mmbatch.config import load

        url = load(MMBATCH_CONFIG).store.url
    except Exception:
        return None
    if url.startswith("file://"):
        return url[len("file://"):]
    return url if url.startswith("/") else None


@pytest.fixture(scope="module")
def both_runtimes(docker_engine, busybox_image):
    have = dk.runtimes()
    missing = [r for r in RUNTIMES if r not in have]
    if missing:
        from tests.conftest import unavailable

        unavailable(f"runtimes not registered with dockerd: {missing}")
    if os.geteuid() != 0:
        from tests.conftest import unavailable

        unavailable("needs root (bind volumes, /run/mmbatch)")
    yield busybox_image
    # The jobs these tests ran left attempt records in the node's store:
    # remove exactly those (the ids are ours and path-safe).
    root = _store_root()
    if root:
        # The shim's delete leaves a detached finalizer per managed container
        # that writes into the store once the engine reports the exit: let
        # them finish, so nothing of ours is written after the clean-up.
        try:
            dk.wait_until(lambda: not _finalizers_running(), timeout=30, interval=0.5, what="finalizers")
        except AssertionError:
            pass
        for jid in JOB_IDS:
            if re.fullmatch(r"mmbt-conformance-[a-z0-9-]+", jid):
                shutil.rmtree(os.path.join(root, "jobs", jid), ignore_errors=True)


def _finalizers_running() -> bool:
    """Whether any `python -m mmbatch.finalize` runs (read-only look at /proc)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"mmbatch.finalize" in f.read():
                    return True
        except OSError:
            continue
    return False


def _leftover_state_dirs(ids: List[str]) -> List[str]:
    base = mmbatch_state_dir()
    try:
        dk.wait_until(lambda: not any(os.path.exists(os.path.join(base, cid)) for cid in ids), timeout=5,
                      what="state dirs removed")
    except AssertionError:
        pass
    return [cid[:12] for cid in ids if os.path.exists(os.path.join(base, cid))]


@pytest.fixture
def runtime_containers(docker_engine):
    """One container tracker per runtime (the two sides run concurrently);
    every container either side started is removed, whatever happens."""
    trackers = {rt: dk.Containers() for rt in RUNTIMES}
    yield trackers
    for t in trackers.values():
        t.cleanup()


# The two runtimes' sides of a scenario run at the same time (separate
# containers, separate tmp dirs): half the wall time. MMBATCH_CONFORMANCE_SERIAL=1
# runs them one after the other.
SERIAL = os.environ.get("MMBATCH_CONFORMANCE_SERIAL") == "1"


def _run_side(sc: Scenario, runtime: str, trackers: Dict[str, dk.Containers], image: str,
              flavor: str) -> Tuple[Dict[str, Any], Dict[str, float], List[str]]:
    tmp = tempfile.mkdtemp(prefix=f"mmbt-conf-{runtime}-")
    ctx = Ctx(runtime, trackers[runtime], image, tmp, flavor)
    try:
        result = sc.run(ctx)
    finally:
        trackers[runtime].cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    # Every container is gone now: none may leave state behind.
    leftover = _leftover_state_dirs(list(ctx.ids.values()))
    return result, {k: round(v, 3) for k, v in ctx.timings.items()}, leftover


@pytest.mark.parametrize("scenario,flavor", CASES)
def test_same_result_with_runc_and_mmbatch(scenario: str, flavor: str, both_runtimes: str,
                                           runtime_containers: Dict[str, dk.Containers]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sc = SCENARIOS[scenario]
    results: Dict[str, Dict[str, Any]] = {}
    timings: Dict[str, Dict[str, float]] = {}
    leftovers: Dict[str, List[str]] = {}
    with ThreadPoolExecutor(max_workers=1 if SERIAL else len(RUNTIMES)) as pool:
        futures = {rt: pool.submit(_run_side, sc, rt, runtime_containers, both_runtimes, flavor)
                   for rt in RUNTIMES}
        for rt, fut in futures.items():
            results[rt], timings[rt], leftovers[rt] = fut.result()
    print(f"\n{scenario}[{flavor}] timings: {json.dumps(timings, sort_keys=True)}")
    sc.sanity(results["runc"])
    if sc.per_runtime and flavor == "plain":
        for runtime in RUNTIMES:
            sc.per_runtime(runtime, results[runtime])
    assert comparable(results["mmbatch"]) == comparable(results["runc"])
    assert leftovers == {"runc": [], "mmbatch": []}, f"state dirs left in {mmbatch_state_dir()}"
