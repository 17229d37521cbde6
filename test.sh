#!/usr/bin/env bash
# Set up (first time only, browser included) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
WITH_BROWSER=1 scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
