#!/usr/bin/env bash
# The main job on the embedded default, start to finish, on a fresh Debian machine:
# install (Nix + venv), start the daemon, build a sample derivation through the real
# post-build hook, show it pushed, substitute it from the cache into a clean store with its
# signature checked, stop. Leaves nothing running; the work directory is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

work=$(mktemp -d /tmp/hookd-demo.XXXXXX)
cat > "$work/config.yaml" <<YAML
state_dir: $work/state
socket: $work/hookd.sock
attic_config: false
log: {format: console}
YAML
cat > "$work/hook.sh" <<HOOK
#!/bin/sh
exec $PWD/.venv/bin/hookd-hook --socket $work/hookd.sock --spool $work/state/spool
HOOK
chmod +x "$work/hook.sh"
export HOOKD_CONFIG="$work/config.yaml"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. start the daemon (embedded default target: a signed file:// cache in $work/state/cache)"
hookd daemon > "$work/daemon.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null || true; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do hookd check >/dev/null 2>&1 && break; sleep 0.1; done
hookd check | sed 's/^/   /'

step "2. build a sample derivation graph through the real post-build hook"
nonce=$(date +%s%N)
out=$(nix-build tests/data/graph.nix -A d --argstr nonce "$nonce" --no-out-link \
      --option post-build-hook "$work/hook.sh" 2> "$work/build.log")
grep -E "running post-build-hook|building '" "$work/build.log" | sed 's/^/   /'
echo "   built: $out"

step "3. wait until pushed, then show it"
hookd wait --timeout 120
hookd status | sed 's/^/   /'
echo "   closure of $out:"
for p in $(nix-store -qR "$out"); do
  h=$(basename "$p" | cut -d- -f1)
  printf '   %-60s %s\n' "$(basename "$p")" "$( [ -f "$work/state/cache/$h.narinfo" ] && echo pushed || echo MISSING)"
done

step "4. substitute it from the cache into a clean store, signatures checked"
pk=$(cat "$work/state/cache-key.pub")
nix-store --store "$work/clean-store" -r "$out" \
  --option substituters "file://$work/state/cache" --option trusted-public-keys "$pk" \
  --option require-sigs true 2>&1 | grep -v "add-root" | sed 's/^/   /'
nix path-info --store "$work/clean-store" --json -r "$out" \
  | python3 -c 'import json,sys; [print("   ", d["path"], "sig:", ",".join(s.split(":")[0] for s in d.get("signatures",[]))) for d in json.load(sys.stdin)]'
echo "   a key that did not sign it is refused:"
if nix-store --store "$work/clean-store-2" -r "$out" --option substituters "file://$work/state/cache" \
     --option trusted-public-keys "nobody-1:FeCt8u2RhKXGzHnwHmqVl6fX9qKziCt1yCz0L9IUfhY=" >/dev/null 2>&1; then
  echo "   ERROR: an untrusted key was accepted"; exit 1
else
  echo "   refused, as it should be"
fi

step "5. stop"
kill "$daemon"; wait "$daemon" || true
trap - EXIT
echo "   done; work directory: $work (daemon log: $work/daemon.log)"
