"""The pre-dump chain: incremental dumps with kernel soft-dirty tracking.

Where the kernel tracks dirty pages (`criu check --feature mem_dirty_track`
succeeds, as on AL2023), most of a checkpoint's memory is written while the
job runs: one or more `runc checkpoint --pre-dump` passes, each with the
previous one as `--parent-path`, then the final dump with the last pass as
its parent. The final dump, the only part inside the freeze, then writes
only the pages dirtied since the last pass; its pagemap marks the others
`in_parent`, and CRIU reads them through the images directory's `parent`
symlink at restore.

The chain lives next to the final images in the checkpoint directory
(`criu-pre0`, `criu-pre1`, ..., `criu`). The store keeps files, not
symlinks, so the chain is recorded in the manifest's labels
(`criu_parent_chain`) and the restorer recreates the `parent` links before
`runc restore`. Without the feature (this development machine: no
soft-dirty) nothing here runs: a pre-dump would fail in runc's feature check
("CRIU is missing features"), and CRIU driven directly crashes halfway and
leaves its parasite in the job, so the feature is checked first, always.

Pure logic (the plan, the label, the links) is apart from the two side
effects: the feature probe and the runc calls.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional

from mmbatch.errors import CheckpointError, MmbatchError, RestoreError
from mmbatch.runc import Runc

FEATURE = "mem_dirty_track"
LABEL = "criu_parent_chain"
FINAL_DIR = "criu"
MAX_ITERATIONS = 5
_PRE_DIR_RE = re.compile(r"^criu-pre([0-9])$")
MODES = ("auto", "off")


@dataclass(frozen=True)
class Step:
    """One runc checkpoint call of the chain."""

    image_dir: str  # relative to the checkpoint directory
    parent: str  # --parent-path, relative to image_dir ("" = none)
    pre_dump: bool


def pre_dir(n: int) -> str:
    return f"criu-pre{n}"


def plan(iterations: int) -> List[Step]:
    """The calls of a chain with `iterations` pre-dump passes (0 = one full dump)."""
    if not 0 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"pre-dump iterations must be 0..{MAX_ITERATIONS}, got {iterations!r}")
    steps = []
    for n in range(iterations):
        steps.append(Step(pre_dir(n), f"../{pre_dir(n - 1)}" if n else "", True))
    steps.append(Step(FINAL_DIR, f"../{pre_dir(iterations - 1)}" if iterations else "", False))
    return steps


def chain_label(iterations: int) -> str:
    """The manifest label naming the pre-dump directories, oldest first."""
    return ",".join(pre_dir(n) for n in range(iterations))


def parse_chain_label(value: str) -> List[str]:
    """The pre-dump directories a manifest's label names; RestoreError if it is not a chain we wrote."""
    if not value:
        return []
    names = value.split(",")
    if len(names) > MAX_ITERATIONS or names != [pre_dir(n) for n in range(len(names))]:
        raise RestoreError(f"manifest label {LABEL}={value[:80]!r} is not a pre-dump chain",
                           hint="the checkpoint was not written by this mmbatch; an older checkpoint is tried")
    return names


def relink(checkpoint_dir: str, chain: List[str]) -> None:
    """Recreate the `parent` symlinks CRIU made at dump time (the store keeps no symlinks)."""
    dirs = list(chain) + [FINAL_DIR]
    for i in range(1, len(dirs)):
        image_dir = os.path.join(checkpoint_dir, dirs[i])
        parent_dir = os.path.join(checkpoint_dir, dirs[i - 1])
        if not os.path.isdir(image_dir) or not os.path.isdir(parent_dir):
            raise RestoreError(f"pre-dump chain incomplete: {dirs[i]} or {dirs[i - 1]} is missing from the checkpoint")
        link = os.path.join(image_dir, "parent")
        if os.path.lexists(link):
            if os.path.islink(link) and os.readlink(link) == f"../{dirs[i - 1]}":
                continue
            raise RestoreError(f"{dirs[i]}/parent in the checkpoint is not the chain's link")
        os.symlink(f"../{dirs[i - 1]}", link)


def wanted(mode: str, iterations: int, supported: bool, status: str) -> int:
    """How many pre-dump passes to run: only on a running job whose kernel tracks dirty pages."""
    if mode != "auto" or iterations < 1 or not supported or status != "running":
        return 0
    return iterations


# -- side effects ------------------------------------------------------------------


def _criu_identity(criu: str) -> Optional[str]:
    path = shutil.which(criu)
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.path.realpath(path)}:{st.st_size}:{int(st.st_mtime)}:{os.uname().release}"


def mem_dirty_track(criu: str = "criu", cache_file: str = "",
                    run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> bool:
    """Does `criu check --feature mem_dirty_track` succeed on this kernel?

    The answer is cached in `cache_file` (node-local, under the state dir)
    keyed by the CRIU binary and the kernel release.
    """
    ident = _criu_identity(criu)
    if ident is None:
        return False
    if cache_file:
        try:
            with open(cache_file, encoding="utf-8") as f:
                cached = json.load(f)
            if cached.get("criu") == ident and isinstance(cached.get(FEATURE), bool):
                return bool(cached[FEATURE])
        except (OSError, ValueError, AttributeError):
            pass
    try:
        ok = run([criu, "check", "--feature", FEATURE], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False  # not cached: the next checkpoint asks again
    if cache_file:
        try:
            tmp = f"{cache_file}.{os.getpid()}.{threading.get_ident()}.tmp"  # two checkpoints may probe at once
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"criu": ident, FEATURE: ok}, f)
            os.replace(tmp, cache_file)
        except OSError:
            pass
    return ok


def run_pre_dumps(runc: Runc, container_id: str, checkpoint_dir: str, work_dir: str, iterations: int,
                  timeout: Optional[float] = None) -> str:
    """Run the chain's pre-dump passes while the job runs; the final dump's --parent-path.

    On failure the pre-dump directories are removed and CheckpointError is
    raised: the caller then takes a full dump (the job is never left frozen:
    each pass thaws it before returning).
    """
    steps = plan(iterations)
    try:
        for n, step in enumerate(steps[:-1]):
            image_dir = os.path.join(checkpoint_dir, step.image_dir)
            work = os.path.join(work_dir, f"pre{n}")
            os.makedirs(image_dir, mode=0o700, exist_ok=True)
            os.makedirs(work, mode=0o700, exist_ok=True)
            args = ["checkpoint", "--pre-dump", "--image-path", image_dir, "--work-path", work]
            if step.parent:
                args += ["--parent-path", step.parent]
            runc.run(*args, container_id, timeout=timeout)
    except (MmbatchError, OSError) as e:
        discard(checkpoint_dir)
        raise CheckpointError(f"pre-dump failed: {e}", container_id=container_id) from e
    return steps[-1].parent


def discard(checkpoint_dir: str) -> None:
    for n in range(MAX_ITERATIONS):
        shutil.rmtree(os.path.join(checkpoint_dir, pre_dir(n)), ignore_errors=True)
