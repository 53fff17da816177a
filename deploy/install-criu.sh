#!/usr/bin/env bash
# Install a working CRIU >= 4 into a private prefix, without touching the
# host's libraries: CRIU and its libraries (glibc included) come from a newer
# Debian suite's packages and run through their own loader. Works on any x86_64 Linux
# with a recent kernel (Debian, Ubuntu, Amazon Linux), because it carries its
# own glibc.
#
#   install-criu.sh [--prefix DIR] [--wrapper PATH] [--suite NAME] [--debs DIR] [--download-only DIR]
#                   [--cuda-plugin] [--criu-source TARBALL] [--build-cuda-plugin DIR]
#
#   --prefix DIR         where CRIU is unpacked (default /opt/criu4); replaced
#                        atomically, so running jobs never see half a CRIU
#   --wrapper PATH       the `criu` wrapper to write (default /usr/local/sbin/criu);
#                        "none" writes none
#   --suite NAME         Debian suite to take CRIU from (default forky: CRIU
#                        4.2.x, which dumps TCP sockets on kernels >= 6.16;
#                        trixie's 4.1.1 cannot)
#   --debs DIR           offline: take the .deb files from DIR instead of apt
#   --download-only DIR  only fetch the .deb files into DIR (for an offline
#                        package directory) and stop; with --cuda-plugin also
#                        the CRIU source tarball
#   --cuda-plugin        GPU nodes: also build CRIU's CUDA plugin (cuda_plugin.so,
#                        which Debian's package lacks) into PREFIX/usr/lib/criu,
#                        from the same CRIU version's source (Debian's source
#                        package). Needs gcc, make and the libcap headers
#                        (installed with apt-get or dnf when missing)
#   --criu-source FILE   offline: the CRIU source tarball (criu_X.Y.Z.orig.tar.*)
#   --build-cuda-plugin DIR  only build cuda_plugin.so for the CRIU already
#                        installed into DIR, and stop
#
# Fetching uses apt (Debian/Ubuntu hosts): a temporary source for suite
# NAME that reuses the Debian URI already configured, pinned low, removed
# again afterwards so that nothing from it is installed through dpkg.
set -euo pipefail

PREFIX=/opt/criu4
WRAPPER=/usr/local/sbin/criu
DEBS=""
DOWNLOAD_ONLY=""
SUITE=forky
CUDA_PLUGIN=0
CRIU_SOURCE=""
PLUGIN_ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --wrapper) WRAPPER="$2"; shift 2 ;;
    --suite) SUITE="$2"; shift 2 ;;
    --debs) DEBS="$2"; shift 2 ;;
    --download-only) DOWNLOAD_ONLY="$2"; shift 2 ;;
    --cuda-plugin) CUDA_PLUGIN=1; shift ;;
    --criu-source) CRIU_SOURCE="$2"; shift 2 ;;
    --build-cuda-plugin) PLUGIN_ONLY="$2"; CUDA_PLUGIN=1; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "install-criu: unknown option $1" >&2; exit 2 ;;
  esac
done

case "$SUITE" in
  trixie) LIBNET=libnet1 ;;
  *) LIBNET=libnet9 ;;
esac
PACKAGES="criu/$SUITE libcompel1/$SUITE"
for p in libc6 libbsd0 libmd0 libffi8 libgmp10 libgnutls30t64 libhogweed6t64 \
         libnettle8t64 libidn2-0 libjansson4 libmnl0 $LIBNET libnftables1 \
         libnftnl11 libnl-3-200 libp11-kit0 libprotobuf-c1 libtasn1-6 \
         libunistring5 libuuid1 libxtables12; do
  PACKAGES="$PACKAGES $p/$SUITE"
done

log() { echo "install-criu: $*" >&2; }

# One EXIT trap for everything to undo: the temporary apt source and the work dir.
APT_LIST=/etc/apt/sources.list.d/mmbatch-criu.list
APT_PIN=/etc/apt/preferences.d/mmbatch-criu
APT_SOURCE_ADDED=0
WORK=""
STAGE=""
cleanup_apt() {
  rm -f "$APT_LIST" "$APT_PIN"
  apt-get update -qq >/dev/null 2>&1 || true
  APT_SOURCE_ADDED=0
}
cleanup() {
  if [ "$APT_SOURCE_ADDED" = 1 ]; then cleanup_apt; fi
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
  if [ -n "$STAGE" ]; then rm -rf "$STAGE"; fi   # gone already once renamed into place
}
trap cleanup EXIT
trap 'exit 130' INT TERM

