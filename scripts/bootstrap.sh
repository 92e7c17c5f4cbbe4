#!/usr/bin/env bash
# Prepare a Debian/Ubuntu machine: system packages, then a venv at .venv with the project.
#   scripts/bootstrap.sh            editable install (development)
#   scripts/bootstrap.sh --wheel    regular install, as users get it (tests, CI)
set -euo pipefail
cd "$(dirname "$0")/.."

# Build deps of systemd-python (libsystemd-dev, pkg-config, gcc, headers), plus what the
# integration tests run for real: systemd-journald and systemd-nspawn; nix-bin parses the Nix files.
packages=(python3 python3-venv python3-dev gcc make pkg-config libsystemd-dev systemd systemd-container
          util-linux iproute2 curl nix-bin)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip_quiet() {  # pip's output goes to .venv/pip.log, and is shown only when pip fails
  .venv/bin/python -m pip install --disable-pip-version-check "$@" >.venv/pip.log 2>&1 \
    || { cat .venv/pip.log >&2; echo "bootstrap: pip install $* failed" >&2; exit 1; }
}
pip_quiet --upgrade pip
if [ "${1:-}" = "--wheel" ]; then
  pip_quiet ".[test]"
else
  pip_quiet -e ".[test]"
fi
.venv/bin/python -c "import securellm_bridge, securellmctl, systemd.journal" \
  || { echo "bootstrap: the venv is broken" >&2; exit 1; }
