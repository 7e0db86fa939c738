#!/usr/bin/env bash
# Install everything and run the whole test suite on every platform hookd is tested on:
#   host    this machine's Nix and Python (Debian 12: Nix 2.8, Python 3.11)
#   chroot  a Debian trixie chroot made by scripts/chroot.sh (Nix 2.26, Python 3.13), with its
#           own /nix and its own venv; the repository is copied in (not bind-mounted), so the
#           run cannot write into the working tree
# Usage: scripts/test.sh [PYTEST ARGS…]
#   HOOKD_PLATFORMS=host scripts/test.sh -x tests/test_nix.py   # only the host, while iterating
#   HOOKD_PLATFORMS=chroot scripts/test.sh                      # only the chroot
# Every platform runs even when an earlier one failed; one closing line per platform; the exit
# code is non-zero if any platform failed.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
platforms=${HOOKD_PLATFORMS:-host,chroot}
say() { printf '[test] %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

declare -a summary=()
failed=0
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
record() { # NAME RC SECONDS VERSIONS: the closing line, with pytest's own summary line
  local verdict=PASSED line=""
  if [ "$2" -ne 0 ]; then verdict="FAILED (exit $2)"; failed=1; fi
  if [ -f "$LOGS/$1" ]; then
    line=$(grep -E '[0-9]+ (passed|failed|error|errors|skipped|deselected)|no tests ran' "$LOGS/$1" | tail -n1 | sed -E 's/^=+ //; s/ =+$//')
  fi
  summary+=("== platform $1 ($4): $verdict in $3 s${line:+ — pytest: $line}")
  printf '\n%s\n\n' "${summary[-1]}"
}

run_host() {
  local t0=$SECONDS rc=0 versions
  bash scripts/setup.sh || { record host 1 $((SECONDS - t0)) "setup failed"; return; }
  versions="Nix $(nix --version | sed 's/.* //'), Python $(.venv/bin/python --version | sed 's/.* //')"
  say "host versions: $versions"
  PATH="$REPO/.venv/bin:$PATH" .venv/bin/pytest -q "$@" 2>&1 | tee "$LOGS/host"
  rc=${PIPESTATUS[0]}
  record host "$rc" $((SECONDS - t0)) "$versions"
}

run_chroot() {
  local t0=$SECONDS rc=0 dir=${HOOKD_CHROOT:-/var/cache/hookd-chroot-trixie} work versions
  $SUDO bash scripts/chroot.sh create "$dir" || { record chroot 1 $((SECONDS - t0)) "chroot creation failed"; return; }
  # One work tree per checkout inside the chroot, so its venv survives between runs; the
  # sources are replaced on every run (everything but .venv).
  work=/srv/hookd/$(printf '%s' "$REPO" | sha256sum | cut -c1-12)
  $SUDO mkdir -p "$dir$work"
  $SUDO find "$dir$work" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
  tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' --exclude=./.pytest_cache \
    --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.hypothesis -cf - . | $SUDO tar -C "$dir$work" -xf -
  # The module-evaluation tests' source trees, when the host has them.
  local src=${HOOKD_NIX_SOURCES:-/var/cache/hookd-nix-sources}
  if [ -d "$src" ]; then
    $SUDO rm -rf "$dir/var/cache/hookd-nix-sources"
    $SUDO mkdir -p "$dir/var/cache/hookd-nix-sources"
    $SUDO cp -a "$src/." "$dir/var/cache/hookd-nix-sources/"
  fi
  local args="" a
  for a in "$@"; do args+=" $(printf '%q' "$a")"; done
  # A clean environment: nothing of the host's PATH, venv or Nix settings leaks in.
  $SUDO env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" HOOKD_SLOW="${HOOKD_SLOW:-}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash scripts/chroot.sh run "$dir" -- bash -c "cd $work && bash scripts/setup.sh \
      && echo \"[test] chroot versions: Nix \$(nix --version | sed 's/.* //'), Python \$(.venv/bin/python --version | sed 's/.* //')\" \
      && PATH=$work/.venv/bin:\$PATH exec .venv/bin/pytest -q -p no:cacheprovider$args" 2>&1 | tee "$LOGS/chroot"
  rc=${PIPESTATUS[0]}
  versions=$(sed -n 's/^\[test\] chroot versions: //p' "$LOGS/chroot" | head -n1)
  record chroot "$rc" $((SECONDS - t0)) "$versions"
}

IFS=, read -ra wanted <<<"$platforms"
for p in "${wanted[@]}"; do
  case $p in
  host) run_host "$@" ;;
  chroot) run_chroot "$@" ;;
  *) say "unknown platform '$p' in HOOKD_PLATFORMS (host, chroot)"; exit 2 ;;
  esac
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
