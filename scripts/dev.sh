#!/usr/bin/env bash
# Local dev mode: venv, then config, state and control socket under .dev/ (git-ignored),
# then the daemon in the foreground. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
DEV="$PWD/.dev"
mkdir -p "$DEV/state" "$DEV/run"
chmod 700 "$DEV"
CTL=.venv/bin/securellmctl
if [ ! -f "$DEV/certs/ca.crt" ]; then
  # A private CA, a server cert for localhost and a client cert, for mutual TLS.
  "$CTL" certs init --dir "$DEV/certs" >/dev/null
fi
if [ ! -f "$DEV/config.toml" ]; then
  cat >"$DEV/config.toml" <<TOML
# Dev config written by scripts/dev.sh; edit freely, then: securellmctl reload
[server]
listen = "127.0.0.1:8443"

[control]
socket = "$DEV/run/control.sock"

[state]
dir = "$DEV/state"

[log]
level = "debug"

[security.tls]
cert_path = "$DEV/certs/server.crt"
key_path = "$DEV/certs/server.key"
client_ca_path = "$DEV/certs/ca.crt"

# Add upstreams here (see packaging/config.example.toml), e.g. a local Ollama:
# [providers.ollama]
# kind = "ollama"
# base_url = "http://127.0.0.1:11434"
# models = ["llama3.2:1b"]
TOML
fi
cat <<MSG
securellm-bridge dev mode
  config:  $DEV/config.toml
  control: export SECURELLM_SOCKET=$DEV/run/control.sock
           $CTL status
  a key:   KEY=\$($CTL keys create --owner me --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  try it:  curl --cacert $DEV/certs/ca.crt --cert $DEV/certs/client.crt --key $DEV/certs/client.key \\
             -H "Authorization: Bearer \$KEY" https://127.0.0.1:8443/v1/models
MSG
exec .venv/bin/securellm-bridged --config "$DEV/config.toml"
