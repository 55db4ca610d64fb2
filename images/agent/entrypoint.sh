#!/bin/sh
# Agent container start: write the YAML the Worker passed, trust Cloudflare's
# container CA when it is mounted, make the state dirs, then exec the command
# (tini -> supervisord). When started as root with FLARE_RUN_AS set (the
# image sets `hermes`), it hands the config and state dirs, and a store
# volume (FLARE_STORE__URL=file://...), to that user and drops to it for good
# before the exec, so nothing keeps running as root. A volume it cannot make
# writable for that user (started with --user, a root-squashed mount) is
# refused with the fix, before anything runs.
# Its environment (the secrets) is handed to flared in a 0600 file, and the
# command starts from a base environment without them.
# Paths come from the environment so tests can run this outside a container.
set -eu

config="${HERMES_FLARE_CONFIG:-/etc/hermes-flare/hermes-flare.yaml}"
state="${FLARE_STATE_DIR:-/var/lib/hermes-flare}"
ca="${FLARE_CONTAINER_CA:-/etc/cloudflare/certs/cloudflare-containers-ca.crt}"
run_as="${FLARE_RUN_AS:-}"
[ "$(id -u)" -eq 0 ] || run_as=""

if [ -n "${FLARE_CONFIG_B64:-}" ]; then
  mkdir -p "$(dirname "$config")"
  printf '%s' "$FLARE_CONFIG_B64" | base64 -d > "$config.tmp"
  mv "$config.tmp" "$config"
fi
unset FLARE_CONFIG_B64
if [ ! -f "$config" ]; then
  echo "hermes-flare: no config at $config (the Worker passes it as FLARE_CONFIG_B64)" >&2
  exit 2
fi

# The snapshot store, when it is a directory in the container (a volume):
# FLARE_STORE__URL=file:///var/lib/hermes-flare-store, as compose.yaml sets it.
store=""
case "${FLARE_STORE__URL:-}" in file://*) store="${FLARE_STORE__URL#file://}" ;; esac
[ -z "$store" ] || mkdir -p "$store" 2>/dev/null || true

# can_write USER DIR: whether USER (or this process, without one) may create files in DIR.
can_write() {
  if [ -n "$1" ]; then
    setpriv --reuid="$1" --regid="$1" --init-groups -- sh -c 'test -d "$1" && test -w "$1" && test -x "$1"' - "$2"
  else
    test -d "$2" && test -w "$2" && test -x "$2"
  fi
}
# refuse DIR UID: say why DIR is unusable and the exact fix, then stop (exit 2: fix the setup).
refuse() {
  owner=$(stat -c '%u:%g, mode %a' "$1" 2>/dev/null || echo "missing")
  {
    echo "hermes-flare: $1 is not writable by uid $2, which runs flared (it is $owner)."
    if [ "$(id -u)" -eq 0 ]; then
      echo "  The entrypoint could not hand it over (chown refused: a read-only or root-squashed mount?)."
    else
      echo "  The container started as uid $(id -u), so the entrypoint cannot hand it over."
    fi
    echo "  Fix, either:"
    echo "  - start the container as root (no --user / user: in compose): the entrypoint gives"
    echo "    the volume to uid $2 itself, then drops root for good;"
    echo "  - or give it to uid $2 once on the host: chown -R $2:$2 <the volume's host directory>"
    echo "    (rootless podman: podman unshare chown -R $2:$2 <dir>; a named volume:"
    echo "    podman run --rm --user 0 -v VOLUME:/v --entrypoint chown IMAGE -R $2:$2 /v)."
  } >&2
  exit 2
}

# Gateways are added by flared only after each bot's restore: a state volume
# that kept the last container's program files must not let supervisord start
# them first (as `flared up` does locally).
rm -rf "$state/supervisor/programs" 2>/dev/null || true
mkdir -p "$state/logs" "$state/supervisor/programs" 2>/dev/null || [ "$(id -u)" -eq 0 ] || refuse "$state" "$(id -u)"

