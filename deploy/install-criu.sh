#!/usr/bin/env bash
# Install a working CRIU >= 4 into a private prefix, without touching the
# host's libraries: CRIU and its libraries (glibc included) come from a newer
# Debian suite's packages and run through their own loader. Works on any x86_64 Linux
# with a recent kernel (Debian, Ubuntu, Amazon Linux), because it carries its
# own glibc.
#
#   install-criu.sh [--prefix DIR] [--wrapper PATH] [--suite NAME] [--debs DIR] [--download-only DIR]
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
#                        package directory) and stop
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
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --wrapper) WRAPPER="$2"; shift 2 ;;
    --suite) SUITE="$2"; shift 2 ;;
    --debs) DEBS="$2"; shift 2 ;;
    --download-only) DOWNLOAD_ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
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

if [ -n "$DOWNLOAD_ONLY" ]; then
  fetch_debs "$DOWNLOAD_ONLY"
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