debian_uri() {
  local src=/etc/apt/sources.list.d/debian.sources uri
  uri=$(awk '/^URIs:/{print $2; exit}' "$src" 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$2 ~ /debian\/?$/ {print $2; exit}' || true)
  fi
  echo "$uri"
}

fetch_debs() {
  local dest="$1"
  command -v apt-get >/dev/null || { log "apt-get not found: pass --debs DIR with the .deb files"; exit 1; }
  local uri
  uri=$(debian_uri)
  [ -n "$uri" ] || { log "no Debian apt source configured to reuse; pass --debs DIR"; exit 1; }
  APT_SOURCE_ADDED=1
  echo "deb $uri $SUITE main" > "$APT_LIST"
  printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n' "$SUITE" > "$APT_PIN"
  apt-get update -qq >/dev/null
  # apt downloads as user _apt: let it write here (only DIR itself is changed;
  # its parent is the caller's, e.g. /tmp, and must keep its mode).
  mkdir -p "$dest"; chmod 0755 "$dest" 2>/dev/null || true
  # shellcheck disable=SC2086
  (cd "$dest" && apt-get download -qq $PACKAGES)
  cleanup_apt
}

# Unpack a .deb's data into DIR: dpkg-deb where there is one, else (Amazon
# Linux has no dpkg) the ar archive read by python3's standard library.
extract_deb() {
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$1" "$2"
    return
  fi
  command -v python3 >/dev/null || { log "neither dpkg-deb nor python3 to unpack $1"; exit 1; }
  python3 - "$1" "$2" <<'PY'
import io, sys, tarfile
deb, dest = sys.argv[1], sys.argv[2]
with open(deb, "rb") as f:
    if f.read(8) != b"!<arch>\n":
        sys.exit("install-criu: %s is not a .deb (ar) archive" % deb)
    while True:
        header = f.read(60)
        if len(header) < 60:
            sys.exit("install-criu: no data.tar member in %s" % deb)
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = f.read(size)
        f.read(size % 2)
        if name.startswith("data.tar"):
            break
with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
    if hasattr(tarfile, "tar_filter"):
        tar.extractall(dest, filter="tar")
    else:
        tar.extractall(dest)
PY
}

# CRIU's upstream source tarball for SUITE's CRIU, from Debian's source
# package (apt verifies it against the signed index), into DIR.
fetch_source() {
  local dest="$1" uri
  command -v apt-get >/dev/null || { log "apt-get not found: pass --criu-source TARBALL"; exit 1; }
  uri=$(debian_uri)
  [ -n "$uri" ] || { log "no Debian apt source configured to reuse; pass --criu-source TARBALL"; exit 1; }
  APT_SOURCE_ADDED=1
  echo "deb-src $uri $SUITE main" > "$APT_LIST"
  printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n' "$SUITE" > "$APT_PIN"
  apt-get update -qq >/dev/null
  mkdir -p "$dest"; chmod 0755 "$dest" 2>/dev/null || true
  # Only the upstream tarball is needed; a missing Debian packaging tarball is not an error.
  (cd "$dest" && apt-get source --download-only -qq "criu/$SUITE" >/dev/null 2>&1) || true
  cleanup_apt
  ls "$dest"/criu_*.orig.tar.* >/dev/null 2>&1 || { log "could not download CRIU's source for $SUITE"; exit 1; }
}

# The plugin is built against CRIU's internal headers, so it must come from
# the same version as the criu binary (CRIU checks only the plugin ABI
# version and hook count when it loads it).
build_deps() {
  local missing=0
  command -v gcc >/dev/null || missing=1
  command -v make >/dev/null || missing=1
  [ -e /usr/include/sys/capability.h ] || missing=1
  [ "$missing" = 1 ] || return 0
  log "installing the plugin's build tools (gcc, make, libcap headers)"
  if command -v apt-get >/dev/null; then
    apt-get install -y -qq --no-install-recommends gcc make libc6-dev libcap-dev >/dev/null
  elif command -v dnf >/dev/null; then
    dnf install -y -q gcc make libcap-devel >/dev/null
  elif command -v yum >/dev/null; then
    yum install -y -q gcc make libcap-devel >/dev/null
  else
    log "no package manager to install gcc, make and the libcap headers"; exit 1
  fi
}

build_cuda_plugin() {
  local tarball="$1" dest="$2" want="$3" src have
  [ "$(uname -m)" = x86_64 ] || { log "the CUDA plugin is built for x86_64 only (cuda-checkpoint is x86_64 only)"; exit 1; }
  have=$(basename "$tarball" | sed -n 's/^criu[_-]\([0-9][0-9.]*[0-9]\).*/\1/p')
  if [ -n "$want" ] && [ "$have" != "$want" ]; then
    log "CRIU source $have does not match the installed CRIU $want: the plugin would not fit"; exit 1
  fi
  build_deps
  src=$(mktemp -d)
  tar -C "$src" --strip-components=1 -xf "$tarball"
  # include/common/config.h: CRIU's feature tests (the plugin's headers need it).
  make -s -C "$src" include/common/config.h >/dev/null 2>&1 \
    || { rm -rf "$src"; log "CRIU's configuration step failed"; exit 1; }
  mkdir -p "$dest"
  gcc -O2 -g -Wall -shared -nostartfiles -fPIC -I"$src/compel/include/uapi" \
      -iquote "$src/include" -iquote "$src/criu/include" -iquote "$src/criu/arch/x86/include" -iquote "$src" \
      "$src/plugins/cuda/cuda_plugin.c" -o "$dest/cuda_plugin.so.tmp" \
    || { rm -rf "$src"; log "building cuda_plugin.so failed"; exit 1; }
  chmod 0755 "$dest/cuda_plugin.so.tmp"
  mv -f "$dest/cuda_plugin.so.tmp" "$dest/cuda_plugin.so"
  rm -rf "$src"
  log "CRIU $have CUDA plugin in $dest/cuda_plugin.so"
}

first_file() {
  local f
  for f in "$@"; do if [ -e "$f" ]; then echo "$f"; return 0; fi; done
  return 1
}

# Sets CRIU_SOURCE (no subshell: the EXIT trap must see the temporary apt source).
need_source() {
  [ -z "$CRIU_SOURCE" ] || return 0
  fetch_source "$1"
  CRIU_SOURCE=$(first_file "$1"/criu_*.orig.tar.*)
}

if [ -n "$PLUGIN_ONLY" ]; then
  installed=$(criu --version 2>/dev/null | awk '/^Version:/ {print $2; exit}')
  [ -n "$installed" ] || { log "no criu on PATH to build the plugin for"; exit 1; }
  WORK=$(mktemp -d); chmod 0755 "$WORK"
  need_source "$WORK/src"
  build_cuda_plugin "$CRIU_SOURCE" "$PLUGIN_ONLY" "$installed"
  exit 0
fi

if [ -n "$DOWNLOAD_ONLY" ]; then
  fetch_debs "$DOWNLOAD_ONLY"
  if [ "$CUDA_PLUGIN" = 1 ]; then fetch_source "$DOWNLOAD_ONLY"; fi
  log "downloaded into $DOWNLOAD_ONLY"
  exit 0
fi

WORK=$(mktemp -d)
if [ -z "$DEBS" ]; then
  chmod 0755 "$WORK"
  DEBS="$WORK/debs"
  fetch_debs "$DEBS"
fi
ls "$DEBS"/criu_*.deb >/dev/null 2>&1 || { log "no criu_*.deb in $DEBS"; exit 1; }

STAGE="$PREFIX.new.$$"
rm -rf "$STAGE"
mkdir -p "$STAGE"
for deb in "$DEBS"/*.deb; do
  extract_deb "$deb" "$STAGE"
done
LIB="$PREFIX/usr/lib/x86_64-linux-gnu"
# The loader runs the binary with only the private libraries.
cat > "$STAGE/criu" <<WRAP
#!/bin/sh
exec $LIB/ld-linux-x86-64.so.2 --library-path $LIB $PREFIX/usr/sbin/criu "\$@"
WRAP
chmod 0755 "$STAGE/criu"
# Check the staged copy before it replaces anything.
SLIB="$STAGE/usr/lib/x86_64-linux-gnu"
"$SLIB/ld-linux-x86-64.so.2" --library-path "$SLIB" "$STAGE/usr/sbin/criu" --version >/dev/null \
  || { log "staged CRIU does not run"; rm -rf "$STAGE"; exit 1; }
if [ "$CUDA_PLUGIN" = 1 ]; then
  staged=$("$SLIB/ld-linux-x86-64.so.2" --library-path "$SLIB" "$STAGE/usr/sbin/criu" --version \
           | awk '/^Version:/ {print $2; exit}')
  if [ -z "$CRIU_SOURCE" ] && ls "$DEBS"/criu_*.orig.tar.* >/dev/null 2>&1; then
    CRIU_SOURCE=$(first_file "$DEBS"/criu_*.orig.tar.*)
  fi
  # mmbatch points CRIU at this directory (CRIU_LIBS_DIR) for GPU jobs only.
  need_source "$WORK/src"
  build_cuda_plugin "$CRIU_SOURCE" "$STAGE/usr/lib/criu" "$staged"
fi

# Atomic replacement: rename over the old prefix.
if [ -e "$PREFIX" ]; then
  OLD="$PREFIX.old.$$"
  mv "$PREFIX" "$OLD"
  mv "$STAGE" "$PREFIX"
  rm -rf "$OLD"
else
  mkdir -p "$(dirname "$PREFIX")"
  mv "$STAGE" "$PREFIX"
fi

if [ "$WRAPPER" != none ]; then
  mkdir -p "$(dirname "$WRAPPER")"
  tmp="$WRAPPER.tmp.$$"
  cp "$PREFIX/criu" "$tmp"
  chmod 0755 "$tmp"
  mv -f "$tmp" "$WRAPPER"
fi
log "CRIU $("$PREFIX/criu" --version | awk '/Version/{print $2}') in $PREFIX"
