#!/usr/bin/env bash
# hookd on a CI runner: the one script behind the GitHub Action (ci/github/action.yml) and the
# GitLab CI template (ci/gitlab/hookd.yml).
#
#   hookd-ci.sh install   put hookd in a venv (skipped when `hookd` is already on PATH)
#   hookd-ci.sh start     write the config and token file, start the daemon, register the
#                         post-build hook with the runner's Nix; every build pushes from now on
#   hookd-ci.sh finish    queue what the hook missed, `hookd wait`, print the summary, stop
#
# Inputs (environment):
#   HOOKD_CI_ENDPOINT, HOOKD_CI_CACHE   an Attic server URL and cache name, and
#   HOOKD_CI_TOKEN                      its token (a secret: written to a 0600 file, never argv)
#   HOOKD_CI_STORE                      and/or a Nix store URL target (file://, s3://…?endpoint=…)
#   HOOKD_CI_STORE_KEY_FILE             a signing key file for that store target (optional)
#   HOOKD_CI_CONFIG                     or a whole hookd YAML of your own (without socket/state_dir)
#   HOOKD_CI_FAIL_ON_ERROR=false        `finish` fails the job when something was not pushed
#   HOOKD_CI_WAIT_TIMEOUT=1800          seconds `finish` waits for the queue to drain
#   HOOKD_CI_BACKFILL=auto              `finish` also queues the paths built locally since
#                                       `start` (`hookd backfill`): auto = only if the hook never
#                                       ran (a nix-daemon that ignored NIX_CONFIG's hook because
#                                       the runner user is not trusted); true; false
#   HOOKD_CI_NIX_CONF=env               how the hook is registered: `env` (NIX_CONFIG: single-user
#                                       installs, and daemon installs where the runner user is
#                                       trusted) or `system` (/etc/nix/nix.conf + daemon restart,
#                                       undone by `finish`; needs root or passwordless sudo)
#   HOOKD_CI_DIR                        state (default: $RUNNER_TEMP/hookd, else /tmp/hookd-$UID)
#   HOOKD_CI_PACKAGE                    what `install` pip-installs (default: this checkout;
#                                       without python3 it builds the checkout's flake package)
#
# On GitHub Actions the registration goes to $GITHUB_ENV, hookd's bin dir to $GITHUB_PATH and
# the summary to $GITHUB_STEP_SUMMARY. Elsewhere `start` writes $HOOKD_CI_DIR/env; source it in
# the shell that builds (GitLab: the template does).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${HOOKD_CI_DIR:-${RUNNER_TEMP:-/tmp}/hookd-ci-$(id -u)}
STATE=$DIR/state
SOCK=$DIR/hookd.sock
CONF=$DIR/config.yaml
LOG=$DIR/daemon.log
say() { printf '[hookd-ci] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }
truthy() { case "$1" in 1 | [Tt]rue | TRUE | [Yy]es | YES | [Oo]n | ON) return 0 ;; *) return 1 ;; esac; }
on_github() { [ -n "${GITHUB_ENV:-}" ]; }

hookd_bin() {
  if [ -x "$DIR/venv/bin/hookd" ]; then
    echo "$DIR/venv/bin"
  elif [ -x "$DIR/hookd-pkg/bin/hookd" ]; then
    echo "$DIR/hookd-pkg/bin"
  elif command -v hookd >/dev/null 2>&1; then
    dirname "$(command -v hookd)"
  else
    die "hookd is not installed: run \`$0 install\` first (or put hookd on PATH)"
  fi
}

cmd_install() {
  mkdir -p "$DIR"
  if command -v hookd >/dev/null 2>&1 && [ -z "${HOOKD_CI_PACKAGE:-}" ]; then
    say "using $(command -v hookd)"
  else
    local pkg=${HOOKD_CI_PACKAGE:-$HERE/..}
    if command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' 2>/dev/null; then
      say "installing hookd from $pkg into $DIR/venv"
      python3 -m venv "$DIR/venv"
      "$DIR/venv/bin/pip" install -q --disable-pip-version-check "$pkg"
    elif command -v nix >/dev/null 2>&1 && [ -z "${HOOKD_CI_PACKAGE:-}" ]; then
      # a Nix-only image (nixos/nix): build the flake's package instead
      say "building hookd with Nix from $HERE/.."
      nix --extra-experimental-features 'nix-command flakes' build "path:$HERE/..#default" \
        --out-link "$DIR/hookd-pkg"
    else
      die "cannot install hookd: no python3 with venv, and no Nix to build it with"
    fi
  fi
  local bin
  bin=$(hookd_bin)
  if on_github && [ -n "${GITHUB_PATH:-}" ]; then echo "$bin" >>"$GITHUB_PATH"; fi
}

