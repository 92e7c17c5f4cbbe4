#!/usr/bin/env bash
# Local dev mode: venv, then config, state and control socket under .dev/ (git-ignored),
# then the daemon in the foreground. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
DEV="$PWD/.dev"
mkdir -p "$DEV/state" "$DEV/run"
chmod 700 "$DEV"
if [ ! -f "$DEV/config.toml" ]; then
  cat >"$DEV/config.toml" <<TOML
# Dev config written by scripts/dev.sh; edit freely, then: securellmctl --socket $DEV/run/control.sock reload
[server]
listen = "127.0.0.1:8443"

[control]
socket = "$DEV/run/control.sock"

[state]
dir = "$DEV/state"

[log]
level = "debug"
TOML
fi
cat <<MSG
securellm-bridge dev mode
  config:  $DEV/config.toml
  control: export SECURELLM_SOCKET=$DEV/run/control.sock
           .venv/bin/securellmctl status
           .venv/bin/securellmctl keys create --owner me
MSG
exec .venv/bin/securellm-bridged --config "$DEV/config.toml"
