#!/bin/sh
# Agent container start: write the YAML the Worker passed, trust Cloudflare's
# container CA when it is mounted, make the state dirs, then exec the command
# (tini -> supervisord). When started as root with FLARE_RUN_AS set (the
# image sets `hermes`), it hands the config and state dirs to that user and
# drops to it for good before the exec, so nothing keeps running as root.
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

mkdir -p "$state/logs" "$state/supervisor/programs"

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
  # flared replaces the YAML on PUT /config (temp file + rename in its dir).
  chown "$run_as:" "$(dirname "$config")" "$config"
  # A state dir that arrives owned by someone else (a fresh volume) is handed
  # over whole; otherwise only what this script just made.
  if [ "$(stat -c %u "$state")" != "$uid" ]; then
    chown -R "$run_as:" "$state"
  else
    chown "$run_as:" "$state/logs" "$state/supervisor" "$state/supervisor/programs"
    [ ! -f "$state/ca-bundle.pem" ] || chown "$run_as:" "$state/ca-bundle.pem"
  fi
  home=$(getent passwd "$run_as" | cut -d: -f6)
  export HOME="${home:-$state}" USER="$run_as" LOGNAME="$run_as"
  set -- setpriv --reuid="$run_as" --regid="$run_as" --init-groups --inh-caps=-all --no-new-privs -- "$@"
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
