#!/usr/bin/env bash
# install.sh: install mmbatch on an ECS/AWS Batch node (Debian/Ubuntu, Amazon
# Linux 2023, Amazon Linux 2). Run as root; safe to run again (a second run
# changes nothing). See usage() below, or run `install.sh -h`.
#
# What it does, in order:
#   1. OS packages (apt, dnf or yum): runc if missing; CRIU >= 4: the
#      distribution's when `criu check` passes, else the portable private-prefix
#      CRIU of deploy/install-criu.sh (/opt/criu4, wrapper /usr/local/sbin/criu);
#      a python3 >= 3.9 able to create venvs.
#   2. The venv /opt/mmbatch with the package (pip, from the machine's
#      configured index), then fast launchers for bin/mmbatch-runtime and
#      bin/mmbatch-hook in place of pip's wrappers.
#   3. /etc/mmbatch/config.toml, only if absent (0600, dir 0700).
#   4. Runtime "mmbatch" in /etc/docker/daemon.json (other keys kept; original
#      kept once as daemon.json.mmbatch-backup); with --default-runtime also
#      Docker's default-runtime, chaining to the previous default.
#   5. GPU nodes: ECS_NVIDIA_RUNTIME=mmbatch in /etc/ecs/ecs.config.
#   6. dockerd reload (SIGHUP) when daemon.json changed, or a restart with
#      --restart-docker. A removed default-runtime is never reloaded: dockerd
#      keeps it across a reload, and Docker 20.10 then crashes on the missing
#      runtime (seen here), so install.sh asks for a restart instead.
#   7. The mmbatchd systemd unit, enabled and started where systemd runs.
#
# Python: the venv uses /usr/bin/python3 when it is >= 3.9 (Debian 11+,
# Ubuntu 22.04+, AL2023), else another python3.9+ on the machine. Amazon
# Linux 2's python3 is 3.7 and its newest packaged Python (extras python3.8) is
# too old, so there install.sh brings its own: it installs `uv` with pip from
# the configured index (into a throwaway venv of the system python3) and lets
# uv install a standalone CPython 3.11 into /opt/mmbatch-python. uv fetches
# that build from its default download location, which needs outbound HTTPS
# (set UV_PYTHON_INSTALL_MIRROR for a mirror); where that is not possible,
# pass --python PATH with any Python >= 3.9. That path is unverified on AL2.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: install.sh [options]        (as root)

