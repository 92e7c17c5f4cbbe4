#!/usr/bin/env bash
# The whole test suite, as CI runs it: system packages, venv, test binaries, then pytest
# with the slow integration tests included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --wheel
exec .venv/bin/python -m pytest --slow -q "$@"