# Where each log ends now: the 'logs' program (flared logs --mirror) copies to
# the container's log only what this container adds, whenever it first looks.
for log in "$state"/logs/*.log "$state"/bots/*/logs/gateway.log; do
  [ ! -f "$log" ] || echo "$(stat -c %s "$log") $log"
done > "$state/logs/.start-offsets" 2>/dev/null || true

# HTTPS egress interception (secrets injected at egress) presents certificates
# signed by this CA; Python's ssl, requests and httpx all honour these.
if [ -f "$ca" ]; then
  bundle="$state/ca-bundle.pem"
  cat /etc/ssl/certs/ca-certificates.crt "$ca" > "$bundle.tmp" 2>/dev/null || cp "$ca" "$bundle.tmp"
  mv "$bundle.tmp" "$bundle"
  export SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle"
fi

if [ -n "$run_as" ]; then
  uid=$(id -u "$run_as") || { echo "hermes-flare: no user $run_as (FLARE_RUN_AS)" >&2; exit 2; }
  # flared replaces the YAML on PUT /config (temp file + rename in its dir). A YAML
  # mounted read-only (compose.yaml) stays as it is: edits come from the host.
  chown "$run_as:" "$(dirname "$config")" "$config" 2>/dev/null || true
  # A state dir that arrives owned by someone else (a fresh volume) is handed
  # over whole; otherwise only what this script just made.
  if [ "$(stat -c %u "$state")" != "$uid" ]; then
    chown -R "$run_as:" "$state" 2>/dev/null || true
  else
    chown "$run_as:" "$state/logs" "$state/supervisor" "$state/supervisor/programs"
    [ ! -f "$state/ca-bundle.pem" ] || chown "$run_as:" "$state/ca-bundle.pem"
  fi
  # So is a store volume (root-owned when the engine creates it): without this the
  # first snapshot fails with "Permission denied".
  if [ -n "$store" ] && [ -d "$store" ] && [ "$(stat -c %u "$store")" != "$uid" ]; then
    chown -R "$run_as:" "$store" 2>/dev/null || true
  fi
  for dir in "$state" ${store:+"$store"}; do can_write "$run_as" "$dir" || refuse "$dir" "$uid"; done
  # The container's log is this process's stdout/stderr, pipes the engine made
  # root's: supervisord (as $run_as) reopens /dev/stdout for the 'logs' program,
  # which is refused (EACCES) unless they are handed over too.
  chown --dereference "$run_as" /proc/self/fd/1 /proc/self/fd/2 2>/dev/null || true
  home=$(getent passwd "$run_as" | cut -d: -f6)
  export HOME="${home:-$state}" USER="$run_as" LOGNAME="$run_as"
  set -- setpriv --reuid="$run_as" --regid="$run_as" --init-groups --inh-caps=-all --no-new-privs -- "$@"
else
  for dir in "$state" ${store:+"$store"}; do can_write "" "$dir" || refuse "$dir" "$(id -u)"; done
fi

# The secrets (everything this container was started with) reach flared through
# a 0600 file; tini, supervisord and every program it starts (the gateways) get
# only the variables below, never a token or key (flared/config/handoff.py).
handoff="$state/supervisor/flared.env"
(umask 077 && env -0 > "$handoff.tmp") && mv -f "$handoff.tmp" "$handoff"
[ -z "$run_as" ] || chown "$run_as:" "$handoff"
for name in PATH HOME USER LOGNAME SHELL LANG LANGUAGE LC_ALL LC_CTYPE LC_MESSAGES TZ TMPDIR TERM \
  XDG_RUNTIME_DIR SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE HTTP_PROXY HTTPS_PROXY NO_PROXY \
  http_proxy https_proxy no_proxy PYTHONPATH PYTHONUNBUFFERED PYTHONDONTWRITEBYTECODE VIRTUAL_ENV \
  HERMES_FLARE_CONFIG FLARE_STATE_DIR; do
  eval "isset=\${$name+x}"
  if [ -n "$isset" ]; then
    eval "value=\$$name"
    set -- "$name=$value" "$@"
  fi
done
exec env -i "$@"
