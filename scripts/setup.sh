#!/usr/bin/env bash
# Install everything hookd needs on a Debian machine, idempotently:
#   - Debian's Nix (nix-bin) if no nix is on PATH, configured for a root single-user store
#     without sandbox/nixbld users (Debian's build has no sandbox shell);
#   - Debian's nginx for the reverse-proxy tests (never started as a service: each test runs
#     its own in the foreground);
#   - a Python venv at .venv with hookd and its test dependencies.
# Usage: scripts/setup.sh            (as root or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[setup] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v nix-build >/dev/null 2>&1; then
  say "installing Debian's nix-bin (apt-get)…"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends nix-bin >/dev/null
fi

# nginx: the tests run the Attic test server behind a real reverse proxy (a private,
# foreground nginx per test on a loopback port; the package's own service is never used).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  say "installing Debian's nginx (apt-get) for the reverse-proxy tests…"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package from starting its system service on port 80 (containers without a
  # policy-rc.d of their own): a temporary policy that denies service starts.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
  fi
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends nginx >/dev/null \
    || say "could not install nginx: the reverse-proxy tests will skip"
  if [ -n "$policy" ]; then $SUDO rm -f "$policy"; fi
fi

# Our nix.conf: written when absent or when it is ours (marker), never over a user's own file.
MARK="# managed by hookd scripts/setup.sh"
CONF=/etc/nix/nix.conf
want="$MARK
build-users-group =
sandbox = false
substituters =
experimental-features = nix-command flakes
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0
flake-registry = /etc/nix/empty-flake-registry.json
warn-dirty = false
connect-timeout = 5"
if [ ! -f "$CONF" ] || head -n1 "$CONF" | grep -qF "$MARK" || ! grep -q '[^[:space:]]' "$CONF" \
   || [ "$(grep -v '^#' "$CONF" | grep -v '^$')" = "sandbox = false" ]; then
  if [ "$(cat "$CONF" 2>/dev/null)" != "$want" ]; then
    $SUDO mkdir -p /etc/nix
    printf '%s\n' '{"flakes":[],"version":2}' | $SUDO tee /etc/nix/empty-flake-registry.json >/dev/null
    printf '%s\n' "$want" | $SUDO tee "$CONF" >/dev/null
    say "wrote $CONF"
  fi
fi
if [ ! -f /nix/var/nix/db/db.sqlite ]; then $SUDO nix-store --init; fi
$SUDO mkdir -p /nix/var/nix/gcroots/auto

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.hookd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing hookd and test dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
# The hook's launcher (hookd/hookrun.py) imports hook.py from bytecode: write it now, not on the
# first build (an editable install compiles nothing; the cache tag is per minor version, so the
# venv's python writes what the system python3.X that runs the hook reads).
.venv/bin/python -m compileall -q hookd >/dev/null
say "ready: $(nix --version), $(.venv/bin/python --version)"