Install choices:
  --store URL          checkpoint store for a new config.toml:
                       file:///path (local or mounted FSx/EFS/JuiceFS) or s3://bucket/prefix
  --mode MODE          checkpoint mode for a new config.toml: iterative | none
  --default-runtime    make mmbatch Docker's default-runtime (what ECS needs for
                       "zero workflow changes"), chaining to the previous default
  --gpu auto|yes|no    GPU node: ECS_NVIDIA_RUNTIME=mmbatch in /etc/ecs/ecs.config and
                       delegate to the nvidia runtime (auto: when nvidia-smi exists);
                       builds CRIU's CUDA plugin for GPU checkpoints (docs/gpu.md)
  --editable           pip install -e SRC[test,bench] (developers and CI) instead of SRC
  --src DIR            the mmbatch source tree (default: this script's directory)
  --python PATH        Python >= 3.9 for the venv (default: see the script's header)
  --offline DIR        offline packages: CRIU .deb files made with
                       `deploy/install-criu.sh --download-only DIR`, and, if DIR/wheels
                       exists, wheels for pip (pip install --no-index --find-links DIR/wheels)
Steps:
  --no-packages        no OS package work (runc, CRIU and python must be there)
  --venv PATH          use the existing venv PATH (mmbatch already installed in it)
                       instead of creating /opt/mmbatch: no pip; launchers go into
                       PATH/bin, and daemon.json and the unit name PATH/bin/...
  --no-venv            no venv, no pip, no launchers (daemon.json still names
                       /opt/mmbatch/bin/mmbatch-runtime)
  --no-reload          never reload or restart dockerd
  --restart-docker     restart dockerd (systemd) instead of reloading it when
                       daemon.json changed: a changed default-runtime needs it
  --reload             with --host-root: reload the dockerd whose pid is in
                       HOST_ROOT/var/run/docker.pid (a test daemon)
  --no-start           install the systemd unit but do not enable or start it
  --host-root DIR      prefix every host path (/etc, /opt, /run, /var) with DIR, for
                       tests; implies --no-packages and --no-reload (unless --reload)
                       and never calls systemctl
Removal:
  --uninstall          stop and remove the unit, restore daemon.json (from the backup
                       when nothing else changed since, else remove only mmbatch's keys),
                       remove ECS_NVIDIA_RUNTIME=mmbatch
  --purge              with --uninstall: also remove /opt/mmbatch, /opt/mmbatch-python
                       and /etc/mmbatch (checkpoints under /var/lib/mmbatch are kept)
  -h, --help           this help
EOF
}

log() { printf 'mmbatch-install: %s\n' "$*"; }
warn() { printf 'mmbatch-install: warning: %s\n' "$*" >&2; }
die() { printf 'mmbatch-install: error: %s\n' "$*" >&2; exit 1; }

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOST_ROOT=""
STORE=""
MODE=""
DEFAULT_RUNTIME=0
GPU=auto
EDITABLE=0
PYTHON=""
OFFLINE=""
PACKAGES=1
VENV_MODE=create        # create | existing | none
VENV_ARG=""
RELOAD=auto             # auto | yes | no
RESTART=0
START=1
UNINSTALL=0
PURGE=0

need() { [ "$2" -ge 2 ] || die "$1 needs a value (see -h)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --store) need "$1" $#; STORE="$2"; shift 2 ;;
    --mode) need "$1" $#; MODE="$2"; shift 2 ;;
    --default-runtime) DEFAULT_RUNTIME=1; shift ;;
    --gpu) need "$1" $#; GPU="$2"; shift 2 ;;
    --editable) EDITABLE=1; shift ;;
    --src) need "$1" $#; SRC="$2"; shift 2 ;;
    --python) need "$1" $#; PYTHON="$2"; shift 2 ;;
    --offline) need "$1" $#; OFFLINE="$2"; shift 2 ;;
    --no-packages) PACKAGES=0; shift ;;
    --venv) need "$1" $#; VENV_MODE=existing; VENV_ARG="$2"; shift 2 ;;
    --no-venv) VENV_MODE=none; shift ;;
    --no-reload) RELOAD=no; shift ;;
    --reload) RELOAD=yes; shift ;;
    --restart-docker) RESTART=1; shift ;;
    --no-start) START=0; shift ;;
    --host-root) need "$1" $#; HOST_ROOT="$2"; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

case "$GPU" in auto|yes|no) ;; *) die "--gpu takes auto, yes or no, not '$GPU'" ;; esac
case "$MODE" in ""|iterative|none) ;; *) die "--mode takes iterative or none, not '$MODE'" ;; esac
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge goes with --uninstall"
if [ ! -f "$SRC/pyproject.toml" ] || [ ! -d "$SRC/mmbatch" ]; then
  die "$SRC is not the mmbatch source tree (pass --src DIR)"
fi
SRC=$(cd "$SRC" && pwd)
[ -z "$OFFLINE" ] || { [ -d "$OFFLINE" ] || die "--offline $OFFLINE: no such directory"; OFFLINE=$(cd "$OFFLINE" && pwd); }

# --- host paths ----------------------------------------------------------------
HR=""
if [ -n "$HOST_ROOT" ]; then
  [ -d "$HOST_ROOT" ] || die "--host-root $HOST_ROOT: no such directory"
  HR=$(cd "$HOST_ROOT" && pwd)
  [ "$HR" != / ] || HR=""
fi
if [ -n "$HR" ]; then
  PACKAGES=0
  [ "$RELOAD" = yes ] || RELOAD=no
