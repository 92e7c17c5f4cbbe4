#!/usr/bin/env bash
# The whole test suite, as CI runs it: system packages, venv, test binaries, then pytest
# with the slow integration tests included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --wheel
# A real llama-server for the local-model tests, built once per version and cached.
LLAMA_SERVER_BIN="$(.ci/build-llama-server.sh | tail -n 1)"
export LLAMA_SERVER_BIN
# The suite runs under a private, real journald (audit records and logs are read back).
exec scripts/with-journald.sh .venv/bin/python -m pytest --slow -q "$@"
