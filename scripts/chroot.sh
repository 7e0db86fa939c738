#!/usr/bin/env bash
# A Debian trixie chroot with the Nix and Python most users run (Debian's nix-bin 2.26, Python
# 3.13), so the test suite runs on a second platform next to the host's (Debian 12: Nix 2.8,
# Python 3.11). scripts/test.sh uses it; it can be used by hand too:
#
#   scripts/chroot.sh create [DIR]      build it once (about 4 minutes, about 700 MB); a second
#                                       call finds it and returns at once
#   scripts/chroot.sh run [DIR] -- CMD… run CMD inside it as root, with /proc /sys /dev /dev/pts
#                                       bind-mounted for the duration of the command only
#
# DIR defaults to $HOOKD_CHROOT or /var/cache/hookd-chroot-trixie. Needs root (or sudo).
# Why each step is there:
#   - the Debian mirror is the one the host's apt sources name (no other network);
#   - debootstrap does not resolve the virtual package perl-dbdabi-94 that nix-bin needs
#     (through libdbd-sqlite3-perl): libdbi-perl is included and `apt-get -f install` finishes;
#   - pip inside needs the host's CA bundle and pip configuration (the package index may sit
#     behind the host's own certificate authority or mirror);
#   - the chroot has its own /nix: nothing built inside touches the host's store;
#   - the mounts exist only while `run` runs and are removed on any exit (trap).
set -euo pipefail
die() { echo "chroot.sh: $*" >&2; exit 2; }
say() { printf '[chroot] %s\n' "$*" >&2; }
if [ "$(id -u)" -ne 0 ]; then exec sudo -E bash "$0" "$@"; fi

cmd=${1:-}
shift || true
dir=${HOOKD_CHROOT:-/var/cache/hookd-chroot-trixie}
if [ $# -gt 0 ] && [ "$1" != "--" ]; then dir=$1; shift; fi
[ "${1:-}" = "--" ] && shift
dir=${dir%/}
SUITE=trixie
PACKAGES=nix-bin,libdbi-perl,python3,python3-venv,ca-certificates,git,procps,sqlite3,openssl,zstd,xz-utils

mirror() { # the first Debian (not security) URI of the host's apt sources
  { grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } \
    | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*//' \
    | grep -v security | head -1
}

mounts=(proc sys dev dev/pts)
mount_all() {
  local m
  for m in "${mounts[@]}"; do
    mkdir -p "$dir/$m"
    mountpoint -q "$dir/$m" || mount --bind "/$m" "$dir/$m"
  done
}
umount_all() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    if mountpoint -q "$dir/${mounts[i]}"; then umount "$dir/${mounts[i]}" || umount -l "$dir/${mounts[i]}"; fi
  done
  return 0
}
# Run a command in the chroot with the mounts. In a private mount namespace when the kernel
# allows it: the mounts then vanish with the command whatever happens, and concurrent runs do
# not unmount each other's /proc. The trap removes them in either case.
in_chroot() {
  if [ -z "${HOOKD_CHROOT_NS:-}" ] && unshare --mount --propagation private true 2>/dev/null; then
    HOOKD_CHROOT_NS=1 unshare --mount --propagation private -- bash "$0" _inner "$dir" -- "$@"
    return
  fi
  local rc=0
  trap umount_all EXIT INT TERM
  mount_all
  chroot "$dir" "$@" || rc=$?
  umount_all
  trap - EXIT INT TERM
  return "$rc"
}
ready() { [ -x "$dir/usr/bin/nix-build" ] && [ -f "$dir/.hookd-chroot-ready" ]; }

create() {
  ready && return 0
  exec 9>"$dir.lock"
  flock 9 # a concurrent create waits for the first one instead of racing it
  ready && return 0
  local t0=$SECONDS m
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq debootstrap >/dev/null
  fi
  m=$(mirror)
  [ -n "$m" ] || die "no Debian mirror found in the host's apt sources"
  say "creating a Debian $SUITE chroot in $dir from $m (about 4 minutes, once)"
  rm -rf "$dir"
  # debootstrap exits non-zero because of the perl-dbdabi-94 gap; `apt-get -f install` repairs it.
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$dir" "$m" >"$dir.debootstrap.log" 2>&1 || true
  [ -x "$dir/usr/bin/nix-build" ] || die "debootstrap failed; see $dir.debootstrap.log"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$dir/etc/pip.conf"; fi
  if [ -d /etc/xdg/pip ]; then mkdir -p "$dir/etc/xdg" && cp -r /etc/xdg/pip "$dir/etc/xdg/"; fi
  cp -L /etc/resolv.conf "$dir/etc/resolv.conf"
  in_chroot bash -c 'export DEBIAN_FRONTEND=noninteractive
    apt-get -f install -y -qq >/dev/null && dpkg --configure -a' >>"$dir.debootstrap.log" 2>&1 \
    || die "apt-get -f install failed in the chroot; see $dir.debootstrap.log"
  touch "$dir/.hookd-chroot-ready"
  say "ready in $((SECONDS - t0)) s: $(in_chroot nix --version), $(chroot "$dir" python3 --version)"
}

case $cmd in
create) create ;;
run)
  [ $# -gt 0 ] || die "usage: scripts/chroot.sh run [DIR] -- CMD…"
  ready || die "$dir is not a chroot made by 'scripts/chroot.sh create'"
  rc=0
  in_chroot "$@" || rc=$?
  exit "$rc"
  ;;
_inner) HOOKD_CHROOT_NS=1 in_chroot "$@" ;;
*) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