fi
if [ -z "$HR" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (or with --host-root DIR for a test root)"
fi
# Tools may live in sbin dirs that user data's PATH lacks.
PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

DEFAULT_VENV=/opt/mmbatch
case "$VENV_MODE" in
  existing)
    [ -x "$VENV_ARG/bin/python3" ] || die "--venv $VENV_ARG: no $VENV_ARG/bin/python3 (not a venv?)"
    VENV=$(cd "$VENV_ARG" && pwd)      # a path on this machine, used as it is
    VENV_HOST=$VENV ;;
  *)
    VENV=$HR$DEFAULT_VENV
    VENV_HOST=$DEFAULT_VENV ;;
esac
RUNTIME_PATH=$VENV_HOST/bin/mmbatch-runtime   # what dockerd will execute
CONFIG=$HR/etc/mmbatch/config.toml
DAEMON_JSON=$HR/etc/docker/daemon.json
BACKUP=$DAEMON_JSON.mmbatch-backup
ECS_CONFIG=$HR/etc/ecs/ecs.config
UNIT_SRC=$SRC/deploy/mmbatchd.service
UNIT=$HR/etc/systemd/system/mmbatchd.service
DOCKER_PID=$HR/var/run/docker.pid
OWN_PYTHON_DIR=$HR/opt/mmbatch-python

# systemctl is only ever called for the real root.
systemd_running() { [ -z "$HR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# --- distribution --------------------------------------------------------------
OS_ID=unknown; OS_VERSION=""; FAMILY=unknown
detect_os() {
  local f=$HR/etc/os-release ID="" ID_LIKE="" VERSION_ID=""
  if [ -r "$f" ]; then
    eval "$(grep -E '^(ID|ID_LIKE|VERSION_ID)=' "$f")"
  fi
  OS_ID=${ID:-unknown}; OS_VERSION=${VERSION_ID:-}
  case " $OS_ID ${ID_LIKE:-} " in
    *" amzn "*) case "$OS_VERSION" in 2) FAMILY=yum ;; *) FAMILY=dnf ;; esac ;;
    *" debian "*|*" ubuntu "*) FAMILY=apt ;;
    *" fedora "*|*" rhel "*|*" centos "*)
      if command -v dnf >/dev/null; then FAMILY=dnf; else FAMILY=yum; fi ;;
  esac
}

APT_UPDATED=0
# apt's lists, once per run, and only when a package is looked up or installed.
pkg_refresh() {
  if [ "$FAMILY" = apt ] && [ "$APT_UPDATED" = 0 ]; then
    apt-get update -q >/dev/null || warn "apt-get update failed; using the lists there are"
    APT_UPDATED=1
  fi
}
pkg_install() {
  pkg_refresh
  case "$FAMILY" in
    apt)
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null ;;
    dnf) dnf install -y -q "$@" >/dev/null ;;
    yum) yum install -y -q "$@" >/dev/null ;;
    *) return 1 ;;
  esac
}

# The version the package manager would install, or nothing (call pkg_refresh first).
pkg_candidate() {
  case "$FAMILY" in
    apt)
      apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" {print $2; exit}' ;;
    dnf|yum) "$FAMILY" info -q "$1" 2>/dev/null | awk -F': *' '/^Version/ {print $2; exit}' ;;
  esac
}

