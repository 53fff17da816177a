#!/usr/bin/env bash
# GPU smoke test: a CUDA job (PyTorch) is checkpointed, killed and restored
# by mmbatch on a real NVIDIA GPU, and must go on from its GPU state.
#
#   tests/gpu/smoke.sh            (as root, after install.sh --gpu yes)
#
# Needs: an NVIDIA GPU and driver (>= 555; 570+ recommended), Docker with
# the NVIDIA container toolkit, mmbatch installed (runtime `mmbatch`,
# delegating to nvidia-container-runtime), NVIDIA's cuda-checkpoint and CRIU's
# CUDA plugin (`mmbatch doctor` shows both). Without a GPU it prints SKIP and
# exits 0; a missing piece on a GPU machine is a failure (exit 1).
#
# Environment:
#   SMOKE_IMAGE    the CUDA job's image (default pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime)
#   MMBATCH        the CLI (default /opt/mmbatch/bin/mmbatch)
#   SMOKE_KEEP=1   keep the containers for a look afterwards
set -euo pipefail

IMAGE=${SMOKE_IMAGE:-pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime}
MMBATCH=${MMBATCH:-/opt/mmbatch/bin/mmbatch}
JOB="gpu-smoke-$(date +%s)-$$"
A1="mmbatch-gpu-smoke-1-$$"
A2="mmbatch-gpu-smoke-2-$$"

say() { printf 'gpu-smoke: %s\n' "$*"; }
skip() { say "SKIP: $*"; exit 0; }
fail() { say "FAIL: $*"; exit 1; }

cleanup() {
  [ "${SMOKE_KEEP:-0}" = 1 ] && return
  docker rm -f "$A1" "$A2" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# -- prerequisites -------------------------------------------------------------
command -v nvidia-smi >/dev/null || skip "no nvidia-smi: not a GPU machine"
nvidia-smi -L >/dev/null 2>&1 || skip "nvidia-smi finds no GPU (driver not loaded?)"
[ "$(id -u)" = 0 ] || fail "run as root"
command -v docker >/dev/null && docker info >/dev/null 2>&1 || fail "Docker is not running"
docker info --format '{{json .Runtimes}}' | grep -q '"mmbatch"' || fail "runtime mmbatch not registered (install.sh --gpu yes)"
[ -x "$MMBATCH" ] || fail "$MMBATCH not found (install.sh)"
say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n1)"
"$MMBATCH" doctor --quick > /tmp/gpu-smoke-doctor.$$ 2>&1 || true
grep -E '^\[(PASS|WARN|FAIL)\] *(gpu|gpu driver|cuda-checkpoint|criu cuda plugin|gpu memory|gpu delegate) ' \
  /tmp/gpu-smoke-doctor.$$ || true
# Two spaces end a check's name in doctor's output: "gpu" must not also match "gpu memory".
if grep -qE '^\[FAIL\] (gpu|gpu driver|cuda-checkpoint|criu cuda plugin)  ' /tmp/gpu-smoke-doctor.$$; then
  rm -f /tmp/gpu-smoke-doctor.$$
  fail "the node is not ready for GPU checkpoints (see mmbatch doctor)"
fi
rm -f /tmp/gpu-smoke-doctor.$$

# -- the job: a counter that lives in GPU memory ---------------------------------
# Each step adds 1 to a tensor on the GPU and prints "STEP VALUE". After a
# restore both go on from the checkpoint: the CPU state (STEP) through CRIU,
# the GPU state (VALUE) through CRIU's CUDA plugin and cuda-checkpoint.
JOB_PY='
import sys, time, torch
x = torch.zeros(1, device="cuda", dtype=torch.float64)
big = torch.ones(64 * 1024 * 1024, device="cuda")  # 256 MiB of device memory to carry
step = 0
while True:
    step += 1
    x += 1
    torch.cuda.synchronize()
    print(step, int(x.item()), int(big.sum().item()), flush=True)
    time.sleep(0.2)
'
run_attempt() {
  docker run -d --name "$1" --runtime mmbatch --gpus all --network host \
    -e "MMBATCH_JOB_KEY=$JOB" "$IMAGE" python -c "$JOB_PY" >/dev/null
}
last_line() { docker logs "$1" 2>/dev/null | awk 'NF==3 && $1 ~ /^[0-9]+$/' | tail -n1; }
wait_steps() {  # NAME N: until the job printed N steps
  local i
  for i in $(seq 1 600); do
    [ "$(docker logs "$1" 2>/dev/null | awk 'NF==3 && $1 ~ /^[0-9]+$/' | wc -l)" -ge "$2" ] && return 0
    docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null | grep -q true || break
    sleep 0.5
  done
  docker logs "$1" 2>&1 | tail -n 20
  fail "$1 did not print $2 steps"
}

say "attempt 1: $IMAGE (job $JOB)"
docker image inspect "$IMAGE" >/dev/null 2>&1 || docker pull -q "$IMAGE" >/dev/null
run_attempt "$A1"
wait_steps "$A1" 10

say "checkpoint (freeze includes the device-state copy)"
"$MMBATCH" checkpoint "$A1" || fail "mmbatch checkpoint failed (CRIU logs: /var/log/mmbatch/criu/)"
"$(dirname "$MMBATCH")/python" - "$JOB" <<'PY' || fail "the manifest lacks the GPU record or stats"
import sys
from mmbatch import config
from mmbatch.checkpointer import open_repository
from mmbatch.identity import sanitize_component
m = open_repository(config.load(), {"job_key": sanitize_component(sys.argv[1])}).list()[0]
gpu, stats = m.compat["gpu"], m.stats
assert gpu and gpu["count"] >= 1 and gpu["driver"], gpu
assert stats.get("gpu_processes", 0) >= 1, stats
print("gpu-smoke: checkpoint %s: %dx %s driver %s CUDA %s; frozen %.2fs, device copy %.2fs" % (
    m.checkpoint_id, gpu["count"], gpu["model"], gpu["driver"], gpu["cuda"], stats["freeze_seconds"],
    stats.get("gpu_checkpoint_seconds", 0)))
PY
sleep 2  # work after the checkpoint is lost by the kill
at_kill=$(last_line "$A1")
docker kill "$A1" >/dev/null
docker wait "$A1" >/dev/null || true

say "attempt 2: restore on create"
run_attempt "$A2"
wait_steps "$A2" 3
first=$(docker logs "$A2" 2>/dev/null | awk 'NF==3 && $1 ~ /^[0-9]+$/' | head -n1)
say "attempt 1 was at '$at_kill' when killed; attempt 2 starts at '$first'"
set -- $first
[ "$1" -gt 1 ] || fail "attempt 2 started from scratch: not restored (mmbatch events $JOB)"
[ "$1" = "$2" ] || fail "GPU state lost: step $1 but GPU counter $2"
[ "$3" = $((64 * 1024 * 1024)) ] || fail "GPU memory corrupt: sum $3"
"$MMBATCH" events "$JOB" | grep -q restore || fail "no restore event"
wait_steps "$A2" 10
set -- $(last_line "$A2")
[ "$1" = "$2" ] || fail "the restored job's GPU counter diverged: $*"
say "PASS: the CUDA job went on from its checkpoint with its GPU state"
