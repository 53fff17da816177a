#!/usr/bin/env bash
# Install a working CRIU >= 4 into a private prefix, without touching the
# host's libraries: CRIU and its libraries (glibc included) come from Debian
# 13's packages and run through their own loader. Works on any x86_64 Linux
# with a recent kernel (Debian, Ubuntu, Amazon Linux), because it carries its
# own glibc.
#
#   install-criu.sh [--prefix DIR] [--wrapper PATH] [--debs DIR] [--download-only DIR]
#
#   --prefix DIR         where CRIU is unpacked (default /opt/criu4); replaced
#                        atomically, so running jobs never see half a CRIU
#   --wrapper PATH       the `criu` wrapper to write (default /usr/local/sbin/criu);
#                        "none" writes none
#   --debs DIR           offline: take the .deb files from DIR instead of apt
#   --download-only DIR  only fetch the .deb files into DIR (for an offline
#                        package directory) and stop
#
# Fetching uses apt (Debian/Ubuntu hosts): a temporary source for suite
# "trixie" that reuses the Debian URI already configured, pinned low, removed
# again afterwards so that nothing from trixie is installed through dpkg.
set -euo pipefail

PREFIX=/opt/criu4
WRAPPER=/usr/local/sbin/criu
DEBS=""
DOWNLOAD_ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --wrapper) WRAPPER="$2"; shift 2 ;;
    --debs) DEBS="$2"; shift 2 ;;
    --download-only) DOWNLOAD_ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "install-criu: unknown option $1" >&2; exit 2 ;;
  esac
done

PACKAGES="criu/trixie libcompel1/trixie"
for p in libc6 libbsd0 libmd0 libffi8 libgmp10 libgnutls30t64 libhogweed6t64 \
         libnettle8t64 libidn2-0 libjansson4 libmnl0 libnet1 libnftables1 \
         libnftnl11 libnl-3-200 libp11-kit0 libprotobuf-c1 libtasn1-6 \
         libunistring5 libuuid1 libxtables12; do
  PACKAGES="$PACKAGES $p/trixie"
done

log() { echo "install-criu: $*" >&2; }

fetch_debs() {
  local dest="$1"
  command -v apt-get >/dev/null || { log "apt-get not found: pass --debs DIR with the .deb files"; exit 1; }
  local src=/etc/apt/sources.list.d/debian.sources uri
  uri=$(awk '/^URIs:/{print $2; exit}' "$src" 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$2 ~ /debian\/?$/ {print $2; exit}' || true)
  fi
  [ -n "$uri" ] || { log "no Debian apt source configured to reuse; pass --debs DIR"; exit 1; }
  local list=/etc/apt/sources.list.d/mmbatch-trixie.list pin=/etc/apt/preferences.d/mmbatch-trixie
  cleanup_apt() {
    rm -f "$list" "$pin"
    apt-get update -qq >/dev/null 2>&1 || true
  }
  trap cleanup_apt EXIT
  echo "deb $uri trixie main" > "$list"
  printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > "$pin"
  apt-get update -qq >/dev/null
  mkdir -p "$dest"; chmod 0755 "$dest" "$(dirname "$dest")" 2>/dev/null || true
  # shellcheck disable=SC2086
  (cd "$dest" && apt-get download -qq $PACKAGES)
  cleanup_apt
  trap - EXIT
}

if [ -n "$DOWNLOAD_ONLY" ]; then
  fetch_debs "$DOWNLOAD_ONLY"
  log "downloaded into $DOWNLOAD_ONLY"
  exit 0
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -z "$DEBS" ]; then
  DEBS="$WORK/debs"
  fetch_debs "$DEBS"
fi
ls "$DEBS"/criu_*.deb >/dev/null 2>&1 || { log "no criu_*.deb in $DEBS"; exit 1; }

STAGE="$PREFIX.new.$$"
rm -rf "$STAGE"
mkdir -p "$STAGE"
for deb in "$DEBS"/*.deb; do
  dpkg-deb -x "$deb" "$STAGE"
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