write_config() {
  mkdir -p "$STATE"
  chmod 700 "$DIR"
  {
    if [ -n "${HOOKD_CI_CONFIG:-}" ]; then
      [ -f "$HOOKD_CI_CONFIG" ] || die "HOOKD_CI_CONFIG=$HOOKD_CI_CONFIG: no such file"
      cat "$HOOKD_CI_CONFIG"
      echo
    else
      echo "attic_config: false"
      local targets=()
      if [ -n "${HOOKD_CI_ENDPOINT:-}" ]; then
        [ -n "${HOOKD_CI_CACHE:-}" ] || die "HOOKD_CI_ENDPOINT is set but HOOKD_CI_CACHE (the cache name) is not"
        [ -n "${HOOKD_CI_TOKEN:-}" ] || die "HOOKD_CI_ENDPOINT is set but HOOKD_CI_TOKEN is empty (a CI secret?)"
        (umask 077 && printf '%s\n' "$HOOKD_CI_TOKEN" >"$DIR/token")
        echo "servers:"
        echo "  ci: {endpoint: $(json "$HOOKD_CI_ENDPOINT"), token_file: $(json "$DIR/token")}"
        targets+=("  - {server: ci, cache: $(json "$HOOKD_CI_CACHE")}")
      fi
      if [ -n "${HOOKD_CI_STORE:-}" ]; then
        local key=""
        if [ -n "${HOOKD_CI_STORE_KEY_FILE:-}" ]; then key=", secret_key_file: $(json "$HOOKD_CI_STORE_KEY_FILE")"; fi
        targets+=("  - {store: $(json "$HOOKD_CI_STORE")$key}")
      fi
      [ ${#targets[@]} -gt 0 ] || die "nothing to push to: set HOOKD_CI_ENDPOINT+HOOKD_CI_CACHE+HOOKD_CI_TOKEN, HOOKD_CI_STORE or HOOKD_CI_CONFIG"
      echo "targets:"
      printf '%s\n' "${targets[@]}"
    fi
    echo "socket: $(json "$SOCK")"
    echo "state_dir: $(json "$STATE")"
  } >"$CONF"
}

# A double-quoted YAML scalar (also JSON) for any URL or path; no python3 needed (nixos/nix).
json() {
  local s=$1
  case "$s" in *[[:cntrl:]]*) die "control character in a value: $(printf %q "$s")" ;; esac
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"\n' "$s"
}

# The post-build hook the runner's Nix runs: chains a hook that was already configured (its
# failure logged, never fatal), then hands the paths to hookd (always exits 0).
write_hook() {
  local bin=$1 prev
  prev=$( (nix config show post-build-hook 2>/dev/null || nix show-config 2>/dev/null | sed -n 's/^post-build-hook = //p') | head -n1)
  {
    echo "#!/bin/sh"
    if [ -n "$prev" ] && [ "$prev" != "$DIR/post-build-hook" ]; then
      echo "$prev || echo \"hookd-ci: the previous post-build-hook $prev failed (\$?)\" >&2"
    fi
    # a mark that the runner's Nix runs the hook at all (see HOOKD_CI_BACKFILL=auto)
    echo "true 2>/dev/null >$(printf %q "$DIR/hook-ran") || true"
    echo "exec $(printf %q "$bin/hookd-hook") --socket $(printf %q "$SOCK") --spool $(printf %q "$STATE/spool")"
  } >"$DIR/post-build-hook"
  chmod 755 "$DIR/post-build-hook"
}

export_var() { # NAME VALUE: for later steps of this job
  printf 'export %s=%q\n' "$1" "$2" >>"$DIR/env"
  if on_github; then
    local delim="HOOKD_EOF_$RANDOM$RANDOM"
    printf '%s<<%s\n%s\n%s\n' "$1" "$delim" "$2" "$delim" >>"$GITHUB_ENV"
  fi
}

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }

restart_nix_daemon() {
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nix-daemon 2>/dev/null; then
    sudo_ systemctl restart nix-daemon
  elif command -v launchctl >/dev/null 2>&1; then
    sudo_ launchctl kickstart -k system/org.nixos.nix-daemon
  else
    say "warning: cannot restart the nix-daemon here; restart it yourself so it reads $1"
  fi
}

