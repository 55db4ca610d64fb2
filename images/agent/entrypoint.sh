#!/bin/sh
# Agent container start: write the YAML the Worker passed, trust Cloudflare's
# container CA when it is mounted, make the state dirs, then exec the command
# (supervisord). Paths come from the environment so tests can run this
# outside a container.
set -eu

config="${HERMES_FLARE_CONFIG:-/etc/hermes-flare/hermes-flare.yaml}"
state="${FLARE_STATE_DIR:-/var/lib/hermes-flare}"
ca="${FLARE_CONTAINER_CA:-/etc/cloudflare/certs/cloudflare-containers-ca.crt}"

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

exec "$@"