major_of() { local v=${1#*:}; v=${v%%.*}; case "$v" in ''|*[!0-9]*) echo 0 ;; *) echo "$v" ;; esac; }

# --- runc and CRIU -------------------------------------------------------------
criu_version() { "$1" --version 2>/dev/null | awk '/^Version:/ {print $2; exit}'; }
criu_works() {
  [ -x "$1" ] || return 1
  [ "$(major_of "$(criu_version "$1")")" -ge 4 ] || return 1
  "$1" check >/dev/null 2>&1
}

install_runc() {
  if command -v runc >/dev/null; then
    log "runc: $(command -v runc) ($(runc --version 2>/dev/null | awk 'NR==1 {print $3}'))"
    return
  fi
  log "installing runc"
  pkg_install runc || die "could not install runc with $FAMILY"
}

install_criu() {
  local c cand
  c=$(command -v criu || true)
  if [ -n "$c" ] && criu_works "$c"; then
    log "CRIU $(criu_version "$c") at $c passes 'criu check'"
    return
  fi
  [ -z "$c" ] || log "CRIU at $c ($(criu_version "$c")) is older than 4 or fails 'criu check'"
  pkg_refresh
  cand=$(pkg_candidate criu || true)
  if [ -n "$cand" ] && [ "$(major_of "$cand")" -ge 4 ] && pkg_install criu; then
    c=$(command -v criu || true)
    if [ -n "$c" ] && criu_works "$c"; then
      log "CRIU $(criu_version "$c") from the distribution passes 'criu check'"
      return
    fi
    log "the distribution's CRIU $cand fails 'criu check'"
  fi
  log "installing the portable CRIU 4 (deploy/install-criu.sh)"
  if [ -n "$OFFLINE" ]; then
    bash "$SRC/deploy/install-criu.sh" --debs "$OFFLINE"
  elif command -v apt-get >/dev/null; then
    bash "$SRC/deploy/install-criu.sh"
  else
    die "no CRIU >= 4 from $FAMILY, and the portable CRIU needs apt to fetch its .deb files:
  on a Debian/Ubuntu machine run 'deploy/install-criu.sh --download-only DIR', copy DIR here
  and run install.sh --offline DIR"
  fi
  criu_works /usr/local/sbin/criu || die "the portable CRIU at /usr/local/sbin/criu fails 'criu check'"
}

# CRIU's CUDA plugin (GPU nodes): CRIU runs cuda-checkpoint through it. No
# distribution's CRIU package ships it, so it is built for the installed CRIU
# from that version's source (deploy/install-criu.sh --build-cuda-plugin).
# A node without it still runs GPU jobs; they are just not checkpointed.
install_cuda_plugin() {
  local dir dest src f
  for dir in /opt/criu4/usr/lib/criu /usr/lib/criu /usr/local/lib/criu; do
    if [ -f "$HR$dir/cuda_plugin.so" ]; then
      log "CRIU CUDA plugin: $dir/cuda_plugin.so"
      return
    fi
  done
  dest=/usr/local/lib/criu
  case "$(command -v criu || true)" in /usr/local/sbin/criu) dest=/opt/criu4/usr/lib/criu ;; esac
  src=""
  if [ -n "$OFFLINE" ]; then
    for f in "$OFFLINE"/criu_*.orig.tar.*; do if [ -e "$f" ]; then src=$f; break; fi; done
  fi
  if [ -n "$HR" ]; then
    warn "GPU node: no CRIU CUDA plugin under $HR (not built with --host-root)"
  elif [ -n "$src" ]; then
    bash "$SRC/deploy/install-criu.sh" --build-cuda-plugin "$dest" --criu-source "$src" \
      || warn "GPU node: building CRIU's CUDA plugin failed: GPU jobs will not be checkpointed"
  elif command -v apt-get >/dev/null; then
    bash "$SRC/deploy/install-criu.sh" --build-cuda-plugin "$dest" \
      || warn "GPU node: building CRIU's CUDA plugin failed: GPU jobs will not be checkpointed"
  else
    warn "GPU node: CRIU's CUDA plugin is missing and its source cannot be fetched here (no apt):
  on a Debian/Ubuntu machine run 'deploy/install-criu.sh --download-only DIR --cuda-plugin',
  copy DIR here and run install.sh --offline DIR. Until then GPU jobs are not checkpointed."
  fi
  if [ -z "$HR" ] && ! command -v cuda-checkpoint >/dev/null; then
    warn "GPU node: cuda-checkpoint (NVIDIA's tool, see docs/gpu.md) is not on PATH: install it or set" \
         "[gpu] cuda_checkpoint in the config; until then GPU jobs are not checkpointed"
  fi
}

# --- python and the venv -------------------------------------------------------
py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' >/dev/null 2>&1; }
py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

find_python() {
  local c
  if [ -n "$PYTHON" ]; then
    py_ok "$PYTHON" || die "--python $PYTHON is not a Python >= 3.9"
    echo "$PYTHON"; return
  fi
  for c in /usr/bin/python3 /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11 \
           /usr/bin/python3.10 /usr/bin/python3.9 /usr/local/bin/python3.13 /usr/local/bin/python3.12 \
           /usr/local/bin/python3.11 /usr/local/bin/python3.10 /usr/local/bin/python3.9 \
           "$OWN_PYTHON_DIR"/*/bin/python3; do
    if [ -x "$c" ] && py_ok "$c"; then echo "$c"; return; fi
  done
  return 1
}

# Amazon Linux 2: uv (from the configured pip index) installs a standalone CPython.
bootstrap_own_python() {
  local tmp sys_py=/usr/bin/python3
  [ -x "$sys_py" ] || pkg_install python3 || die "could not install python3 with $FAMILY"
  tmp=$(mktemp -d)
  log "bringing a Python >= 3.9: uv installs CPython 3.11 into $OWN_PYTHON_DIR"
  "$sys_py" -m venv "$tmp/venv" || die "python3 -m venv failed (install python3-pip?)"
  "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  # uv is a static binary: the Python it is installed with does not matter.
  "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check \
    --ignore-requires-python --only-binary=:all: uv
  UV_PYTHON_INSTALL_DIR=$OWN_PYTHON_DIR UV_PYTHON_BIN_DIR=$tmp/bin UV_CACHE_DIR=$tmp/cache \
    "$tmp/venv/bin/uv" python install 3.11 \
    || die "uv could not install CPython 3.11 (no outbound HTTPS? set UV_PYTHON_INSTALL_MIRROR, or pass --python PATH)"
  rm -rf "$tmp"
}

choose_python() {
  local py
  if py=$(find_python); then echo "$py"; return; fi
  [ "$PACKAGES" = 1 ] || die "no python3 >= 3.9 here: pass --python PATH"
  pkg_refresh
  case "$FAMILY" in
    apt)
      pkg_install python3 python3-venv >/dev/null 2>&1 || true
      if ! py=$(find_python); then
        local v
        for v in 3.12 3.11 3.10 3.9; do
          if [ -n "$(pkg_candidate "python$v")" ]; then pkg_install "python$v" "python$v-venv" && break; fi
        done
      fi ;;
    dnf) pkg_install python3 python3-pip || true ;;
    yum) bootstrap_own_python >&2 ;;
  esac
  py=$(find_python) || die "no python3 >= 3.9 available with $FAMILY: pass --python PATH"
  echo "$py"
}

make_venv() {
  local py
  if [ -f "$VENV/pyvenv.cfg" ] && [ -x "$VENV/bin/python3" ] && py_ok "$VENV/bin/python3"; then
    log "venv: $VENV (exists, python $(py_version "$VENV/bin/python3"))"
    return
  fi
  if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ] && [ -n "$(ls -A "$VENV" 2>/dev/null)" ]; then
    die "$VENV exists and is not a venv: move it away first"
  fi
  py=$(choose_python)
  log "creating the venv $VENV with $py (python $(py_version "$py"))"
  mkdir -p "$(dirname "$VENV")"
  if ! "$py" -m venv --clear "$VENV" >/dev/null 2>&1; then
    # Debian and Ubuntu ship ensurepip separately.
    if [ "$PACKAGES" = 1 ] && [ "$FAMILY" = apt ]; then
      pkg_install "python$(py_version "$py")-venv" || pkg_install python3-venv || true
    fi
    "$py" -m venv --clear "$VENV" || die "$py cannot create a venv (install its venv/ensurepip package)"
  fi
}

pip_install() {
  local args=(-m pip install -q --disable-pip-version-check)
  if [ -n "$OFFLINE" ] && [ -d "$OFFLINE/wheels" ]; then
    args+=(--no-index --find-links "$OFFLINE/wheels")
  fi
  if [ "$EDITABLE" = 1 ]; then
    log "pip install -e ${SRC}[test,bench]"
    args+=(-e "${SRC}[test,bench]")
  else
    log "pip install $SRC"
    args+=("$SRC")
  fi
  "$VENV/bin/python3" "${args[@]}" || die "pip install failed (see above)"
}

write_launchers() {
  # Outside the source tree and without PYTHONPATH: the package directory must
  # be the one the venv itself imports.
  (cd / && env -u PYTHONPATH "$VENV/bin/python3" -I -m mmbatch.install.launchers \
      --bin-dir "$VENV/bin" --strip-root "${HR:-/}") >/dev/null \
    || die "could not write the launchers into $VENV/bin"
  log "launchers: $VENV/bin/mmbatch-runtime, $VENV/bin/mmbatch-hook"
}

# The python that runs mmbatch.install helpers: the venv's, else a system one.
HELPER_PY=""
helper_python() {
  if [ -z "$HELPER_PY" ]; then
    if [ -x "$VENV/bin/python3" ] && py_ok "$VENV/bin/python3"; then
      HELPER_PY=$VENV/bin/python3
    else
      HELPER_PY=$(find_python) || die "no python3 >= 3.9 to run the installer helpers"
    fi
  fi
}
helper() {
  helper_python
  (cd "$SRC" && PYTHONPATH="$SRC" "$HELPER_PY" -m "mmbatch.install.$1" "${@:2}")
}
kv() { printf '%s\n' "$2" | sed -n "s/^$1=//p" | tail -n 1; }

# --- docker --------------------------------------------------------------------
reload_dockerd() {
  local pid=""
  [ -r "$DOCKER_PID" ] && pid=$(tr -dc '0-9' < "$DOCKER_PID")
  # SIGHUP is what docker.service's ExecReload does; sending it directly also
  # works without systemd and cannot wait on a systemd job ordered after
  # cloud-init (install.sh often runs from user data).
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    kill -HUP "$pid"
    log "reloaded dockerd (SIGHUP to pid $pid)"
  elif systemd_running && systemctl is-active --quiet docker; then
    systemctl reload docker
    log "reloaded dockerd (systemctl reload docker)"
  else
    log "dockerd is not running: it reads $DAEMON_JSON when it starts"
  fi
}

# The default runtime the running dockerd reports, or nothing (no CLI, no answer).
dockerd_default_runtime() {
  command -v docker >/dev/null || return 0
  timeout 10 docker -H "unix://$HR/var/run/docker.sock" info --format '{{.DefaultRuntime}}' 2>/dev/null || true
}

# $1: daemon.json changed; $2: its default-runtime changed; $3: it was removed (0/1).
DOCKER_STALE=0   # the running dockerd still has a configuration we took out
apply_docker_config() {
  local changed=$1 default_changed=$2 default_removed=${3:-0} want got
  [ "$changed" = 1 ] || return 0
  if [ "$RELOAD" = no ]; then
    log "not reloading dockerd (--no-reload): reload it to apply $DAEMON_JSON"
    [ "$default_changed" = 0 ] || warn "default-runtime changed: restart dockerd for it to take effect"
    DOCKER_STALE=1
  elif [ "$RESTART" = 1 ] && systemd_running; then
    # --no-block: from user data, docker.service may be ordered after cloud-init.
    systemctl restart --no-block docker
    log "dockerd restart requested (systemctl restart --no-block docker)"
  elif [ "$default_removed" = 1 ]; then
    # dockerd keeps its default-runtime when the key disappears on a reload,
    # and Docker 20.10 then crashes on the runtime that is gone (seen here).
    warn "default-runtime mmbatch was removed: NOT reloading dockerd, which cannot drop a default-runtime \
on reload; restart it now (systemctl restart docker, or rerun with --restart-docker)"
    DOCKER_STALE=1
  else
    [ "$RESTART" = 0 ] || warn "--restart-docker needs systemd: reloading instead; restart dockerd yourself"
    reload_dockerd
    if [ "$default_changed" = 1 ]; then
      want=$(helper daemon_json default --file "$DAEMON_JSON" | sed -n 's/^default=//p')
      got=""
      for _ in 1 2 3 4 5; do
        got=$(dockerd_default_runtime)
        [ "$got" != "$want" ] || break
        sleep 0.5
      done
      if [ -n "$got" ] && [ "$got" = "$want" ]; then
        log "dockerd's default runtime is now $want (new containers; existing ones keep theirs)"
      else
        warn "default-runtime changed to ${want:-runc}: restart dockerd for it to take effect \
(systemctl restart docker, or rerun with --restart-docker)"
      fi
    fi
  fi
}

gpu_node() {
  case "$GPU" in
    yes) return 0 ;;
    no) return 1 ;;
  esac
  if [ -n "$HR" ]; then
    [ -x "$HR/usr/bin/nvidia-smi" ] || [ -x "$HR/usr/local/bin/nvidia-smi" ]
  else
    command -v nvidia-smi >/dev/null
  fi
}

# --- systemd unit --------------------------------------------------------------
install_unit() {
  local tmp changed=0
  mkdir -p "$(dirname "$UNIT")"
  tmp=$(mktemp "$UNIT.XXXXXX")
  sed "s#/opt/mmbatch/bin/mmbatchd#$VENV_HOST/bin/mmbatchd#" "$UNIT_SRC" > "$tmp"
  if cmp -s "$tmp" "$UNIT"; then
    rm -f "$tmp"
  else
    chmod 0644 "$tmp"
    mv -f "$tmp" "$UNIT"
    changed=1
    log "unit: $UNIT"
  fi
  if ! systemd_running; then
    log "systemd is not running here: start the daemon with '$VENV_HOST/bin/mmbatchd' (after dockerd)"
    return
  fi
  [ "$changed" = 0 ] || systemctl daemon-reload
  if [ "$START" = 0 ]; then
    log "not enabling mmbatchd (--no-start): systemctl enable --now mmbatchd"
  elif [ "$VENV_MODE" = none ]; then
    log "not starting mmbatchd (--no-venv): $VENV_HOST/bin/mmbatchd was not installed"
  else
    systemctl enable --quiet mmbatchd
    if systemctl is-active --quiet mmbatchd; then
      log "mmbatchd is running; restart it to run new code: systemctl restart mmbatchd"
    else
      # --no-block: mmbatchd needs docker.service, which may wait for cloud-init.
      systemctl start --no-block mmbatchd
      log "mmbatchd enabled and started"
    fi
  fi
}

# --- install / uninstall -------------------------------------------------------
do_install() {
  # Arrays are expanded as ${a[@]+"${a[@]}"}: AL2's bash 4.2 calls an empty one unbound.
  local out delegate gpu_args=() default_args=() changed default_changed
  detect_os
  log "host: ${OS_ID} ${OS_VERSION} (${FAMILY})${HR:+, host root $HR}"
  if [ "$PACKAGES" = 1 ]; then
    [ "$FAMILY" != unknown ] || die "unsupported distribution '$OS_ID': install runc, CRIU >= 4 and python3 >= 3.9 yourself and use --no-packages"
    install_runc
    install_criu
    if gpu_node; then install_cuda_plugin; fi
  else
    log "no OS packages (--no-packages)"
  fi

  case "$VENV_MODE" in
    create) make_venv; pip_install; write_launchers ;;
    existing) log "venv: $VENV (given; no pip)"; write_launchers ;;
    none) log "no venv (--no-venv)" ;;
  esac

  if gpu_node; then gpu_args=(--gpu); fi
  if [ "$DEFAULT_RUNTIME" = 1 ]; then default_args=(--default-runtime); fi
  out=$(helper daemon_json delegate --file "$DAEMON_JSON" --backup "$BACKUP" \
        ${default_args[@]+"${default_args[@]}"} ${gpu_args[@]+"${gpu_args[@]}"}) || exit 1
  delegate=$(kv delegate "$out")

  case "$delegate" in
    /*) [ -x "$HR$delegate" ] || warn "mmbatch will hand containers to $delegate, which does not exist here" ;;
    *) [ -n "$HR" ] || command -v "$delegate" >/dev/null \
         || warn "mmbatch will hand containers to $delegate, which is not on PATH here" ;;
  esac
  local cfg_args=(--file "$CONFIG" --delegate "$delegate")
  [ -z "$STORE" ] || cfg_args+=(--store "$STORE")
  [ -z "$MODE" ] || cfg_args+=(--mode "$MODE")
  out=$(helper node_config write ${cfg_args[@]+"${cfg_args[@]}"}) || exit 1
  if [ "$(kv written "$out")" = 1 ]; then
    log "config: $CONFIG written (delegate $delegate)"
  else
    log "config: $CONFIG exists, kept"
  fi

  if [ ! -x "$VENV/bin/mmbatch-runtime" ]; then
    warn "$RUNTIME_PATH does not exist yet: containers started with runtime mmbatch fail until it does"
  fi
  out=$(helper daemon_json merge --file "$DAEMON_JSON" --backup "$BACKUP" \
        --runtime-path "$RUNTIME_PATH" ${default_args[@]+"${default_args[@]}"}) || exit 1
  changed=$(kv changed "$out"); default_changed=$(kv default_runtime_changed "$out")
  if [ "$changed" = 1 ]; then
    log "daemon.json: runtime mmbatch registered in $DAEMON_JSON"
    [ "$default_changed" != 1 ] || log "daemon.json: default-runtime is now mmbatch (delegating to $delegate)"
    [ "$(kv backup "$out")" != written ] || log "daemon.json: original kept as $BACKUP"
  else
    log "daemon.json: unchanged"
  fi

  if [ -n "${gpu_args[*]-}" ]; then
    out=$(helper ecs_config set --file "$ECS_CONFIG") || exit 1
    if [ "$(kv changed "$out")" = 1 ]; then
      log "ecs.config: ECS_NVIDIA_RUNTIME=mmbatch in $ECS_CONFIG (the ECS agent reads it when it starts:" \
          "systemctl restart ecs if it already runs)"
    else
      log "ecs.config: unchanged"
    fi
  fi

  apply_docker_config "$changed" "$default_changed"
  install_unit
  log "done"
}

do_uninstall() {
  local out changed default_changed default_removed
  if systemd_running && [ -f "$UNIT" ]; then
    log "stopping mmbatchd (it may take final checkpoints)"
    systemctl disable --now --quiet mmbatchd || warn "could not stop mmbatchd"
  fi

  out=$(helper daemon_json unmerge --file "$DAEMON_JSON" --backup "$BACKUP") || exit 1
  changed=$(kv changed "$out"); default_changed=$(kv default_runtime_changed "$out")
  default_removed=$(kv default_runtime_removed "$out")
  case "$(kv action "$out")" in
    restore-backup) log "daemon.json: restored from $BACKUP" ;;
    unmerge) log "daemon.json: removed runtime mmbatch (other changes since install kept)" ;;
    remove) log "daemon.json: removed $DAEMON_JSON (it held only runtime mmbatch)" ;;
    *) log "daemon.json: nothing of mmbatch in it" ;;
  esac

  out=$(helper ecs_config unset --file "$ECS_CONFIG") || exit 1
  [ "$(kv changed "$out")" != 1 ] || log "ecs.config: ECS_NVIDIA_RUNTIME=mmbatch removed"

  apply_docker_config "$changed" "$default_changed" "$default_removed"

  if [ -f "$UNIT" ]; then
    rm -f "$UNIT"
    log "unit: $UNIT removed"
    if systemd_running; then systemctl daemon-reload; fi
  fi

  if [ "$PURGE" = 1 ]; then
    if [ "$VENV_MODE" = existing ]; then
      log "keeping the given venv $VENV"
    elif [ "$DOCKER_STALE" = 1 ] && [ -z "$HR" ]; then
      warn "keeping $VENV: the running dockerd still knows runtime mmbatch; restart dockerd, then run --uninstall --purge again"
    else
      # The venv's python may be the one install.sh brought (AL2): both go.
      rm -rf "$VENV" "$OWN_PYTHON_DIR"
      log "removed $VENV"
    fi
    rm -rf "$HR/etc/mmbatch"
    log "removed $HR/etc/mmbatch; checkpoints under $HR/var/lib/mmbatch are kept"
  fi
  log "uninstalled"
}

if [ "$UNINSTALL" = 1 ]; then
  do_uninstall
else
  do_install
fi