register_hook() {
  local hook=$DIR/post-build-hook
  : >"$DIR/env"
  export_var HOOKD_CONFIG "$CONF"
  case "${HOOKD_CI_NIX_CONF:-env}" in
    env)
      # A daemon install honours a client's post-build-hook only for trusted users; the
      # backfill in `finish` catches the builds of a daemon that ignored it.
      export_var NIX_CONFIG "${NIX_CONFIG:+$NIX_CONFIG
}post-build-hook = $hook"
      ;;
    system)
      local conf=${NIX_CONF_DIR:-/etc/nix}/nix.conf
      printf '\npost-build-hook = %s # hookd-ci\n' "$hook" | sudo_ tee -a "$conf" >/dev/null \
        || die "cannot append to $conf (needs root or passwordless sudo); use HOOKD_CI_NIX_CONF=env"
      echo "$conf" >"$DIR/system-conf"
      restart_nix_daemon "$conf"
      ;;
    *) die "HOOKD_CI_NIX_CONF=${HOOKD_CI_NIX_CONF}: expected env or system" ;;
  esac
}

cmd_start() {
  local bin
  bin=$(hookd_bin)
  mkdir -p "$DIR"
  write_config
  if [ -f "$DIR/daemon.pid" ] && kill -0 "$(cat "$DIR/daemon.pid")" 2>/dev/null; then
    die "a hookd daemon from this job is already running (pid $(cat "$DIR/daemon.pid"))"
  fi
  date +%s >"$DIR/started"
  # The token reaches the daemon only through its file, never through the environment.
  local detach=""
  if command -v setsid >/dev/null 2>&1; then detach=setsid; fi # own session: no job-control signals
  # shellcheck disable=SC2086 # $detach is empty or one word
  env -u HOOKD_CI_TOKEN -u NIX_CONFIG $detach "$bin/hookd" daemon --config "$CONF" \
    </dev/null >>"$LOG" 2>&1 &
  echo $! >"$DIR/daemon.pid"
  local deadline=$((SECONDS + 30))
  until "$bin/hookd" status --config "$CONF" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$DIR/daemon.pid")" 2>/dev/null; then
      cat "$LOG" >&2
      die "the hookd daemon exited at start (log above)"
    fi
    [ $SECONDS -lt $deadline ] || die "the hookd daemon did not answer within 30 s (log: $LOG)"
    sleep 0.2
  done
  write_hook "$bin"
  register_hook
  "$bin/hookd" check --config "$CONF" >&2 || say "warning: \`hookd check\` reported a problem (above); builds still succeed, pushes will say why"
  say "started: every build of this job is pushed from now on (config $CONF, log $LOG)"
}

cmd_finish() {
  local bin rc=0 status
  bin=$(hookd_bin)
  if [ ! -f "$DIR/daemon.pid" ]; then # already finished (GitLab's after_script runs it again)
    say "nothing to finish in $DIR (not started, or finished already)"
    return 0
  fi
  local backfill=${HOOKD_CI_BACKFILL:-auto}
  if [ "$backfill" = auto ]; then
    # Only when the hook never ran: a nix-daemon that ignored the client's post-build-hook
    # (an untrusted user). On a shared runner a backfill would also queue other jobs' builds.
    if [ -e "$DIR/hook-ran" ]; then backfill=false; else backfill=true; fi
  fi
  if truthy "$backfill"; then
    say "queueing what this job built locally since it started (backfill)"
    "$bin/hookd" backfill --config "$CONF" --since "$(cat "$DIR/started")" >&2 || rc=1
  fi
  "$bin/hookd" wait --config "$CONF" --timeout "${HOOKD_CI_WAIT_TIMEOUT:-1800}" >&2 || rc=1
  status=$("$bin/hookd" status --config "$CONF" 2>&1) || true
  printf '%s\n' "$status"
  if on_github && [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    {
      if [ $rc -eq 0 ]; then echo "### hookd: every build result pushed"; else echo "### hookd: not everything was pushed"; fi
      echo
      echo '```'
      printf '%s\n' "$status"
      echo '```'
    } >>"$GITHUB_STEP_SUMMARY"
  fi
  stop_daemon
  if [ -f "$DIR/system-conf" ]; then
    local conf
    conf=$(cat "$DIR/system-conf")
    sudo_ sed -i.hookd-ci-bak "\\|^post-build-hook = $DIR/post-build-hook # hookd-ci\$|d" "$conf" || true
    rm -f "$DIR/system-conf"
    restart_nix_daemon "$conf"
  fi
  if [ $rc -ne 0 ]; then
    local msg="hookd: not every build result was pushed (status above; daemon log: $LOG)"
    if on_github; then echo "::warning::$msg"; else say "warning: $msg"; fi
    if truthy "${HOOKD_CI_FAIL_ON_ERROR:-false}"; then exit 1; fi
  fi
}

stop_daemon() {
  local pid
  pid=$(cat "$DIR/daemon.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  fi
  rm -f "$DIR/daemon.pid" "$DIR/token" "$DIR/hook-ran"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  finish) cmd_finish ;;
  *)
    echo "usage: $0 install|start|finish (see the comment at the top)" >&2
    exit 2
    ;;
esac
